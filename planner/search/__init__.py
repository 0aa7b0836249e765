"""Search the layout space: enumerate, prune, simulate the promising, rank, explain.

Best-first branch and bound: every layout of the space (``planner.search.space``) gets a cheap
lower bound on its step time and on its memory (``planner.sim.bounds``); the survivors are taken
in order of their bound, each gets its exact memory (partition and schedule, no events) and, if
it fits, a full simulation (``planner.sim``). The search stops when the next bound is no better
than the K-th best simulated step, so every layout it skips provably cannot enter the top K.
Recompute is also pruned by dominance: when a layout fits without recomputation (or with
selective), the same layout with more recomputation cannot be faster. Offload (never faster:
host copies, the optimizer on the host) is the last resort: searched only when no layout fits
without it (then every ZeRO-3 layout with it), or when ``--offload`` asks for it.

The search only calls the cost model through ``planner.sim``'s public API and the block costs
it is handed: it knows nothing of FLOPs, links or formulas.
"""
from __future__ import annotations

import gc
import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from planner import schedules, sim
from planner.cost.compute import BlockCost
from planner.partition import least_bottleneck
from planner.sim.memory import fits as memory_fits
from planner.search.space import (RECOMPUTE_ORDER, Space, check_space, cp_sizes,
                                  dims_of, divisors, ep_sizes, leaves, make_layout,
                                  schedule_options, tp_sizes)
from planner.errors import PlannerError
from planner.specs import Candidate

__all__ = ["Result", "Space", "check_space", "evaluate_one", "search"]


@dataclass
class Result:
    ranked: list                     # [(Layout, Prediction)] best first, fitting only
    enumerated: int = 0              # complete layouts that pass divisibility
    refused: int = 0                 # ... of other layouts, ones the executor cannot run
    bounded_out: int = 0             # never simulated: bound no better than the K-th best
    memory_pruned: int = 0           # model states alone exceed the device (lower bound)
    not_fitting: int = 0             # exact memory over capacity (no simulation)
    dominated: int = 0               # more recompute than a fitting sibling
    simulated: int = 0
    candidates: list = field(default_factory=list)   # Candidate per layout looked at closely


class _Blocks:
    """Block costs per micro-batch size, cached."""

    def __init__(self, blocks_for: Callable[[int], Sequence[BlockCost]]):
        self.blocks_for = blocks_for
        self._blocks: dict = {}
        self.bundles: dict = {}    # (dp, tp, pp, b, recompute, sp, cp, ep) -> RowsBundle

    def blocks(self, b: int):
        if b not in self._blocks:
            self._blocks[b] = tuple(self.blocks_for(b))
        return self._blocks[b]


def search(run: sim.RunSpec, blocks_for: Callable[[int], Sequence[BlockCost]],
           num_devices: int, global_batch: int, space: Space = Space(), top_k: int = 5,
           comm_for: Callable | None = None) -> Result:
    """The best ``top_k`` fitting layouts of ``num_devices`` devices for ``global_batch``.

    Python's cyclic garbage collector is paused while it runs: the search allocates hundreds of
    thousands of small acyclic objects (rows, chunks, records) that the generational collector
    would otherwise rescan over and over (15% of a 175B search); nothing it builds needs a
    cycle collection, and the collector is restored (and runs as usual) afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        first = _search(run, blocks_for, num_devices, global_batch,
                        replace(space, offload=space.offload or False), top_k, comm_for)
        if (first.ranked or space.offload is not None or not _host_known(run)
                or not _plain_data_parallel(space)):
            return first
        # nothing fits: the same search with every ZeRO-3 layout offloaded
        second = _search(run, blocks_for, num_devices, global_batch,
                         replace(space, offload=True), top_k, comm_for)
        second.candidates = first.candidates + second.candidates
        return second
    finally:
        if enabled:
            gc.enable()


def _host_known(run) -> bool:
    return run.cluster.device.offload_known


def _plain_data_parallel(space: Space) -> bool:
    """The caller fixed no data-parallel scheme beyond all-reduce: offload is FSDP's, and the
    retry must not swap a scheme the caller chose (parameter server, compression, staleness,
    local SGD) for FSDP's all-reduce."""
    return (space.dp_comm == "all_reduce" and space.compression == "none"
            and not space.staleness and not space.local_sgd_period)


def _chunkable_blocks(run) -> int:
    """How many pipeline chunks a partition can give: any block may start one; Megatron's even
    split needs a layer in each (``planner.partition.even_partition``)."""
    return run.model.num_layers if run.partition == "even" else run.model.num_blocks


def _search(run, blocks_for, num_devices: int, global_batch: int, space: Space, top_k: int,
            comm_for) -> Result:
    comm_for = comm_for or sim.default_comm_time
    spec, cluster = run.model, run.cluster
    if cluster.mixed:
        raise PlannerError(f"cluster {cluster.name} mixes device kinds: search it with "
                           "planner.search.mixed.search_mixed")
    nblocks = _chunkable_blocks(run)
    cache = _Blocks(blocks_for)
    comms: dict = {}
    res = Result(ranked=[])
    heap: list = []
    cap = cluster.device.usable_memory_bytes
    for tp in tp_sizes(spec, num_devices, cluster.devices_per_node, space):
        for cp in cp_sizes(spec, num_devices // tp, space):
            for pp in divisors(num_devices // (tp * cp)):
                if (space.pp is not None and pp != space.pp) or pp > nblocks:
                    continue
                dp = num_devices // (tp * cp * pp)
                if (space.dp is not None and dp != space.dp) or global_batch % dp:
                    continue
                for ep in ep_sizes(spec, dp * cp, space):
                    _enumerate(run, cache, comms, comm_for, heap, res, space, cap,
                               dp, tp, pp, cp, ep, global_batch)
    heapq.heapify(heap)
    _best_first(run, cache, comms, heap, res, space, top_k, cap)
    return res


def _enumerate(run, cache, comms, comm_for, heap, res, space, cap, dp, tp, pp, cp, ep,
               global_batch) -> None:
    """Every layout of one (dp, tp, pp, cp, ep) onto the heap with its bounds."""
    spec, cluster, nblocks = run.model, run.cluster, _chunkable_blocks(run)
    dims = dims_of(dp, tp, pp, cp, ep)
    probe = make_layout((dp, tp, pp, 1, 1, "1f1b", 1, 0, "none", False, cp, ep, False), space)
    comm = comms.setdefault((dp, tp, pp, cp, ep), comm_for(cluster, probe))
    off = bool(space.offload)
    for b in divisors(global_batch // dp):
        if space.microbatch_size is not None and b != space.microbatch_size:
            continue
        m = global_batch // (dp * b)
        for name, v in schedule_options(pp, m, nblocks, space):
            kind = schedules.get(name)
            for zero, rc, sp in leaves(spec, dp, tp, pp, b, m, name, v, space, res, cp, ep):
                res.enumerated += 1
                key = (dp, tp, pp, b, m, name, v, zero, rc, sp, cp, ep, off)
                bundle = _bundle(run, cache, key, space, comm)
                data = space.data(dp, zero, off)
                if sim.memory_floor(run, dims, data, kind, m, v, bundle.params,
                                    bundle.activation_bytes) > cap:
                    res.memory_pruned += 1
                    continue
                bound = sim.step_floor(run, dims, data, kind, m, bundle.total_s,
                                       bundle.slowest_s, bundle.params, comm,
                                       bundle.expert_params)
                heap.append((bound, len(heap), key))


def _bundle(run, cache: _Blocks, key, space: Space, comm) -> sim.RowsBundle:
    """The per-block rows of a search key (memoised here per shape, and in ``planner.sim``)."""
    dp, tp, pp, b, m, name, v, zero, rc, sp, cp, ep, off = key
    short = (dp, tp, pp, b, rc, sp, cp, ep)
    hit = cache.bundles.get(short)
    if hit is None:
        hit = cache.bundles[short] = sim.rows_bundle(
            run, cache.blocks(b), sim.Split(tp, sp, rc, b, dp * cp * tp * pp, cp, ep), comm)
    return hit


def _best_first(run, cache, comms, heap, res: Result, space: Space, top_k: int, cap) -> None:
    """Pop layouts by bound; cost, check memory, re-bound with the real partition, simulate."""
    _BestFirst(run, cache, comms, heap, res, space, top_k, cap).run()
    ranked_layouts = {lp[0]: i + 1 for i, lp in enumerate(res.ranked)}
    res.candidates = [Candidate(c.layout, c.step_time_s, c.peak_memory_bytes, c.fits,
                                c.breakdown_s, ranked_layouts.get(c.layout, 0), c.note)
                      for c in res.candidates]


class _BestFirst:
    """The branch and bound's state: what was refined, prepared and found to fit."""

    def __init__(self, run, cache, comms, heap, res: Result, space: Space, top_k: int, cap):
        self.run_spec, self.cache, self.comms, self.heap = run, cache, comms, heap
        self.res, self.space, self.top_k, self.cap = res, space, top_k, cap
        self.fitting: set = set()     # (dp, tp, pp, b, name, v, zero, sp, cp, ep, off, rc)
        self.prepared: dict = {}      # partition and chunk costs shared by layouts of one shape
        self.refined: set = set()
        self.sized: set = set()
        self.seq = len(heap)

    def run(self) -> None:
        heap, res, top_k = self.heap, self.res, self.top_k
        while heap:
            bound, _, key = heapq.heappop(heap)
            if len(res.ranked) >= top_k and bound >= res.ranked[top_k - 1][1].step_time_s:
                res.bounded_out += 1 + len(heap)
                break
            dp, tp, pp, b, m, name, v, zero, rc, sp, cp, ep, off = key
            base = (dp, tp, pp, b, name, v, zero, sp, cp, ep, off)
            lighter = RECOMPUTE_ORDER[:RECOMPUTE_ORDER.index(rc)]
            if self.space.recompute is None and any(base + (r,) in self.fitting
                                                     for r in lighter):
                res.dominated += 1
                continue
            comm = self.comms[(dp, tp, pp, cp, ep)]
            if key not in self.sized:
                # cheap first refinement: the slowest chunk of any partition is no faster than
                # the best bottleneck (cached per block costs and chunk count)
                self.sized.add(key)
                bundle = _bundle(self.run_spec, self.cache, key, self.space, comm)
                slowest = least_bottleneck(bundle.block_s, pp * v, bundle.send_s)
                if self._defer(max(bound, m * slowest), key):
                    continue
            layout, costs = self._costed(key, comm)
            if key not in self.refined:
                self.refined.add(key)
                if self._defer(max(bound, sim.chain_bound(self.run_spec, layout, costs, comm)),
                               key):
                    continue
            if self._admit(layout, costs, comm):
                self.fitting.add(base + (rc,))

    def _defer(self, better: float, key) -> bool:
        moved = _defer(self.heap, better, self.seq, key, self.res, self.top_k)
        self.seq += moved
        return moved

    def _costed(self, key, comm):
        """The layout of ``key`` with its partition and chunk costs. The partition depends on
        the schedule only through its memory tie-break (one chunk per rank, where the ZeRO
        stage matters too) and its split backward; the memory terms always depend on the ZeRO
        stage, so they are rebuilt for it."""
        dp, tp, pp, b, m, name, v, zero, rc, sp, cp, ep, off = key
        layout = make_layout(key, self.space)
        kind = layout.pipeline.kind
        pkey = (dp, tp, pp, b, sp, rc, v, name if v == 1 else kind.split_backward,
                (zero, off) if v == 1 else -1, cp, ep)
        if pkey not in self.prepared:
            self.prepared[pkey] = sim.prepare(self.run_spec, self.cache.blocks(b), layout,
                                              comm)[:2]
        bounds, costs = self.prepared[pkey]
        layout = layout.with_boundaries(bounds.pipeline.stage_boundaries)
        if bounds.data != layout.data:
            costs = sim.with_memory(self.run_spec, layout, costs)
        return layout, costs

    def _admit(self, layout, costs, comm) -> bool:
        """Check the layout's exact memory; if it fits, simulate it and rank it. Returns
        whether it fits."""
        res, top_k = self.res, self.top_k
        memory = sim.rank_memory(self.run_spec, layout, costs)
        peak = max(r.total_bytes for r in memory)
        if not memory_fits(self.run_spec, memory):
            res.not_fitting += 1
            host = max(r.host_bytes for r in memory)
            note = f"needs {peak / 2**30:.1f} GiB per rank" + (
                f" and {host / 2**30:.1f} GiB of host memory" if host else "")
            res.candidates.append(Candidate(layout, 0.0, peak, False, note=note))
            return False
        result = sim.simulate(self.run_spec, layout, costs, comm, False)
        pred = sim.predict(self.run_spec, layout, costs, result)
        res.simulated += 1
        res.ranked.append((layout, pred))
        res.ranked.sort(key=lambda lp: (lp[1].step_time_s, lp[1].peak_memory_bytes))
        del res.ranked[top_k:]
        res.candidates.append(Candidate(layout, pred.step_time_s, pred.peak_memory_bytes, True,
                                        breakdown_s=pred.breakdown_s))
        return True


def _defer(heap, better: float, seq: int, key, res: Result, top_k: int) -> bool:
    """After a bound improved to ``better``: put the layout back if others now come first, or
    drop it if it cannot reach the top K. True if the caller should move on."""
    if len(res.ranked) >= top_k and better >= res.ranked[top_k - 1][1].step_time_s:
        res.bounded_out += 1
        return True
    if heap and better > heap[0][0]:
        heapq.heappush(heap, (better, seq, key))   # look again when its turn comes
        return True
    return False


def evaluate_one(run: sim.RunSpec, blocks_for: Callable[[int], Sequence[BlockCost]],
                 layout, comm_for: Callable | None = None) -> tuple:
    """Simulate one complete layout with its timeline (``planner simulate``, the winner)."""
    comm_for = comm_for or sim.default_comm_time
    return sim.evaluate(run, blocks_for(layout.microbatch_size), layout,
                        comm_for(run.cluster, layout), timeline=True)

