"""Search layouts for a mixed cluster: which devices to use, where, and how much work each gets.

Homogeneous clusters never come here (``planner.search.search`` stays as it is); a cluster with
several device kinds (``Cluster.mixed``) is searched as options, compared by step time for the
same global batch:

- each kind alone (and every other proper subset of kinds): the nodes of those kinds, searched
  by the homogeneous search when they are one kind -- (d) slow devices left out where they do
  not pay;
- all nodes of a subset of several kinds, mixed-aware (``_search_nodes``): for every tp (inside
  a node, so one kind: (c)), pp, micro-batch size, schedule, ZeRO stage, recompute and sequence
  parallelism, two placements of the replicas on the nodes (node ranks, ``Cluster.select``):
  * by kind (the cluster's order): replicas that fit in one kind's nodes are of that kind, and
    faster replicas take more micro-batches so that all finish together (b): the split comes
    from each replica's estimated time (``split_microbatches``) and is then polished on the
    simulated times (``_polish``);
  * interleaved: every replica gets the same nodes of each kind (both kind orders are tried),
    and its pipeline stages get different numbers of layers by their device's speed and memory
    (a) (``planner.sim.mixed.partition``);
- the even split over all nodes (what a planner that ignores the difference runs): the cluster's
  node order, equal micro-batches per replica, stage boundaries balanced for the default kind,
  priced on the real devices -- the baseline ``planner plan`` reports.

Each layout gets a lower bound (``_bound``: the slowest replica's ``planner.sim.step_floor``, or
for a pipeline spanning kinds the best cut's bottleneck bound) and a memory floor; they are
simulated best first (``planner.sim.mixed``) until the next bound is no better than the K-th
best step.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from planner import rules, schedules, sim
from planner.errors import PlannerError
from planner.search.space import (RECOMPUTE_ORDER, Space, dims_of, divisors, leaves,
                                  make_layout, schedule_options, tp_sizes)
from planner.sim import mixed as msim
from planner.specs import Candidate


@dataclass
class Option:
    """One way to use the cluster and the best layouts found on it."""
    label: str
    cluster: object                   # the nodes used, in node-rank order (arranged for ranked[0])
    ranked: list                      # [(Layout, Prediction, MixedStep | None)] best first
    kinds: tuple                      # names of the device kinds it uses
    stats: dict = field(default_factory=dict)
    candidates: list = field(default_factory=list)

    @property
    def best(self):
        return self.ranked[0] if self.ranked else None

    @property
    def num_devices(self) -> int:
        return self.cluster.num_devices


@dataclass
class MixedResult:
    chosen: Option | None
    options: list                     # every Option tried, mixed-aware and even split included
    even: Option | None               # the even split over all nodes


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


class _Nodes:
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


def _search_nodes(nodes: _Nodes, global_batch: int, space: Space, top_k: int, aware: bool,
                  stats: dict) -> tuple[list, list]:
    """The best ``top_k`` (layout, prediction, step) on all of ``nodes``' cluster."""
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
    splits: dict = {}
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
                probe = make_layout((dp, tp, pp, b, m_even, name, v, zero, rc, sp), space)
                bundles = _bundles(mx, probe, set(k for s in shapes for k in s))
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
                    layout = _layout(key, dp, space)
                if layout is None or rules.executor_refuses(layout):
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


def _layout(key: Key, dp: int, space: Space):
    split = key.split
    try:
        layout = make_layout((dp, key.tp, key.pp, key.b, key.m, key.name, key.v, key.zero,
                              key.rc, key.sp), space)
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
            better = max(bound, _cut_bound(nodes, mx, _layout(key, dp, space)))
            if _defer(heap, better, seq, key, ranked, top_k, stats):
                seq += 1
                continue
        if key not in prepared:
            prepared[key] = _prepare(mx, _layout(key, dp, space), aware)
            better = max(bound, _chain_bound(mx, prepared[key]))
            if len(ranked) >= top_k and better >= ranked[top_k - 1][1].step_time_s:
                stats["bounded_out"] += 1
                continue
            if heap and better > heap[0][0]:
                heapq.heappush(heap, (better, seq, key))
                seq += 1
                continue
        got = _evaluate(mx, prepared.pop(key), stats, candidates)
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
    owners = msim._owners(layout)
    for rep in msim.replicas(mx, layout):
        lay = msim.even(layout, rep.microbatches)
        bundles = [mx.kinds.bundle(rep.kinds[o], lay) for o in owners]
        best = max(best, rep.microbatches * mx.kinds.fastest_cut(bundles)[2])
    return best


def _prepare(mx, layout, aware):
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


def _evaluate(mx, prepared, stats, candidates):
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
    bundle = mx.kinds.bundle(0, msim.even(layout, layout.num_microbatches))
    from planner.partition import balanced_partition
    starts = balanced_partition(bundle.block_s, layout.num_chunks, bundle.send_s)[0]
    return layout.with_boundaries(starts)


def _polish(nodes, entry, space, stats, candidates, rounds: int = 8):
    """Move micro-batches from a replica of the slowest kind to one of the fastest while the
    simulated step improves (the split came from estimates)."""
    layout, pred, step, key = entry
    for _ in range(rounds):
        if not key.split:
            break
        alone = step.alone_s
        slow = max(range(len(alone)), key=alone.__getitem__)
        fast = min(range(len(alone)), key=alone.__getitem__)
        unit = key.pp if layout.pipeline.kind.microbatches_multiple_of_pp and key.pp > 1 else 1
        src, dst = step.replicas[slow].members[0], step.replicas[fast].members[0]
        split = list(key.split)
        if slow == fast or split[src] <= unit:
            break
        split[src] -= unit
        split[dst] += unit
        trial = key._replace(split=tuple(split) if len(set(split)) > 1 else (), m=max(split))
        mx = nodes.mx(key.order)
        lay = _layout(trial, layout.dp, space)
        if lay is None or rules.executor_refuses(lay):
            break
        got = _evaluate(mx, _prepare(mx, lay, True), stats, candidates)
        if got is None or got[1].step_time_s >= pred.step_time_s:
            break
        layout, pred, step, key = got[0], got[1], got[2], trial
    return layout, pred, step, key


def _stats() -> dict:
    return dict.fromkeys(("enumerated", "refused", "simulated", "memory_pruned", "not_fitting",
                          "dominated", "bounded_out", "wall_s"), 0)


def _mixed_option(run, costs_on, cluster, label, global_batch, space, top_k, aware,
                  kinds=None) -> Option:
    import time
    t0 = time.perf_counter()
    stats = _stats()
    nodes = _Nodes(run, costs_on, cluster, kinds)
    ranked, candidates = _search_nodes(nodes, global_batch, space, top_k, aware, stats)
    if aware:
        ranked = [_polish(nodes, e, space, stats, candidates) for e in ranked]
        ranked.sort(key=lambda r: (r[1].step_time_s, r[1].peak_memory_bytes))
    stats["wall_s"] = time.perf_counter() - t0
    arranged = nodes.mx(ranked[0][3].order).cluster if ranked else cluster
    return Option(label, arranged, [(lay, pred, step) for lay, pred, step, _ in ranked],
                  tuple(d.name for d in cluster.kinds), stats, _ranked(candidates, ranked))


def _ranked(candidates, ranked) -> list:
    place = {lay: i + 1 for i, (lay, *_rest) in enumerate(ranked)}
    return [replace(c, rank=place.get(c.layout, 0)) for c in candidates]


def _homogeneous(run, costs_on, cluster, label, global_batch, space, top_k) -> Option:
    import time

    from planner.search import search
    device = cluster.device
    t0 = time.perf_counter()
    res = search(replace(run, cluster=cluster), lambda b: costs_on(device, b),
                 cluster.num_devices, global_batch, space, top_k)
    stats = {k: getattr(res, k) for k in ("enumerated", "refused", "simulated", "memory_pruned",
                                          "not_fitting", "dominated", "bounded_out")}
    stats["wall_s"] = time.perf_counter() - t0
    return Option(label, cluster, [(lay, pred, None) for lay, pred in res.ranked],
                  (device.name,), stats, res.candidates)


def search_mixed(run, costs_on: Callable, global_batch: int, space: Space = Space(),
                 top_k: int = 5) -> MixedResult:
    """Every option (module docstring) on ``run.cluster``; the chosen one is the fastest step
    for ``global_batch``. ``costs_on(device, micro-batch size)`` gives the block costs on one
    device of a kind."""
    cluster = run.cluster
    names = [d.name for d in cluster.kinds]
    options = []
    count = len(names)
    kinds = msim.Kinds(run, costs_on)         # shared by the options on all nodes
    for mask in range((1 << count) - 1, 0, -1):
        subset = [k for k in range(count) if mask >> k & 1]
        nodes = [n for n in range(cluster.num_nodes) if cluster.kind_of_node(n) in subset]
        sub = cluster.select(nodes)
        if len(subset) == count:
            label = "all nodes, mixed-aware"
        else:
            label = " + ".join(names[k] for k in subset) + " alone"
        if len(subset) == 1:
            options.append(_homogeneous(run, costs_on, sub, label, global_batch, space, top_k))
        else:
            options.append(_mixed_option(run, costs_on, sub, label, global_batch, space, top_k,
                                         True, kinds if len(subset) == count else None))
    even = _mixed_option(run, costs_on, cluster, "even split over all nodes", global_batch,
                         space, top_k, False, kinds)
    fastest = [o for o in options + [even] if o.best is not None]
    chosen = min(fastest, key=lambda o: o.best[1].step_time_s) if fastest else None
    return MixedResult(chosen, options + [even], even)
