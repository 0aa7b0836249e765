"""`planner plan`: choose a layout for a model on a cluster and write a plan file.

Data parallel for now: every device holds a replica, the global batch is split evenly, gradients
are all-reduced in DDP buckets overlapped with the backward pass.
"""
from __future__ import annotations

import datetime
import json
import os
import sys

from planner import inputs as plan_inputs
from planner import topology
from planner.cost import comm, dp as dp_cost
from planner.cost.memory import ELEMENT_BYTES, bytes_per_param, zero_sharded
from planner.errors import PlannerError
from planner.specs import (CollectiveCount, Layout, Plan, Prediction, RankMemory,
                           TimelineEvent)


def add_arguments(parser) -> None:
    plan_inputs.add_arguments(parser)
    parser.add_argument("--microbatch-size", type=int,
                        help="sequences per forward (default: the whole per-replica batch)")
    parser.add_argument("--out", help="plan file to write (default plans/<model>-<cluster>-"
                                      "g<N>-b<B>.json)")
    parser.add_argument("--format", choices=("text", "json"), default="text")


def dp_layout(n: int, global_batch: int, microbatch_size: int | None) -> Layout:
    if global_batch % n:
        raise PlannerError(f"--global-batch {global_batch} does not divide over dp({n}) ranks "
                           f"({global_batch} % {n} = {global_batch % n})")
    per_rank = global_batch // n
    mb = microbatch_size or per_rank
    if mb < 1 or per_rank % mb:
        raise PlannerError(f"--microbatch-size {mb} does not divide the per-rank batch "
                           f"{global_batch} / dp({n}) = {per_rank}")
    return Layout(dp=n, microbatch_size=mb, num_microbatches=per_rank // mb)


def predict_dp(inp: plan_inputs.PlanInputs, layout: Layout) -> Prediction:
    """Step time and memory of a pure data-parallel layout (see planner.cost.dp)."""
    costs = inp.block_costs(layout.microbatch_size)
    m, n = layout.num_microbatches, layout.dp
    fwd = sum(c.forward_s for c in costs)
    bwd = sum(c.backward_s for c in costs)
    pbytes, gbytes, obytes = bytes_per_param(inp.dtype, inp.optimizer)
    pbytes, gbytes, obytes = zero_sharded(pbytes, gbytes, obytes, layout.zero, n)
    link = topology.group_link(inp.cluster, "dp", n, 1, 1)
    grad_elem = ELEMENT_BYTES[inp.dtype]

    def reduce_time(nbytes):
        return comm.all_reduce_ring(nbytes, n, link.latency_s, 1 / link.bandwidth_bytes_per_s)

    rev = list(reversed(costs))
    bwd_end, comm_end, buckets = dp_cost.overlapped_reduction(
        [c.backward_s for c in rev], [c.param_count * grad_elem for c in rev], reduce_time)
    # Gradient accumulation: only the last micro-batch's backward overlaps the reduction.
    optimizer_s = inp.profile.optimizer_step_time_s if inp.profile else 0.0
    step = m * fwd + (m - 1) * bwd + max(bwd_end, comm_end) + optimizer_s
    exposed = max(0.0, comm_end - bwd_end) if n > 1 else 0.0
    comm_total = sum(reduce_time(b) for b, _ in dp_cost.ddp_buckets(
        [c.param_count * grad_elem for c in rev])) if n > 1 else 0.0
    params = sum(c.param_count for c in costs)
    memory = RankMemory(rank=0, stage=0, parameters_bytes=int(params * pbytes),
                        gradients_bytes=int(params * gbytes), optimizer_bytes=int(params * obytes),
                        activations_bytes=sum(c.saved_activation_bytes for c in costs),
                        # DDP keeps its buckets as a second copy of the gradients.
                        buffers_bytes=int(params * grad_elem) if n > 1 else 0)
    capacity = inp.cluster.device.memory_bytes
    flops = 3 * sum(c.forward_flops for c in costs) * m  # fwd + bwd (2x fwd), per replica
    tflops = flops / step / 1e12 if step else 0.0
    peak = inp.cluster.device.peak_flops_per_s.get(_peak_key(inp.dtype), 0.0)
    timeline = _timeline(costs, m, n, reduce_time, optimizer_s, grad_elem)
    return Prediction(
        step_time_s=step,
        breakdown_s={"compute": m * (fwd + bwd), "dp_comm_exposed": exposed,
                     "dp_comm_hidden": max(0.0, comm_total - exposed), "optimizer": optimizer_s,
                     "bubble": 0.0},
        memory=tuple(RankMemory(r, 0, memory.parameters_bytes, memory.gradients_bytes,
                                memory.optimizer_bytes, memory.activations_bytes,
                                memory.buffers_bytes) for r in range(n)),
        peak_memory_bytes=memory.total_bytes, device_memory_bytes=capacity,
        fits=memory.total_bytes <= capacity, tflops_per_device=tflops,
        mfu=tflops * 1e12 / peak if peak else 0.0, bubble_fraction=0.0,
        collectives=(CollectiveCount("backward", "all_reduce", "dp", n, buckets,
                                     int(params * grad_elem / max(buckets, 1))),) if n > 1 else (),
        compute_source="profile" if inp.profile else "analytic", timeline=timeline)


def _peak_key(dtype: str) -> str:
    return {"bf16-mixed": "bfloat16", "fp16-mixed": "float16"}.get(dtype, dtype)


def _timeline(costs, m, n, reduce_time, optimizer_s, grad_elem):
    """Rank 0's step as events (all DP ranks are alike)."""
    events, t = [], 0.0
    rev = list(reversed(costs))
    for mb in range(m):
        for c in costs:
            events.append(TimelineEvent(0, "compute", f"F{mb} {c.name}", t, t + c.forward_s))
            t += c.forward_s
        ready = []
        for c in rev:
            events.append(TimelineEvent(0, "compute", f"B{mb} {c.name}", t, t + c.backward_s))
            t += c.backward_s
            ready.append(t)
    end = t
    if n > 1:
        grad_bytes = [c.param_count * grad_elem for c in rev]
        free = 0.0
        for i, (nbytes, blk) in enumerate(dp_cost.ddp_buckets(grad_bytes)):
            start = max(ready[blk], free)
            free = start + reduce_time(nbytes)
            events.append(TimelineEvent(0, "comm", f"all_reduce bucket{i}", start, free))
        end = max(end, free)
    events.append(TimelineEvent(0, "compute", "optimizer", end, end + optimizer_s))
    return tuple(events)


def default_out(inp) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-._" else "_" for ch in inp.model.name)
    return os.path.join("plans", f"{safe}-{inp.cluster.name}-g{inp.num_devices}-"
                                 f"b{inp.global_batch_size}.json")


def make_plan(inp, layout, prediction) -> Plan:
    return Plan(model=inp.model, model_fingerprint=inp.model.fingerprint(), cluster=inp.cluster,
                world_size=inp.num_devices, global_batch_size=inp.global_batch_size,
                dtype=inp.dtype, optimizer=inp.optimizer, learning_rate=inp.learning_rate,
                layout=layout, prediction=prediction, profile_path=inp.profile_path,
                seed=inp.seed,
                created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"))


def summary(plan: Plan, path: str) -> dict:
    p = plan.prediction
    return {"plan_path": path, "step_time_s": p.step_time_s,
            "tflops_per_device": p.tflops_per_device, "mfu": p.mfu,
            "peak_memory_bytes": p.peak_memory_bytes,
            "memory_per_rank_bytes": [r.total_bytes for r in p.memory], "fits": p.fits,
            "layout": plan.layout.to_dict(), "breakdown_s": p.breakdown_s,
            "collectives": [c.to_dict() for c in p.collectives]}


def print_text(plan: Plan, path: str, out=sys.stdout) -> None:
    p = plan.prediction
    gib = 2**30
    print(f"model {plan.model.name} on {plan.cluster.name} x{plan.world_size}, global batch "
          f"{plan.global_batch_size}, {plan.dtype}, {plan.optimizer} "
          f"(compute from {p.compute_source})", file=out)
    print(f"layout      {plan.layout.describe()}", file=out)
    print(f"step time   {p.step_time_s * 1e3:.1f} ms   ("
          + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in p.breakdown_s.items() if v) + ")",
          file=out)
    print(f"memory      {p.peak_memory_bytes / gib:.2f} GiB peak per rank of "
          f"{p.device_memory_bytes / gib:.1f} GiB: {'fits' if p.fits else 'DOES NOT FIT'}",
          file=out)
    print(f"throughput  {p.tflops_per_device:.3f} TFLOP/s per device"
          + (f", MFU {p.mfu:.1%}" if p.mfu else " (no peak known for this device: no MFU)"),
          file=out)
    print(f"plan        {path}", file=out)


def run(args) -> int:
    inp = plan_inputs.resolve(args)
    layout = dp_layout(inp.num_devices, inp.global_batch_size, args.microbatch_size)
    prediction = predict_dp(inp, layout)
    if not prediction.fits:
        gib = 2**30
        raise PlannerError(f"no layout fits: data parallel needs {prediction.peak_memory_bytes / gib:.2f}"
                           f" GiB per rank, the device has {prediction.device_memory_bytes / gib:.2f}"
                           " GiB")
    plan = make_plan(inp, layout, prediction)
    path = args.out or default_out(inp)
    plan.save(path)
    if args.format == "json":
        json.dump(summary(plan, path), sys.stdout, indent=2)
        print()
    else:
        print_text(plan, path)
    return 0
