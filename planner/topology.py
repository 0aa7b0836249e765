"""Which links a communication group crosses.

A group's collective runs at the pace of its slowest link: a group whose ranks all sit on one
node uses the intra-node level; one that spans nodes is bounded by the inter-node level (and,
for hierarchical algorithms, uses both). Placement comes from the one rank grid, ``planner.grid``.
"""
from __future__ import annotations

from planner import grid
from planner.specs import Cluster, LinkLevel


def group_nodes(cluster: Cluster, dim: str, dp: int, pp: int, tp: int) -> int:
    """Largest number of nodes any ``dim`` group spans (1 = stays inside a node).

    Groups of one dimension are translates of each other in the grid, so with uniform nodes the
    first group is representative except when groups straddle node boundaries unevenly; taking
    the maximum over all groups covers that.
    """
    per = cluster.devices_per_node
    size = {"dp": dp, "pp": pp, "tp": tp}[dim]
    if size == 1:
        return 1
    stride = {"tp": 1, "pp": tp, "dp": pp * tp}[dim]
    if stride * size <= per and per % (stride * size) == 0:
        return 1  # every group fits inside one node-aligned window
    return max(grid.nodes_spanned(g, per) for g in grid.groups(dim, dp, pp, tp))


def group_link(cluster: Cluster, dim: str, dp: int, pp: int, tp: int) -> LinkLevel:
    """The bottleneck link level of the ``dim`` groups of layout (dp, pp, tp)."""
    if group_nodes(cluster, dim, dp, pp, tp) > 1:
        return cluster.inter_node
    return cluster.intra_node
