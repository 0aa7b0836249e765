"""Search layouts for a mixed cluster: which devices to use, where, and how much work each gets.

Homogeneous clusters never come here (``planner.search.search`` stays as it is); a cluster with
several device kinds (``Cluster.mixed``) is searched as options, compared by step time for the
same global batch:

- each kind alone (and every other proper subset of kinds): the nodes of those kinds, searched
  by the homogeneous search when they are one kind -- slow devices left out where they do not
  pay;
- all nodes of a subset of several kinds, mixed-aware (``planner.search.mixed_nodes``):
  tensor parallelism inside a node (so inside one kind), replicas on faster devices taking more
  micro-batches, or replicas spanning kinds with fewer layers on the slower stages; the
  micro-batch split of the best layouts is then polished on their simulated times
  (``_polish``);
- the even split over all nodes (what a planner that ignores the difference runs), the
  baseline ``planner plan`` reports.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from planner import rules
from planner.search.mixed_nodes import (Nodes, arrangements, evaluate, layout_of, prepare,
                                        search_nodes, split_microbatches)
from planner.search.space import Space
from planner.sim import mixed as msim

__all__ = ["MixedResult", "Option", "arrangements", "search_mixed", "split_microbatches"]


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
        lay = layout_of(trial, layout.dp, space)
        if lay is None or rules.executor_refuses(lay) or rules.microbatch_problem(lay):
            break
        got = evaluate(mx, prepare(mx, lay, True), stats, candidates)
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
    nodes = Nodes(run, costs_on, cluster, kinds)
    ranked, candidates = search_nodes(nodes, global_batch, space, top_k, aware, stats)
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

