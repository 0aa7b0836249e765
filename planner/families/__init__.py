"""The model-family registry: every family-specific rule lives in its family's package.

A family (``planner.families.base.Family``) owns its spec validation, its block sequence,
parameter and FLOP counts, the kernels the roofline prices (analytic costs), activation memory
under tensor/sequence parallelism and recomputation, the tensor-parallel collectives of its
blocks and their divisibility rules, and -- in its ``model`` module, the only one that imports
torch -- its torch builder and tensor-parallel plan. Nothing outside this package branches on
``spec.family``: it asks ``families.of(spec)``.

Adding a family: a package here with a ``Family`` subclass (torch-free) and a ``model`` module
(``build(spec)``, ``apply_tp(model, tp_mesh, sequence_parallel)``), registered below.
"""
from __future__ import annotations

from planner.errors import PlannerError
from planner.families.base import Family
from planner.families.custom import CustomFamily
from planner.families.gpt import GptFamily
from planner.families.llama import LlamaFamily
from planner.families.mlp import MlpFamily
from planner.families.moe import MoeFamily

FAMILIES: dict[str, Family] = {f.name: f for f in (GptFamily(), LlamaFamily(), MoeFamily(),
                                                    MlpFamily(), CustomFamily())}
NAMES = tuple(FAMILIES)


def get(name: str) -> Family:
    hit = FAMILIES.get(name)
    if hit is None:
        raise PlannerError(f"family {name!r} is not one of: {', '.join(NAMES)}")
    return hit


def of(spec) -> Family:
    """The family of a ModelSpec."""
    return get(spec.family)


__all__ = ["FAMILIES", "NAMES", "Family", "get", "of"]
