"""The mixed-aware search over one set of nodes of several device kinds (``planner.search.mixed``
weighs these against each kind alone and the even split).

For every tp (inside a node, so on one kind), pp, micro-batch size, schedule, ZeRO stage,
recompute and sequence parallelism, the node orders of ``arrangements`` (node ranks,
``Cluster.select``):

* by kind (the cluster's order): replicas that fit in one kind's nodes are of that kind, and
  faster replicas take more micro-batches so that all finish together: the split comes from
  each replica's estimated time (``split_microbatches``);
* interleaved: every replica gets the same nodes of each kind (both kind orders are tried), and
  its pipeline stages get different numbers of layers by their device's speed and memory
  (``planner.sim.mixed.partition``).

With ``aware`` False it is the even split a planner that ignores the difference would run: the
given node order, equal micro-batches per replica, stage boundaries balanced for the first
kind, priced on the real devices.

Each layout gets a lower bound (``_bound``: the slowest replica's ``planner.sim.step_floor``, or
for a pipeline spanning kinds m times the best cut's bottleneck bound) and a memory floor; best
first, each popped layout is re-bounded by its best cut (``_cut_bound``) and, partitioned, by
its replicas' ``planner.sim.chain_bound``, then simulated (``planner.sim.mixed``), until the
next bound is no better than the K-th best step.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import replace
from typing import NamedTuple

from planner import rules, schedules, sim
from planner.errors import PlannerError
from planner.search.space import (RECOMPUTE_ORDER, Space, dims_of, divisors, leaves,
                                  make_layout, schedule_options, tp_sizes)
from planner.sim import mixed as msim
from planner.specs import Candidate


# The search keys' cp, ep and offload here (``search_nodes``): none of them.
DP_TP_PP = (1, 1, False)


class Key(NamedTuple):
    order: tuple                      # node ranks -> node indices of the searched cluster
    tp: int
    pp: int
    b: int
    m: int                            # micro-batches per replica (the largest when uneven)
    name: str
    v: int
    zero: int
    rc: str
    sp: bool
    split: tuple                      # micro-batches per replica; () even


def split_microbatches(cost: list, total: int, unit: int) -> tuple[int, ...] | None:
    """``total`` micro-batches over replicas in multiples of ``unit`` (each at least one),
    replica i taking ``cost[i] = (per micro-batch s, fixed s)``: its step takes a*m + c.
    Greedy on the finishing time of the next unit, which minimises the latest finish for
    increasing per-replica times (a water-filling start, then unit by unit)."""
    n = len(cost)
    if total % unit or total < n * unit:
        return None
    inv = sum(1.0 / a for a, _ in cost)
    level = (total + sum(c / a for a, c in cost)) / inv
    ms = [max(unit, int((level - c) / a) // unit * unit) for a, c in cost]
    while sum(ms) > total:
        i = max((i for i in range(n) if ms[i] > unit), key=lambda i: cost[i][0] * ms[i]
                + cost[i][1])
        ms[i] -= unit
    heap = [(a * (m + unit) + c, i) for i, ((a, c), m) in enumerate(zip(cost, ms))]
    heapq.heapify(heap)
    for _ in range((total - sum(ms)) // unit):
        _, i = heapq.heappop(heap)
        ms[i] += unit
        a, c = cost[i]
        heapq.heappush(heap, (a * (ms[i] + unit) + c, i))
    return tuple(ms)


def arrangements(cluster, nodes: list[int], dp: int, replica_devices: int, aware: bool):
    """Node orders to try: by kind (the given order), and -- mixed-aware, when each replica
    spans whole nodes and every kind's nodes divide among the replicas -- interleaved, each
    replica holding the same nodes of every kind, in both kind orders."""
    out = [tuple(nodes)]
    per = cluster.devices_per_node
    if not aware or replica_devices % per:
        return out
    by_kind: dict = {}
    for n in nodes:
        by_kind.setdefault(cluster.kind_of_node(n), []).append(n)
    lists = list(by_kind.values())
    if len(lists) < 2 or any(len(x) % dp for x in lists):
        return out
    for kinds in (lists, lists[::-1]):
        order = []
        for i in range(dp):
            for x in kinds:
                share = len(x) // dp
                order += x[i * share:(i + 1) * share]
        if tuple(order) not in out:
            out.append(tuple(order))
    return out


class Nodes:
    """What the search of one node set shares: the arranged clusters and their MixedRuns."""

    def __init__(self, run, costs_on, cluster, kinds=None):
        self.run, self.costs_on, self.cluster = run, costs_on, cluster
        self.kinds = kinds or msim.Kinds(replace(run, cluster=cluster), costs_on)
        self._mx: dict = {}
        self.rho: dict = {}

    def mx(self, order) -> msim.MixedRun:
        hit = self._mx.get(order)
        if hit is None:
            arranged = self.cluster.select(order)
            hit = self._mx[order] = msim.MixedRun(replace(self.run, cluster=arranged),
                                                  kinds=self.kinds)
        return hit


def _bundles(mx, probe, kinds):
    return {k: mx.kinds.bundle(k, probe) for k in set(kinds)}


def _estimate(bundles, kinds, v: int) -> tuple[float, float]:
    """(per micro-batch, fixed) seconds of a replica with stages on ``kinds``: a stage balanced
    by speed (1 / sum of 1 / the model's time on each stage's kind) per micro-batch, and the
    (pp - 1)/v stages' warm-up of a flushing pipeline."""
    stage = 1.0 / sum(1.0 / bundles[k].total_s for k in kinds)
    return stage, stage * (len(kinds) - 1) / v


def _rho(cache: dict, slow, ref) -> float:
    """min over blocks of slow's cost / ref's (cached per pair of bundles)."""
    key = (id(slow), id(ref))
    hit = cache.get(key)
    if hit is None or hit[0] is not slow or hit[1] is not ref:
        rho = min((x / y for x, y in zip(slow.block_s, ref.block_s) if y > 0), default=1.0)
        hit = cache[key] = (slow, ref, rho)
    return hit[2]


def _bound(mx, rho_cache, layout, reps, bundles, comm) -> float:
    """A lower bound on the simulated step: the slowest replica's ``sim.step_floor`` (its
    stages at their kind's speed); a pipeline spanning kinds does m times at least the best
    cut's bottleneck, which with rho_k = min over blocks of cost_k / cost_0 is at least
    total_0 / sum over stages of 1 / rho_k."""
    best = 0.0
    sched = layout.pipeline.kind
    for rep in reps:
        m = rep.microbatches
        if rep.pure:
            b = bundles[rep.kinds[0]]
            best = max(best, sim.step_floor(mx.kind_runs[rep.kinds[0]], layout.dims, layout.data,
                                            sched, m, b.total_s, b.slowest_s, b.params, comm))
            continue
        ref = bundles[rep.kinds[0]]
        inv = 0.0
        for k in rep.kinds:
            rho = _rho(rho_cache, bundles[k], ref)
            inv += 1.0 / rho if rho > 0 else math.inf
        best = max(best, m * ref.total_s / inv if inv else 0.0)
    return best


def search_nodes(nodes: Nodes, global_batch: int, space: Space, top_k: int, aware: bool,
                  stats: dict) -> tuple[list, list]:
    """The best ``top_k`` (layout, prediction, step) on all of ``nodes``' cluster. Layouts
    of dp, tp and pp only: context and expert parallelism and offload are not simulated per
    replica (``planner.sim.mixed``), so where the space fixes them there is nothing here."""
    if space.cp not in (None, 1) or space.ep not in (None, 1) or space.offload:
        return [], []
    run, cluster = nodes.run, nodes.cluster
    spec = run.model
    nblocks = spec.num_blocks
    per, n = cluster.devices_per_node, cluster.num_devices
    heap: list = []
    for tp in tp_sizes(spec, n, per, space):
        if tp > per:
            continue
        for pp in divisors(n // tp):
            dp = n // (tp * pp)
            if pp > nblocks or (space.pp is not None and pp != space.pp) or (
                    space.dp is not None and dp != space.dp):
                continue
            for order in arrangements(cluster, list(range(cluster.num_nodes)), dp, tp * pp,
                                      aware):
                _enumerate(nodes, order, tp, pp, dp, global_batch, space, aware, heap, stats)
    heapq.heapify(heap)
    return _best_first(nodes, heap, space, top_k, aware, stats)


def _enumerate(nodes, order, tp, pp, dp, global_batch, space, aware, heap, stats) -> None:
    mx = nodes.mx(order)
    spec = mx.run.model
    dims = dims_of(dp, tp, pp)
    shapes = mx.shapes(dims)
    uneven = aware and len(set(shapes)) > 1
    used = {k for s in shapes for k in s}
    splits: dict = {}
    rows: dict = {}
    for b in divisors(global_batch):
        if space.microbatch_size is not None and b != space.microbatch_size:
            continue
        total = global_batch // b
        if total < dp or (not uneven and total % dp):
            continue
        m_even = max(1, total // dp)
        for name, v in schedule_options(pp, m_even, spec.num_blocks, space):
            sched = schedules.get(name)
            unit = pp if sched.microbatches_multiple_of_pp and pp > 1 else 1
            for zero, rc, sp in leaves(spec, dp, tp, pp, b, m_even, name, v, space, None):
                key = Key(order, tp, pp, b, m_even, name, v, zero, rc, sp, ())
                probe = make_layout((dp, tp, pp, b, m_even, name, v, zero, rc, sp, *DP_TP_PP),
                                    space)
                bundles = rows.get((b, rc, sp))
                if bundles is None:
                    bundles = rows[(b, rc, sp)] = _bundles(mx, probe, used)
                layout = probe
                if uneven:
                    skey = (b, v, unit, rc, sp)
                    if skey not in splits:
                        costs = [_estimate(bundles, s, v) for s in shapes]
                        splits[skey] = split_microbatches(costs, total, unit)
                    split = splits[skey]
                    if split is None:
                        continue
                    key = key._replace(split=split if len(set(split)) > 1 else (),
                                       m=max(split))
                    layout = layout_of(key, dp, space)
                if layout is None or rules.executor_refuses(layout) or \
                        rules.microbatch_problem(layout):
                    stats["refused"] += 1
                    continue
                stats["enumerated"] += 1
                reps = msim.replicas(mx, layout)
                if _memory_floor(mx, layout, reps, bundles) > 0:
                    stats["memory_pruned"] += 1
                    continue
                comm = mx.comms(layout)[1]
                heap.append((_bound(mx, nodes.rho, layout, reps, bundles, comm), len(heap),
                             key))


def layout_of(key: Key, dp: int, space: Space):
    split = key.split
    try:
        layout = make_layout((dp, key.tp, key.pp, key.b, key.m, key.name, key.v, key.zero,
                              key.rc, key.sp, *DP_TP_PP), space)
        if split:
            return replace(layout, replica_microbatches=split)
        return layout
    except PlannerError:   # a split the schedule cannot run
        return None


def _memory_floor(mx, layout, reps, bundles) -> float:
    """How far the fullest rank's bound (``sim.memory_floor``) exceeds what its replica's
    devices can hold (> 0: cannot fit; a replica spanning kinds may put fewer layers on the
    smaller device, so it is held to its largest)."""
    worst = -math.inf
    for rep in reps:
        k0 = rep.kinds[0]
        b = bundles[k0]
        floor = sim.memory_floor(mx.kind_runs[k0], layout.dims, layout.data,
                                 layout.pipeline.kind, rep.microbatches,
                                 layout.pipeline.virtual_stages, b.params, b.activation_bytes)
        caps = mx.kinds.capacities
        worst = max(worst, floor - max(caps[k] for k in rep.kinds))
    return worst


def _best_first(nodes, heap, space, top_k, aware, stats) -> tuple[list, list]:
    """Pop layouts by bound; partition and re-bound them with their real chunks (the slowest
    replica's ``sim.chain_bound``), check memory, simulate."""
    ranked: list = []
    candidates: list = []
    fitting: set = set()
    prepared: dict = {}
    sized: set = set()
    seq = len(heap)
    while heap:
        bound, _, key = heapq.heappop(heap)
        if len(ranked) >= top_k and bound >= ranked[top_k - 1][1].step_time_s:
            stats["bounded_out"] += 1 + len(heap)
            break
        base = key._replace(rc="", split=())
        lighter = RECOMPUTE_ORDER[:RECOMPUTE_ORDER.index(key.rc)]
        if space.recompute is None and any(base._replace(rc=r) in fitting for r in lighter):
            stats["dominated"] += 1
            continue
        mx = nodes.mx(key.order)
        dp = mx.cluster.num_devices // (key.tp * key.pp)
        if key not in sized:
            sized.add(key)
            better = max(bound, _cut_bound(nodes, mx, layout_of(key, dp, space)))
            if _defer(heap, better, seq, key, ranked, top_k, stats):
                seq += 1
                continue
        if key not in prepared:
            prepared[key] = prepare(mx, layout_of(key, dp, space), aware)
            better = max(bound, _chain_bound(mx, prepared[key]))
            if len(ranked) >= top_k and better >= ranked[top_k - 1][1].step_time_s:
                stats["bounded_out"] += 1
                continue
            if heap and better > heap[0][0]:
                heapq.heappush(heap, (better, seq, key))
                seq += 1
                continue
        got = evaluate(mx, prepared.pop(key), stats, candidates)
        if got is None:
            continue
        fitting.add(base._replace(rc=key.rc))
        ranked.append((got[0], got[1], got[2], key))
        ranked.sort(key=lambda r: (r[1].step_time_s, r[1].peak_memory_bytes))
        del ranked[top_k:]
    return ranked, candidates


def _defer(heap, better, seq, key, ranked, top_k, stats) -> bool:
    """After a bound improved: drop the layout if it cannot reach the top K, put it back if
    others now come first. True if the caller should move on."""
    if len(ranked) >= top_k and better >= ranked[top_k - 1][1].step_time_s:
        stats["bounded_out"] += 1
        return True
    if heap and better > heap[0][0]:
        heapq.heappush(heap, (better, seq, key))
        return True
    return False


def _cut_bound(nodes, mx, layout) -> float:
    """Each replica runs m micro-batches through its slowest chunk, which no cut makes faster
    than the best cut's bottleneck (``least_bottleneck`` / ``least_bottleneck_by_chunk``,
    cached per chunk costs)."""
    best = 0.0
    owners = msim.chunk_owners(layout)
    for rep in msim.replicas(mx, layout):
        per_kind = {k: mx.kinds.bundle(k, layout) for k in set(rep.kinds)}
        bundles = [per_kind[rep.kinds[o]] for o in owners]
        best = max(best, rep.microbatches * mx.kinds.fastest_cut(bundles)[2])
    return best


def prepare(mx, layout, aware):
    """``planner.sim.mixed.prepare_mixed``; the even split balances stages for the default
    kind, as if all devices were alike."""
    if not aware and layout.num_chunks > 1:
        layout = _even_boundaries(mx, layout)
    return msim.prepare_mixed(mx, layout)


def _chain_bound(mx, prepared) -> float:
    """The slowest replica's ``sim.chain_bound`` (its optimizer step on its fastest device)."""
    layout, reps, costs = prepared
    best = 0.0
    for rep, (c, comm) in zip(reps, costs):
        k = max(set(rep.kinds), key=lambda k: mx.kinds.devices[k].memory_bandwidth_bytes_per_s)
        best = max(best, sim.chain_bound(mx.kind_runs[k], msim.even(layout, rep.microbatches),
                                         c, comm))
    return best


def evaluate(mx, prepared, stats, candidates):
    """Check memory, simulate: (layout, prediction, step) or None if it does not fit."""
    layout = prepared[0]
    memory = msim.memory_mixed(mx, *prepared)
    over = [m for m in memory if m.total_bytes > m.capacity_bytes]
    if over:
        stats["not_fitting"] += 1
        worst = max(over, key=lambda m: m.total_bytes - m.capacity_bytes)
        candidates.append(Candidate(layout, 0.0, worst.total_bytes, False,
                                    note=f"rank {worst.rank} needs "
                                         f"{worst.total_bytes / 2**30:.1f} GiB of "
                                         f"{worst.capacity_bytes / 2**30:.1f}"))
        return None
    step = msim.simulate_mixed(mx, layout, False, prepared)
    pred = msim.predict_mixed(mx, step)
    stats["simulated"] += 1
    candidates.append(Candidate(layout, pred.step_time_s, pred.peak_memory_bytes, True,
                                breakdown_s=pred.breakdown_s))
    return layout, pred, step


def _even_boundaries(mx, layout):
    """Stage boundaries from the default kind's block costs alone (what a planner that
    ignores the difference would cut)."""
    bundle = mx.kinds.bundle(0, layout)
    from planner.partition import balanced_partition
    starts = balanced_partition(bundle.block_s, layout.num_chunks, bundle.send_s)[0]
    return layout.with_boundaries(starts)
