"""The parallel dimensions of a layout, by name: one object, one validation.

``ParallelDims`` holds the degree of every dimension (torchtitan's ``ParallelDims``, picotron's
process-group manager). Everything that needs degrees takes this object, never positional
``dp, pp, tp`` arguments, so adding a dimension means adding a field here and an axis in
``GRID_ORDER``, not editing every signature.

``GRID_ORDER`` is the order of the one rank grid (``planner.grid``), slowest first: tensor
parallel fastest so that its peers are adjacent ranks on one node (Megatron-LM, Narayanan et al.
SC'21 sec. 3.3), then pipeline, then data parallel. The executor's ``DeviceMesh`` uses the same
names in the same order. Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from planner.errors import PlannerError

GRID_ORDER = ("dp", "pp", "tp")


@dataclass(frozen=True)
class ParallelDims:
    """Degrees of the parallel dimensions; their product is the world size."""
    dp: int = 1
    tp: int = 1
    pp: int = 1

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PlannerError(f"{f.name} must be an integer >= 1, got {value!r}")

    @property
    def names(self) -> tuple[str, ...]:
        return GRID_ORDER

    def degree(self, name: str) -> int:
        if name not in GRID_ORDER:
            raise PlannerError(f"unknown parallel dimension {name!r}; valid: "
                               f"{', '.join(GRID_ORDER)}")
        return getattr(self, name)

    def degrees(self) -> dict[str, int]:
        """Every dimension's degree in grid order (slowest first)."""
        return {name: getattr(self, name) for name in GRID_ORDER}

    @property
    def world_size(self) -> int:
        out = 1
        for name in GRID_ORDER:
            out *= getattr(self, name)
        return out

    @property
    def dp_enabled(self) -> bool:
        return self.dp > 1

    @property
    def tp_enabled(self) -> bool:
        return self.tp > 1

    @property
    def pp_enabled(self) -> bool:
        return self.pp > 1

    def arithmetic(self) -> str:
        """``dp(2) * tp(4) * pp(2) = 16``: the product, shown, for error messages."""
        terms = " * ".join(f"{n}({getattr(self, n)})" for n in ("dp", "tp", "pp"))
        return f"{terms} = {self.world_size}"

    def check_world(self, world_size: int, what: str = "world_size") -> None:
        """One-line error unless the degrees multiply to ``world_size``."""
        if self.world_size != world_size:
            raise PlannerError(f"{self.arithmetic()} != {what}({world_size})")

    def describe(self) -> str:
        return " ".join(f"{n}={getattr(self, n)}" for n in ("dp", "tp", "pp"))
