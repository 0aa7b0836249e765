"""`planner plan`: search dp/tp/pp layouts for a model on a cluster and write the best as a plan.

Every candidate is costed by the event simulation of one step (``planner.sim``) inside a
best-first search with lower bounds (``planner.search``); any of --dp --tp --pp
--microbatch-size --schedule --virtual-stages --zero --recompute --sequence-parallel fixes that
dimension. The plan file holds the winner with its full prediction (timeline included), the
layouts the search looked at closely, the search's counts, and a paragraph on why the winner
beats the runner-up. Layouts whose predicted step times differ by less than the prediction's
uncertainty band (``planner.noise.prediction_band``) are marked as ties.
"""
from __future__ import annotations

import json
import sys

from planner import inputs as plan_inputs
from planner.errors import PlannerError
from planner.explain import format_duration
from planner.outputs import check_writable
from planner.planfile import default_out, make_plan, print_text, run_spec, summary

# The search's counters, in the order the CLI prints them and the plan file records them.
COUNTS = ("enumerated", "refused", "simulated", "memory_pruned", "not_fitting", "dominated",
          "bounded_out")


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


def search_counts(res) -> dict[str, int]:
    return {name: getattr(res, name) for name in COUNTS}


def _print_search(res, elapsed_s: float, band: float, out=None) -> None:
    out = out or sys.stdout   # looked up per call: stdout may be replaced
    print(f"search      {res.enumerated} layouts enumerated ({res.refused} more left out: the "
          f"executor cannot run them), {res.simulated} simulated, "
          f"{res.memory_pruned} over memory by bound, {res.not_fitting} over memory exactly, "
          f"{res.dominated} dominated, {res.bounded_out} cut by the step-time bound "
          f"({elapsed_s:.2f} s)", file=out)
    from planner.noise import ties
    tied = ties([pred.step_time_s for _, pred in res.ranked], band)
    for i, ((layout, pred), tie) in enumerate(zip(res.ranked, tied), 1):
        mfu = f"MFU {pred.mfu:6.1%}" if pred.mfu else "MFU      -"
        mark = "  tie with #1" if tie else ""
        print(f"  #{i} {format_duration(pred.step_time_s):>10}  {mfu}  "
              f"{pred.peak_memory_bytes / 2**20:9.0f} MiB  {layout.describe()}{mark}", file=out)


def run(args) -> int:
    import time

    from planner import search
    from planner.explain import explain

    inp = plan_inputs.resolve(args)
    if args.top_k < 1:
        raise PlannerError(f"--top-k must be >= 1, got {args.top_k}")
    path = args.out or default_out(inp)
    check_writable("--out", path)           # before the search, not after it
    space = plan_inputs.space_from_args(args)
    search.check_space(space, inp.num_devices, inp.global_batch_size)
    rs = run_spec(inp)
    t0 = time.perf_counter()
    res = search.search(rs, inp.block_costs, inp.num_devices, inp.global_batch_size, space,
                        top_k=args.top_k)
    elapsed = time.perf_counter() - t0
    if not res.ranked:
        raise PlannerError(_nothing_fits(res, inp, space))
    best_layout, _ = res.ranked[0]
    layout, prediction = search.evaluate_one(rs, inp.block_costs, best_layout)
    band, why_band = inp.band
    text = explain(res.ranked, band=band, band_source=why_band)
    plan = make_plan(inp, layout, prediction, res.candidates, text, search_counts(res))
    plan.save(path)
    if args.format == "json":
        from planner.noise import ties
        out = summary(plan, path)
        out["explanation"] = text
        out["search"] = {**search_counts(res), "wall_s": elapsed}
        out["uncertainty"] = {"band": band, "source": why_band}
        tied = ties([pred.step_time_s for _, pred in res.ranked], band)
        out["ranked"] = [{"layout": lay.to_dict(), "step_time_s": pred.step_time_s,
                          "mfu": pred.mfu, "peak_memory_bytes": pred.peak_memory_bytes,
                          "fits": pred.fits, "tie_with_best": tie,
                          "breakdown_s": pred.breakdown_s}
                         for (lay, pred), tie in zip(res.ranked, tied)]
        json.dump(out, sys.stdout, indent=2)
        print()
    else:
        print_text(plan, path)
        _print_search(res, elapsed, band)
        print(f"why         {text}")
    return 0


def _nothing_fits(res, inp, space) -> str:
    gib = 2**30
    if res.enumerated == 0:
        from planner.diagnose import why_nothing
        return why_nothing(inp.model, space, inp.num_devices, inp.global_batch_size,
                           inp.cluster.devices_per_node)
    tried = [c for c in res.candidates if not c.fits]
    smallest = min((c.peak_memory_bytes for c in tried), default=0)
    more = f"; the smallest of those sized exactly needs {smallest / gib:.2f} GiB" \
        if smallest else ""
    dev = inp.cluster.device
    reserved = (f" ({dev.usable_memory_bytes / gib:.2f} GiB usable: "
                f"{dev.reserved_memory_bytes / gib:.2f} GiB reserved for the runtime)"
                if dev.reserved_memory_bytes else "")
    return (f"no layout fits in {dev.memory_bytes / gib:.2f} GiB per device{reserved}: of "
            f"{res.enumerated} "
            f"enumerated, {res.memory_pruned} need more by their model states alone and "
            f"{res.not_fitting} more once activations are counted{more}")
