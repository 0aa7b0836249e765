"""Issue 15, part 5: `planner validate` across machines (the same command on every node) and the
SLURM batch script, each tested with two nodes on localhost."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from executor_helpers import free_port
from planner.cli import main
from planner.errors import PlannerError
from planner.specs import TrialSet, Validation

NODES_TIMEOUT_S = 600         # generous: a loaded 2-core machine


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("prof") / "mlp.json")
    assert main(["profile", "--model", "mlp-tiny", "--microbatch-size", "2", "--repeats", "3",
                 "--out", path]) == 0
    return path


def _validate(*args: str) -> list[str]:
    return [sys.executable, "-m", "planner.cli", "validate", *args]


def _common(profile: str, workdir) -> list[str]:
    return ["--profile", profile, "--gpus", "2", "--global-batch", "4", "--steps", "3",
            "--warmup", "1", "--timeout-s", "300", "--workdir", str(workdir), "--no-measure"]


def _finish(procs, what) -> list[tuple[int, str, str]]:
    try:
        outs = [p.communicate(timeout=NODES_TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return [(p.returncode, o, e) for p, (o, e) in zip(procs, outs)]


@pytest.mark.slow
def test_validate_runs_its_trials_on_two_nodes(profile, tmp_path):
    """Two `planner validate` processes, the same command but --node-rank: node 0 plans two
    layouts and reports; each trial is one torchrun job of two agents (one rank each)."""
    work, out = tmp_path / "w", tmp_path / "v.json"
    rdzv = ["--nnodes", "2", "--rdzv-endpoint", f"localhost:{free_port()}", "--rdzv-id", "t1"]
    cmd = [*_common(profile, work), "--top-k", "1", "--sample", "1", "--out", str(out), *rdzv]
    procs = [subprocess.Popen(_validate(*cmd, "--node-rank", str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (1, 0)]
    (rc1, out1, err1), (rc0, out0, err0) = _finish(procs, "validate")
    assert rc0 == 0, err0[-3000:]
    assert rc1 == 0, err1[-3000:]
    v = Validation.load(str(out))
    assert v.world_size == 2 and [r.role for r in v.rows] == ["pick", "sample"]
    assert all(r.status == "ok" and r.measured_step_time_s > 0 for r in v.rows), v.rows
    assert "node 1 of 2: ran its share of 2 trial(s)" in out1 and "(2 ended well here)" in out1
    trials = TrialSet.load(str(work / "trials.json"))
    assert trials.run_id == "t1" and len(trials.trials) == 2
    for t in trials.trials:                 # node 1 ran each trial too, into its own log
        assert (work / t.plan_path.replace(".json", ".node1.log")).exists()
    # The same run id again is refused before anything runs: a node could follow stale trials.
    again = subprocess.run(_validate(*cmd, "--node-rank", "0"), capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 2 and "give each validation a new --rdzv-id" in again.stderr


_FAKE_SRUN = """#!/bin/bash
# srun on one machine: the command once per "node", each with its SLURM_NODEID
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_NODEID=$i "$@" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""


@pytest.mark.slow
def test_slurm_script_runs_the_trials_on_two_nodes(profile, tmp_path):
    """--slurm writes the trials and a batch script; the script, run with an srun that starts
    its command once per node on this machine, validates over two nodes."""
    work, script = tmp_path / "w", tmp_path / "validate.sbatch"
    port = free_port()
    proc = subprocess.run(_validate(*_common(profile, work), "--top-k", "1", "--sample", "0",
                                    "--nnodes", "2", "--rdzv-endpoint", f":{port}",
                                    "--slurm", str(script)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = script.read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "srun --nodes=2",
                 f'--rdzv-endpoint "$head:{port}" --rdzv-id "$SLURM_JOB_ID"',
                 f"--trials {work / 'trials.json'}", "--node-rank \"$SLURM_NODEID\""):
        assert line in text, text
    assert "--gpus-per-node" not in text                 # a CPU cluster
    assert not list(work.glob("*.log"))                  # nothing ran
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(_FAKE_SRUN)
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho localhost\n")
    for name in ("srun", "scontrol"):
        os.chmod(bin_dir / name, 0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_NNODES="2",
               SLURM_JOB_NODELIST="localhost", SLURM_JOB_ID="4242")
    job = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env,
                         timeout=NODES_TIMEOUT_S)
    assert job.returncode == 0, job.stderr[-3000:]
    v = Validation.load(str(work / "validation.json"))
    assert v.world_size == 2 and len(v.rows) == 1 and v.rows[0].status == "ok", v.rows
    assert "node 1 of 2" in job.stdout


@pytest.mark.parametrize("flags,expected", [
    (["--nnodes", "2", "--rdzv-endpoint", "localhost:1", "--rdzv-id", "x"],
     "--nnodes 2 needs --workdir: a directory every node sees"),
    (["--nnodes", "2", "--workdir", "W", "--rdzv-id", "x"],
     "--nnodes 2 needs --rdzv-endpoint HOST:PORT"),
    (["--nnodes", "2", "--workdir", "W", "--rdzv-endpoint", "h:1"], "--nnodes 2 needs --rdzv-id"),
    (["--nnodes", "2", "--node-rank", "2", "--workdir", "W", "--rdzv-endpoint", "h:1",
      "--rdzv-id", "x"], "--node-rank 2 must be in 0..1"),
    (["--nnodes", "3", "--workdir", "W", "--rdzv-endpoint", "h:1", "--rdzv-id", "x"],
     "2 devices do not split evenly over --nnodes 3"),
    (["--slurm", "x.sbatch", "--rdzv-endpoint", "h:p"], "with --slurm give :PORT"),
    (["--slurm", "x.sbatch", "--trials", "t.json"], "drop --trials and --node-rank"),
], ids=["workdir", "endpoint", "id", "rank", "split", "slurm-port", "slurm-trials"])
def test_validate_across_machines_refuses_bad_flags(flags, expected, tmp_path, capsys,
                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["validate", "--model", "gpt-tiny", "--cluster", "dgx-a100-80gb", "--gpus", "2",
               "--global-batch", "8", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and expected in err, err
    assert not os.listdir(tmp_path)                       # nothing written


def test_follower_waits_for_trials_of_its_own_run(tmp_path, capsys):
    """A node other than 0 gives up with one line when node 0's trials never come."""
    from planner import trials

    s = trials.RunSettings(str(tmp_path), nnodes=2, node_rank=1, rdzv_endpoint="h:1",
                           rdzv_id="mine", timeout_s=1)
    with pytest.raises(PlannerError, match="node 0 wrote no trials of run --rdzv-id mine within"):
        trials.wait_for_trials(s, 1.0)
