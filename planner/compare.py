"""A plan's prediction against what the executor measured for it, each with its interval.

The measured step time is the median of the timed steps with their inter-quartile range; the
predicted one carries the plan's uncertainty band (``Plan.uncertainty``, from
``planner.noise.prediction_band``). The error is called within the noise when the two
intervals overlap: a difference smaller than either spread is not evidence of a wrong model.
"""
from __future__ import annotations

from planner.errors import PlannerError
from planner.noise import quartiles
from planner.specs import Metrics, Plan


def pct_error(predicted: float, measured: float) -> float:
    """Signed percentage error of a prediction: 100 * (predicted - measured) / measured."""
    return 100.0 * (predicted - measured) / measured if measured else float("nan")


def intervals(predicted_s: float, band: float, step_times_s, median_s: float) -> dict:
    """Predicted [low, high] from the band, measured [q1, q3], and whether they overlap."""
    q1, _, q3 = quartiles(step_times_s) if step_times_s else (median_s, median_s, median_s)
    low, high = predicted_s * (1 - band), predicted_s * (1 + band)
    return {"predicted_low_s": low, "predicted_high_s": high,
            "measured_q1_s": q1, "measured_q3_s": q3,
            "within_noise": low <= q3 and q1 <= high}


def compare(plan: Plan, metrics: Metrics, plan_path: str = "", metrics_path: str = "") -> dict:
    if metrics.plan_fingerprint != plan.fingerprint():
        raise PlannerError(f"{metrics_path}: metrics are of plan {metrics.plan_fingerprint}, not "
                           f"of {plan_path} ({plan.fingerprint()})")
    p = plan.prediction
    measured_mem = max(metrics.peak_memory_bytes) if metrics.peak_memory_bytes else 0
    spans = intervals(p.step_time_s, plan.uncertainty, metrics.step_times_s,
                      metrics.step_time_s)
    return {
        "layout": plan.layout.describe(), "world_size": plan.world_size,
        "predicted_step_time_s": p.step_time_s, "measured_step_time_s": metrics.step_time_s,
        "measured_step_time_iqr_s": spans["measured_q3_s"] - spans["measured_q1_s"],
        "step_time_error_pct": pct_error(p.step_time_s, metrics.step_time_s),
        "predicted_peak_memory_bytes": p.peak_memory_bytes,
        "measured_peak_memory_bytes": measured_mem, "memory_measure": metrics.memory_measure,
        "memory_error_pct": pct_error(p.peak_memory_bytes, measured_mem),
        "steps_measured": len(metrics.step_times_s), "uncertainty": plan.uncertainty,
        "uncertainty_source": plan.uncertainty_source, **spans,
    }
