"""What planning and running produce: predictions, plans, metrics, validations."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from planner.errors import PlannerError
from planner.specs.common import Serde, choice, finite, fingerprint, positive

from planner.specs.cluster import Cluster
from planner.specs.layout import Layout
from planner.specs.model import ModelSpec

SCHEMA_VERSION = 1
DTYPES = ("float32", "float64", "bfloat16", "float16", "bf16-mixed", "fp16-mixed")
OPTIMIZERS = ("adam", "adamw", "sgd", "sgd-momentum")


@dataclass(frozen=True)
class RankMemory(Serde):
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
class CollectiveCount(Serde):
    """How many times one collective runs per step, in one phase, on one group."""
    phase: str                     # "forward" | "backward" | "optimizer" | "step"
    collective: str                # "all_reduce", "all_gather", "reduce_scatter", "send_recv", ...
    group: str                     # "dp" | "tp" | "pp"
    group_size: int
    count: int
    bytes_each: int
    every_steps: int = 1           # > 1: ``count`` per that many steps (local SGD's average)


@dataclass(frozen=True)
class TimelineEvent(Serde):
    rank: int
    stream: str                    # "compute" | "comm"
    name: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Prediction(Serde):
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
class Candidate(Serde):
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
class Plan(Serde):
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
        choice("dtype", self.dtype, DTYPES)
        choice("optimizer", self.optimizer, OPTIMIZERS)
        self.layout.check_world(self.world_size)
        self.layout.check_batch(self.global_batch_size)

    def fingerprint(self) -> str:
        """Identity of what runs: model, layout, batch, precision, optimizer, seed."""
        return fingerprint({"model": self.model_fingerprint, "layout": self.layout.identity(),
                             "world_size": self.world_size, "batch": self.global_batch_size,
                             "dtype": self.dtype, "optimizer": self.optimizer,
                             "lr": self.learning_rate, "seed": self.seed})


@dataclass(frozen=True)
class Metrics(Serde):
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
    # ... and their message bytes summed, "kind@group" -> bytes (planner.cost.comm's n: an
    # all-gather's whole output, a send's buffer).
    collective_bytes: dict[str, int] = field(default_factory=dict)
    # Per step (warm-up included), when the last rank finished it, in seconds from a barrier
    # before the first step.
    step_end_s: tuple[float, ...] = ()


@dataclass(frozen=True)
class ValidationRow(Serde):
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
class Validation(Serde):
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
