"""An elastic plan set: one training run planned at each world size a torchrun elastic job may
form (``planner plan --elastic MIN:MAX``).

Every plan of the set trains the same model on the same global batches (same model, global
batch, dtype, optimizer, learning rate and seed): only the layout differs, so a checkpoint
written under one plan continues exactly under another once torch.distributed.checkpoint has
resharded it, with more micro-batches per replica where there are fewer replicas. The executor
reads the set (``load_for_world``) and runs the plan of the world size torchrun gives it; it never
imports the search.
"""
from __future__ import annotations

from dataclasses import dataclass

from planner import rules, serde
from planner.errors import PlannerError
from planner.specs.common import Serde
from planner.specs.results import Plan

SCHEMA_VERSION = 1
# What makes two plans the same training; the layout (and its world size) may differ.
TRAINING_FIELDS = ("model_fingerprint", "global_batch_size", "dtype", "optimizer",
                   "learning_rate", "seed")


@dataclass(frozen=True)
class ElasticPlan(Serde):
    """Plans of one training run, one per world size, ascending."""
    plans: tuple[Plan, ...]
    created_utc: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        if not self.plans:
            raise PlannerError("field 'plans': expected at least one plan")
        sizes = [p.world_size for p in self.plans]
        if sizes != sorted(set(sizes)):
            raise PlannerError(f"field 'plans': world sizes {sizes} must be distinct and "
                               "ascending (one plan per world size)")
        first = self.plans[0]
        for i, plan in enumerate(self.plans):
            for name in TRAINING_FIELDS:
                if getattr(plan, name) != getattr(first, name):
                    raise PlannerError(
                        f"field 'plans[{i}].{name}': {getattr(plan, name)!r}, but plans[0] has "
                        f"{getattr(first, name)!r}: every plan of an elastic set trains the same "
                        "model on the same batches")
            problem = (rules.checkpoint_refuses(plan.layout)
                       or rules.resume_inexact(plan.layout))
            if problem:
                raise PlannerError(f"field 'plans[{i}].layout': {problem} (an elastic run "
                                   "resumes from a checkpoint at every change of world size)")

    @property
    def world_sizes(self) -> tuple[int, ...]:
        return tuple(p.world_size for p in self.plans)

    def for_world(self, world_size: int, where: str) -> Plan:
        for plan in self.plans:
            if plan.world_size == world_size:
                return plan
        have = ", ".join(map(str, self.world_sizes))
        raise PlannerError(f"{where}: no plan for WORLD_SIZE {world_size} in this elastic set "
                           f"(world sizes {have}); launch with --nnodes MIN:MAX so that nodes x "
                           "--nproc-per-node stays among them, or plan the set again with "
                           f"`planner plan --elastic` covering {world_size}")


def is_elastic(data) -> bool:
    """Whether a parsed plan file holds an elastic set (a plan file has no ``plans``)."""
    return isinstance(data, dict) and "plans" in data and "layout" not in data


def load_for_world(path: str, world_size: int) -> tuple[Plan, ElasticPlan | None]:
    """The plan in ``path`` to run at ``world_size``: the file's plan, or the plan of that world
    size when the file is an elastic set (returned too)."""
    data = serde.read_json(path)
    if is_elastic(data):
        elastic = ElasticPlan.from_dict(data, ctx=path)
        return elastic.for_world(world_size, path), elastic
    return Plan.from_dict(data, ctx=path), None
