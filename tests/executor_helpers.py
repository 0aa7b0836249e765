"""Helpers for the executor tests: tiny plans, torchrun launches, parameter comparison."""
from __future__ import annotations

import glob
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

from planner.clusters import localhost_cpu
from planner.specs import Layout, ModelSpec, Plan, Prediction

# Small enough that a 5-step world-4 run is dominated by start-up, big enough to split:
# 2 heads and ffn 64 divide by tp 2; 4 layers + embedding + head = 6 blocks for pp up to 4 chunks.
GPT = ModelSpec("gpt-test", "gpt", num_layers=4, hidden_size=32, num_heads=2, seq_len=16,
                vocab_size=64)
MLP = ModelSpec("mlp-test", "mlp", num_layers=2, hidden_size=16, vocab_size=8)
# Llama and MoE at the GPT test model's size: 4 heads on 2 K/V heads (tp 2 splits both), SwiGLU
# 64; the MoE one with a dense first layer, 4 experts top-2 of 32 columns, a gated shared expert
# of 32, a capacity of 8 tokens per expert and sequence (so some tokens are dropped) and the
# load-balancing loss in the objective.
LLAMA = ModelSpec("llama-test", "llama", num_layers=4, hidden_size=32, num_heads=4,
                  num_kv_heads=2, ffn_hidden_size=64, seq_len=16, vocab_size=64)
MOE = ModelSpec("moe-test", "moe", num_layers=4, hidden_size=32, num_heads=4, num_kv_heads=2,
                ffn_hidden_size=64, seq_len=16, vocab_size=64, num_experts=4,
                experts_per_token=2, moe_ffn_hidden_size=32, shared_expert_ffn_hidden_size=32,
                shared_expert_gate=True, moe_capacity_factor=1.0, moe_first_dense_layers=1,
                moe_aux_loss_coeff=0.1)

# Float tolerances of an exact parallel run against the one-process reference: only the order
# of floating-point sums differs, so float64 agrees to ~1e-13 and float32 to ~1e-6.
RTOL = {"float64": 1e-10, "float32": 1e-5}
ATOL = {"float64": 1e-12, "float32": 1e-6}


def zero_prediction() -> Prediction:
    """A zero prediction for plans made in tests (compute_source says so)."""
    return Prediction(step_time_s=0.0, breakdown_s={}, memory=(), peak_memory_bytes=0,
                      device_memory_bytes=0, fits=True, tflops_per_device=0.0, mfu=0.0,
                      bubble_fraction=0.0, collectives=(), compute_source="test")


def make_plan(model: ModelSpec = GPT, dtype="float64", optimizer="adam", lr=1e-2, seed=0,
              **layout) -> Plan:
    lay = Layout.make(**layout)
    return Plan(model=model, model_fingerprint=model.fingerprint(), cluster=localhost_cpu(),
                world_size=lay.world_size, global_batch_size=lay.global_batch_size, dtype=dtype,
                optimizer=optimizer, learning_rate=lr, layout=lay,
                prediction=zero_prediction(), seed=seed)


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


_FORKSERVER = None


def _rank_main(rank, world, port, argv, log_path, env):
    """One rank of ``fast_launch``: the environment torchrun would give it, then the executor."""
    os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="localhost", MASTER_PORT=str(port))
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import torch
    torch.set_num_threads(1)                 # what OMP_NUM_THREADS=1 does under torchrun
    from executor.main import main
    try:
        rc = main(argv)
    except BaseException:                    # noqa: BLE001 - reported like torchrun's workers
        traceback.print_exc()
        rc = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def _read(path: str) -> str:
    if not os.path.exists(path):             # the rank died before it could open its log
        return "(no log)\n"
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.read()


def fast_launch(nproc: int, argv: list[str], timeout: float = 120, env=None,
                log_dir=None) -> subprocess.CompletedProcess:
    """Run the executor on ``nproc`` ranks forked from a server that imported torch once.

    Same environment contract as torchrun (RANK, WORLD_SIZE, MASTER_ADDR/PORT, one thread) but
    no torch import per rank and no agent, which is most of a torchrun launch's few seconds; like
    torchrun it stops the other ranks once one fails. The spine, failure and multi-node tests
    still go through torchrun itself."""
    global _FORKSERVER
    if _FORKSERVER is None:
        _FORKSERVER = multiprocessing.get_context("forkserver")
        _FORKSERVER.set_forkserver_preload(["torch", "executor.train", "executor_helpers"])
    log_dir = log_dir or tempfile.mkdtemp(prefix="fast-launch-")
    os.makedirs(log_dir, exist_ok=True)
    port, logs = free_port(), [os.path.join(log_dir, f"rank{r}.log") for r in range(nproc)]
    procs = [_FORKSERVER.Process(target=_rank_main, args=(r, nproc, port, argv, logs[r],
                                                          dict(env or {})))
             for r in range(nproc)]
    for p in procs:
        p.start()
    deadline, failed_at = time.monotonic() + timeout, None
    while any(p.exitcode is None for p in procs) and time.monotonic() < deadline:
        if failed_at is None and any(p.exitcode not in (None, 0) for p in procs):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > 5:
            break                            # torchrun's behaviour: stop the rest
        time.sleep(0.05)
    for p in procs:
        if p.exitcode is None:
            p.kill()
        p.join()
    output = "".join(f"[log rank{r}]\n" + _read(logs[r]) for r in range(nproc))
    codes = [p.exitcode for p in procs]
    rc = next((c for c in codes if c != 0), 0)
    return subprocess.CompletedProcess(argv, rc, stdout=output, stderr=output)


def run_plan(plan: Plan, tmp_path, steps=5, extra=(), timeout=120, env=None, fast=True):
    """Save ``plan``, run it for ``steps`` steps; returns (process, Metrics or None, params dir).
    ``fast`` launches with ``fast_launch``, else with torchrun."""
    from planner.specs import Metrics
    os.makedirs(tmp_path, exist_ok=True)
    plan_path, metrics_path = tmp_path / "plan.json", tmp_path / "metrics.json"
    params_dir = tmp_path / "params"
    plan.save(str(plan_path))
    argv = ["--plan", str(plan_path), "--steps", str(steps), "--warmup", "1", "--metrics",
            str(metrics_path), "--save-params", str(params_dir), "--quiet", *extra]
    if fast:
        proc = fast_launch(plan.world_size, argv, timeout=timeout, env=env,
                           log_dir=str(tmp_path / "logs"))
    else:
        proc = torchrun(plan.world_size, argv, timeout=timeout, env=env)
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
                collectives=None, fast=True):
    """Run ``plan`` and assert its losses and final parameters equal the reference's, and,
    given ``collectives``, that rank 0's last step issued exactly those collectives."""
    from executor.reference import train_reference
    proc, metrics, params_dir = run_plan(plan, tmp_path, steps=steps,
                                         extra=[*extra, "--count-collectives"], fast=fast)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the tests made these plans: their custom callables (if any) are trusted
    ref_losses, ref_state = train_reference(plan, steps,
                                            trusted_callable=plan.model.callable_path)
    assert_matches(metrics.losses, load_params(params_dir), ref_losses, ref_state,
                   rtol if rtol is not None else RTOL[plan.dtype],
                   atol if atol is not None else ATOL[plan.dtype])
    if collectives is not None:
        assert metrics.collectives == collectives, metrics.collectives
    return metrics
