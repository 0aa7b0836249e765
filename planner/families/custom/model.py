"""A user's model in torch: the callable's module wrapped as a sequence of blocks, imported
only when the command line names it (``planner.models.custom`` holds the contract and checks)."""
from __future__ import annotations

from planner.errors import PlannerError


def build(spec, trusted_callable: str = "", where: str = "plan"):
    from planner.models.custom import build_custom
    return build_custom(spec, trusted_callable, where)


def apply_tp(model, tp_mesh, sequence_parallel: bool) -> None:
    raise PlannerError(f"{model.spec.callable_path}: a custom model has no tensor-parallel plan")
