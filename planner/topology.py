"""Which links a communication group crosses: placement of the parallel groups on a cluster.

Placement comes from the one rank grid (``planner.grid``): rank r sits on node
``r // devices_per_node``. The network is a graph (``build_graph``, networkx):

    device --intra_node--> node switch          (NVSwitch port; one per device)
    device --(port)--> NIC --inter_node--> spine (``nics_per_node`` NICs shared evenly by the
                                                 node's devices; 0 = one NIC per device)
    switch a --node link-- switch b              (``Cluster.node_links``: replaces the spine
                                                 route for that node pair)

A node's links are those of its group (``Cluster.node_groups``: a mixed cluster's nodes of
another device kind bring their own NVLink and network ports; the spine is the fabric they
share), and ``Cluster.node_levels`` override the intra-/inter-node link of single nodes, so a
flow between an H100 node and an A100 node runs at the slower of the two ports. A flow's route is
fixed by that policy (same node: through the switch; a node link if the pair has one; else
through the spine); its bandwidth is the least, over the links it crosses, of the link's
bandwidth divided by the flows that cross it in the same direction at the same time (every
group of one dimension runs its collective at once), and its latency the largest link latency
on the route (level figures are end-to-end per message). A group's bottleneck is its slowest
flow. Uniform clusters (``Cluster.uniform``) never share a link between two flows of one
collective, so their placement is computed arithmetically without building the graph.

``Placement(cluster).groups(dim, dims)`` and ``.boundary(dims, stage)`` are what the cost of a
collective needs (``planner.cost.collectives.CommModel``); nothing here prices anything.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from planner.dims import ParallelDims
from planner.errors import PlannerError
from planner.grid import RankGrid
from planner.specs import Cluster, LinkLevel

LEVELS = ("intra_node", "inter_node")
INF = float("inf")


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
def _residues(dim: str, dims: ParallelDims, per: int) -> set[int]:
    """Offsets inside a node (base rank % per) that the first ranks of ``dim`` groups take.

    Group bases are o*block + i (o < world/block, i < stride): the axes slower than ``dim``
    move in multiples of its block, the faster ones stay below its stride; only residues mod
    ``per`` decide which nodes a group touches, and both terms repeat with a period <= per.
    """
    grid = RankGrid(dims)
    size, stride = grid.sizes[dim], grid.stride(dim)
    block = size * stride
    outer = grid.world_size // block
    o_count = min(outer, per // math.gcd(block, per))
    return {(o * block + i) % per for o in range(o_count) for i in range(min(stride, per))}


@lru_cache(maxsize=4096)
def uniform_shape(per: int, dim: str, dims: ParallelDims) -> tuple[int, int, bool]:
    """(most nodes a group spans, most ranks of a group on one node, evenly spread)."""
    grid = RankGrid(dims)
    size, stride = grid.sizes[dim], grid.stride(dim)
    nodes, rpn, seen = 1, 1, set()
    for r in _residues(dim, dims, per):
        counts: dict[int, int] = {}
        for k in range(size):
            node = (r + stride * k) // per
            counts[node] = counts.get(node, 0) + 1
        nodes, rpn = max(nodes, len(counts)), max(rpn, max(counts.values()))
        seen.update(counts.values())
    # even: every group holds the same number of ranks on every node it touches
    return nodes, rpn, len(seen) == 1


@lru_cache(maxsize=4096)
def uniform_boundary_crosses(per: int, dims: ParallelDims, stage: int) -> bool:
    """Whether any pipeline send from stage ``stage`` to stage (stage+1) % pp leaves a node."""
    pp, stride = dims.pp, RankGrid(dims).stride("pp")
    nxt = (stage + 1) % pp
    return any((r + stage * stride) // per != (r + nxt * stride) // per
               for r in _residues("pp", dims, per))


# --------------------------------------------------------------------------------------------
# The graph, for clusters that are not uniform
# --------------------------------------------------------------------------------------------
def _node_levels(cluster: Cluster, node: int) -> tuple[LinkLevel, LinkLevel]:
    group = cluster.node_group(node)
    intra, inter = group.intra_node, group.inter_node
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
# Placement of a layout's groups
# --------------------------------------------------------------------------------------------
class Placement:
    """The groups of each dimension on one cluster, and the links they cross (cached)."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self._graph = None
        self._placements: dict[tuple, GroupPlacement] = {}
        self._boundaries: dict[tuple, tuple[str, Bottleneck, float]] = {}

    @property
    def graph(self):
        if self._graph is None:
            self._graph = build_graph(self.cluster)
        return self._graph

    def _check_world(self, dims: ParallelDims) -> None:
        if dims.world_size > self.cluster.num_devices:
            raise PlannerError(f"{dims.arithmetic()} ranks do not fit on cluster "
                               f"{self.cluster.name} of {self.cluster.num_devices} devices")

    # -- placement ---------------------------------------------------------------------------
    def groups(self, dim: str, dims: ParallelDims) -> GroupPlacement:
        """Where the ``dim`` groups of ``dims`` sit and the links they cross."""
        key = (dim, dims)
        pl = self._placements.get(key)
        if pl is None:
            dims.degree(dim)         # one-line error for an unknown dimension
            self._check_world(dims)
            pl = (self._uniform_placement if self.cluster.uniform
                  else self._graph_placement)(dim, dims)
            self._placements[key] = pl
        return pl

    def _uniform_placement(self, dim, dims: ParallelDims) -> GroupPlacement:
        c = self.cluster
        size = dims.degree(dim)
        groups = dims.world_size // size
        intra, inter = c.intra_node, c.inter_node
        if size == 1:
            return GroupPlacement(dim, 1, groups, 1, 1, True, "none", (), _bn(intra), None,
                                  None, 0.0)
        nodes, rpn, even = uniform_shape(c.devices_per_node, dim, dims)
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

    def _graph_placement(self, dim, dims: ParallelDims) -> GroupPlacement:
        c, per = self.cluster, self.cluster.devices_per_node
        groups = RankGrid(dims).groups(dim)
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

    def boundary(self, dims: ParallelDims, stage: int) -> tuple[str, Bottleneck, float]:
        """(level, bottleneck, call latency) of the pipeline sends stage -> (stage+1) % pp."""
        pp = dims.pp
        key = (dims, stage % pp)
        found = self._boundaries.get(key)
        if found is None:
            self._check_world(dims)
            c, s = self.cluster, stage % pp
            if pp == 1:
                found = ("none", Bottleneck(0.0, INF), 0.0)
            elif c.uniform:
                cross = uniform_boundary_crosses(c.devices_per_node, dims, s)
                lv = c.inter_node if cross else c.intra_node
                found = ("inter_node" if cross else "intra_node", _bn(lv), lv.call_latency_s)
            else:
                flows = [(g[s], g[(s + 1) % pp]) for g in RankGrid(dims).groups("pp")]
                bn, kinds, call = bottleneck(c, self.graph, flows)
                found = ("intra_node" if kinds == ("intra_node",) else "inter_node", bn, call)
            self._boundaries[key] = found
        return found


def _bn(level: LinkLevel) -> Bottleneck:
    return Bottleneck(level.latency_s, level.bandwidth_bytes_per_s)
