"""One simulated step of a layout, and the Prediction made of it.

``simulate`` runs the event engine over a prepared layout (``planner.sim.costs.prepare``) with
its data-parallel hooks; ``predict`` turns the result into a ``Prediction`` (step time,
breakdown, per-rank memory, TFLOP/s, MFU, collectives, timeline); ``evaluate`` does all three.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from planner import families, rules
from planner.cost.compute import BlockCost
from planner.cost.precision import ELEMENT_BYTES
from planner.grid import RankGrid
from planner.sim import engine
from planner.sim.costs import LayoutCosts, prepare
from planner.sim.dp import DataParallelHooks
from planner.sim.memory import fits, rank_memory
from planner.sim.pp import schedule_plan
from planner.sim.run import CommTime, RunSpec
from planner.specs import CollectiveCount, Prediction, TimelineEvent


@dataclass
class StepResult:
    """What one run of the event engine gives, before it becomes a Prediction."""
    step_time_s: float
    ranks: list               # engine.Rank per pipeline rank
    dp_counts: dict           # data-parallel collectives per step
    owner: tuple              # per chunk, the pipeline rank holding it


def simulate(run: RunSpec, layout, costs: LayoutCosts, comm: CommTime,
             timeline: bool = True, sync=None, stage_runs=None) -> StepResult:
    """The events of one step of ``layout`` (stage boundaries filled, ``costs`` from
    ``planner.sim.costs.layout_costs``). ``sync`` and ``stage_runs``: one replica of a mixed
    cluster (``planner.sim.mixed``; ``planner.sim.dp.DataParallelHooks``)."""
    p, pl, m = layout.pp, layout.pipeline, layout.num_microbatches
    plan = schedule_plan(pl.schedule, p, m, pl.virtual_stages)
    hooks = DataParallelHooks(run, layout, costs, comm, plan, timeline, sync, stage_runs)
    overlap = run.cluster.comm_overlap if layout.world_size > 1 else 1.0
    step, ranks = engine.run(plan, costs.chunks, m, hooks, overlap, timeline)
    return StepResult(step, ranks, hooks.counts, plan.owner)


def predict(run: RunSpec, layout, costs: LayoutCosts, result: StepResult,
            timeline: bool = False) -> Prediction:
    """The Prediction of a simulated step."""
    p = layout.pp
    ranks, step = result.ranks, result.step_time_s
    breakdown = {k: sum(st.acc[k] for st in ranks) / p for k in engine.BREAKDOWN_KEYS
                 if k not in engine.OPTIONAL_KEYS or layout.dims.degree(engine.OPTIONAL_KEYS[k]) > 1}
    for key in ("pp_comm", "dp_comm"):
        breakdown[f"{key}_hidden"] = max(0.0, breakdown[f"{key}_hidden"]
                                         - breakdown[f"{key}_exposed"])
    memory = rank_memory(run, layout, costs)
    peak = max(r.total_bytes for r in memory)
    cap = run.cluster.device.usable_memory_bytes
    n, m = layout.world_size, layout.num_microbatches
    model_flops = 3.0 * costs.model_flops_mb * m * layout.dp
    hw_flops = model_flops + costs.recompute_flops_mb * m * layout.dp
    peak_rate = run.peak_flops
    events = ()
    if timeline:
        grid = RankGrid(layout.dims)
        events = tuple(TimelineEvent(grid.rank_of(pp=r), s, name, t0, t1)
                       for r, st in enumerate(ranks) for s, name, t0, t1 in st.events)
    return Prediction(
        step_time_s=step, breakdown_s=breakdown, memory=tuple(memory), peak_memory_bytes=peak,
        device_memory_bytes=cap, fits=fits(run, memory),
        tflops_per_device=hw_flops / (step * n) / 1e12 if step > 0 else 0.0,
        mfu=model_flops / (step * n * peak_rate) if step > 0 and peak_rate else 0.0,
        bubble_fraction=breakdown["bubble"] / step if step > 0 else 0.0,
        collectives=collectives(run, layout, costs, result),
        compute_source=run.compute_source, timeline=events)


def collectives(run: RunSpec, layout, costs: LayoutCosts, result: StepResult) -> tuple:
    """Every collective of one step, by phase, kind, group and size (merged)."""
    out = []
    for (phase, name, nbytes), k in sorted(costs.tp_counts.items()):
        out.append(CollectiveCount(phase, name, "tp", layout.tp, k, int(nbytes)))
    dims = layout.dims
    for (phase, name, group, nbytes), k in sorted((costs.xp_counts or {}).items()):
        out.append(CollectiveCount(phase, name, dims.canonical(group), dims.degree(group), k,
                                   int(nbytes)))
    owner = result.owner
    m, scatter = layout.num_microbatches, costs.bundle.scatter
    for c in range(len(costs.chunks) - 1):
        if owner[c] != owner[c + 1]:
            nb = costs.chunks[c].send_bytes
            for phase in ("forward", "backward"):
                out.append(CollectiveCount(phase, "send_recv", "pp", layout.pp, m,
                                           int(nb // layout.tp if scatter else nb)))
                if scatter:     # Megatron's scatter/gather: the pieces gathered over tp
                    out.append(CollectiveCount(phase, "all_gather", "tp", layout.tp, m,
                                               int(nb)))
    for (phase, name, group, size, nbytes, every), k in sorted(result.dp_counts.items()):
        out.append(CollectiveCount(phase, name, group, size, k, int(nbytes), every))
    if layout.tp > 1:
        out += _partial_grad_collectives(run, layout, costs, owner)
    merged: dict = {}
    for cc in out:
        key = (cc.phase, cc.collective, cc.group, cc.group_size, cc.bytes_each, cc.every_steps)
        merged[key] = merged.get(key, 0) + cc.count
    return tuple(CollectiveCount(phase, coll, group, size, count=k, bytes_each=nbytes,
                                 every_steps=every)
                 for (phase, coll, group, size, nbytes, every), k in merged.items())


def _partial_grad_collectives(run: RunSpec, layout, costs: LayoutCosts, owner) -> list:
    """The tp all-reduces of gradients that are partial over tp ranks (``Family.
    partial_grad_params``, ``edge_partial_grad_params``: sequence-parallel norms, routers; who
    sums them: ``rules.partial_grads_by``): one per pipeline stage and step, or under FSDP one
    per parameter at each of its block's reduce-scatters (every micro-batch
    without pipelining, once per step with it). A few KiB to a few hundred KiB per layer, so
    their time is not simulated."""
    family, spec = families.of(run.model), run.model
    e, sp = ELEMENT_BYTES[run.dtype], layout.tensor.sequence_parallel
    kinds = family.block_kinds(spec)
    layer_of, n = {}, 0
    for x, kind in enumerate(kinds):
        if kind == "block":
            layer_of[x], n = n, n + 1
    per_stage: dict = {}
    for c, chunk in enumerate(costs.chunks):
        for x in chunk.blocks:
            per_stage.setdefault(owner[c], []).extend(
                family.partial_grad_params(spec, layer_of[x], sp) if x in layer_of else
                family.edge_partial_grad_params(spec, kinds[x], sp))
    out = []
    by = rules.partial_grads_by(layout)
    times = layout.num_microbatches if layout.pp == 1 else 1
    # ZeRO-1 sums only the pieces a dp rank owns: 1/dp of the bytes on average (the exact
    # share of a rank depends on where its bucket slices fall)
    share = 1.0 / layout.dp if by == "zero1" else 1.0
    for sizes in per_stage.values():
        if by == "fsdp":     # merged by size here: hundreds of parameters, a handful of sizes
            for size, k in Counter(sizes).items():
                out.append(CollectiveCount("backward", "all_reduce", "tp", layout.tp,
                                           times * k, size * e))
        elif sizes:
            out.append(CollectiveCount("backward", "all_reduce", "tp", layout.tp, 1,
                                       int(sum(sizes) * e * share)))
    return out


def evaluate(run: RunSpec, blocks: Sequence[BlockCost], layout, comm: CommTime | None = None,
             timeline: bool = True) -> tuple:
    """Simulate ``layout`` for one step. ``blocks`` are the model's per-block costs at the
    layout's micro-batch size on one unsplit device. Returns the layout with its stage
    boundaries filled in and the Prediction."""
    layout, costs, comm = prepare(run, blocks, layout, comm)
    result = simulate(run, layout, costs, comm, timeline)
    return layout, predict(run, layout, costs, result, timeline)
