"""The one rank grid: which global ranks form each parallel group.

Both the planner (to know which links a group crosses) and the executor (to build its device
mesh) use ``RankGrid``; nothing else decides rank placement.

Ranks are laid out row-major over the named axes of ``planner.dims.GRID_ORDER`` (today
``dp, cp, pp, tp``), the last axis fastest: ``rank = ((dp_i * cp + cp_i) * pp + pp_i) * tp + tp_i``.
The derived groups of ``planner.dims.DERIVED`` are strided runs too: "dp_cp" the dp*cp ranks of
index ``dp_i * cp + cp_i`` (stride pp*tp), "ep" ``ep`` consecutive ones of that run, "edp" the
runs' ranks ``ep`` apart (every ep-th of the dp-cp run).
Tensor-parallel peers are therefore adjacent ranks (on one node whenever tp <= devices per
node), as Megatron-LM places them (Narayanan et al. SC'21, sec. 3.3: "tensor model parallelism
... within a multi-GPU server"); this is also the dimension order of the executor's
``DeviceMesh``. Rank r runs on node ``r // devices_per_node``, local device
``r % devices_per_node``.
"""
from __future__ import annotations

from functools import lru_cache

from planner.dims import DERIVED, GRID_ORDER, ParallelDims
from planner.errors import PlannerError

DIMS = GRID_ORDER


class RankGrid:
    """Named axes over ``dims``; coordinates are dicts ``{"dp": i, "cp": c, "pp": j, "tp": k}``.
    ``sizes``/``strides`` also hold the derived groups (``planner.dims.DERIVED``)."""

    def __init__(self, dims: ParallelDims):
        self.dims = dims
        self.sizes = dims.degrees()
        stride, self.strides = 1, {}
        for name in reversed(GRID_ORDER):
            self.strides[name] = stride
            stride *= self.sizes[name]
        self.world_size = stride
        run = self.strides["cp"]
        self.sizes.update(dp_cp=dims.dp * dims.cp, ep=dims.ep, edp=dims.edp)
        self.strides.update(dp_cp=run, ep=run, edp=run * dims.ep)

    def rank_of(self, **coords: int) -> int:
        """Global rank of a grid coordinate; axes not given are 0."""
        unknown = set(coords) - set(GRID_ORDER)
        if unknown:
            raise PlannerError(f"unknown grid axis {sorted(unknown)[0]!r}; valid: "
                               f"{', '.join(GRID_ORDER)}")
        return sum(coords.get(n, 0) * self.strides[n] for n in GRID_ORDER)

    def coords_of(self, rank: int) -> dict[str, int]:
        """Inverse of ``rank_of``."""
        return {n: (rank // self.strides[n]) % self.sizes[n] for n in GRID_ORDER}

    def coord(self, rank: int, name: str) -> int:
        return (rank // self.strides[name]) % self.sizes[name]

    def stride(self, name: str) -> int:
        """Rank distance between neighbours along ``name``."""
        return self.strides[name]

    def groups(self, dim: str) -> list[list[int]]:
        """All groups along ``dim``, each a sorted list of global ranks: a ``dim`` group holds
        the ranks that share every other coordinate."""
        if dim not in GRID_ORDER + DERIVED:
            raise PlannerError(f"dim must be one of {GRID_ORDER + DERIVED}, got {dim!r}")
        return [list(g) for g in _groups(self.dims, dim)]

    def mesh_ranks(self) -> list:
        """Nested lists, one level per axis in grid order, holding the rank at each coordinate
        (the shape ``torch.distributed.DeviceMesh`` takes)."""
        def nest(level: int, base: int):
            name = GRID_ORDER[level]
            if level == len(GRID_ORDER) - 1:
                return [base + i * self.strides[name] for i in range(self.sizes[name])]
            return [nest(level + 1, base + i * self.strides[name])
                    for i in range(self.sizes[name])]
        return nest(0, 0)


@lru_cache(maxsize=256)
def _groups(dims: ParallelDims, dim: str) -> tuple[tuple[int, ...], ...]:
    grid = RankGrid(dims)
    seen, out = set(), []
    for rank in range(grid.world_size):
        if grid.coord(rank, dim) != 0:
            continue
        members = tuple(rank + k * grid.strides[dim] for k in range(grid.sizes[dim]))
        if members[0] not in seen:
            seen.update(members)
            out.append(members)
    return tuple(out)


def node_of(rank: int, devices_per_node: int) -> int:
    return rank // devices_per_node


def nodes_spanned(group: list[int], devices_per_node: int) -> int:
    """How many distinct nodes a group's ranks sit on."""
    return len({node_of(r, devices_per_node) for r in group})
