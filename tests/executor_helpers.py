"""Helpers for the executor tests: tiny plans, torchrun launches, parameter comparison."""
from __future__ import annotations

import glob
import os
import socket
import subprocess
import sys

import numpy as np

from planner.clusters import localhost_cpu
from planner.specs import Layout, ModelSpec, Plan, Prediction

# Small enough that a 5-step world-4 run is dominated by start-up, big enough to split:
# 2 heads and ffn 64 divide by tp 2; 4 layers + embedding + head = 6 blocks for pp up to 4 chunks.
GPT = ModelSpec("gpt-test", "gpt", num_layers=4, hidden_size=32, num_heads=2, seq_len=16,
                vocab_size=64)
MLP = ModelSpec("mlp-test", "mlp", num_layers=2, hidden_size=16, vocab_size=8)

# Float tolerances of an exact parallel run against the one-process reference: only the order
# of floating-point sums differs, so float64 agrees to ~1e-13 and float32 to ~1e-6.
RTOL = {"float64": 1e-10, "float32": 1e-5}
ATOL = {"float64": 1e-12, "float32": 1e-6}


def test_prediction() -> Prediction:
    """A zero prediction for plans made in tests (compute_source says so)."""
    return Prediction(step_time_s=0.0, breakdown_s={}, memory=(), peak_memory_bytes=0,
                      device_memory_bytes=0, fits=True, tflops_per_device=0.0, mfu=0.0,
                      bubble_fraction=0.0, collectives=(), compute_source="test")


def make_plan(model: ModelSpec = GPT, dtype="float64", optimizer="adam", lr=1e-2, seed=0,
              **layout) -> Plan:
    lay = Layout(**layout)
    return Plan(model=model, model_fingerprint=model.fingerprint(), cluster=localhost_cpu(),
                world_size=lay.world_size, global_batch_size=lay.global_batch_size, dtype=dtype,
                optimizer=optimizer, learning_rate=lr, layout=lay,
                prediction=test_prediction(), seed=seed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, args: list[str], timeout: float = 120, env=None,
             nnodes_args: list[str] | None = None) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run ... -m executor args`` on a free port."""
    launch = nnodes_args or ["--nnodes", "1", "--rdzv-backend", "c10d",
                             "--rdzv-endpoint", f"localhost:{free_port()}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch,
           "--nproc-per-node", str(nproc), "-m", "executor", *args]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)


def run_plan(plan: Plan, tmp_path, steps=5, extra=(), timeout=120, env=None):
    """Save ``plan``, run it for ``steps`` steps; returns (process, Metrics or None, params dir)."""
    from planner.specs import Metrics
    plan_path, metrics_path = tmp_path / "plan.json", tmp_path / "metrics.json"
    params_dir = tmp_path / "params"
    plan.save(str(plan_path))
    proc = torchrun(plan.world_size, ["--plan", str(plan_path), "--steps", str(steps),
                                      "--warmup", "1", "--metrics", str(metrics_path),
                                      "--save-params", str(params_dir), "--quiet", *extra],
                    timeout=timeout, env=env)
    metrics = Metrics.load(str(metrics_path)) if metrics_path.exists() else None
    return proc, metrics, params_dir


def load_params(directory) -> dict[str, np.ndarray]:
    """Every parameter from every rank's file; replicas held by several ranks must be equal."""
    merged: dict[str, np.ndarray] = {}
    files = sorted(glob.glob(os.path.join(str(directory), "params-rank*.npz")))
    assert files, f"no params-rank*.npz in {directory}"
    for path in files:
        with np.load(path, allow_pickle=False) as data:
            for name in data.files:
                if name in merged:
                    np.testing.assert_array_equal(data[name], merged[name],
                                                  err_msg=f"replicas of {name} differ")
                else:
                    merged[name] = data[name]
    return merged


def assert_matches(losses, params, ref_losses, ref_state, rtol, atol) -> None:
    np.testing.assert_allclose(losses, ref_losses, rtol=rtol, atol=atol, err_msg="losses")
    assert set(params) == set(ref_state), sorted(set(params) ^ set(ref_state))
    for name, value in params.items():
        np.testing.assert_allclose(value, ref_state[name].numpy(), rtol=rtol, atol=atol,
                                   err_msg=name)


def check_exact(plan: Plan, tmp_path, steps=5, rtol=None, atol=None, extra=(),
                collectives=None):
    """Run ``plan`` and assert its losses and final parameters equal the reference's, and,
    given ``collectives``, that rank 0's last step issued exactly those collectives."""
    from executor.reference import train_reference
    proc, metrics, params_dir = run_plan(plan, tmp_path, steps=steps,
                                         extra=[*extra, "--count-collectives"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref_losses, ref_state = train_reference(plan, steps)
    assert_matches(metrics.losses, load_params(params_dir), ref_losses, ref_state,
                   rtol if rtol is not None else RTOL[plan.dtype],
                   atol if atol is not None else ATOL[plan.dtype])
    if collectives is not None:
        assert metrics.collectives == collectives, metrics.collectives
    return metrics
