"""`planner simulate`: evaluate one complete layout and write it as a plan file.

The layout comes from flags (unset ones: tp 1, pp 1, cp 1, ep 1, dp the rest of the devices,
the whole per-replica batch as one micro-batch, 1f1b, one chunk per rank (two for zbv), ZeRO 0, no
recompute, no sequence parallelism; stage boundaries from the balanced partition unless
--stage-boundaries gives them). The prediction is the same event simulation `planner plan`
ranks layouts with, so any layout can be inspected and then run by the executor.
"""
from __future__ import annotations

import json
import sys

from planner import inputs as plan_inputs
from planner import planfile
from planner.errors import PlannerError
from planner.outputs import check_writable
from planner.specs import Layout


def add_arguments(parser) -> None:
    plan_inputs.add_arguments(parser)
    plan_inputs.add_layout_arguments(parser, required=True)
    parser.add_argument("--stage-boundaries",
                        help="first block of every chunk, comma separated (default: balanced)")
    parser.add_argument("--replica-microbatches",
                        help="micro-batches of each data-parallel replica, comma separated, "
                             "when they differ (mixed clusters; default: even)")
    parser.add_argument("--out", help="plan file to write (default plans/<model>-<cluster>-"
                                      "g<N>-b<B>-<layout>.json)")
    parser.add_argument("--format", choices=("text", "json"), default="text")


def _integers(flag: str, text: str | None, example: str) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise PlannerError(f"{flag} {text!r}: expected comma-separated integers such as "
                           f"{example}") from None


def layout_from_args(args, num_devices: int, global_batch: int) -> Layout:
    """A complete layout from the flags, defaults filled in, checked against the devices and
    the batch (one-line errors showing the arithmetic)."""
    tp, pp, cp = args.tp or 1, args.pp or 1, args.cp or 1
    if num_devices % (tp * pp * cp):
        raise PlannerError(f"tp({tp}) * pp({pp}) * cp({cp}) = {tp * pp * cp} does not divide "
                           f"--gpus {num_devices}")
    dp = args.dp or num_devices // (tp * pp * cp)
    shares = _integers("--replica-microbatches", getattr(args, "replica_microbatches", None),
                       "12,12,4,4")
    if shares:
        return _uneven(args, tp, pp, dp, shares, num_devices, global_batch)
    if global_batch % dp:
        raise PlannerError(f"--global-batch {global_batch} does not divide over dp({dp}) "
                           f"({global_batch} % {dp} = {global_batch % dp})")
    per_replica = global_batch // dp
    mb = args.microbatch_size or per_replica
    if per_replica % mb:
        raise PlannerError(f"--microbatch-size {mb} does not divide the per-replica batch "
                           f"{global_batch} / dp({dp}) = {per_replica}")
    schedule = args.schedule or "1f1b"
    v = args.virtual_stages or (2 if schedule == "zbv" else 1)
    comm = plan_inputs.dp_comm_fields(args)
    if comm["dp_comm"] != "parameter_server":
        comm["ps_shards"] = 0
    layout = Layout.make(
        dp=dp, tp=tp, pp=pp, microbatch_size=mb, num_microbatches=per_replica // mb,
        schedule=schedule, virtual_stages=v, zero=args.zero or 0,
        recompute=args.recompute or "none", sequence_parallel=bool(args.sequence_parallel),
        stage_boundaries=_integers("--stage-boundaries", args.stage_boundaries, "0,13,26"),
        **comm, **_added_dims(args))
    layout.check_world(num_devices, "--gpus")
    return layout


def _added_dims(args) -> dict:
    """The dimensions added after version 1's flags: context and expert parallelism, offload."""
    return dict(cp=args.cp or 1, ep=args.ep or 1, offload=bool(args.offload))


def _uneven(args, tp, pp, dp, shares, num_devices, global_batch) -> Layout:
    """A layout whose replicas run ``shares`` micro-batches each (``--replica-microbatches``)."""
    if len(shares) != dp or min(shares) < 1:
        raise PlannerError(f"--replica-microbatches {','.join(map(str, shares))}: needs dp({dp}) "
                           "micro-batch counts >= 1, one per replica")
    total = sum(shares)
    if global_batch % total:
        raise PlannerError(f"--global-batch {global_batch} is not a whole number of micro-"
                           f"batches over --replica-microbatches (sum {total})")
    mb = global_batch // total
    if args.microbatch_size and args.microbatch_size != mb:
        raise PlannerError(f"--microbatch-size {args.microbatch_size}: --global-batch "
                           f"{global_batch} / sum(--replica-microbatches) {total} = {mb}")
    schedule = args.schedule or "1f1b"
    comm = plan_inputs.dp_comm_fields(args)
    if comm["dp_comm"] != "parameter_server":
        comm["ps_shards"] = 0
    layout = Layout.make(
        dp=dp, tp=tp, pp=pp, microbatch_size=mb, num_microbatches=max(shares),
        replica_microbatches=shares if len(set(shares)) > 1 else (),
        schedule=schedule, virtual_stages=args.virtual_stages or (2 if schedule == "zbv" else 1),
        zero=args.zero or 0, recompute=args.recompute or "none",
        sequence_parallel=bool(args.sequence_parallel),
        stage_boundaries=_integers("--stage-boundaries", args.stage_boundaries, "0,13,26"),
        **comm, **_added_dims(args))
    layout.check_world(num_devices, "--gpus")
    return layout


def default_out(inp, layout: Layout) -> str:
    tag = "-".join(layout.describe().replace("=", "").replace("(", "").replace(")", "")
                   .split())
    base = planfile.default_out(inp)
    return base[:-len(".json")] + f"-{tag}.json"


def run(args) -> int:
    from planner import search

    inp = plan_inputs.resolve(args)
    layout = layout_from_args(args, inp.num_devices, inp.global_batch_size)
    path = args.out or default_out(inp, layout)
    check_writable("--out", path)
    if inp.cluster.mixed:       # each replica on its own devices (planner.sim.mixed)
        from planner.sim import mixed
        mx = mixed.MixedRun(planfile.run_spec(inp), inp.costs_on)
        layout, prediction, _ = mixed.evaluate_mixed(mx, layout)
    else:
        layout, prediction = search.evaluate_one(planfile.run_spec(inp), inp.block_costs,
                                                 layout)
    plan = planfile.make_plan(inp, layout, prediction)
    plan.save(path)
    if args.format == "json":
        json.dump(planfile.summary(plan, path), sys.stdout, indent=2)
        print()
    else:
        planfile.print_text(plan, path)
        if not prediction.fits:
            print(f"note        does not fit: {prediction.peak_memory_bytes / 2**30:.2f} GiB > "
                  f"{prediction.device_memory_bytes / 2**30:.2f} GiB", file=sys.stdout)
    return 0
