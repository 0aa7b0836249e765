"""Which links a communication group crosses, and what its collectives cost there.

Placement comes from the one rank grid (``planner.grid``): rank r sits on node
``r // devices_per_node``. The network is a graph (``build_graph``, networkx):

    device --intra_node--> node switch          (NVSwitch port; one per device)
    device --(port)--> NIC --inter_node--> spine (``nics_per_node`` NICs shared evenly by the
                                                 node's devices; 0 = one NIC per device)
    switch a --node link-- switch b              (``Cluster.node_links``: replaces the spine
                                                 route for that node pair)

``Cluster.node_levels`` override the intra-/inter-node link of single nodes. A flow's route is
fixed by that policy (same node: through the switch; a node link if the pair has one; else
through the spine); its bandwidth is the least, over the links it crosses, of the link's
bandwidth divided by the flows that cross it in the same direction at the same time (every
group of one dimension runs its collective at once), and its latency the largest link latency
on the route (level figures are end-to-end per message). A group's bottleneck is its slowest
flow. Uniform clusters (``Cluster.uniform``) never share a link between two flows of one
collective, so their placement is computed arithmetically without building the graph.

``CommModel(cluster).time(collective, n_bytes, dim, dp, pp, tp)`` is what cost code calls. It
uses, in order: measured collective fits of the cluster (``planner profile --network``) for the
group's level and size (carried to other group sizes by the formula's step and volume factors);
the hierarchical (two-level) form when a group spans nodes with several ranks on each; else the
alpha-beta formula (``planner.cost.comm``) over the group's bottleneck link, plus the level's
per-call latency. Pure python; results per (dim, dp, pp, tp) are cached.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from functools import lru_cache

from planner import grid
from planner.cost import comm
from planner.errors import PlannerError
from planner.specs import Cluster, LinkLevel

LEVELS = ("intra_node", "inter_node")
INF = float("inf")
DEFAULT_ALGORITHM = {c: next(iter(a)) for c, a in comm.FLAT.items()}
# Algorithms whose measured curve may be carried to another group size (broadcast: MPICH's two).
_SCALE_ALGORITHMS = {"broadcast": ("tree", "scatter_allgather")}
_TWO_LEVEL = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "all_to_all")


@dataclass(frozen=True)
class Bottleneck:
    latency_s: float
    bandwidth_bytes_per_s: float


@dataclass(frozen=True)
class GroupPlacement:
    """Where the groups of one dimension sit and the links their collectives run over.

    ``level``: "none" (groups of one), "intra_node" (inside one node), "inter_node" (one rank per
    node) or "mixed". ``flat`` is the bottleneck of a ring over all members; ``intra``/``inter``
    those of the two phases of a hierarchical collective (set when ``hierarchical``).
    """
    dim: str
    size: int
    num_groups: int
    nodes: int                      # most nodes one group spans
    ranks_per_node: int             # most ranks of one group on one node
    even: bool                      # every group holds the same number of ranks on each node
    level: str
    links: tuple[str, ...]          # kinds of links crossed: intra_node, inter_node, node_link a-b
    flat: Bottleneck
    intra: Bottleneck | None
    inter: Bottleneck | None
    call_latency_s: float

    @property
    def hierarchical(self) -> bool:
        return self.level == "mixed" and self.even and self.intra is not None


# --------------------------------------------------------------------------------------------
# Uniform clusters: arithmetic placement
# --------------------------------------------------------------------------------------------
def _stride(dim: str, pp: int, tp: int) -> int:
    return {"tp": 1, "pp": tp, "dp": pp * tp}[dim]


def _residues(dim: str, dp: int, pp: int, tp: int, per: int) -> set[int]:
    """Offsets inside a node (base rank % per) that the first ranks of ``dim`` groups take.

    Group bases are o*block + i (o < world/block, i < stride); only residues mod ``per`` decide
    which nodes a group touches, and both terms repeat with a period <= per.
    """
    size = {"dp": dp, "pp": pp, "tp": tp}[dim]
    stride = _stride(dim, pp, tp)
    block = size * stride
    outer = dp * pp * tp // block
    o_count = min(outer, per // math.gcd(block, per))
    return {(o * block + i) % per for o in range(o_count) for i in range(min(stride, per))}


@lru_cache(maxsize=4096)
def uniform_shape(per: int, dim: str, dp: int, pp: int, tp: int) -> tuple[int, int, bool]:
    """(most nodes a group spans, most ranks of a group on one node, evenly spread)."""
    size = {"dp": dp, "pp": pp, "tp": tp}[dim]
    stride = _stride(dim, pp, tp)
    nodes, rpn, seen = 1, 1, set()
    for r in _residues(dim, dp, pp, tp, per):
        counts: dict[int, int] = {}
        for k in range(size):
            node = (r + stride * k) // per
            counts[node] = counts.get(node, 0) + 1
        nodes, rpn = max(nodes, len(counts)), max(rpn, max(counts.values()))
        seen.update(counts.values())
    # even: every group holds the same number of ranks on every node it touches
    return nodes, rpn, len(seen) == 1


@lru_cache(maxsize=4096)
def uniform_boundary_crosses(per: int, dp: int, pp: int, tp: int, stage: int) -> bool:
    """Whether any pipeline send from stage ``stage`` to stage (stage+1) % pp leaves a node."""
    nxt = (stage + 1) % pp
    return any((r + stage * tp) // per != (r + nxt * tp) // per
               for r in _residues("pp", dp, pp, tp, per))


# --------------------------------------------------------------------------------------------
# The graph, for clusters that are not uniform
# --------------------------------------------------------------------------------------------
def _node_levels(cluster: Cluster, node: int) -> tuple[LinkLevel, LinkLevel]:
    intra, inter = cluster.intra_node, cluster.inter_node
    for lv in cluster.node_levels:
        if lv.node == node:
            intra, inter = lv.intra_node or intra, lv.inter_node or inter
    return intra, inter


def _nic(cluster: Cluster, rank: int) -> tuple:
    per = cluster.devices_per_node
    k = cluster.nics_per_node or per
    return ("nic", rank // per, (rank % per) * k // per)


def build_graph(cluster: Cluster):
    """The cluster as a networkx graph; edges carry latency_s, bandwidth_bytes_per_s, kind."""
    import networkx as nx  # ~0.1 s to import: only non-uniform clusters pay it

    g = nx.Graph()
    per = cluster.devices_per_node
    for node in range(cluster.num_nodes):
        intra, inter = _node_levels(cluster, node)
        for d in range(per):
            rank = node * per + d
            g.add_edge(("device", rank), ("switch", node), latency_s=intra.latency_s,
                       bandwidth_bytes_per_s=intra.bandwidth_bytes_per_s, kind="intra_node",
                       call_latency_s=intra.call_latency_s)
            if cluster.num_nodes > 1:
                # The device-to-NIC hop (PCIe) is not modelled: never the bottleneck here.
                g.add_edge(("device", rank), _nic(cluster, rank), latency_s=0.0,
                           bandwidth_bytes_per_s=INF, kind="port", call_latency_s=0.0)
                g.add_edge(_nic(cluster, rank), "spine", latency_s=inter.latency_s,
                           bandwidth_bytes_per_s=inter.bandwidth_bytes_per_s, kind="inter_node",
                           call_latency_s=inter.call_latency_s)
    for link in cluster.node_links:
        a, b = sorted((link.node_a, link.node_b))
        g.add_edge(("switch", a), ("switch", b), latency_s=link.latency_s,
                   bandwidth_bytes_per_s=link.bandwidth_bytes_per_s, kind=f"node_link {a}-{b}",
                   call_latency_s=cluster.inter_node.call_latency_s)
    return g


def route(cluster: Cluster, a: int, b: int) -> list[tuple]:
    """Directed hops of a message from rank a to rank b (the routing policy in the docstring)."""
    per = cluster.devices_per_node
    na, nb = a // per, b // per
    if na == nb:
        return [(("device", a), ("switch", na)), (("switch", na), ("device", b))]
    if any({k.node_a, k.node_b} == {na, nb} for k in cluster.node_links):
        return [(("device", a), ("switch", na)), (("switch", na), ("switch", nb)),
                (("switch", nb), ("device", b))]
    return [(("device", a), _nic(cluster, a)), (_nic(cluster, a), "spine"),
            ("spine", _nic(cluster, b)), (_nic(cluster, b), ("device", b))]


def bottleneck(cluster: Cluster, graph, flows: list[tuple[int, int]]):
    """(Bottleneck, kinds crossed, call latency) of concurrent flows (rank a -> rank b)."""
    paths = [route(cluster, a, b) for a, b in flows if a != b]
    use: dict[tuple, int] = {}
    for path in paths:
        for hop in path:
            use[hop] = use.get(hop, 0) + 1
    lat, bw, call, kinds = 0.0, INF, 0.0, set()
    for path in paths:
        for u, v in path:
            e = graph.edges[u, v]
            lat = max(lat, e["latency_s"])
            bw = min(bw, e["bandwidth_bytes_per_s"] / use[(u, v)])
            call = max(call, e["call_latency_s"])
            if e["kind"] != "port":
                kinds.add(e["kind"])
    return Bottleneck(lat, bw), tuple(sorted(kinds)), call


def _ring(members: list[int]) -> list[tuple[int, int]]:
    p = len(members)
    return [(members[i], members[(i + 1) % p]) for i in range(p)] if p > 1 else []


# --------------------------------------------------------------------------------------------
# Measured curves
# --------------------------------------------------------------------------------------------
def monotone(times: list[float]) -> list[float]:
    """The non-decreasing sequence nearest to ``times`` in log space (pool adjacent violators,
    Ayer et al. 1955; ``scipy.optimize.isotonic_regression``): medians still wobble -- gloo's
    jump 3-4x at 256 KiB-1 MiB (../shared/notes/torch-on-cpu.md) -- and a bigger message must not
    cost less. A lone spike is averaged with the points after it instead of lifting all of them
    to its height."""
    # Imported here, not at module level: scipy.optimize costs ~0.3 s and only measured curves
    # need it (presets plan without it).
    from scipy.optimize import isotonic_regression
    return [math.exp(v) for v in isotonic_regression([math.log(t) for t in times]).x]


class _Curve:
    """A CollectiveFit made ready to evaluate: sorted, de-duplicated, non-decreasing."""
    __slots__ = ("sizes", "times", "bandwidth")

    def __init__(self, fit):
        pts: dict[float, list[float]] = {}
        for n, t in zip(fit.message_bytes, fit.time_s):
            pts.setdefault(float(n), []).append(t)
        self.sizes = sorted(pts)
        self.times = monotone([statistics.median(pts[n]) for n in self.sizes])
        self.bandwidth = fit.bandwidth_bytes_per_s

    def __call__(self, n: float) -> float:
        return comm.measured_time(self.sizes, self.times, self.bandwidth, n)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------
class CommModel:
    """Collective times over one cluster's links; see the module docstring for the choice."""

    def __init__(self, cluster: Cluster, gamma_s_per_byte: float = 0.0):
        # gamma defaults to 0: NCCL and gloo fuse the reduction into the copy, and measured
        # curves and fitted bandwidths already include it.
        self.cluster = cluster
        self.gamma = gamma_s_per_byte
        self._graph = None
        self._placements: dict[tuple, GroupPlacement] = {}
        self._boundaries: dict[tuple, tuple[str, Bottleneck, float]] = {}
        self._fits: dict[tuple[str, str], list[tuple[int, _Curve]]] = {}
        for fit in cluster.collective_fits:
            self._fits.setdefault((fit.collective, fit.level), []).append(
                (fit.group_size, _Curve(fit)))

    @property
    def graph(self):
        if self._graph is None:
            self._graph = build_graph(self.cluster)
        return self._graph

    def _check_world(self, dp: int, pp: int, tp: int) -> None:
        if min(dp, pp, tp) < 1:
            raise PlannerError(f"dp, pp, tp must be >= 1, got {dp}, {pp}, {tp}")
        if dp * pp * tp > self.cluster.num_devices:
            raise PlannerError(f"dp({dp}) * pp({pp}) * tp({tp}) = {dp * pp * tp} ranks do not "
                               f"fit on cluster {self.cluster.name} of "
                               f"{self.cluster.num_devices} devices")

    # -- placement ---------------------------------------------------------------------------
    def placement(self, dim: str, dp: int, pp: int, tp: int) -> GroupPlacement:
        key = (dim, dp, pp, tp)
        pl = self._placements.get(key)
        if pl is None:
            if dim not in grid.DIMS:
                raise ValueError(f"dim must be one of {grid.DIMS}, got {dim!r}")
            self._check_world(dp, pp, tp)
            pl = (self._uniform_placement if self.cluster.uniform
                  else self._graph_placement)(dim, dp, pp, tp)
            self._placements[key] = pl
        return pl

    def _uniform_placement(self, dim, dp, pp, tp) -> GroupPlacement:
        c = self.cluster
        size = {"dp": dp, "pp": pp, "tp": tp}[dim]
        groups = dp * pp * tp // size
        intra, inter = c.intra_node, c.inter_node
        if size == 1:
            return GroupPlacement(dim, 1, groups, 1, 1, True, "none", (), _bn(intra), None,
                                  None, 0.0)
        nodes, rpn, even = uniform_shape(c.devices_per_node, dim, dp, pp, tp)
        if nodes == 1:
            return GroupPlacement(dim, size, groups, 1, rpn, True, "intra_node",
                                  ("intra_node",), _bn(intra), None, None, intra.call_latency_s)
        if rpn == 1:
            return GroupPlacement(dim, size, groups, nodes, 1, True, "inter_node",
                                  ("inter_node",), _bn(inter), None, None, inter.call_latency_s)
        flat = Bottleneck(max(intra.latency_s, inter.latency_s),
                          min(intra.bandwidth_bytes_per_s, inter.bandwidth_bytes_per_s))
        return GroupPlacement(dim, size, groups, nodes, rpn, even, "mixed",
                              ("inter_node", "intra_node"), flat, _bn(intra) if even else None,
                              _bn(inter) if even else None,
                              max(intra.call_latency_s, inter.call_latency_s))

    def _graph_placement(self, dim, dp, pp, tp) -> GroupPlacement:
        c, per = self.cluster, self.cluster.devices_per_node
        groups = grid.groups(dim, dp, pp, tp)
        size = len(groups[0])
        nodes, rpn, seen, by_node = 1, 1, set(), []
        for g in groups:
            split: dict[int, list[int]] = {}
            for r in g:
                split.setdefault(r // per, []).append(r)
            counts = [len(v) for v in split.values()]
            nodes, rpn = max(nodes, len(split)), max(rpn, max(counts))
            seen.update(counts)
            by_node.append([split[k] for k in sorted(split)])
        even = len(seen) == 1
        if size == 1:
            return GroupPlacement(dim, 1, len(groups), 1, 1, True, "none", (),
                                  _bn(c.intra_node), None, None, 0.0)
        flat, kinds, call = bottleneck(c, self.graph, [f for g in groups for f in _ring(g)])
        level = ("intra_node" if nodes == 1 else "inter_node" if rpn == 1 else "mixed")
        intra = inter = None
        if level == "mixed" and even:
            intra = bottleneck(c, self.graph, [f for parts in by_node for part in parts
                                               for f in _ring(part)])[0]
            inter = bottleneck(c, self.graph, [f for parts in by_node for j in range(rpn)
                                               for f in _ring([part[j] for part in parts])])[0]
        return GroupPlacement(dim, size, len(groups), nodes, rpn, even, level, kinds, flat,
                              intra, inter, call)

    def boundary(self, dp: int, pp: int, tp: int, stage: int) -> tuple[str, Bottleneck, float]:
        """(level, bottleneck, call latency) of the pipeline sends stage -> (stage+1) % pp."""
        key = (dp, pp, tp, stage % pp)
        found = self._boundaries.get(key)
        if found is None:
            self._check_world(dp, pp, tp)
            c, s = self.cluster, stage % pp
            if pp == 1:
                found = ("none", Bottleneck(0.0, INF), 0.0)
            elif c.uniform:
                cross = uniform_boundary_crosses(c.devices_per_node, dp, pp, tp, s)
                lv = c.inter_node if cross else c.intra_node
                found = ("inter_node" if cross else "intra_node", _bn(lv), lv.call_latency_s)
            else:
                flows = [(g[s], g[(s + 1) % pp]) for g in grid.groups("pp", dp, pp, tp)]
                bn, kinds, call = bottleneck(c, self.graph, flows)
                found = ("intra_node" if kinds == ("intra_node",) else "inter_node", bn, call)
            self._boundaries[key] = found
        return found

    # -- times -------------------------------------------------------------------------------
    def time(self, collective: str, n_bytes: float, dim: str, dp: int, pp: int, tp: int,
             algorithm: str | None = None, shards: int = 1) -> float:
        """Seconds for one ``collective`` of ``n_bytes`` run by every ``dim`` group at once.

        ``n_bytes`` follows planner.cost.comm: all-gather the full output, reduce-scatter the
        full input, all-to-all each rank's total. ``algorithm`` forces a formula (skipping
        measured fits); ``shards`` is k for "parameter_server". send_recv on "pp" is the
        slowest stage-to-stage send (``p2p``).
        """
        if n_bytes <= 0:
            return 0.0
        if collective == "send_recv" and dim == "pp":
            return self.p2p(n_bytes, dp, pp, tp)
        pl = self.placement(dim, dp, pp, tp)
        if pl.size <= 1:
            return 0.0
        if collective == "parameter_server":
            f = pl.flat
            return pl.call_latency_s + comm.parameter_server(
                n_bytes, pl.size, shards, f.latency_s, 1 / f.bandwidth_bytes_per_s, self.gamma)
        if collective not in comm.FLAT:
            raise ValueError(f"collective must be one of {comm.COLLECTIVES}, got {collective!r}")
        if algorithm is None:
            if pl.level in LEVELS:
                t = self._fitted(collective, pl.level, pl.size, n_bytes, pl.flat.latency_s)
                if t is not None:
                    return t
            elif pl.hierarchical and collective in _TWO_LEVEL:
                return self._two_level(collective, n_bytes, pl)
        return pl.call_latency_s + self._formula(collective, algorithm, n_bytes, pl.size, pl.flat)

    def p2p(self, n_bytes: float, dp: int, pp: int, tp: int, stage: int | None = None) -> float:
        """One activation (or gradient) send between adjacent pipeline stages: the slowest
        boundary, or the one after ``stage`` (stage pp-1 is the wrap to 0 that interleaved
        schedules use)."""
        if pp <= 1 or n_bytes <= 0:
            return 0.0
        stages = range(pp - 1) if stage is None else (stage,)
        worst = 0.0
        for s in stages:
            level, bn, call = self.boundary(dp, pp, tp, s)
            t = self._fitted("send_recv", level, 2, n_bytes, bn.latency_s)
            if t is None:
                t = call + comm.send_recv(n_bytes, bn.latency_s, 1 / bn.bandwidth_bytes_per_s)
            worst = max(worst, t)
        return worst

    def _formula(self, collective, algorithm, n, p, bn: Bottleneck) -> float:
        algs = comm.FLAT[collective]
        fn = algs.get(algorithm or DEFAULT_ALGORITHM[collective])
        if fn is None:
            raise ValueError(f"{collective} algorithm must be one of {tuple(algs)}, "
                             f"got {algorithm!r}")
        return fn(n, p, bn.latency_s, 1 / bn.bandwidth_bytes_per_s, self.gamma)

    def _fitted(self, collective, level, p, n, alpha) -> float | None:
        """A measured curve for (collective, level): at its own group size as measured, at
        another carried by the formula's factors -- the volume term by reading the curve at
        n * volume(p)/volume(p_fit), the extra steps at ``alpha`` each (floored so that fewer
        steps never cost less than the scaled curve times steps(p)/steps(p_fit))."""
        curves = self._fits.get((collective, level))
        if not curves:
            return None
        pf, curve = min(curves, key=lambda c: (abs(math.log(c[0] / p)), -c[0]))
        if pf == p:
            return curve(n)
        best = INF
        for alg in _SCALE_ALGORITHMS.get(collective, (DEFAULT_ALGORITHM[collective],)):
            steps, vol, _ = comm.factors(collective, alg, p)
            steps_f, vol_f, _ = comm.factors(collective, alg, pf)
            base = curve(n * vol / vol_f)
            best = min(best, max(base + (steps - steps_f) * alpha,
                                 base * min(1.0, steps / steps_f)))
        return best

    def _phase(self, collective, level, p, n, bn: Bottleneck) -> tuple[float, bool]:
        t = self._fitted(collective, level, p, n, bn.latency_s) if p > 1 else None
        if t is not None:
            return t, True
        return self._formula(collective, None, n, p, bn), False

    def _two_level(self, collective, n, pl: GroupPlacement) -> float:
        """Hierarchical forms (planner.cost.comm), each phase from a fit where one exists;
        formula phases share one call latency, fitted phases carry their measured own."""
        pn, pln = pl.nodes, pl.ranks_per_node
        li, gi = pl.intra, pl.inter
        if collective == "all_to_all":
            return pl.call_latency_s + comm.all_to_all_two_level(
                n, pn, pln, li.latency_s, 1 / li.bandwidth_bytes_per_s, gi.latency_s,
                1 / gi.bandwidth_bytes_per_s)
        plan = {
            "all_reduce": [("reduce_scatter", "intra_node", pln, n, li),
                           ("all_reduce", "inter_node", pn, n / pln, gi),
                           ("all_gather", "intra_node", pln, n, li)],
            "reduce_scatter": [("reduce_scatter", "intra_node", pln, n, li),
                               ("reduce_scatter", "inter_node", pn, n / pln, gi)],
            "all_gather": [("all_gather", "inter_node", pn, n / pln, gi),
                           ("all_gather", "intra_node", pln, n, li)],
            "broadcast": [("broadcast", "inter_node", pn, n, gi),
                          ("broadcast", "intra_node", pln, n, li)],
        }[collective]
        total, formula_used = 0.0, False
        for coll, level, p, nb, bn in plan:
            t, fitted = self._phase(coll, level, p, nb, bn)
            total += t
            formula_used = formula_used or not fitted
        return total + (pl.call_latency_s if formula_used else 0.0)


def _bn(level: LinkLevel) -> Bottleneck:
    return Bottleneck(level.latency_s, level.bandwidth_bytes_per_s)


_MODELS: dict[int, tuple[Cluster, CommModel]] = {}


def comm_model(cluster: Cluster) -> CommModel:
    """The CommModel of ``cluster``, kept while the same cluster object is in use."""
    hit = _MODELS.get(id(cluster))
    if hit is None or hit[0] is not cluster:
        if len(_MODELS) > 32:
            _MODELS.clear()
        hit = _MODELS[id(cluster)] = (cluster, CommModel(cluster))
    return hit[1]
