"""The executor's run: build, parallelize, train ``steps`` steps, measure, report.

Step time is the wall time of ``step.train_step`` (forward, backward, gradient combination,
optimizer update; CUDA synchronised), not of producing the batch; each step's time is the
maximum over ranks, since the slowest rank sets the pace. Losses and times are gathered once at
the end so that measuring adds no collective to the steps themselves.
"""
from __future__ import annotations

import datetime
import statistics
import time

import torch
import torch.distributed as dist

from executor import runtime
from executor.data import dp_rows, make_data
from executor.memory import PeakMemory
from executor.parallel import parallelize
from executor.step import train_step
from planner import grid
from planner.errors import PlannerError
from planner.specs import Metrics


def check_plan(plan, path: str, world_size: int) -> None:
    """Refuse a plan this launch cannot run as planned (before any process group exists)."""
    try:
        plan.layout.check_world(world_size, "WORLD_SIZE")
    except PlannerError as err:
        raise PlannerError(f"{path}: field 'layout': {err} (launch with --nproc-per-node x "
                           f"--nnodes = {plan.layout.world_size})") from None


def run(plan, path: str, args) -> Metrics | None:
    """Train ``plan``; returns the Metrics on rank 0 (None elsewhere)."""
    check_plan(plan, path, runtime.env_world_size())
    if args.steps <= args.warmup:
        raise PlannerError(f"--steps {args.steps} must exceed --warmup {args.warmup} "
                           "(warm-up steps are not timed)")
    device = runtime.pick_device(args.device)
    dtype = runtime.param_dtype(plan.dtype, device, path)
    rt = runtime.init(device, args.timeout_s)
    mesh = runtime.build_mesh(plan.layout, device)
    layout = plan.layout
    memory = PeakMemory(device)
    memory.start()

    from planner.models.build import build_model
    model = build_model(plan.model, seed=plan.seed, dtype=dtype).to(device)
    data = make_data(model, plan, args.data)
    par = parallelize(model, layout, mesh, device, path)
    optimizer = par.dp.build_optimizer(plan.optimizer, plan.learning_rate)
    dp_i = grid.coords_of(rt.rank, layout.pp, layout.tp)[0]
    rows = dp_rows(dp_i, layout.dp, plan.global_batch_size)

    loss_sums, times = [], []
    for step in range(args.steps):
        inputs, targets = data.rows(step, *rows)
        inputs = inputs.to(device)
        targets = targets.to(device) if targets is not None else None
        start = time.perf_counter()
        loss_sums.append(train_step(par, optimizer, inputs, targets, layout, model.loss,
                                    device, runtime.autocast_dtype(plan.dtype)))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        if rt.rank == 0 and args.verbose:
            print(f"step {step + 1}/{args.steps} time {times[-1]:.4f} s", flush=True)

    if args.save_params:
        from executor.params import save_params
        save_params(par.named_parts, args.save_params, rt.rank)
    return _metrics(plan, args, rt, loss_sums, times, memory)


def _metrics(plan, args, rt, loss_sums, times, memory) -> Metrics | None:
    layout, device = plan.layout, rt.device
    losses = torch.stack(loss_sums)
    dist.all_reduce(losses)                       # each micro-batch counted on one rank
    losses = (losses / (layout.dp * layout.num_microbatches)).tolist()
    step_times = torch.tensor(times, dtype=torch.float64, device=device)
    dist.all_reduce(step_times, op=dist.ReduceOp.MAX)
    peaks = [torch.zeros((), dtype=torch.int64, device=device) for _ in range(rt.world_size)]
    dist.all_gather(peaks, torch.tensor(memory.peak_bytes(), dtype=torch.int64, device=device))
    if rt.rank != 0:
        return None
    measured = step_times.tolist()[args.warmup:]
    step_time = statistics.median(measured)
    tokens = plan.global_batch_size * plan.model.seq_len
    return Metrics(
        plan_fingerprint=plan.fingerprint(), model_fingerprint=plan.model_fingerprint,
        world_size=rt.world_size, layout=layout, backend=rt.backend,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        steps=args.steps, warmup_steps=args.warmup, losses=tuple(losses),
        step_times_s=tuple(measured), step_time_s=step_time,
        peak_memory_bytes=tuple(int(p) for p in peaks), memory_measure=memory.measure,
        tokens_per_s=tokens / step_time, torch_version=torch.__version__,
        created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
