"""The one rank grid: which global ranks form each data, pipeline and tensor parallel group.

Both the planner (to know which links a group crosses) and the executor (to build its device
mesh) call ``rank_of`` / ``groups``; nothing else decides rank placement.

Ranks are laid out row-major over ``(dp, pp, tp)``, tensor parallel fastest:
``rank = (dp_i * pp + pp_i) * tp + tp_i``. Tensor-parallel peers are therefore adjacent ranks (on
one node whenever tp <= devices per node), as Megatron-LM places them (Narayanan et al. SC'21,
sec. 3.3: "tensor model parallelism ... within a multi-GPU server"); this is also the dimension
order of the executor's ``DeviceMesh(("dp", "pp", "tp"))``. Rank r runs on node
``r // devices_per_node``, local device ``r % devices_per_node``.
"""
from __future__ import annotations

DIMS = ("dp", "pp", "tp")


def rank_of(dp_i: int, pp_i: int, tp_i: int, pp: int, tp: int) -> int:
    """Global rank of grid coordinate (dp_i, pp_i, tp_i)."""
    return (dp_i * pp + pp_i) * tp + tp_i


def coords_of(rank: int, pp: int, tp: int) -> tuple[int, int, int]:
    """Inverse of ``rank_of``: (dp_i, pp_i, tp_i)."""
    return rank // (pp * tp), (rank // tp) % pp, rank % tp


def groups(dim: str, dp: int, pp: int, tp: int) -> list[list[int]]:
    """All groups along ``dim`` ("dp", "pp" or "tp"), each a sorted list of global ranks.

    A ``dim`` group holds the ranks that share the other two coordinates.
    """
    sizes = {"dp": dp, "pp": pp, "tp": tp}
    if dim not in sizes:
        raise ValueError(f"dim must be one of {DIMS}, got {dim!r}")
    others = [d for d in DIMS if d != dim]
    out = []
    for a in range(sizes[others[0]]):
        for b in range(sizes[others[1]]):
            members = []
            for k in range(sizes[dim]):
                c = {dim: k, others[0]: a, others[1]: b}
                members.append(rank_of(c["dp"], c["pp"], c["tp"], pp, tp))
            out.append(members)
    return out


def node_of(rank: int, devices_per_node: int) -> int:
    return rank // devices_per_node


def nodes_spanned(group: list[int], devices_per_node: int) -> int:
    """How many distinct nodes a group's ranks sit on."""
    return len({node_of(r, devices_per_node) for r in group})
