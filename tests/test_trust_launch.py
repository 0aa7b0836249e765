"""Issue 13, the executor fails early and in one line; ``profile --network`` leaves no bad file.

Tables: ``FLAG_CASES`` and ``OUTPUT_CASES`` (case, flags, expected one-line error; exit 2; no
file written; refused before any process group, so they run in-process) and ``JOB_CASES``
(failures of a running 2-rank job under ``python -m executor.launch``: exactly one line on
stderr, the exit status).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from executor_helpers import free_port, make_plan

PLAN = dict(dp=2, microbatch_size=2, num_microbatches=2)

FLAG_CASES = [
    ("steps 0", ["--steps", "0"], "--steps must be >= 1, got 0"),
    ("warmup -1", ["--warmup", "-1"], "--warmup must be >= 0 (steps left out of the timing), "
                                      "got -1"),
    ("checkpoint-every -1", ["--checkpoint-every", "-1"], "--checkpoint-every must be >= 0 "
                                                          "(0: only at the end), got -1"),
    ("timeout 0", ["--timeout-s", "0"], "--timeout-s must be a positive number of seconds, "
                                        "got 0.0"),
    ("timeout nan", ["--timeout-s", "nan"], "--timeout-s must be a positive number of seconds, "
                                            "got nan"),
    ("unknown flag", ["--stepz", "3"], "python -m executor: unrecognized arguments: --stepz 3"),
]


def _main(argv, capsys):
    from executor.main import main
    rc = main(argv)
    return rc, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("case,flags,expected", FLAG_CASES, ids=[c[0] for c in FLAG_CASES])
def test_bad_flags_are_one_line(case, flags, expected, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    make_plan(**PLAN).save(str(plan))
    rc, err = _main(["--plan", str(plan), *flags], capsys)
    assert rc == 2 and err == [f"error: {expected}"], err


def _file(tmp):
    (tmp / "a-file").write_text("x")
    return tmp / "a-file"


OUTPUT_CASES = [
    ("metrics is a directory", lambda t: ["--metrics", str(t)], "is a directory; give the "
     "path of a file"),
    ("metrics under a file", lambda t: ["--metrics", str(_file(t) / "m.json")],
     "a-file is not a directory"),
    ("trace-dir is a file", lambda t: ["--trace-dir", str(_file(t))],
     "exists and is not a directory"),
    ("checkpoint-dir under a file", lambda t: ["--checkpoint-dir", str(_file(t) / "ck")],
     "a-file is not a directory"),
    ("save-params in /proc", lambda t: ["--save-params", "/proc/params"],
     "--save-params /proc/params: cannot write in /proc"),
    ("metrics in /proc", lambda t: ["--metrics", "/proc/m.json"], "cannot write in /proc"),
]


@pytest.mark.parametrize("case,flags,expected", OUTPUT_CASES, ids=[c[0] for c in OUTPUT_CASES])
def test_unwritable_outputs_are_refused_before_training(case, flags, expected, tmp_path,
                                                       capsys, monkeypatch):
    """World 2 plan, rank 0 of 2: refused in the preflight (no process group, no step)."""
    plan = tmp_path / "plan.json"
    make_plan(**PLAN).save(str(plan))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    before = set(os.listdir(tmp_path))
    rc, err = _main(["--plan", str(plan), *flags(tmp_path)], capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert set(os.listdir(tmp_path)) - before <= {"a-file"}        # nothing written


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_is_refused(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    make_plan().save(str(plan))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    rc, err = _main(["--plan", str(plan), "--metrics", str(ro / "m.json")], capsys)
    assert rc == 2 and "cannot write in" in err[0] and "Permission denied" in err[0], err


def _launch(tmp_path, extra=(), env=None, popen=False):
    plan = tmp_path / "plan.json"
    make_plan(**PLAN).save(str(plan))
    cmd = [sys.executable, "-m", "executor.launch", "--nnodes", "1", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"localhost:{free_port()}", "--nproc-per-node", "2",
           "--plan", str(plan), "--steps", "6", "--warmup", "1", *extra]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    if popen:
        return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=180)


JOB_CASES = [
    ("rank raises", {"EXECUTOR_FAULT": "raise:1:2"}, [],
     "error: [rank 1] RuntimeError at step 2: injected failure (EXECUTOR_FAULT=raise:1:2) on "
     "rank 1 at step 2 (traceback: ", 1),
    ("rank killed", {"EXECUTOR_FAULT": "kill:1:2"}, [], "error: [rank 1] ended by SIGKILL", 137),
    ("rank hangs", {"EXECUTOR_FAULT": "hang:1:2"}, ["--timeout-s", "3"],
     "error: [rank 0] waited --timeout-s for another rank at step 2 and gave up (Timed out "
     "waiting 3000ms", 1),
    ("bad flag", {}, ["--warmup", "-1"], "error: --warmup must be >= 0", 2),
]


@pytest.mark.slow
@pytest.mark.parametrize("case,env,extra,expected,status", JOB_CASES,
                         ids=[c[0] for c in JOB_CASES])
def test_launcher_ends_a_failed_job_in_one_line(case, env, extra, expected, status, tmp_path):
    proc = _launch(tmp_path, ["--quiet", *extra], env)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == status and len(lines) == 1, proc.stderr
    assert lines[0].startswith(expected), lines


@pytest.mark.slow
def test_launcher_ctrl_c_is_one_line(tmp_path):
    """SIGINT to the process group, as a terminal's Ctrl-C: every rank and the launcher get it."""
    proc = _launch(tmp_path, ["--steps", "100000"], popen=True)
    try:
        for line in proc.stdout:                # rank 0's progress: the ranks are training
            if line.startswith("step 2/"):
                break
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and err.strip().splitlines() == ["interrupted"], err


@pytest.mark.slow
def test_launcher_success_is_silent_on_stderr(tmp_path):
    proc = _launch(tmp_path, ["--quiet", "--metrics", str(tmp_path / "m.json")])
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
    assert (tmp_path / "m.json").exists()


def test_network_profile_publishes_only_after_success(tmp_path, capsys):
    """``planner profile --network``: OUT.partial becomes OUT on exit 0, else is removed and
    an earlier OUT is kept."""
    from planner.commands.profile_network import publish, staged_path
    out = tmp_path / "cluster.json"
    out.write_text("earlier good file")
    partial = staged_path(str(out))
    open(partial, "w").write("measured, but rank 1 aborted")
    assert publish(str(out), 1) == 1
    assert not os.path.exists(partial) and out.read_text() == "earlier good file"
    assert capsys.readouterr().err.strip() == (f"error: profile --network failed (torchrun exit "
                                               f"1); {out} was not written")
    open(partial, "w").write("new")
    assert publish(str(out), 0) == 0 and out.read_text() == "new"
    assert not os.path.exists(partial)
