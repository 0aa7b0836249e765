"""A layout on a mixed cluster: each distinct replica simulated, data parallel synced at the
slowest one.

On a cluster whose node groups hold several device kinds (``Cluster.node_groups``) the ranks
of one layout sit on different devices. Rank r is on node r // devices_per_node
(``planner.grid``), so data-parallel replica i has a device kind per pipeline stage; replicas
with the same kinds and the same micro-batch count (``Layout.replica_microbatches``) behave
alike and are simulated once (``Replica``).

Per kind (``MixedRun``) a RunSpec on the kind's own cluster view (its device and links): the
compute side -- block costs from the kind's device model, the optimizer step, peak FLOP/s,
memory capacity -- reads it. Tensor-parallel collectives (inside one node, so one kind) and the
pipeline sends of a replica whose stages are all of one kind are priced on that kind's links;
data-parallel collectives and the sends of replicas spanning kinds on the mixed cluster's
placement (``planner.topology``: a flow between nodes of two kinds runs at the slower port).

The stage boundaries are the layout's, common to all replicas; when it has none the blocks are
cut for the replica that sets the pace, each chunk by the speed (and memory) of its own
device (``planner.partition_kinds.partition_by_chunk``). One step: each distinct replica goes
through the event engine twice -- the first pass records when every data-parallel collective
is ready on each replica, the second starts each no earlier than on the slowest
(``planner.sim.dp.Sync``).
The step is the slowest replica's. What this leaves out: one replica's pipeline sends are
priced over the boundary's slowest link among all replicas (``CommModel.p2p``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from planner.cost.precision import peak_flops
from planner.dims import ParallelDims
from planner.errors import PlannerError
from planner.grid import RankGrid
from planner.partition import balanced_partition, chunk_blocks, least_bottleneck
from planner.partition_kinds import fastest_by_chunk, partition_by_chunk
from planner.sim import engine
from planner.sim.blocks import rows_bundle
from planner.sim.chunk import Chunk
from planner.sim.costs import LayoutCosts, memory_rows
from planner.sim.dp import Sync
from planner.sim.memory import chunk_memory, rank_memory
from planner.sim.pp import chunk_links
from planner.sim.predict import StepResult, collectives, simulate
from planner.sim.run import RunSpec, default_comm_time
from planner.specs import Layout, Prediction, TimelineEvent


@dataclass(frozen=True)
class Replica:
    """Data-parallel replicas that run alike: a device kind per pipeline stage (an index into
    ``Kinds.devices``) and a micro-batch count."""
    kinds: tuple[int, ...]
    microbatches: int
    members: tuple[int, ...]          # their dp indices

    @property
    def pure(self) -> bool:
        return len(set(self.kinds)) == 1


def stage_kinds(cluster, node_kind, dims) -> tuple[tuple[int, ...], ...]:
    """Per replica, the device kind (``node_kind[node]``) of each pipeline stage; a
    tensor-parallel group must sit on one kind."""
    grid, per = RankGrid(dims), cluster.devices_per_node
    tp_stride = grid.stride("tp")
    out = []
    for i in range(dims.dp):
        stages = []
        for s in range(dims.pp):
            base = grid.rank_of(dp=i, pp=s)
            kinds = {node_kind[(base + t * tp_stride) // per] for t in range(dims.tp)}
            if len(kinds) > 1:
                raise PlannerError(f"tp({dims.tp}) group of replica {i}, stage {s} spans "
                                   f"{len(kinds)} device kinds of cluster {cluster.name}: "
                                   "tensor parallelism runs on one kind")
            stages.append(kinds.pop())
        out.append(tuple(stages))
    return tuple(out)


def replicas(mx: "MixedRun", layout) -> list[Replica]:
    """The distinct replicas of ``layout``, in order of their first member (cached)."""
    key = (layout.dims, layout.num_microbatches, layout.replica_microbatches)
    hit = mx.replica_cache.get(key)
    if hit is None:
        groups: dict = {}
        for i, kinds in enumerate(mx.shapes(layout.dims)):
            groups.setdefault((kinds, layout.microbatches_of(i)), []).append(i)
        hit = mx.replica_cache[key] = [Replica(k, m, tuple(members))
                                       for (k, m), members in groups.items()]
    return hit


def kind_view(cluster, device):
    """The nodes of ``device``'s first group as a uniform cluster of the same size."""
    group = next(g for g in cluster.groups if g.device == device)
    return replace(cluster, device=device, intra_node=group.intra_node,
                   inter_node=group.inter_node, node_groups=(), node_links=(), node_levels=())


def _kind_comm(kind, mixed):
    def time(name, n_bytes, dim, stage=None):
        return (mixed if dim == "dp" else kind)(name, n_bytes, dim, stage)
    return time


class Kinds:
    """The device kinds of a mixed cluster, whatever the order of its nodes: per kind a RunSpec
    on its own cluster view, its block costs, its collective times and per-block rows (all
    shared by every arrangement of the same nodes)."""

    def __init__(self, run: RunSpec, costs_on: Callable[..., Sequence]):
        self.devices = run.cluster.kinds
        self.costs_on = costs_on          # (DeviceSpec, micro-batch size) -> BlockCosts
        self.runs = [replace(run, cluster=kind_view(run.cluster, d)) for d in self.devices]
        self.capacities = [d.usable_memory_bytes for d in self.devices]
        self.slowdown = run.cluster.compute_slowdown != 1.0     # rows depend on the world
        self._comms: dict = {}
        self._bundles: dict = {}
        self._cuts: dict = {}

    def fastest_cut(self, bundles: list) -> tuple:
        """``planner.partition_kinds.fastest_by_chunk`` of chunks whose rows are ``bundles``
        (one per chunk), without memory: (bottleneck, starts, a bound no cut beats); cached,
        since the layouts that differ only in ZeRO stage or schedule share it."""
        key = tuple(map(id, bundles))
        hit = self._cuts.get(key)
        if hit is None or any(a is not b for a, b in zip(hit[0], bundles)):
            first = bundles[0]
            if all(b is first for b in bundles):
                lo = least_bottleneck(first.block_s, len(bundles), first.send_s)
                starts, hi = balanced_partition(first.block_s, len(bundles), first.send_s)
                value = (hi, list(starts), lo)
            else:
                value = fastest_by_chunk([b.block_s for b in bundles], first.send_s)
            hit = self._cuts[key] = (bundles, value)
        return hit[1]

    def index(self, device) -> int:
        return self.devices.index(device)

    def blocks(self, k: int, b: int):
        return self.costs_on(self.devices[k], b)

    def comm(self, k: int, layout):
        """Collective times on kind k's own links (tensor parallel, its pipeline sends)."""
        key = (k, layout.dims, layout.data.ps_shards)
        hit = self._comms.get(key)
        if hit is None:
            hit = self._comms[key] = default_comm_time(self.runs[k].cluster, layout)
        return hit

    def bundle(self, k: int, layout):
        """Kind k's per-block rows under ``layout`` (its tp, sequence parallelism, recompute and
        micro-batch size; memoised here and in ``planner.sim.blocks``): its
        tensor-parallel collectives on its own links, which for tp inside a node depend on tp
        alone, so the rows are shared by every dp and pp. Their boundary sends (the
        partition's weights) are left at 0: on the GPUs here a stage's compute outweighs its
        sends by orders of magnitude; the simulated chunks price theirs (``chunk_links``)."""
        key = (k, layout.dims.tp, layout.tensor.sequence_parallel, layout.recompute,
               layout.microbatch_size, self.slowdown and layout.world_size > 1)
        hit = self._bundles.get(key)
        if hit is None:
            comm = self._comms.get(("rows", k, layout.tp))
            if comm is None:
                probe = Layout(dims=ParallelDims(tp=layout.tp))
                comm = self._comms[("rows", k, layout.tp)] = default_comm_time(
                    self.runs[k].cluster, probe)
            hit = self._bundles[key] = rows_bundle(
                self.runs[k], self.blocks(k, layout.microbatch_size), layout, comm)
        return hit

    def capacity(self, k: int) -> int:
        return self.devices[k].usable_memory_bytes


class MixedRun:
    """A run on one arrangement of a mixed cluster's nodes: its kinds, which node holds which,
    and the collective times of the mixed placement."""

    def __init__(self, run: RunSpec, costs_on: Callable[..., Sequence] | None = None,
                 kinds: Kinds | None = None):
        self.run, self.cluster = run, run.cluster
        self.kinds = kinds or Kinds(run, costs_on)
        self.kind_runs = self.kinds.runs
        self.node_kind = tuple(self.kinds.index(self.cluster.node_group(n).device)
                               for n in range(self.cluster.num_nodes))
        self._comms: dict = {}
        self._shapes: dict = {}
        self.replica_cache: dict = {}
        self.chunk_cache: dict = {}

    def blocks(self, k: int, b: int):
        return self.kinds.blocks(k, b)

    def capacity(self, k: int) -> int:
        return self.kinds.capacity(k)

    def shapes(self, dims) -> tuple[tuple[int, ...], ...]:
        """Per replica the kind of each stage (``stage_kinds``), cached."""
        hit = self._shapes.get(dims)
        if hit is None:
            hit = self._shapes[dims] = stage_kinds(self.cluster, self.node_kind, dims)
        return hit

    def comms(self, layout) -> tuple[list, Callable]:
        """Per kind the collective times of its stages (dp on the mixed cluster), and the
        mixed cluster's."""
        key = (layout.dims, layout.data.ps_shards)
        hit = self._comms.get(key)
        if hit is None:
            mixed = default_comm_time(self.cluster, layout)
            hit = self._comms[key] = (
                [_kind_comm(self.kinds.comm(k, layout), mixed)
                 for k in range(len(self.kinds.devices))], mixed)
        return hit


def even(layout, m: int):
    """``layout`` as one replica with ``m`` micro-batches sees it (what the engine runs)."""
    return replace(layout, num_microbatches=m, replica_microbatches=())


def chunk_owners(layout) -> list[int]:
    kind, p = layout.pipeline.kind, layout.pp
    return [kind.chunk_rank(c, p) for c in range(layout.num_chunks)]


def replica_costs(mx: MixedRun, layout, rep: Replica):
    """(LayoutCosts, collective times) of one replica: chunk c from its device's rows."""
    kind_comms, mixed = mx.comms(layout)
    lay = even(layout, rep.microbatches)
    bundles = {k: mx.kinds.bundle(k, layout) for k in set(rep.kinds)}
    kind = layout.pipeline.kind
    comm = kind_comms[rep.kinds[0]] if rep.pure else mixed
    per_chunk = [bundles[rep.kinds[o]] for o in chunk_owners(layout)]
    starts = layout.pipeline.stage_boundaries or (0,)
    # chunks are shared by the layouts with this cut (ZeRO stages, micro-batch counts...)
    key = (starts, kind.split_backward, kind.placement, id(comm), tuple(map(id, per_chunk)))
    hit = mx.chunk_cache.get(key)
    if hit is None or any(a is not b for a, b in zip(hit[0], per_chunk)):
        pe, ge = mx.run.bytes_per_param[:2]
        n = len(per_chunk[0].rows)
        chunks = [Chunk(rng, b, kind.split_backward, pe, ge)
                  for rng, b in zip(chunk_blocks(starts, n), per_chunk)]
        chunk_links(chunks, lay, comm, per_chunk[0].scatter)
        hit = mx.chunk_cache[key] = (per_chunk, chunks)
    chunks = hit[1]
    first = bundles[rep.kinds[0]]
    tp_counts = {key: k * rep.microbatches for key, k in first.tp_per_microbatch.items()}
    memory = memory_rows(mx.kind_runs[rep.kinds[0]], lay, first)
    return LayoutCosts(chunks, first, tp_counts, memory), comm


def partition(mx: MixedRun, layout, reps: list[Replica]):
    """``layout`` with stage boundaries cut for its slowest replica (module docstring)."""
    if layout.num_chunks == 1:
        return layout.with_boundaries(())
    owners = chunk_owners(layout)
    bundle = mx.kinds.bundle

    def pace(rep):   # micro-batches x the per-micro-batch time of a perfectly balanced pipeline
        return rep.microbatches / sum(1.0 / bundle(k, layout).total_s for k in rep.kinds)
    rep = max(reps, key=pace)
    lay = even(layout, rep.microbatches)
    first = bundle(rep.kinds[0], layout)
    mem = chunk_memory(lay, memory_rows(mx.kind_runs[rep.kinds[0]], lay, first))
    if rep.pure:
        starts = balanced_partition(first.block_s, layout.num_chunks, first.send_s, memory=mem,
                                    cap=mx.capacity(rep.kinds[0]))[0]
        return layout.with_boundaries(starts)
    per_kind = {k: bundle(k, layout) for k in set(rep.kinds)}
    bundles = [per_kind[rep.kinds[o]] for o in owners]
    caps = [mx.capacity(rep.kinds[o]) for o in owners]
    starts = mx.kinds.fastest_cut(bundles)[1]
    if mem is not None:
        ends = list(starts[1:]) + [len(first.block_s)]
        if any(mem.of(c, starts[c], ends[c] - 1) > caps[c] for c in range(len(owners))):
            starts = partition_by_chunk([b.block_s for b in bundles], first.send_s, mem,
                                        caps)[0]
    return layout.with_boundaries(starts)


@dataclass
class MixedStep:
    """What the replicas did in one step: the step (the slowest), and per distinct replica its
    time alone (before the sync) and synced."""
    layout: object                   # with stage boundaries
    replicas: list                   # Replica
    alone_s: list                    # per replica, its step without waiting for the others
    results: list                    # per replica, StepResult of the synced pass
    costs: list                      # per replica, LayoutCosts

    @property
    def step_time_s(self) -> float:
        return max(r.step_time_s for r in self.results)

    @property
    def slowest(self) -> int:
        return max(range(len(self.results)), key=lambda i: self.results[i].step_time_s)


def prepare_mixed(mx: MixedRun, layout) -> tuple:
    """(layout with stage boundaries, its distinct replicas, per replica (LayoutCosts, comm))."""
    reps = replicas(mx, layout)
    if not layout.pipeline.stage_boundaries and layout.num_chunks > 1:
        layout = partition(mx, layout, reps)
    return layout, reps, [replica_costs(mx, layout, rep) for rep in reps]


def memory_mixed(mx: MixedRun, layout, reps, prepared) -> list:
    """Every distinct replica's pipeline ranks' memory, each with its device's capacity."""
    grid, out = RankGrid(layout.dims), []
    for rep, (costs, _) in zip(reps, prepared):
        lay = even(layout, rep.microbatches)
        for r, mem in enumerate(rank_memory(mx.kind_runs[rep.kinds[0]], lay, costs)):
            out.append(replace(mem, rank=grid.rank_of(dp=rep.members[0], pp=r),
                               capacity_bytes=mx.capacity(rep.kinds[r])))
    return out


def simulate_mixed(mx: MixedRun, layout, timeline: bool = False, prepared=None) -> MixedStep:
    """One step of ``layout`` on the mixed cluster (module docstring); ``prepared`` from
    ``prepare_mixed``."""
    layout, reps, prepared = prepared or prepare_mixed(mx, layout)
    sync = Sync() if len(reps) > 1 and layout.dp > 1 else None
    alone, results = [], []
    for second in ((False, True) if sync is not None else (True,)):
        results = []
        for rep, (costs, comm) in zip(reps, prepared):
            runs = [mx.kind_runs[k] for k in rep.kinds]
            results.append(simulate(runs[0], even(layout, rep.microbatches), costs, comm,
                                    timeline and second, sync, runs))
        if not alone:
            alone = [r.step_time_s for r in results]
        if sync is not None and not second:
            sync.freeze()
    return MixedStep(layout, reps, alone, results, [c for c, _ in prepared])


def predict_mixed(mx: MixedRun, step: MixedStep, timeline: bool = False) -> Prediction:
    """The Prediction of a mixed step: breakdown of the slowest replica, memory of every
    distinct replica's stages against its own device, FLOP rates over all devices."""
    layout, run = step.layout, mx.run
    s = step.slowest
    ranks, t = step.results[s].ranks, step.step_time_s
    p = layout.pp
    breakdown = {k: sum(st.acc[k] for st in ranks) / p for k in engine.BREAKDOWN_KEYS}
    for key in ("pp_comm", "dp_comm"):
        breakdown[f"{key}_hidden"] = max(0.0, breakdown[f"{key}_hidden"]
                                         - breakdown[f"{key}_exposed"])
    grid = RankGrid(layout.dims)
    memory = memory_mixed(mx, layout, step.replicas, [(c, None) for c in step.costs])
    events: list = []
    for rep, res in zip(step.replicas, step.results):
        if timeline:
            events += [TimelineEvent(grid.rank_of(dp=rep.members[0], pp=r), stream, name, t0, t1)
                       for r, st in enumerate(res.ranks) for stream, name, t0, t1 in st.events]
    costs = step.costs[0]
    total_mb = layout.total_microbatches
    model_flops = 3.0 * costs.model_flops_mb * total_mb
    hw_flops = model_flops + costs.recompute_flops_mb * total_mb
    peaks = sum(peak_flops(mx.cluster.device_of_rank(r), run.dtype)
                for r in range(layout.world_size))
    first = next(i for i, rep in enumerate(step.replicas) if 0 in rep.members)
    rep0 = step.replicas[first]
    counts = collectives(mx.kind_runs[rep0.kinds[0]], even(layout, rep0.microbatches),
                         step.costs[first], step.results[first])
    n = layout.world_size
    return Prediction(
        step_time_s=t, breakdown_s=breakdown, memory=tuple(memory),
        peak_memory_bytes=max(m.total_bytes for m in memory),
        device_memory_bytes=min(m.capacity_bytes for m in memory),
        fits=all(m.total_bytes <= m.capacity_bytes for m in memory),
        tflops_per_device=hw_flops / (t * n) / 1e12 if t > 0 else 0.0,
        mfu=model_flops / (t * peaks) if t > 0 and peaks else 0.0,
        bubble_fraction=breakdown["bubble"] / t if t > 0 else 0.0,
        collectives=counts, compute_source=run.compute_source, timeline=tuple(events))


def evaluate_mixed(mx: MixedRun, layout, timeline: bool = True) -> tuple:
    """(layout with its stage boundaries, Prediction, MixedStep) of ``layout``."""
    from planner import rules
    rules.check_layout(mx.run.model, layout)
    if layout.cp > 1 or layout.ep > 1 or layout.data.offload:
        raise PlannerError(f"{layout.describe()} on mixed cluster {mx.run.cluster.name}: the "
                           "mixed simulation prices replicas of dp, tp and pp only (no cp, ep "
                           "or offload); plan those on one device kind")
    step = simulate_mixed(mx, layout, timeline)
    return step.layout, predict_mixed(mx, step, timeline), step


__all__ = ["Kinds", "MixedRun", "MixedStep", "Replica", "StepResult", "chunk_owners",
           "evaluate_mixed", "even",
           "kind_view", "memory_mixed", "partition", "predict_mixed", "prepare_mixed",
           "replicas", "simulate_mixed", "stage_kinds"]
