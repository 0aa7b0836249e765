"""`planner compare`: a plan's predicted step time and memory against executor metrics."""
from __future__ import annotations

import json
import statistics
import sys

from planner.errors import PlannerError
from planner.specs import Metrics, Plan


def add_arguments(parser) -> None:
    parser.add_argument("--plan", required=True, help="plan JSON the executor ran")
    parser.add_argument("--metrics", required=True, help="metrics JSON the executor wrote")
    parser.add_argument("--format", choices=("text", "json"), default="text")


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


def print_text(row: dict, out=sys.stdout) -> None:
    mib = 2**20
    print(f"layout {row['layout']} (world {row['world_size']}), "
          f"{row['steps_measured']} measured steps", file=out)
    print(f"  step time  predicted {row['predicted_step_time_s'] * 1e3:9.1f} ms   measured "
          f"{row['measured_step_time_s'] * 1e3:9.1f} ms (IQR {row['measured_step_time_iqr_s'] * 1e3:.1f})"
          f"   error {row['step_time_error_pct']:+.1f}%", file=out)
    print(f"  peak mem   predicted {row['predicted_peak_memory_bytes'] / mib:9.1f} MiB  measured "
          f"{row['measured_peak_memory_bytes'] / mib:9.1f} MiB   error "
          f"{row['memory_error_pct']:+.1f}%  ({row['memory_measure']})", file=out)


def run(args) -> int:
    row = compare(Plan.load(args.plan), Metrics.load(args.metrics), args.plan, args.metrics)
    if args.format == "json":
        json.dump(row, sys.stdout, indent=2)
        print()
    else:
        print_text(row)
    return 0
