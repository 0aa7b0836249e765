"""A layout: how one training step is split over ranks, in named parts.

``Layout`` = the dimensions' degrees (``planner.dims.ParallelDims``) + the batch split +
one record per strategy: data parallel (``DataParallel``), pipeline (``Pipeline``), tensor
parallel (``TensorParallel``) and recomputation. Schema version 2; version-1 files (one flat
record of 15 fields) are still read (``Layout.upgrade_dict``) and a layout that version 1 could
express keeps its version-1 identity (``identity``), so plans and metrics written before stay
comparable.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace

from planner import schedules
from planner.dims import ParallelDims
from planner.errors import PlannerError
from planner.specs.common import Serde, choice, positive
# the data-parallel record and its names live in their own module; re-exported here
from planner.specs.data_parallel import (  # noqa: F401
    COMPRESSION, DP_COMM, EXCHANGE_COMPRESSION, HOOK_COMPRESSION, OUTER_OPTIMIZERS, QSGD_BITS,
    DataParallel)

LAYOUT_VERSION = 2
RECOMPUTE = ("none", "selective", "full")
SCHEDULES = schedules.NAMES


@dataclass(frozen=True)
class Pipeline(Serde):
    """The schedule (``planner.schedules``), model chunks per rank, and where chunks start:
    ``stage_boundaries`` lists the first block of every chunk in pipeline order
    (``pp * virtual_stages`` entries, the first 0); empty: one chunk, or the partitioner's."""
    schedule: str = "1f1b"
    virtual_stages: int = 1
    stage_boundaries: tuple[int, ...] = ()

    def __post_init__(self):
        choice("schedule", self.schedule, SCHEDULES)
        positive("virtual_stages", self.virtual_stages)

    @property
    def kind(self) -> schedules.Schedule:
        return schedules.get(self.schedule)


@dataclass(frozen=True)
class TensorParallel(Serde):
    """Megatron tensor parallelism's options (the degree is ``dims.tp``)."""
    sequence_parallel: bool = False


@dataclass(frozen=True)
class Layout(Serde):
    """How one training step is split: global batch = dp * microbatch_size * num_microbatches,
    or microbatch_size * sum(replica_microbatches) when the replicas' shares differ.

    ``replica_microbatches`` (mixed clusters: replicas on faster devices take more): the
    micro-batches of each data-parallel replica in dp order; ``num_microbatches`` is then their
    largest. Empty (the default): every replica runs ``num_microbatches``.
    """
    dims: ParallelDims = field(default_factory=ParallelDims)
    microbatch_size: int = 1
    num_microbatches: int = 1
    data: DataParallel = field(default_factory=DataParallel)
    pipeline: Pipeline = field(default_factory=Pipeline)
    tensor: TensorParallel = field(default_factory=TensorParallel)
    recompute: str = "none"
    replica_microbatches: tuple[int, ...] = ()
    schema_version: int = LAYOUT_VERSION

    def __post_init__(self):
        positive("microbatch_size", self.microbatch_size)
        positive("num_microbatches", self.num_microbatches)
        choice("recompute", self.recompute, RECOMPUTE)
        d, pl = self.dims, self.pipeline
        if self.tensor.sequence_parallel and d.tp == 1:
            raise PlannerError("sequence_parallel needs tp > 1, got tp(1)")
        if self.data.offload and d.replicas == 1:
            raise PlannerError("offload needs FSDP to run: dp * cp > 1, got dp(1) * cp(1)")
        if self.data.parameter_server and not 1 <= self.data.ps_shards <= d.dp:
            raise PlannerError(f"parameter_server needs 1 <= ps_shards <= dp({d.dp}), "
                               f"got {self.data.ps_shards}")
        problem = pl.kind.check(d.pp, pl.virtual_stages, self.num_microbatches)
        if problem:
            raise PlannerError(problem)
        if self.replica_microbatches:
            self._check_replicas()
        b = pl.stage_boundaries
        if b:
            chunks = d.pp * pl.virtual_stages
            if len(b) != chunks:
                raise PlannerError(f"stage_boundaries has {len(b)} entries, needs pp({d.pp}) * "
                                   f"virtual_stages({pl.virtual_stages}) = {chunks}")
            if b[0] != 0 or any(x >= y for x, y in zip(b, b[1:])):
                raise PlannerError(f"stage_boundaries {list(b)} must start at 0 and increase")

    def _check_replicas(self) -> None:
        ms, d, pl = self.replica_microbatches, self.dims, self.pipeline
        if len(ms) != d.dp or any(isinstance(m, bool) or not isinstance(m, int) or m < 1
                                  for m in ms):
            raise PlannerError(f"replica_microbatches {list(ms)} must hold dp({d.dp}) integers "
                               ">= 1, one per data-parallel replica")
        if len(set(ms)) == 1:
            raise PlannerError(f"replica_microbatches {list(ms)} are all equal: give "
                               f"num_microbatches {ms[0]} and leave replica_microbatches empty")
        if self.num_microbatches != max(ms):
            raise PlannerError(f"num_microbatches({self.num_microbatches}) must be the largest "
                               f"of replica_microbatches {list(ms)} ({max(ms)})")
        for m in sorted(set(ms)):
            problem = pl.kind.check(d.pp, pl.virtual_stages, m)
            if problem:
                raise PlannerError(f"replica_microbatches {list(ms)}: {problem}")

    # -- each data-parallel replica's share of the batch --------------------------------------
    def microbatches_of(self, dp_rank: int) -> int:
        """Micro-batches replica ``dp_rank`` runs per step."""
        ms = self.replica_microbatches
        return ms[dp_rank] if ms else self.num_microbatches

    @property
    def total_microbatches(self) -> int:
        """Micro-batches of the whole step, over all replicas."""
        ms = self.replica_microbatches
        return sum(ms) if ms else self.dims.dp * self.num_microbatches

    def replica_rows(self, dp_rank: int) -> tuple[int, int]:
        """The contiguous rows [start, stop) of the global batch replica ``dp_rank`` trains on."""
        b, ms = self.microbatch_size, self.replica_microbatches
        if not ms:
            per = b * self.num_microbatches
            return dp_rank * per, (dp_rank + 1) * per
        start = b * sum(ms[:dp_rank])
        return start, start + b * ms[dp_rank]

    def replica_weight(self, dp_rank: int) -> float:
        """What replica ``dp_rank``'s mean gradient must be multiplied by before the replicas'
        gradients are averaged (DDP, FSDP, the parameter server all divide their sum by dp), so
        that the update is that of the mean loss over the global batch: its share of the
        micro-batches, m_i / M, times dp. Exactly 1 when the shares are even."""
        ms = self.replica_microbatches
        return ms[dp_rank] * self.dims.dp / sum(ms) if ms else 1.0

    # -- the degrees, read often enough to deserve a shortcut -------------------------------
    @property
    def dp(self) -> int:
        return self.dims.dp

    @property
    def tp(self) -> int:
        return self.dims.tp

    @property
    def pp(self) -> int:
        return self.dims.pp

    @property
    def cp(self) -> int:
        return self.dims.cp

    @property
    def ep(self) -> int:
        return self.dims.ep

    @property
    def world_size(self) -> int:
        return self.dims.world_size

    @property
    def global_batch_size(self) -> int:
        return self.microbatch_size * self.total_microbatches

    @property
    def num_chunks(self) -> int:
        return self.dims.pp * self.pipeline.virtual_stages

    def with_boundaries(self, starts) -> "Layout":
        """This layout with its chunks starting at ``starts`` (``Pipeline.stage_boundaries``)."""
        return replace(self, pipeline=replace(self.pipeline, stage_boundaries=tuple(starts)))

    def check_world(self, world_size: int, what: str = "world_size") -> None:
        self.dims.check_world(world_size, what)

    def check_batch(self, global_batch: int) -> None:
        if self.global_batch_size != global_batch:
            if self.replica_microbatches:
                raise PlannerError(
                    f"microbatch_size({self.microbatch_size}) * sum(replica_microbatches "
                    f"{list(self.replica_microbatches)}) = {self.global_batch_size} != "
                    f"global_batch({global_batch})")
            raise PlannerError(
                f"dp({self.dp}) * microbatch_size({self.microbatch_size}) * num_microbatches("
                f"{self.num_microbatches}) = {self.global_batch_size} != global_batch({global_batch})")

    def describe(self) -> str:
        d, pl, dd = self.dims, self.pipeline, self.data
        parts = [d.describe(), f"mb={self.microbatch_size}x{self.split_text()}"]
        if d.pp > 1:
            parts.append(pl.schedule + (f"(v={pl.virtual_stages})"
                                        if pl.virtual_stages > 1 else ""))
        if dd.zero:
            parts.append(f"zero{dd.zero}")
        if dd.offload:
            parts.append("offload")
        if self.recompute != "none":
            parts.append(f"recompute={self.recompute}")
        if self.tensor.sequence_parallel:
            parts.append("sp")
        parts += dd.describe_comm()
        return " ".join(parts)

    def split_text(self) -> str:
        """Micro-batches per replica: "8", or runs of equal shares "12*16+4*16" (16 replicas
        of 12, then 16 of 4: their sum times the micro-batch size is the global batch)."""
        ms = self.replica_microbatches
        if not ms:
            return str(self.num_microbatches)
        runs: list = []
        for m in ms:
            if runs and runs[-1][0] == m:
                runs[-1][1] += 1
            else:
                runs.append([m, 1])
        return "+".join(f"{m}*{k}" if k > 1 else str(m) for m, k in runs)

    # -- version 1: one flat record ------------------------------------------------------------
    @classmethod
    def make(cls, **flat) -> "Layout":
        """A layout from version 1's flat field names (``dp=2, zero=1, schedule="zbv"``...),
        which is also how ``planner simulate``'s flags and tests spell one."""
        names = {**_FLAT, **_ADDED}
        unknown = sorted(set(flat) - set(names))
        if unknown:
            raise PlannerError(f"unknown layout field '{unknown[0]}'; valid fields: "
                               f"{', '.join(sorted(names))}")
        parts: dict = {"dims": {}, "data": {}, "pipeline": {}, "tensor": {}, "": {}}
        for key, value in flat.items():
            part, name = names[key]
            parts[part][name] = value
        return cls(dims=ParallelDims(**parts["dims"]), data=DataParallel(**parts["data"]),
                   pipeline=Pipeline(**parts["pipeline"]),
                   tensor=TensorParallel(**parts["tensor"]), **parts[""])

    @classmethod
    def upgrade_dict(cls, data: dict) -> dict:
        """A version-1 JSON record as a version-2 one (unknown fields stay to be refused)."""
        out: dict = {"schema_version": LAYOUT_VERSION}
        for key, value in data.items():
            if key == "schema_version":
                continue
            part, name = _FLAT.get(key, ("", key))
            if part:
                out.setdefault(part, {})[name] = value
            else:
                out[name] = value
        return out

    def flat(self) -> dict:
        """Version 1's flat record of this layout (JSON-ready)."""
        out = {}
        for key, (part, name) in _FLAT.items():
            value = getattr(getattr(self, part), name) if part else getattr(self, name)
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def identity(self) -> dict:
        """What fingerprints a layout: version 1's flat record (``schema_version`` 1), so that
        a layout version 1 could express hashes as it always did, plus every field added since
        (``part.field``) that is not at its default."""
        out = {**self.flat(), "schema_version": 1}
        known = set(_FLAT.values())
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "schema_version" or not is_dataclass(value):
                if f.name != "schema_version" and ("", f.name) not in known:
                    if value != _default(f):
                        out[f.name] = list(value) if isinstance(value, tuple) else value
                continue
            for g in fields(value):
                if (f.name, g.name) not in known:
                    sub = getattr(value, g.name)
                    if sub != _default(g):
                        out[f"{f.name}.{g.name}"] = list(sub) if isinstance(sub, tuple) else sub
        return out


def _default(f):
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING


# version-1 field -> (part, field in part); part "" is the Layout itself
_FLAT = {
    "dp": ("dims", "dp"), "tp": ("dims", "tp"), "pp": ("dims", "pp"),
    "microbatch_size": ("", "microbatch_size"), "num_microbatches": ("", "num_microbatches"),
    "schedule": ("pipeline", "schedule"), "virtual_stages": ("pipeline", "virtual_stages"),
    "zero": ("data", "zero"), "recompute": ("", "recompute"),
    "sequence_parallel": ("tensor", "sequence_parallel"), "dp_comm": ("data", "comm"),
    "ps_shards": ("data", "ps_shards"), "compression": ("data", "compression"),
    "powersgd_rank": ("data", "powersgd_rank"),
    "stage_boundaries": ("pipeline", "stage_boundaries"),
}
# Fields added after version 1 that ``make`` (and the command line) also take by name (never in
# ``flat()``: version 1 had no such fields, and ``identity`` adds them only away from their
# defaults).
_ADDED = {
    "replica_microbatches": ("", "replica_microbatches"),
    "compression_ratio": ("data", "compression_ratio"), "bits": ("data", "bits"),
    "staleness": ("data", "staleness"), "local_sgd_period": ("data", "local_sgd_period"),
    "outer_optimizer": ("data", "outer_optimizer"),
    "cp": ("dims", "cp"), "ep": ("dims", "ep"), "offload": ("data", "offload"),
}
assert {p for p, _ in _FLAT.values()} <= {"", *(f.name for f in fields(Layout))}
