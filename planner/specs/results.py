"""What planning and running produce: predictions, plans, metrics, validations."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from planner.errors import PlannerError
from planner.specs.common import Serde, choice, finite, fingerprint, positive

from planner.specs.cluster import Cluster
from planner.specs.layout import Layout
from planner.specs.model import ModelSpec

SCHEMA_VERSION = 1
DTYPES = ("float32", "float64", "bfloat16", "float16", "bf16-mixed", "fp16-mixed", "fp8")
OPTIMIZERS = ("adam", "adamw", "sgd", "sgd-momentum")
# The software a plan is costed for: this project's executor, or Megatron-LM (its layer, its
# vocabulary padding, its pipeline scatter/gather; planner.families.gpt.costs). Which chunk
# boundaries a search gives a pipeline: the balanced partition (planner.partition) or
# Megatron's even split of the layers (embedding first, head last).
IMPLEMENTATIONS = ("executor", "megatron")
PARTITIONS = ("balanced", "even")


@dataclass(frozen=True)
class RankMemory(Serde):
    """Predicted peak memory of one rank, by kind (on the device; ``host_bytes``: what offload
    keeps in host memory instead, not part of ``total_bytes``)."""
    rank: int
    stage: int
    parameters_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    buffers_bytes: int
    # What this rank's device can hold (mixed clusters: each kind its own); 0: the
    # prediction's device_memory_bytes.
    capacity_bytes: int = 0
    host_bytes: int = 0         # offloaded state in host memory (FSDP2 CPU offload)

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
    # What the prediction was costed for (``IMPLEMENTATIONS``) and how the search placed chunk
    # boundaries (``PARTITIONS``; the boundaries themselves are in the layout). Plan inputs,
    # like dtype and optimizer, not part of the layout: the same layout runs under either.
    implementation: str = "executor"
    partition: str = "balanced"
    # Added later (defaults: not recorded). The search's counters (``planner plan``: enumerated,
    # refused, simulated, memory_pruned, not_fitting, dominated, bounded_out), so a report counts
    # what the CLI printed; the relative uncertainty of predicted step times and where it comes
    # from (``planner.noise.prediction_band``); profiles beyond ``profile_path`` that costs were
    # extrapolated from.
    search_counts: dict[str, int] = field(default_factory=dict)
    uncertainty: float = 0.0
    uncertainty_source: str = ""
    other_profile_paths: tuple[str, ...] = ()

    def __post_init__(self):
        choice("implementation", self.implementation, IMPLEMENTATIONS)
        choice("partition", self.partition, PARTITIONS)
        if self.model_fingerprint != self.model.fingerprint():
            raise PlannerError(f"model_fingerprint {self.model_fingerprint} does not match the "
                               f"model described ({self.model.fingerprint()})")
        choice("dtype", self.dtype, DTYPES)
        choice("optimizer", self.optimizer, OPTIMIZERS)
        finite("learning_rate", self.learning_rate, 0, low_open=True)
        finite("uncertainty", self.uncertainty, 0)
        self.layout.check_world(self.world_size)
        self.layout.check_batch(self.global_batch_size)

    def fingerprint(self) -> str:
        """Identity of what runs: model, layout, batch, precision, optimizer, seed."""
        ident = {"model": self.model_fingerprint, "layout": self.layout.identity(),
                 "world_size": self.world_size, "batch": self.global_batch_size,
                 "dtype": self.dtype, "optimizer": self.optimizer, "lr": self.learning_rate,
                 "seed": self.seed}
        if self.implementation != "executor":     # plans written before keep their identity
            ident["implementation"] = self.implementation
        return fingerprint(ident)


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
    # After --resume: the losses of steps 0..first_step-1 and the world size each ran at, as the
    # (signed) checkpoint recorded them; an elastic run's whole history is earlier + losses.
    earlier_losses: tuple[float, ...] = ()
    earlier_world_sizes: tuple[int, ...] = ()
    # The 1-minute load average and the cores of rank 0's machine at the end of the run
    # (0: not recorded): above one runnable process per core, times include waiting for one.
    load_average: float = 0.0
    cpu_count: int = 0
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


@dataclass(frozen=True)
class Trial(Serde):
    """One layout ``planner validate`` runs: its plan file (relative to the trial set's
    directory), that plan's fingerprint, and its role and place in the predicted ranking."""
    plan_path: str
    plan_fingerprint: str
    role: str
    predicted_rank: int


@dataclass(frozen=True)
class TrialSet(Serde):
    """The trials of one validation across machines, written by node 0 (or ``--slurm``) into the
    shared work directory so that every node runs the same plans in the same order.

    ``run_id`` names the run (``--rdzv-id``; empty for a set written by ``--slurm``, whose job id
    is known only when it runs); the header fields are the Validation's.
    """
    run_id: str
    model: str
    cluster: str
    world_size: int
    global_batch_size: int
    steps: int
    warmup_steps: int
    trials: tuple[Trial, ...]
    created_utc: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        positive("world_size", self.world_size)
        if not self.trials:
            raise PlannerError("field 'trials': expected at least one trial")
        if not 0 <= self.warmup_steps < self.steps:
            raise PlannerError(f"field 'warmup_steps': {self.warmup_steps} must be >= 0 and "
                               f"below steps ({self.steps})")
        for i, t in enumerate(self.trials):
            if os.path.isabs(t.plan_path) or ".." in t.plan_path.split("/"):
                raise PlannerError(f"field 'trials[{i}].plan_path': {t.plan_path!r} must be a "
                                   "file name inside the trial set's directory")
