"""Executor operations: resume, token data, traces, failures, two torchrun agents."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from executor_helpers import (ATOL, GPT, RTOL, assert_matches, free_port, load_params,
                              make_plan, run_plan)
from executor.reference import train_reference

pytestmark = pytest.mark.slow

MB = dict(microbatch_size=2, num_microbatches=2)


@pytest.mark.parametrize("layout", [
    dict(dp=2, zero=3, **MB),
    dict(pp=2, schedule="interleaved-1f1b", virtual_stages=2, **MB),
], ids=["fsdp", "pp-interleaved"])
def test_resumed_run_continues_exactly(layout, tmp_path):
    """3 steps, checkpoint, resume to 5: the last 2 losses and the final parameters are those of
    an uninterrupted run (the reference, which uninterrupted runs equal to ~1e-14)."""
    plan = make_plan(**layout)
    ckpt, key = str(tmp_path / "ckpt"), {"PLANNER_CHECKPOINT_KEY": str(tmp_path / "key")}
    first, _, _ = run_plan(plan, tmp_path / "a", steps=3, extra=["--checkpoint-dir", ckpt],
                           env=key)
    assert first.returncode == 0, first.stderr[-3000:]
    proc, metrics, params_dir = run_plan(plan, tmp_path / "b", steps=5, env=key,
                                         extra=["--checkpoint-dir", ckpt, "--resume"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert metrics.first_step == 3 and len(metrics.losses) == 2
    ref_losses, ref_state = train_reference(plan, 5)
    assert_matches(metrics.losses, load_params(params_dir), ref_losses[3:], ref_state,
                   RTOL["float64"], ATOL["float64"])


def test_resume_refuses_another_plan(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    for lr, extra in ((1e-2, []), (2e-2, ["--resume"])):
        path = tmp_path / f"plan{lr}.json"
        make_plan(lr=lr, **MB).save(str(path))
        proc = subprocess.run([sys.executable, "-m", "executor", "--plan", str(path), "--steps",
                               "3", "--warmup", "1", "--checkpoint-dir", ckpt,
                               "--checkpoint-key", str(tmp_path / "key"), *extra],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: ") and "plan_fingerprint" in proc.stderr


def test_token_file_data_is_exact(tmp_path):
    path = tmp_path / "tokens.npy"
    np.save(path, (np.arange(4000) * 7 % GPT.vocab_size).astype(np.int32))
    plan = make_plan(dp=2, **MB)
    proc, metrics, params_dir = run_plan(plan, tmp_path, extra=["--data", str(path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref_losses, ref_state = train_reference(plan, 5, data_path=str(path))
    assert_matches(metrics.losses, load_params(params_dir), ref_losses, ref_state,
                   RTOL["float64"], ATOL["float64"])
    synthetic, _ = train_reference(plan, 5)
    assert abs(ref_losses[-1] - synthetic[-1]) > 1e-3      # the file was really read


def test_trace_dir_writes_one_trace_per_rank(tmp_path):
    proc, _, _ = run_plan(make_plan(dp=2, **MB), tmp_path,
                          extra=["--trace-dir", str(tmp_path / "tr")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in range(2):
        events = json.loads((tmp_path / "tr" / f"trace-rank{rank}.json").read_text())
        names = {e.get("name") for e in events["traceEvents"]}
        assert {"step 1", "step 2", "step 3"} <= names     # warm-up step 0 not traced


def test_failing_rank_fails_the_job_with_its_error(tmp_path):
    proc, metrics, _ = run_plan(make_plan(dp=2, **MB), tmp_path, timeout=60, fast=False,
                                env={"EXECUTOR_FAULT": "raise:1:2"})
    assert proc.returncode != 0 and metrics is None
    assert ("error: [rank 1] RuntimeError at step 2: injected failure (EXECUTOR_FAULT=raise:1:2)"
            in proc.stderr)
    assert "[rank1]: Traceback" not in proc.stderr and "[rank0]: Traceback" not in proc.stderr


def test_hung_rank_fails_the_job_after_the_timeout(tmp_path):
    proc, metrics, _ = run_plan(make_plan(dp=2, **MB), tmp_path, timeout=60, fast=False,
                                extra=["--timeout-s", "3"], env={"EXECUTOR_FAULT": "hang:1:2"})
    assert proc.returncode != 0 and metrics is None
    assert "Timed out waiting 3000ms" in proc.stderr


def test_two_torchrun_agents_form_one_job(tmp_path):
    """Multi-node through torchrun's c10d rendezvous: two agents of one process each."""
    plan = make_plan(dp=2, **MB)
    plan_path, out = tmp_path / "plan.json", tmp_path / "m.json"
    plan.save(str(plan_path))
    rdzv = ["--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint",
            f"localhost:{free_port()}", "--rdzv-id", "two-agents"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *rdzv, "--nproc-per-node", "1",
           "-m", "executor", "--plan", str(plan_path), "--steps", "3", "--warmup", "1",
           "--metrics", str(out), "--quiet"]
    agents = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    try:
        results = [a.communicate(timeout=90) for a in agents]
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
    assert [a.returncode for a in agents] == [0, 0], [r[1][-2000:] for r in results]
    data = json.loads(out.read_text())
    ref_losses, _ = train_reference(plan, 3)
    np.testing.assert_allclose(data["losses"], ref_losses, rtol=RTOL["float64"])
    assert data["world_size"] == 2
