"""What ``planner converge`` measured: one training run per scheme and world size."""
from __future__ import annotations

from dataclasses import dataclass

from planner.specs.common import Serde
from planner.specs.layout import Layout

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ConvergenceRun(Serde):
    """One scheme at one world size: the plan's prediction and what the executor measured.

    ``losses`` and ``step_end_s`` cover every step (``step_end_s``: when the last rank finished
    it, from a barrier before the first); the executor's last step counts collectives under
    dispatch interception and is left out of both. ``bytes_per_step``: the planner's message
    bytes of dp collectives per step (local SGD's every H steps spread over them), which the
    executor's count equals (tests); ``wire_bytes_per_step``: what one rank sends of them under
    ring algorithms (``planner.cost.gradcomp.wire_bytes_per_rank``). ``status`` is "ok" or why
    the run gave no metrics.
    """
    scheme: str
    flags: tuple[str, ...]
    world_size: int
    layout: Layout
    plan_path: str
    status: str = "ok"
    predicted_step_time_s: float = 0.0
    measured_step_time_s: float = 0.0
    bytes_per_step: float = 0.0
    wire_bytes_per_step: float = 0.0
    measured_last_step_bytes: int = 0
    losses: tuple[float, ...] = ()
    step_end_s: tuple[float, ...] = ()
    loss_at_budget: float = 0.0


@dataclass(frozen=True)
class Convergence(Serde):
    """Runs of one model on one corpus; ``budget_s`` per world size (the shortest run there,
    or the user's), and the loss reached by then, smoothed over ``smooth_steps`` steps."""
    model: str
    corpus: str
    corpus_bytes: int
    global_batch_size: int
    steps: int
    smooth_steps: int
    budget_s: dict[str, float]
    runs: tuple[ConvergenceRun, ...]
    learning_rate: float
    optimizer: str
    created_utc: str = ""
    load_average: float = 0.0
    schema_version: int = SCHEMA_VERSION
