"""The data that crosses boundaries: model, profile, cluster, layout, prediction, plan, metrics.

Each is a frozen dataclass with ``schema_version``, ``to_dict``/``from_dict`` (strict: see
``planner.serde``) and validation whose message shows the arithmetic. Units live in field names.
This module imports no torch: planning from a file must start fast.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace

from planner import serde
from planner.errors import PlannerError

SCHEMA_VERSION = 1

SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b", "zbv")
RECOMPUTE = ("none", "selective", "full")
DP_COMM = ("all_reduce", "parameter_server")
COMPRESSION = ("none", "fp16", "bf16", "powersgd")
DTYPES = ("float32", "float64", "bfloat16", "float16", "bf16-mixed", "fp16-mixed")
OPTIMIZERS = ("adam", "adamw", "sgd", "sgd-momentum")
FAMILIES = ("gpt", "mlp", "custom")


def _choice(name, value, valid):
    if value not in valid:
        raise PlannerError(f"{name} {value!r} is not one of: {', '.join(valid)}")


def _positive(name, value):
    if value < 1:
        raise PlannerError(f"{name} must be >= 1, got {value}")


def _fingerprint(data) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class _Serde:
    """Mixin: JSON round trip through ``planner.serde``."""

    def to_dict(self) -> dict:
        return serde.to_dict(self)

    @classmethod
    def from_dict(cls, data, ctx: str = ""):
        obj = serde.from_dict(cls, data, ctx)
        if getattr(obj, "schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise PlannerError(f"{ctx or cls.__name__}: schema_version {obj.schema_version} is not "
                               f"supported (this planner reads {SCHEMA_VERSION})")
        return obj

    @classmethod
    def load(cls, path: str):
        return cls.from_dict(serde.read_json(path), ctx=str(path))

    def save(self, path: str) -> None:
        serde.write_json(path, self.to_dict())


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec(_Serde):
    """An architecture: enough to build the model here or to cost it analytically.

    ``family`` "gpt": token+position embedding, ``num_layers`` pre-norm decoder blocks, final
    norm and LM head. "mlp": ``num_layers`` residual MLP blocks on ``hidden_size`` features with a
    classifier head of ``vocab_size`` classes (``seq_len`` 1). "custom": built by importing
    ``callable_path`` (``package.module:callable``); the other fields then describe the input.
    """
    name: str
    family: str
    num_layers: int
    hidden_size: int
    num_heads: int = 1
    seq_len: int = 1
    vocab_size: int = 2
    ffn_hidden_size: int = 0
    callable_path: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        _choice("family", self.family, FAMILIES)
        for name in ("num_layers", "hidden_size", "num_heads", "seq_len", "vocab_size"):
            _positive(name, getattr(self, name))
        if self.ffn_hidden_size == 0:
            object.__setattr__(self, "ffn_hidden_size", 4 * self.hidden_size)
        _positive("ffn_hidden_size", self.ffn_hidden_size)
        if self.family == "gpt" and self.hidden_size % self.num_heads:
            raise PlannerError(f"hidden_size({self.hidden_size}) % num_heads({self.num_heads}) = "
                               f"{self.hidden_size % self.num_heads}, must be 0")
        if self.family == "custom" and ":" not in self.callable_path:
            raise PlannerError(f"callable_path {self.callable_path!r} must look like "
                               "'package.module:callable'")

    @property
    def num_blocks(self) -> int:
        """Blocks in the pipeline-cuttable sequence: embedding, layers, head (gpt and mlp);
        a custom model's ``num_layers`` already counts all of its blocks."""
        return self.num_layers if self.family == "custom" else self.num_layers + 2

    def fingerprint(self) -> str:
        """Hash of the architecture (not the display name): ties profiles, plans and metrics."""
        data = self.to_dict()
        data.pop("name")
        return _fingerprint(data)


# --------------------------------------------------------------------------------------------
# Profile
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockProfile(_Serde):
    """One block as measured by ``planner profile`` at the profile's micro-batch size.

    Times are medians after warm-up; spreads are the inter-quartile range of the repeats.
    ``forward_flops`` counts multiply-adds as 2 FLOPs; backward is ~2x forward.
    """
    index: int
    name: str
    kind: str                      # "embedding" | "block" | "head"
    forward_time_s: float
    backward_time_s: float
    forward_time_spread_s: float
    backward_time_spread_s: float
    forward_flops: float
    param_count: int
    param_bytes: int
    saved_activation_bytes: int    # kept for backward, de-duplicated by storage
    output_bytes: int              # what would cross a pipeline boundary after this block


@dataclass(frozen=True)
class ModelProfile(_Serde):
    model: ModelSpec
    model_fingerprint: str
    device: str                    # "cpu" or "cuda"
    device_name: str
    dtype: str
    num_threads: int
    microbatch_size: int
    seq_len: int
    optimizer: str
    blocks: tuple[BlockProfile, ...]
    step_time_s: float             # a whole measured training step (fwd+bwd+optimizer)
    step_time_spread_s: float
    optimizer_step_time_s: float
    repeats: int
    warmup: int
    torch_version: str
    created_utc: str
    step_peak_memory_bytes: int = 0  # CUDA allocator peak over a step; 0 = not measured (CPU)
    source: str = "measured"       # or how it was derived, e.g. "extrapolated from b=1,2"
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        if self.model_fingerprint != self.model.fingerprint():
            raise PlannerError(f"model_fingerprint {self.model_fingerprint} does not match the "
                               f"model described ({self.model.fingerprint()})")
        if not self.blocks:
            raise PlannerError("blocks is empty: a profile needs at least one block")

    @property
    def param_count(self) -> int:
        return sum(b.param_count for b in self.blocks)


# --------------------------------------------------------------------------------------------
# Cluster
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceSpec(_Serde):
    """One accelerator (or one CPU rank). ``*_source`` says datasheet, measured or fitted."""
    name: str
    memory_bytes: int
    peak_flops_per_s: dict[str, float]          # dtype -> dense peak
    memory_bandwidth_bytes_per_s: float
    compute_efficiency: float                   # achieved / peak on large matmuls
    peak_source: str = "datasheet"
    efficiency_source: str = "assumed"
    model_profile: str = ""                      # path of a device-model profile (issue 7)
    # Memory no tensor of ours can use: runtime context, communication buffers, allocator
    # fragmentation. Plans must fit in memory_bytes - reserved_memory_bytes.
    reserved_memory_bytes: int = 0
    schema_version: int = SCHEMA_VERSION

    @property
    def usable_memory_bytes(self) -> int:
        return self.memory_bytes - self.reserved_memory_bytes

    def __post_init__(self):
        _positive("memory_bytes", self.memory_bytes)
        if not 0 < self.compute_efficiency <= 1:
            raise PlannerError(f"compute_efficiency must be in (0, 1], got {self.compute_efficiency}")


@dataclass(frozen=True)
class LinkLevel(_Serde):
    """Latency (alpha) and bandwidth (1/beta) of one level of the network, per direction.

    ``latency_s`` is paid per message step of an algorithm; ``call_latency_s`` once per
    collective call (launch and synchronisation, NCCL's tuner ``baseLat``).
    """
    name: str                      # "intra_node" | "inter_node"
    latency_s: float
    bandwidth_bytes_per_s: float
    source: str = "datasheet"      # "datasheet" | "measured" | "fitted"
    call_latency_s: float = 0.0

    def __post_init__(self):
        if self.latency_s < 0 or self.bandwidth_bytes_per_s <= 0 or self.call_latency_s < 0:
            raise PlannerError(f"link {self.name}: latency_s and call_latency_s must be >= 0 and "
                               f"bandwidth_bytes_per_s > 0, got {self.latency_s}, "
                               f"{self.call_latency_s}, {self.bandwidth_bytes_per_s}")


@dataclass(frozen=True)
class NodeLink(_Serde):
    """An explicit node-to-node link that replaces the inter-node level for that pair.

    One link shared by every flow between the two nodes (e.g. two nodes joined by one cable).
    """
    node_a: int
    node_b: int
    latency_s: float
    bandwidth_bytes_per_s: float
    source: str = "datasheet"

    def __post_init__(self):
        if self.node_a == self.node_b or min(self.node_a, self.node_b) < 0:
            raise PlannerError(f"node link {self.node_a}-{self.node_b}: node_a and node_b must "
                               "be two different node indices >= 0")
        if self.latency_s < 0 or self.bandwidth_bytes_per_s <= 0:
            raise PlannerError(f"node link {self.node_a}-{self.node_b}: latency_s must be >= 0 "
                               f"and bandwidth_bytes_per_s > 0, got {self.latency_s}, "
                               f"{self.bandwidth_bytes_per_s}")


@dataclass(frozen=True)
class NodeLevels(_Serde):
    """A node whose links differ from the cluster's levels; None keeps the cluster's level.

    ``intra_node`` is each device's link to its node switch, ``inter_node`` each of the node's
    network ports (see ``Cluster.nics_per_node``).
    """
    node: int
    intra_node: LinkLevel | None = None
    inter_node: LinkLevel | None = None


@dataclass(frozen=True)
class CollectiveFit(_Serde):
    """Measured medians of one collective on one link level, and the fit made of them.

    Costs inside the measured range interpolate the points (log-log); outside, the fitted
    large-message ``latency_s`` + bytes / ``bandwidth_bytes_per_s`` (alpha-beta) applies.
    """
    collective: str
    level: str
    group_size: int
    message_bytes: tuple[int, ...]
    time_s: tuple[float, ...]
    latency_s: float
    bandwidth_bytes_per_s: float
    fit_median_abs_pct_error: float

    def __post_init__(self):
        where = f"collective fit {self.collective}/{self.level}/p={self.group_size}"
        if self.level not in ("intra_node", "inter_node"):
            raise PlannerError(f"{where}: level must be intra_node or inter_node")
        if self.group_size < 2:
            raise PlannerError(f"{where}: group_size must be >= 2")
        if not self.message_bytes or len(self.message_bytes) != len(self.time_s):
            raise PlannerError(f"{where}: message_bytes ({len(self.message_bytes)}) and time_s "
                               f"({len(self.time_s)}) must be equally long and not empty")
        if min(self.message_bytes) <= 0 or min(self.time_s) <= 0:
            raise PlannerError(f"{where}: message_bytes and time_s must all be > 0")
        if self.bandwidth_bytes_per_s <= 0:
            raise PlannerError(f"{where}: bandwidth_bytes_per_s must be > 0, "
                               f"got {self.bandwidth_bytes_per_s}")


@dataclass(frozen=True)
class Cluster(_Serde):
    """Nodes of identical devices; links per level; optional measured collective fits."""
    name: str
    num_nodes: int
    devices_per_node: int
    device: DeviceSpec
    intra_node: LinkLevel
    inter_node: LinkLevel
    backend: str = "nccl"           # "nccl" | "gloo"
    node_links: tuple[NodeLink, ...] = ()
    collective_fits: tuple[CollectiveFit, ...] = ()
    notes: str = ""
    node_levels: tuple[NodeLevels, ...] = ()
    nics_per_node: int = 0          # network ports per node, shared evenly; 0: one per device
    # Interference of co-located ranks (planner.profile.interference, measured by `planner
    # profile --network`): factor on a rank's profiled compute while the other ranks of its
    # node compute too, and the share of a data-parallel/pipeline transfer's time that runs
    # concurrently with compute. Defaults: no slowdown, full overlap (one GPU per rank, NCCL).
    compute_slowdown: float = 1.0
    comm_overlap: float = 1.0
    fsdp_call_overhead_s: float = 0.0    # FSDP2's own cost per all-gather/reduce-scatter call
    interference_source: str = "assumed: one device per rank, communication on its own engines"
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        _positive("num_nodes", self.num_nodes)
        if self.compute_slowdown < 1.0:
            raise PlannerError(f"compute_slowdown must be >= 1 (a factor on profiled compute), "
                               f"got {self.compute_slowdown}")
        if not 0.0 <= self.comm_overlap <= 1.0:
            raise PlannerError(f"comm_overlap must be in [0, 1], got {self.comm_overlap}")
        if self.fsdp_call_overhead_s < 0:
            raise PlannerError(f"fsdp_call_overhead_s must be >= 0, got "
                               f"{self.fsdp_call_overhead_s}")
        _positive("devices_per_node", self.devices_per_node)
        _choice("backend", self.backend, ("nccl", "gloo"))
        if not 0 <= self.nics_per_node <= self.devices_per_node:
            raise PlannerError(f"nics_per_node must be 0 (one per device) .. devices_per_node("
                               f"{self.devices_per_node}), got {self.nics_per_node}")
        for i, link in enumerate(self.node_links):
            if max(link.node_a, link.node_b) >= self.num_nodes:
                bad = max(link.node_a, link.node_b)
                raise PlannerError(f"node_links[{i}]: node {bad} does not exist (num_nodes "
                                   f"{self.num_nodes}: 0..{self.num_nodes - 1})")
        for i, lv in enumerate(self.node_levels):
            if not 0 <= lv.node < self.num_nodes:
                raise PlannerError(f"node_levels[{i}]: node {lv.node} does not exist (num_nodes "
                                   f"{self.num_nodes}: 0..{self.num_nodes - 1})")

    @property
    def uniform(self) -> bool:
        """Every node alike, one network port per device, no explicit node links."""
        return (not self.node_links and not self.node_levels
                and self.nics_per_node in (0, self.devices_per_node))

    @property
    def num_devices(self) -> int:
        return self.num_nodes * self.devices_per_node

    def with_size(self, num_devices: int) -> "Cluster":
        """This cluster cut (or grown, for uniform presets) to ``num_devices`` devices."""
        _positive("--gpus", num_devices)
        per = self.devices_per_node
        if num_devices <= per:
            # Links and levels of nodes that are cut away go with them.
            return replace(self, num_nodes=1, devices_per_node=num_devices,
                           nics_per_node=min(self.nics_per_node, num_devices),
                           node_links=(), node_levels=tuple(
                               lv for lv in self.node_levels if lv.node == 0))
        if num_devices % per:
            raise PlannerError(f"--gpus {num_devices} is not a whole number of nodes of {per} "
                               f"devices ({num_devices} % {per} = {num_devices % per})")
        nodes = num_devices // per
        return replace(self, num_nodes=nodes,
                       node_links=tuple(k for k in self.node_links
                                        if max(k.node_a, k.node_b) < nodes),
                       node_levels=tuple(lv for lv in self.node_levels if lv.node < nodes))


# --------------------------------------------------------------------------------------------
# Layout, prediction, plan, metrics
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout(_Serde):
    """How one training step is split over ``dp * tp * pp`` ranks.

    ``stage_boundaries`` lists the first block index of every model chunk, in pipeline order
    (``pp * virtual_stages`` entries, the first 0); empty means a single stage holding all blocks.
    Global batch = dp * microbatch_size * num_microbatches.
    """
    dp: int = 1
    tp: int = 1
    pp: int = 1
    microbatch_size: int = 1
    num_microbatches: int = 1
    schedule: str = "1f1b"
    virtual_stages: int = 1
    zero: int = 0
    recompute: str = "none"
    sequence_parallel: bool = False
    dp_comm: str = "all_reduce"
    ps_shards: int = 0
    compression: str = "none"
    powersgd_rank: int = 0
    stage_boundaries: tuple[int, ...] = ()
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        for name in ("dp", "tp", "pp", "microbatch_size", "num_microbatches", "virtual_stages"):
            _positive(name, getattr(self, name))
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("recompute", self.recompute, RECOMPUTE)
        _choice("dp_comm", self.dp_comm, DP_COMM)
        _choice("compression", self.compression, COMPRESSION)
        if self.zero not in (0, 1, 2, 3):
            raise PlannerError(f"zero must be 0, 1, 2 or 3, got {self.zero}")
        if self.sequence_parallel and self.tp == 1:
            raise PlannerError("sequence_parallel needs tp > 1, got tp(1)")
        if self.dp_comm == "parameter_server" and not 1 <= self.ps_shards <= self.dp:
            raise PlannerError(f"parameter_server needs 1 <= ps_shards <= dp({self.dp}), "
                               f"got {self.ps_shards}")
        if self.compression == "powersgd" and self.powersgd_rank < 1:
            raise PlannerError(f"compression powersgd needs powersgd_rank >= 1, "
                               f"got {self.powersgd_rank}")
        if self.virtual_stages > 1 and self.schedule not in ("interleaved-1f1b", "zbv"):
            raise PlannerError(f"virtual_stages({self.virtual_stages}) > 1 needs schedule "
                               f"interleaved-1f1b or zbv, got {self.schedule}")
        if self.schedule == "zbv" and self.virtual_stages != 2:
            raise PlannerError(f"schedule zbv places 2 chunks per rank (V shape): virtual_stages "
                               f"must be 2, got {self.virtual_stages}")
        if self.schedule == "interleaved-1f1b" and self.pp > 1 and self.num_microbatches % self.pp:
            raise PlannerError(f"interleaved-1f1b needs num_microbatches({self.num_microbatches}) "
                               f"% pp({self.pp}) == 0")
        chunks = self.pp * self.virtual_stages
        if self.stage_boundaries:
            b = self.stage_boundaries
            if len(b) != chunks:
                raise PlannerError(f"stage_boundaries has {len(b)} entries, needs pp({self.pp}) * "
                                   f"virtual_stages({self.virtual_stages}) = {chunks}")
            if b[0] != 0 or any(x >= y for x, y in zip(b, b[1:])):
                raise PlannerError(f"stage_boundaries {list(b)} must start at 0 and increase")

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp

    @property
    def global_batch_size(self) -> int:
        return self.dp * self.microbatch_size * self.num_microbatches

    def check_world(self, world_size: int, what: str = "world_size") -> None:
        if self.world_size != world_size:
            raise PlannerError(f"dp({self.dp}) * tp({self.tp}) * pp({self.pp}) = "
                               f"{self.world_size} != {what}({world_size})")

    def check_batch(self, global_batch: int) -> None:
        if self.global_batch_size != global_batch:
            raise PlannerError(
                f"dp({self.dp}) * microbatch_size({self.microbatch_size}) * num_microbatches("
                f"{self.num_microbatches}) = {self.global_batch_size} != global_batch({global_batch})")

    def describe(self) -> str:
        parts = [f"dp={self.dp}", f"tp={self.tp}", f"pp={self.pp}",
                 f"mb={self.microbatch_size}x{self.num_microbatches}"]
        if self.pp > 1:
            parts.append(self.schedule + (f"(v={self.virtual_stages})"
                                          if self.virtual_stages > 1 else ""))
        if self.zero:
            parts.append(f"zero{self.zero}")
        if self.recompute != "none":
            parts.append(f"recompute={self.recompute}")
        if self.sequence_parallel:
            parts.append("sp")
        if self.dp_comm == "parameter_server":
            parts.append(f"ps{self.ps_shards}")
        if self.compression != "none":
            parts.append(self.compression + (f"(r={self.powersgd_rank})"
                                             if self.compression == "powersgd" else ""))
        return " ".join(parts)


@dataclass(frozen=True)
class RankMemory(_Serde):
    """Predicted peak memory of one rank, by kind."""
    rank: int
    stage: int
    parameters_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    buffers_bytes: int

    @property
    def total_bytes(self) -> int:
        return (self.parameters_bytes + self.gradients_bytes + self.optimizer_bytes
                + self.activations_bytes + self.buffers_bytes)


@dataclass(frozen=True)
class CollectiveCount(_Serde):
    """How many times one collective runs per step, in one phase, on one group."""
    phase: str                     # "forward" | "backward" | "optimizer" | "step"
    collective: str                # "all_reduce", "all_gather", "reduce_scatter", "send_recv", ...
    group: str                     # "dp" | "tp" | "pp"
    group_size: int
    count: int
    bytes_each: int


@dataclass(frozen=True)
class TimelineEvent(_Serde):
    rank: int
    stream: str                    # "compute" | "comm"
    name: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Prediction(_Serde):
    step_time_s: float
    breakdown_s: dict[str, float]
    memory: tuple[RankMemory, ...]
    peak_memory_bytes: int
    device_memory_bytes: int
    fits: bool
    tflops_per_device: float
    mfu: float
    bubble_fraction: float
    collectives: tuple[CollectiveCount, ...]
    compute_source: str            # "profile" | "analytic"
    timeline: tuple[TimelineEvent, ...] = ()
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True)
class Candidate(_Serde):
    """One layout the search considered, feasible or not, for reports and validation.

    ``rank`` is 1 for the chosen layout, 2 for the runner-up, ... among the layouts that fit,
    and 0 for the rest. ``step_time_s`` is 0 for a layout pruned before simulation; ``note``
    then says why (e.g. "dominated by ..."), and may say why a simulated layout does not fit.
    """
    layout: Layout
    step_time_s: float
    peak_memory_bytes: int
    fits: bool
    breakdown_s: dict[str, float] = field(default_factory=dict)
    rank: int = 0
    note: str = ""


@dataclass(frozen=True)
class Plan(_Serde):
    """What the executor reads: model, cluster, layout and the prediction it was chosen on."""
    model: ModelSpec
    model_fingerprint: str
    cluster: Cluster
    world_size: int
    global_batch_size: int
    dtype: str
    optimizer: str
    learning_rate: float
    layout: Layout
    prediction: Prediction
    profile_path: str = ""
    seed: int = 0
    created_utc: str = ""
    # What the search considered (may be empty: `planner simulate`) and why the winner wins.
    candidates: tuple[Candidate, ...] = ()
    explanation: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        if self.model_fingerprint != self.model.fingerprint():
            raise PlannerError(f"model_fingerprint {self.model_fingerprint} does not match the "
                               f"model described ({self.model.fingerprint()})")
        _choice("dtype", self.dtype, DTYPES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        self.layout.check_world(self.world_size)
        self.layout.check_batch(self.global_batch_size)

    def fingerprint(self) -> str:
        """Identity of what runs: model, layout, batch, precision, optimizer, seed."""
        return _fingerprint({"model": self.model_fingerprint, "layout": self.layout.to_dict(),
                             "world_size": self.world_size, "batch": self.global_batch_size,
                             "dtype": self.dtype, "optimizer": self.optimizer,
                             "lr": self.learning_rate, "seed": self.seed})


@dataclass(frozen=True)
class Metrics(_Serde):
    """What the executor measured for one plan."""
    plan_fingerprint: str
    model_fingerprint: str
    world_size: int
    layout: Layout
    backend: str
    device: str
    steps: int
    warmup_steps: int
    losses: tuple[float, ...]              # every step, warm-up included
    step_times_s: tuple[float, ...]        # measured steps only (warm-up excluded)
    step_time_s: float                     # median of step_times_s
    peak_memory_bytes: tuple[int, ...]     # per rank
    memory_measure: str                    # how peak memory was measured
    tokens_per_s: float
    torch_version: str
    created_utc: str
    schema_version: int = SCHEMA_VERSION
    first_step: int = 0                    # index of losses[0]: > 0 after --resume
    # Collectives issued in one measured step (--count-collectives), "kind@group" -> count.
    collectives: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ValidationRow(_Serde):
    """One layout run by ``planner validate``: its prediction against the executor's metrics.

    ``role`` is "pick" (the planner's choice), "top-k" or "sample"; ``status`` is "ok" or why
    the run gave no measurement (then the measured fields and errors are 0 and it is left out of
    the statistics). Errors are signed: 100 * (predicted - measured) / measured.
    """
    layout: Layout
    role: str
    predicted_rank: int
    predicted_step_time_s: float
    predicted_peak_memory_bytes: int
    predicted_breakdown_s: dict[str, float]
    status: str = "ok"
    plan_fingerprint: str = ""
    measured_step_time_s: float = 0.0
    measured_step_time_iqr_s: float = 0.0
    measured_peak_memory_bytes: int = 0
    memory_measure: str = ""
    step_time_error_pct: float = 0.0
    memory_error_pct: float = 0.0


@dataclass(frozen=True)
class Validation(_Serde):
    """What ``planner validate`` measured: per-layout rows and the statistics over them.

    Statistics cover the rows with status "ok" (None when there are none).
    ``rank_correlation`` (Spearman) is None with fewer than two measured layouts or when the
    predicted or measured times do not vary; ``regret`` is None when the pick was not measured.
    """
    model: str
    cluster: str
    world_size: int
    global_batch_size: int
    steps: int
    warmup_steps: int
    rows: tuple[ValidationRow, ...]
    median_abs_pct_error: float | None
    max_abs_pct_error: float | None
    rank_correlation: float | None
    regret: float | None
    memory_median_abs_pct_error: float | None = None
    memory_max_abs_pct_error: float | None = None
    created_utc: str = ""
    schema_version: int = SCHEMA_VERSION
