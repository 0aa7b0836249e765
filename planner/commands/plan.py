"""`planner plan`: search dp/tp/pp layouts for a model on a cluster and write the best as a plan.

Every candidate is costed by the event simulation of one step (``planner.sim``) inside a
best-first search with lower bounds (``planner.search``); any of --dp --tp --pp
--microbatch-size --schedule --virtual-stages --zero --recompute --sequence-parallel fixes that
dimension. The plan file holds the winner with its full prediction (timeline included), the
layouts the search looked at closely, and a paragraph on why the winner beats the runner-up.

A mixed cluster (node groups of several device kinds) is searched by
``planner.search.mixed``: each kind alone, all nodes with the work split by speed, and the even
split; the output says how the work was split (node ranks, layers per stage, micro-batches per
replica), compares the options in throughput and tokens per device-hour, and says what the
slower devices bought. The plan's cluster is the nodes it uses, in the node-rank order it needs.
"""
from __future__ import annotations

import json
import sys

from planner import inputs as plan_inputs
from planner.errors import PlannerError
from planner.explain import format_duration
from planner.planfile import default_out, make_plan, print_text, run_spec, summary


def add_arguments(parser) -> None:
    plan_inputs.add_arguments(parser)
    plan_inputs.add_layout_arguments(parser)
    parser.add_argument("--top-k", type=int, default=5, help="layouts to rank (default 5)")
    parser.add_argument("--tp-across-nodes", action="store_true",
                        help="let the search try tp larger than one node's devices")
    parser.add_argument("--max-virtual-stages", type=int, default=8,
                        help="largest v the search tries for interleaved-1f1b (default 8)")
    parser.add_argument("--out", help="plan file to write (default plans/<model>-<cluster>-"
                                      "g<N>-b<B>.json)")
    parser.add_argument("--format", choices=("text", "json"), default="text")


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
    space = plan_inputs.space_from_args(args)
    if inp.cluster.mixed:
        from planner.commands.plan_mixed import run_mixed
        return run_mixed(args, inp, space)
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
