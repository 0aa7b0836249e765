"""A user's model, built from ``callable_path`` (``package.module:callable``): what it is is known
only once built (``planner profile``), so it is planned from a profile. Its blocks are taken as
they come (every one a "block"); it has no tensor-parallel plan and nothing to recompute
selectively. The contract it must meet is in ``planner.models.build``.
"""
from __future__ import annotations

from planner.errors import PlannerError
from planner.families.base import Family


class CustomFamily(Family):
    name = "custom"
    builtin = False

    def validate(self, spec) -> None:
        if ":" not in spec.callable_path:
            raise PlannerError(f"callable_path {spec.callable_path!r} must look like "
                               "'package.module:callable'")

    def num_blocks(self, spec) -> int:
        """A custom model's ``num_layers`` already counts all of its blocks."""
        return spec.num_layers

    def block_kinds(self, spec) -> list[str]:
        return ["block"] * spec.num_layers

    def tp_problem(self, spec, tp: int, sequence_parallel: bool) -> str:
        if tp > 1:
            return (f"tp({tp}) needs a zoo model (gpt or mlp) whose Linear layers the executor "
                    f"knows how to split; {spec.callable_path or spec.name} is custom")
        return ""

