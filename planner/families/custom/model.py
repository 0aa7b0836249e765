"""A user's model in torch: the callable's module wrapped as a sequence of blocks
(``planner.models.build`` holds the contract and the checks)."""
from __future__ import annotations

from planner.errors import PlannerError


def build(spec):
    from planner.models.build import _build_custom
    return _build_custom(spec)


def apply_tp(model, tp_mesh, sequence_parallel: bool) -> None:
    raise PlannerError(f"{model.spec.callable_path}: a custom model has no tensor-parallel plan")
