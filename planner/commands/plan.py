"""`planner plan`: search dp/tp/pp layouts for a model on a cluster and write the best as a plan.

Every candidate is costed by the event simulation of one step (``planner.sim``) inside a
best-first search with lower bounds (``planner.search``); any of --dp --tp --pp
--microbatch-size --schedule --virtual-stages --zero --recompute --sequence-parallel fixes that
dimension. The plan file holds the winner with its full prediction (timeline included), the
layouts the search looked at closely, and a paragraph on why the winner beats the runner-up.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

from planner import inputs as plan_inputs
from planner.explain import format_duration
from planner.errors import PlannerError
from planner.specs import COMPRESSION, DP_COMM, RECOMPUTE, SCHEDULES, Plan


def add_layout_arguments(parser, required: bool = False) -> None:
    """The layout flags shared by `planner plan` (fix a dimension) and `planner simulate`."""
    fix = "" if required else " (fixes it; default: searched)"
    parser.add_argument("--dp", type=int, help="data-parallel size" + fix)
    parser.add_argument("--tp", type=int, help="tensor-parallel size" + fix)
    parser.add_argument("--pp", type=int, help="pipeline stages" + fix)
    parser.add_argument("--microbatch-size", type=int, help="sequences per micro-batch" + fix)
    parser.add_argument("--schedule", choices=SCHEDULES, help="pipeline schedule" + fix)
    parser.add_argument("--virtual-stages", type=int,
                        help="model chunks per pipeline rank (interleaved-1f1b; zbv: 2)" + fix)
    parser.add_argument("--zero", type=int, choices=(0, 1, 2, 3), help="ZeRO stage" + fix)
    parser.add_argument("--recompute", choices=RECOMPUTE, help="activation recomputation" + fix)
    parser.add_argument("--sequence-parallel", action=argparse.BooleanOptionalAction,
                        default=None, help="Megatron sequence parallelism (needs tp > 1)" + fix)
    parser.add_argument("--dp-comm", choices=DP_COMM, default="all_reduce",
                        help="gradient exchange between replicas (default all_reduce)")
    parser.add_argument("--ps-shards", type=int, default=1,
                        help="parameter-server shards with --dp-comm parameter_server")
    parser.add_argument("--compression", choices=COMPRESSION, default="none",
                        help="gradient compression (a DDP hook; ZeRO 0/1)")
    parser.add_argument("--powersgd-rank", type=int, default=2,
                        help="PowerSGD rank with --compression powersgd")


def add_arguments(parser) -> None:
    plan_inputs.add_arguments(parser)
    add_layout_arguments(parser)
    parser.add_argument("--top-k", type=int, default=5, help="layouts to rank (default 5)")
    parser.add_argument("--tp-across-nodes", action="store_true",
                        help="let the search try tp larger than one node's devices")
    parser.add_argument("--max-virtual-stages", type=int, default=8,
                        help="largest v the search tries for interleaved-1f1b (default 8)")
    parser.add_argument("--out", help="plan file to write (default plans/<model>-<cluster>-"
                                      "g<N>-b<B>.json)")
    parser.add_argument("--format", choices=("text", "json"), default="text")


def run_spec(inp):
    """The simulator's view of the inputs: with a profile, its measured optimizer step and its
    achieved FLOP rate (FLOPs over time of the profiled blocks) for compute we only know in
    FLOPs (compression); without, the device's peak times its efficiency."""
    from planner.sim import RunSpec
    rate, opt = 0.0, 0.0
    if inp.profile is not None:
        flops = sum(b.forward_flops for b in inp.profile.blocks)
        secs = sum(b.forward_time_s for b in inp.profile.blocks)
        rate = flops / secs if secs > 0 else 0.0
        opt = inp.profile.optimizer_step_time_s
    return RunSpec(inp.model, inp.cluster, inp.dtype, inp.optimizer,
                   compute_source="profile" if inp.profile else "analytic",
                   optimizer_step_s=opt, flop_rate=rate)


def space_from_args(args):
    from planner.search import Space
    return Space(dp=args.dp, tp=args.tp, pp=args.pp, microbatch_size=args.microbatch_size,
                 schedule=args.schedule, virtual_stages=args.virtual_stages, zero=args.zero,
                 recompute=args.recompute, sequence_parallel=args.sequence_parallel,
                 dp_comm=args.dp_comm, ps_shards=args.ps_shards, compression=args.compression,
                 powersgd_rank=args.powersgd_rank if args.compression == "powersgd" else 0,
                 tp_across_nodes=getattr(args, "tp_across_nodes", False),
                 max_virtual_stages=getattr(args, "max_virtual_stages", 8))


def default_out(inp) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-._" else "_" for ch in inp.model.name)
    return os.path.join("plans", f"{safe}-{inp.cluster.name}-g{inp.num_devices}-"
                                 f"b{inp.global_batch_size}.json")


def make_plan(inp, layout, prediction, candidates=(), explanation: str = "") -> Plan:
    return Plan(model=inp.model, model_fingerprint=inp.model.fingerprint(), cluster=inp.cluster,
                world_size=inp.num_devices, global_batch_size=inp.global_batch_size,
                dtype=inp.dtype, optimizer=inp.optimizer, learning_rate=inp.learning_rate,
                layout=layout, prediction=prediction, profile_path=inp.profile_path,
                seed=inp.seed, candidates=tuple(candidates), explanation=explanation,
                created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"))


def summary(plan: Plan, path: str) -> dict:
    """What `--format json` prints for one plan (plan and simulate alike)."""
    p = plan.prediction
    return {"plan_path": path, "step_time_s": p.step_time_s,
            "tflops_per_device": p.tflops_per_device, "mfu": p.mfu,
            "peak_memory_bytes": p.peak_memory_bytes,
            "memory_per_rank_bytes": [r.total_bytes for r in p.memory],
            "memory": [r.to_dict() for r in p.memory], "fits": p.fits,
            "device_memory_bytes": p.device_memory_bytes,
            "bubble_fraction": p.bubble_fraction, "compute_source": p.compute_source,
            "layout": plan.layout.to_dict(), "breakdown_s": p.breakdown_s,
            "collectives": [c.to_dict() for c in p.collectives]}


def print_text(plan: Plan, path: str, out=sys.stdout) -> None:
    p = plan.prediction
    gib = 2**30
    print(f"model {plan.model.name} on {plan.cluster.name} x{plan.world_size}, global batch "
          f"{plan.global_batch_size}, {plan.dtype}, {plan.optimizer} "
          f"(compute from {p.compute_source})", file=out)
    print(f"layout      {plan.layout.describe()}", file=out)
    print(f"step time   {format_duration(p.step_time_s)}   ("
          + ", ".join(f"{k} {format_duration(v)}" for k, v in p.breakdown_s.items() if v >= 5e-5) + ")",
          file=out)
    print(f"memory      {p.peak_memory_bytes / gib:.2f} GiB peak per rank of "
          f"{p.device_memory_bytes / gib:.1f} GiB: {'fits' if p.fits else 'DOES NOT FIT'}",
          file=out)
    print(f"throughput  {p.tflops_per_device:.3f} TFLOP/s per device"
          + (f", MFU {p.mfu:.1%}" if p.mfu else " (no peak known for this device: no MFU)"),
          file=out)
    print(f"plan        {path}", file=out)


def _print_search(res, elapsed_s: float, out=sys.stdout) -> None:
    print(f"search      {res.enumerated} layouts enumerated ({res.refused} more left out: the "
          f"executor cannot run them), {res.simulated} simulated, "
          f"{res.memory_pruned} over memory by bound, {res.not_fitting} over memory exactly, "
          f"{res.dominated} dominated, {res.bounded_out} cut by the step-time bound "
          f"({elapsed_s:.2f} s)", file=out)
    for i, (layout, pred) in enumerate(res.ranked, 1):
        mfu = f"MFU {pred.mfu:6.1%}" if pred.mfu else "MFU      -"
        print(f"  #{i} {format_duration(pred.step_time_s):>10}  {mfu}  "
              f"{pred.peak_memory_bytes / 2**20:9.0f} MiB  {layout.describe()}", file=out)


def run(args) -> int:
    import time

    from planner import search
    from planner.explain import explain

    inp = plan_inputs.resolve(args)
    if args.top_k < 1:
        raise PlannerError(f"--top-k must be >= 1, got {args.top_k}")
    space = space_from_args(args)
    search.check_space(space, inp.num_devices, inp.global_batch_size)
    rs = run_spec(inp)
    t0 = time.perf_counter()
    res = search.search(rs, inp.block_costs, inp.num_devices, inp.global_batch_size, space,
                        top_k=args.top_k)
    elapsed = time.perf_counter() - t0
    if not res.ranked:
        raise PlannerError(_nothing_fits(res, inp))
    best_layout, _ = res.ranked[0]
    layout, prediction = search.evaluate_one(rs, inp.block_costs, best_layout)
    text = explain(res.ranked)
    plan = make_plan(inp, layout, prediction, res.candidates, text)
    path = args.out or default_out(inp)
    plan.save(path)
    if args.format == "json":
        out = summary(plan, path)
        out["explanation"] = text
        out["search"] = {"enumerated": res.enumerated, "refused": res.refused,
                         "simulated": res.simulated,
                         "memory_pruned": res.memory_pruned, "not_fitting": res.not_fitting,
                         "dominated": res.dominated, "bounded_out": res.bounded_out,
                         "wall_s": elapsed}
        out["ranked"] = [{"layout": lay.to_dict(), "step_time_s": pred.step_time_s,
                          "mfu": pred.mfu, "peak_memory_bytes": pred.peak_memory_bytes,
                          "breakdown_s": pred.breakdown_s} for lay, pred in res.ranked]
        json.dump(out, sys.stdout, indent=2)
        print()
    else:
        print_text(plan, path)
        _print_search(res, elapsed)
        print(f"why         {text}")
    return 0


def _nothing_fits(res, inp) -> str:
    gib = 2**30
    if res.enumerated == 0:
        return (f"no layout of {inp.num_devices} devices for global batch "
                f"{inp.global_batch_size} with the fixed dimensions given: dp must divide the "
                f"batch, tp the heads/hidden/FFN sizes, and combinations the executor refuses "
                f"(zero 1 or compression with tp > 1, zero 2/3 under zbv, compression with zero "
                f"2/3) are left out")
    tried = [c for c in res.candidates if not c.fits]
    smallest = min((c.peak_memory_bytes for c in tried), default=0)
    more = f"; the smallest needs {smallest / gib:.2f} GiB" if smallest else ""
    return (f"no layout fits in {inp.cluster.device.memory_bytes / gib:.2f} GiB per device: "
            f"{res.enumerated} enumerated, {res.memory_pruned} over memory by their model "
            f"states alone{more}")
