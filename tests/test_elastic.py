"""Issue 15, elastic runs: `planner plan --elastic`, the elastic plan set, and a torchrun elastic
job that loses a node, continues at the smaller world and grows back, training exactly as an
uninterrupted run.

Run the end-to-end test alone with ``pytest tests/test_elastic.py -q -k shrinks``.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from executor_helpers import (ATOL, RTOL, assert_matches, free_port, load_params, make_plan)
from planner.cli import main
from planner.errors import PlannerError
from planner.specs import ElasticPlan, Metrics
from planner.specs.elastic import load_for_world

MB = dict(microbatch_size=2, num_microbatches=2)


def _set(tmp_path):
    """World 2: FSDP (zero 3, DTensor shards); world 1: one replica with twice the micro-batches
    (the same global batch of 8)."""
    plans = (make_plan(dp=1, microbatch_size=2, num_microbatches=4),
             make_plan(dp=2, zero=3, **MB))
    path = tmp_path / "elastic.json"
    ElasticPlan(plans).save(str(path))
    return plans, path


# --------------------------------------------------------------------------------------------
# The plan set
# --------------------------------------------------------------------------------------------
def test_elastic_set_picks_the_plan_of_the_world_size(tmp_path):
    plans, path = _set(tmp_path)
    for n, want in ((1, plans[0]), (2, plans[1])):
        plan, elastic = load_for_world(str(path), n)
        assert plan == want and elastic.world_sizes == (1, 2)
    with pytest.raises(PlannerError, match=r"no plan for WORLD_SIZE 3 in this elastic set "
                                           r"\(world sizes 1, 2\)"):
        load_for_world(str(path), 3)
    plans[0].save(str(tmp_path / "one.json"))                 # a plain plan still loads
    assert load_for_world(str(tmp_path / "one.json"), 1) == (plans[0], None)


@pytest.mark.parametrize("other,expected", [
    (dict(dp=2, lr=2e-2, **MB), "field 'plans[1].learning_rate': 0.02, but plans[0] has 0.01"),
    (dict(dp=2, seed=1, **MB), "field 'plans[1].seed'"),
    (dict(dp=2, microbatch_size=4, num_microbatches=2), "field 'plans[1].global_batch_size'"),
    (dict(dp=2, zero=1, **MB), "field 'plans[1].layout': zero 1 (the distributed optimizer)"),
    (dict(dp=2, compression="powersgd", powersgd_rank=1, **MB), "PowerSGD's error-feedback"),
    (dict(dp=1, microbatch_size=4, num_microbatches=2), "world sizes [1, 1] must be distinct"),
], ids=["lr", "seed", "batch", "zero1", "powersgd", "duplicate"])
def test_elastic_set_refuses_plans_of_another_training(other, expected, tmp_path):
    one = make_plan(dp=1, microbatch_size=2, num_microbatches=4)
    ElasticPlan((one,)).save(str(tmp_path / "ok.json"))
    data = json.loads((tmp_path / "ok.json").read_text())
    data["plans"].append(make_plan(**other).to_dict())
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(PlannerError) as err:
        load_for_world(str(tmp_path / "bad.json"), 1)
    assert str(err.value).startswith(f"{tmp_path / 'bad.json'}: ") and expected in str(err.value)


def test_plan_elastic_writes_one_checkpointable_plan_per_world_size(tmp_path, capsys):
    out = tmp_path / "set.json"
    assert main(["plan", "--model", "gpt2-small", "--cluster", "dgx-a100-80gb", "--elastic",
                 "4:16", "--global-batch", "64", "--out", str(out), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["world_sizes"] == [4, 5, 6, 7, 8, 16]          # one node, or whole nodes of 8
    assert doc["skipped_world_sizes"] == list(range(9, 16))
    elastic = ElasticPlan.load(str(out))
    assert elastic.world_sizes == (4, 5, 6, 7, 8, 16)
    for plan in elastic.plans:
        lay = plan.layout
        assert plan.global_batch_size == 64 == lay.dp * lay.microbatch_size * lay.num_microbatches
        assert not (lay.dp > 1 and lay.data.zero == 1)       # DCP can checkpoint it
    # The same search as `planner plan --gpus 8` with zero 1 left out.
    assert main(["plan", "--model", "gpt2-small", "--cluster", "dgx-a100-80gb", "--gpus", "8",
                 "--global-batch", "64", "--out", str(tmp_path / "g8.json"), "--format",
                 "json"]) == 0
    single = json.loads(capsys.readouterr().out)
    if single["layout"]["data"]["zero"] != 1:
        assert single["layout"] == elastic.plans[4].layout.to_dict()


@pytest.mark.parametrize("flags,expected", [
    (["--elastic", "4"], "--elastic 4: expected MIN:MAX world sizes"),
    (["--elastic", "8:4"], "--elastic 8:4: expected MIN:MAX"),
    (["--elastic", "2:4", "--gpus", "4"], "drop --gpus"),
    (["--elastic", "2:4", "--dp", "2"], "--dp cannot be fixed with --elastic"),
    (["--elastic", "2:4", "--compression", "powersgd"], "PowerSGD's error-feedback state"),
    (["--elastic", "9:15"], "no world size in that range is one node or whole nodes of 8"),
    (["--elastic", "8:16", "--cluster", "mixed-h100-a100"],
     "mixes device kinds; elastic plan sets are planned for one kind"),
], ids=["no-max", "reversed", "gpus", "dp", "powersgd", "no-size", "mixed-cluster"])
def test_plan_elastic_refuses_bad_flags(flags, expected, tmp_path, capsys):
    rc = main(["plan", "--model", "gpt2-small", "--cluster", "dgx-a100-80gb", "--global-batch",
               "64", "--out", str(tmp_path / "x.json"), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and expected in err, err
    assert not (tmp_path / "x.json").exists()


def test_executor_never_imports_the_search():
    code = ("import sys, executor.main, executor.train, planner.specs.elastic; "
            "print(sorted(m for m in sys.modules if m.startswith(('planner.search', "
            "'planner.commands'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_executor_refuses_an_elastic_set_without_checkpoints(tmp_path):
    _, path = _set(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "executor", "--plan", str(path), "--steps",
                           "3"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: {path}: an elastic plan set continues its training "
                                  "after a change of world size only from a checkpoint")


# --------------------------------------------------------------------------------------------
# The elastic job
# --------------------------------------------------------------------------------------------
STEPS = 10
# Dead-node detection within keep_alive_interval x keep_alive_max_attempt = 8 s (a live agent
# stalled that long on a loaded machine would be taken for dead), and a world
# completed 5 s after its first member (the last call for others) unless both are in.
RDZV_CONF = "last_call_timeout=5,keep_alive_interval=1,keep_alive_max_attempt=8"
TIMEOUT_S = 240         # per phase: generous for a loaded 2-core machine


def _agent(tmp_path, port, name, host: bool, fault: str, argv):
    """One torchrun agent (a "node") of one rank, launched by ``python -m executor.launch``
    (which sets what torch 2.13 needs for nodes joining later, see its docstring), in its own
    session so that it and its rank can be ended together by its process group id."""
    cmd = [sys.executable, "-m", "executor.launch", "--nnodes", "1:2",
           "--nproc-per-node", "1", "--max-restarts", "3", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", "elastic-test",
           "--rdzv-conf", f"is_host={int(host)},{RDZV_CONF}", "--monitor-interval", "0.5",
           *argv]
    env = dict(os.environ, OMP_NUM_THREADS="1", EXECUTOR_FAULT=fault,
               PLANNER_CHECKPOINT_KEY=str(tmp_path / "key"))
    log = open(tmp_path / f"agent-{name}.log", "w")
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    finally:
        log.close()


def _latest(ckpt) -> dict:
    try:
        return json.loads((ckpt / "latest.json").read_text())
    except (OSError, ValueError):
        return {}


def _wait_for(what: str, ready, timeout_s: float, logs) -> None:
    """Poll ``ready()`` until it holds (not a timed sleep: the deadline only bounds a hang)."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s} s\n" + logs())
        time.sleep(0.2)


@pytest.mark.slow
def test_elastic_run_shrinks_and_grows_back_exactly(tmp_path):
    """Two torchrun agents form world 2; the node of the second dies (SIGKILL of its agent and
    rank at step 3: EXECUTOR_FAULT=lose-node); the first agent restarts its rank, which resumes
    at world 1 from the FSDP checkpoint resharded onto one replica with twice the micro-batches;
    once it has checkpointed at world 1 the node is started again, the rendezvous grows back to
    world 2 and the job finishes there. Every loss of the 10 steps and the final parameters
    equal one process training on the whole global batch."""
    from executor.reference import train_reference

    plans, path = _set(tmp_path)
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "metrics.json"
    argv = ["--plan", str(path), "--steps", str(STEPS), "--warmup", "1", "--quiet",
            "--checkpoint-dir", str(ckpt), "--checkpoint-every", "1", "--auto-resume",
            "--metrics", str(metrics), "--save-params", str(tmp_path / "params")]
    port = free_port()
    agents = {}

    def logs() -> str:
        return "".join(f"\n--- agent {name} ---\n" + (tmp_path / f"agent-{name}.log").read_text()
                       [-3000:] for name in agents)
    try:
        # "a" hosts the rendezvous store and, alone at world 1, waits at step 6 for a node to
        # join (a joining node makes torchrun restart every worker; without the wait it could
        # finish first); "b" loses its node at step 3 of world 2.
        agents["a"] = _agent(tmp_path, port, "a", True, "wait-for-node:6:1", argv)
        agents["b"] = _agent(tmp_path, port, "b", False, "lose-node:3:2", argv)
        try:
            assert agents["b"].wait(timeout=TIMEOUT_S) == -signal.SIGKILL, logs()
        except subprocess.TimeoutExpired:
            pytest.fail("the node never got lost\n" + logs())
        _wait_for("a checkpoint written at world 1", lambda: _latest(ckpt).get("world_size") == 1,
                  TIMEOUT_S, logs)
        agents["b2"] = _agent(tmp_path, port, "b2", False, "", argv)
        for name in ("a", "b2"):
            try:
                assert agents[name].wait(timeout=TIMEOUT_S) == 0, logs()
            except subprocess.TimeoutExpired:
                pytest.fail(f"agent {name} did not finish\n" + logs())
    finally:
        for proc in agents.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    m = Metrics.load(str(metrics))
    sizes = list(m.earlier_world_sizes) + [m.world_size] * len(m.losses)
    # Shrunk from 2 to 1 once, at step 3 or later (the fault), and grew back to 2, where it
    # ended; the first steps may have run at world 1 too, if the second agent came after the
    # first one's last call.
    m_ = re.fullmatch("(1*)(2*)(1+)(2+)", "".join(map(str, sizes)))
    assert len(sizes) == STEPS and m_ and len(m_[1]) + len(m_[2]) >= 3, sizes
    ref_losses, ref_state = train_reference(plans[1], STEPS)
    assert_matches(list(m.earlier_losses) + list(m.losses), load_params(tmp_path / "params"),
                   ref_losses, ref_state, RTOL["float64"], ATOL["float64"])
    np.testing.assert_allclose(m.earlier_losses, ref_losses[:m.first_step], rtol=RTOL["float64"])
