"""What ``planner converge`` measured: one training run per scheme and world size."""
from __future__ import annotations

import math

from dataclasses import dataclass

from planner.errors import PlannerError
from planner.specs.common import Serde, choice, finite, positive
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

    def __post_init__(self):
        positive("world_size", self.world_size)
        for name in ("predicted_step_time_s", "measured_step_time_s", "bytes_per_step",
                     "wire_bytes_per_step", "measured_last_step_bytes"):
            finite(name, getattr(self, name), 0.0)
        for t in self.step_end_s:
            finite("step_end_s", t, 0.0)
        # losses may be NaN (a diverged run is a result), but never infinite or negative
        if any(math.isinf(x) or x < 0 for x in self.losses):
            raise PlannerError(f"losses must be >= 0 (NaN for a diverged step); got "
                               f"{[x for x in self.losses if math.isinf(x) or x < 0][:3]}")


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

    def __post_init__(self):
        from planner.specs.results import OPTIMIZERS
        for name in ("corpus_bytes", "global_batch_size", "steps", "smooth_steps"):
            positive(name, getattr(self, name))
        finite("learning_rate", self.learning_rate, 0.0, low_open=True)
        finite("load_average", self.load_average, 0.0)
        choice("optimizer", self.optimizer, OPTIMIZERS)
        for world, budget in self.budget_s.items():
            if not str(world).isdigit() or int(world) < 1:
                raise PlannerError(f"budget_s key {world!r} must be a world size (an integer "
                                   ">= 1 as a string)")
            finite(f"budget_s[{world}]", budget, 0.0, low_open=True)
