"""A plan's prediction against what the executor measured for it."""
from __future__ import annotations

import statistics

from planner.errors import PlannerError
from planner.specs import Metrics, Plan


def pct_error(predicted: float, measured: float) -> float:
    """Signed percentage error of a prediction: 100 * (predicted - measured) / measured."""
    return 100.0 * (predicted - measured) / measured if measured else float("nan")


def compare(plan: Plan, metrics: Metrics, plan_path: str = "", metrics_path: str = "") -> dict:
    if metrics.plan_fingerprint != plan.fingerprint():
        raise PlannerError(f"{metrics_path}: metrics are of plan {metrics.plan_fingerprint}, not "
                           f"of {plan_path} ({plan.fingerprint()})")
    p = plan.prediction
    measured_mem = max(metrics.peak_memory_bytes) if metrics.peak_memory_bytes else 0
    spread = (statistics.quantiles(metrics.step_times_s, n=4)
              if len(metrics.step_times_s) >= 2 else [metrics.step_time_s] * 3)
    return {
        "layout": plan.layout.describe(), "world_size": plan.world_size,
        "predicted_step_time_s": p.step_time_s, "measured_step_time_s": metrics.step_time_s,
        "measured_step_time_iqr_s": spread[2] - spread[0],
        "step_time_error_pct": pct_error(p.step_time_s, metrics.step_time_s),
        "predicted_peak_memory_bytes": p.peak_memory_bytes,
        "measured_peak_memory_bytes": measured_mem, "memory_measure": metrics.memory_measure,
        "memory_error_pct": pct_error(p.peak_memory_bytes, measured_mem),
        "steps_measured": len(metrics.step_times_s),
    }
