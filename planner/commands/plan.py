"""`planner plan`: search dp/tp/pp layouts for a model on a cluster and write the best as a plan.

Every candidate is costed by the event simulation of one step (``planner.sim``) inside a
best-first search with lower bounds (``planner.search``); any of --dp --tp --pp
--microbatch-size --schedule --virtual-stages --zero --recompute --sequence-parallel fixes that
dimension. The plan file holds the winner with its full prediction (timeline included), the
layouts the search looked at closely, the search's counts, and a paragraph on why the winner
beats the runner-up. Layouts whose predicted step times differ by less than the prediction's
uncertainty band (``planner.noise.prediction_band``) are marked as ties.

``--elastic MIN:MAX`` plans every world size from MIN to MAX devices that the cluster can form
(at most one node, or whole nodes) and writes them as one elastic plan set
(``planner.specs.elastic``) for a torchrun elastic job: one search per world size, all with the
same global batch (a smaller world runs more micro-batches per replica), each restricted to
layouts the executor can checkpoint, since the job resumes from a checkpoint whenever its
membership changes.

A mixed cluster (node groups of several device kinds) is searched by
``planner.search.mixed``: each kind alone, all nodes with the work split by speed, and the even
split; the output says how the work was split (node ranks, layers per stage, micro-batches per
replica), compares the options in throughput and tokens per device-hour, and says what the
slower devices bought. The plan's cluster is the nodes it uses, in the node-rank order it needs.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace

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
    parser.add_argument("--elastic", metavar="MIN:MAX",
                        help="plan every world size from MIN to MAX devices (whole nodes) into "
                             "one elastic plan set for torchrun --nnodes MIN:MAX")


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


def best_plan(inp, space, top_k: int, where: str = ""):
    """(plan of the best fitting layout, search result, search seconds) for ``inp``."""
    from planner import search
    from planner.explain import explain

    try:
        search.check_space(space, inp.num_devices, inp.global_batch_size)
    except PlannerError as err:
        raise PlannerError(where + str(err)) from None
    rs = run_spec(inp)
    t0 = time.perf_counter()
    res = search.search(rs, inp.block_costs, inp.num_devices, inp.global_batch_size, space,
                        top_k=top_k)
    elapsed = time.perf_counter() - t0
    if not res.ranked:
        raise PlannerError(where + _nothing_fits(res, inp, space))
    best_layout, _ = res.ranked[0]
    layout, prediction = search.evaluate_one(rs, inp.block_costs, best_layout)
    band, why_band = inp.band
    text = explain(res.ranked, band=band, band_source=why_band)
    plan = make_plan(inp, layout, prediction, res.candidates, text, search_counts(res))
    return plan, res, elapsed


def run(args) -> int:
    if args.top_k < 1:
        raise PlannerError(f"--top-k must be >= 1, got {args.top_k}")
    if args.elastic:
        return run_elastic(args)
    inp = plan_inputs.resolve(args)
    space = plan_inputs.space_from_args(args)
    path = args.out or default_out(inp)
    check_writable("--out", path)           # before the search, not after it
    if inp.cluster.mixed:
        from planner.commands.plan_mixed import run_mixed
        return run_mixed(args, inp, space, path)
    plan, res, elapsed = best_plan(inp, space, args.top_k)
    text = plan.explanation
    band, why_band = inp.band
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


def parse_elastic(text: str) -> tuple[int, int]:
    """``MIN:MAX`` world sizes, 1 <= MIN <= MAX."""
    parts = text.split(":")
    try:
        lo, hi = (int(parts[0]), int(parts[1])) if len(parts) == 2 else (0, -1)
    except ValueError:
        lo, hi = 0, -1
    if not 1 <= lo <= hi:
        raise PlannerError(f"--elastic {text}: expected MIN:MAX world sizes (devices) with "
                           "1 <= MIN <= MAX, e.g. --elastic 8:32")
    return lo, hi


def _check_elastic_flags(args) -> tuple[int, int]:
    lo, hi = parse_elastic(args.elastic)
    if args.gpus is not None:
        raise PlannerError("--elastic MIN:MAX gives the world sizes; drop --gpus")
    if args.dp is not None:
        raise PlannerError("--dp cannot be fixed with --elastic: the data-parallel degree is "
                           "what changes with the world size (fix --tp or --pp instead)")
    if args.compression == "powersgd":
        from planner import rules
        from planner.specs import Layout
        probe = Layout.make(dp=2, compression="powersgd", powersgd_rank=1)
        raise PlannerError(f"--compression powersgd with --elastic: "
                           f"{rules.resume_inexact(probe)}")
    return lo, hi


def elastic_sizes(cluster, lo: int, hi: int) -> tuple[list[int], list[int]]:
    """(world sizes the cluster can form in lo..hi, the others): ``Cluster.with_size`` decides."""
    sizes, skipped = [], []
    for n in range(lo, hi + 1):
        try:
            cluster.with_size(n)
            sizes.append(n)
        except PlannerError:
            skipped.append(n)
    return sizes, skipped


def run_elastic(args) -> int:
    from planner.specs import ElasticPlan

    from planner.clusters import resolve_cluster

    lo, hi = _check_elastic_flags(args)
    cluster = resolve_cluster(args.cluster)
    if cluster.mixed:
        raise PlannerError(f"--elastic {args.elastic}: cluster {args.cluster!r} mixes device "
                           f"kinds; elastic plan sets are planned for one kind (pick a "
                           f"single-kind cluster)")
    sizes, skipped = elastic_sizes(cluster, lo, hi)
    if not sizes:
        raise PlannerError(f"--elastic {args.elastic}: no world size in that range is one node "
                           f"or whole nodes of {cluster.devices_per_node} devices")
    args.gpus = sizes[-1]
    inp = plan_inputs.resolve(args)
    space = replace(plan_inputs.space_from_args(args), checkpointed=True)
    path = args.out or default_out(inp, devices=f"{lo}-{hi}", suffix="-elastic")
    check_writable("--out", path)           # before the searches, not after them
    plans, elapsed, simulated = [], 0.0, 0
    for n in sizes:
        inp_n = replace(inp, cluster=inp.cluster.with_size(n), num_devices=n)
        plan, res, seconds = best_plan(inp_n, space, args.top_k,
                                       where=f"--elastic {args.elastic}: world size {n}: ")
        plans.append(plan)
        elapsed, simulated = elapsed + seconds, simulated + res.simulated
    elastic = ElasticPlan(tuple(plans), created_utc=plans[-1].created_utc)
    elastic.save(path)
    if args.format == "json":
        json.dump({"plan_path": path, "world_sizes": list(elastic.world_sizes),
                   "skipped_world_sizes": skipped, "search_wall_s": elapsed,
                   "plans": [summary(p, path) for p in plans]}, sys.stdout, indent=2)
        print()
    else:
        _print_elastic(elastic, path, skipped, inp.cluster, simulated, elapsed)
    return 0


def _ranges(nums: list[int]) -> str:
    out, start = [], None
    for i, n in enumerate(nums):
        start = n if start is None else start
        if i + 1 == len(nums) or nums[i + 1] != n + 1:
            out.append(str(n) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(out)


def _print_elastic(elastic, path, skipped, cluster, simulated, elapsed) -> None:
    first = elastic.plans[0]
    sizes = elastic.world_sizes
    print(f"elastic plan set: {first.model.name} on {cluster.name}, world sizes "
          f"{_ranges(list(sizes))}, global batch {first.global_batch_size}, {first.dtype}, "
          f"{first.optimizer} (compute from {first.prediction.compute_source})")
    w = max(len(p.layout.describe()) for p in elastic.plans)
    print(f"  {'world':>5}  {'layout':{w}}  {'step time':>10}  {'samples/s':>10}  "
          f"{'peak GiB':>8}")
    for p in elastic.plans:
        pred = p.prediction
        print(f"  {p.world_size:>5}  {p.layout.describe():{w}}  "
              f"{format_duration(pred.step_time_s):>10}  "
              f"{p.global_batch_size / pred.step_time_s:10.1f}  "
              f"{pred.peak_memory_bytes / 2**30:8.2f}")
    if skipped:
        print(f"skipped     world sizes {_ranges(skipped)}: not one node or whole nodes of "
              f"{cluster.devices_per_node} devices")
    per = cluster.devices_per_node
    nodes = (f"{sizes[0] // per}:{sizes[-1] // per} --nproc-per-node {per}"
             if per > 1 and all(n % per == 0 for n in sizes)
             else f"{sizes[0]}:{sizes[-1]} --nproc-per-node 1")
    print(f"plans       {path}")
    print(f"search      {simulated} layouts simulated over {len(sizes)} world sizes "
          f"({elapsed:.2f} s), only layouts the executor can checkpoint")
    print(f"run         torchrun --nnodes {nodes} --max-restarts 3 --rdzv-backend c10d "
          f"--rdzv-endpoint HOST:PORT --rdzv-id JOB -m executor --plan {path} "
          "--checkpoint-dir SHARED_DIR --checkpoint-every K --auto-resume")
