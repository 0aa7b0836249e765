"""A plan's layout as another engine's configuration: torchtitan, Megatron-LM, DeepSpeed.

Each engine module has ``SUFFIX`` (the file it writes) and ``render(plan) -> str``, raising a
one-line ``PlannerError`` for what that engine cannot express (``refuse``): a configuration
that silently ran something else than the plan would be worse than none. What every engine
needs from a plan is read here once: the batch split, the blocks of each pipeline chunk, and
the numeric choices. Torch-free; nothing is imported from the engines themselves (their field
names are taken from their sources and documentation, cited in each module).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from planner import families, rules
from planner.errors import PlannerError

ENGINES = ("torchtitan", "megatron", "deepspeed")


def refuse(engine: str, why: str) -> PlannerError:
    return PlannerError(f"--to {engine}: {why}")


def module(engine: str):
    return importlib.import_module(f"planner.export.{engine}")


@dataclass(frozen=True)
class Chunk:
    """One pipeline chunk: its blocks by kind (``Family.block_kinds``): the embedding, the
    indices (0-based) of its decoder layers, the head."""
    embedding: bool
    layers: tuple[int, ...]
    head: bool


def chunks(plan) -> list[Chunk]:
    """The plan's pipeline chunks in pipeline order (``rules.chunk_starts``: its stage
    boundaries, else the even split the executor uses)."""
    spec, layout = plan.model, plan.layout
    kinds = families.of(spec).block_kinds(spec)
    starts = rules.chunk_starts(layout, len(kinds)) + [len(kinds)]
    out = []
    for a, b in zip(starts, starts[1:]):
        part = kinds[a:b]
        first_layer = kinds[:a].count("block")
        out.append(Chunk("embedding" in part, tuple(range(first_layer, first_layer
                                                          + part.count("block"))),
                         "head" in part))
    return out


def common_refusals(engine: str, plan) -> None:
    """What none of the three engines runs as the executor does."""
    d = plan.layout.data
    if d.parameter_server:
        raise refuse(engine, "a parameter server (--dp-comm parameter_server) is the "
                             "executor's own; this engine only all-reduces or shards")
    if d.compression == "powersgd":
        raise refuse(engine, "PowerSGD gradient compression is a DDP communication hook of "
                             "the executor; this engine has no such setting")
    if d.exchange or d.staleness or d.local_sgd:
        raise refuse(engine, f"{' '.join(d.describe_comm())} is the executor's own exchange; "
                             "this engine all-reduces (or shards) every step")
    layout = plan.layout
    for name, degree in (("cp", layout.cp), ("ep", layout.ep)):
        if degree > 1:
            raise refuse(engine, f"{name} {degree}: not exported yet (the configuration would "
                                 f"silently train without {name}); plan with --{name} 1")
    if d.offload:
        raise refuse(engine, "offload (FSDP2's CPUOffloadPolicy) is not exported yet; plan "
                             "without --offload")
    if layout.replica_microbatches:
        raise refuse(engine, "replicas with different micro-batch counts "
                             f"({list(layout.replica_microbatches)}) are the executor's own")
    if not families.of(plan.model).builtin:
        raise refuse(engine, f"model {plan.model.name} is custom code "
                             f"({plan.model.callable_path}); the engine builds its own models")


def header(plan, engine: str, comment: str = "#") -> list[str]:
    """Comment lines naming the plan a configuration came from."""
    return [f"{comment} {engine} configuration of a planner plan (planner export --to {engine})",
            f"{comment} model {plan.model.name}, {plan.world_size} devices on "
            f"{plan.cluster.name}, global batch {plan.global_batch_size}, {plan.dtype}",
            f"{comment} layout {plan.layout.describe()}; plan fingerprint {plan.fingerprint()}",
            f"{comment} predicted step time {plan.prediction.step_time_s:.4g} s, peak memory "
            f"{plan.prediction.peak_memory_bytes / 2**30:.2f} GiB per rank"]
