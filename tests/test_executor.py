"""Executor spine: DDP on gloo equals one-process training; bad plans are refused cleanly."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from executor_helpers import GPT, MLP, check_exact, make_plan, torchrun

pytestmark = pytest.mark.slow


def test_ddp_world2_equals_reference(tmp_path):
    """Through torchrun itself (the other exactness tests use the quicker ``fast_launch``)."""
    plan = make_plan(dp=2, microbatch_size=2, num_microbatches=2)
    # one DDP bucket: the ~0.45 MB of gradients fit DDP's first 1 MiB bucket
    metrics = check_exact(plan, tmp_path, collectives={"all_reduce@dp": 1}, fast=False)
    assert metrics.plan_fingerprint == plan.fingerprint()
    assert len(metrics.losses) == 5 and len(metrics.step_times_s) == 3   # - warm-up, counted
    assert metrics.world_size == 2 and len(metrics.peak_memory_bytes) == 2
    assert all(p > 0 for p in metrics.peak_memory_bytes)
    assert metrics.tokens_per_s > 0


def test_ddp_float32_sgd_mlp_equals_reference(tmp_path):
    plan = make_plan(MLP, dtype="float32", optimizer="sgd-momentum", lr=0.1, dp=2,
                     microbatch_size=4, num_microbatches=1)
    check_exact(plan, tmp_path)


def _single(args, timeout=60):
    return subprocess.run([sys.executable, "-m", "executor", *args], capture_output=True,
                          text=True, timeout=timeout)


def _assert_one_line_error(proc, *words):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_plan_for_another_world_size_is_refused(tmp_path):
    path = tmp_path / "plan.json"
    make_plan(dp=2, microbatch_size=1).save(str(path))
    _assert_one_line_error(_single(["--plan", str(path)]), str(path), "WORLD_SIZE(1)",
                           "dp(2)")


def test_edited_model_fingerprint_is_refused(tmp_path):
    path = tmp_path / "plan.json"
    data = make_plan(dp=1).to_dict()
    data["model"]["num_layers"] = 3          # the plan now describes another model
    path.write_text(json.dumps(data))
    _assert_one_line_error(_single(["--plan", str(path)]), str(path), "model_fingerprint")


def test_refusal_under_torchrun_exits_nonzero_with_the_error(tmp_path):
    """Under torchrun every worker exits 2 and rank 0 prints the one line; torchrun itself then
    reports the failed workers (its own traceback, which the executor cannot suppress)."""
    path = tmp_path / "plan.json"
    make_plan(dp=1).save(str(path))
    proc = torchrun(2, ["--plan", str(path)], timeout=60)
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert errors == [f"error: {path}: field 'layout': dp(1) * tp(1) * pp(1) = 1 != "
                      f"WORLD_SIZE(2) (launch with --nproc-per-node x --nnodes = 1)"]


def test_bf16_mixed_on_cpu_is_refused(tmp_path):
    path = tmp_path / "plan.json"
    make_plan(dp=1, dtype="bf16-mixed").save(str(path))
    _assert_one_line_error(_single(["--plan", str(path), "--device", "cpu"]), "bf16-mixed",
                           "CUDA")


def test_single_process_run_writes_metrics(tmp_path):
    path, out = tmp_path / "plan.json", tmp_path / "m.json"
    make_plan(GPT, dp=1, microbatch_size=2, num_microbatches=2).save(str(path))
    proc = _single(["--plan", str(path), "--steps", "3", "--warmup", "1", "--metrics", str(out)])
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["world_size"] == 1 and len(data["losses"]) == 3


def test_unsupported_combination_is_refused_before_training(tmp_path):
    path = tmp_path / "plan.json"
    make_plan(dp=2, zero=2, compression="fp16", microbatch_size=1).save(str(path))
    proc = torchrun(2, ["--plan", str(path)], timeout=60)
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "compression fp16 is a DDP hook" in errors[0]
