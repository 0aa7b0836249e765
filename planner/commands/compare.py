"""`planner compare`: a plan's predicted step time and memory against executor metrics."""
from __future__ import annotations

import json
import sys

from planner.compare import compare, pct_error  # noqa: F401 (pct_error: API)
from planner.specs import Metrics, Plan


def add_arguments(parser) -> None:
    parser.add_argument("--plan", required=True, help="plan JSON the executor ran")
    parser.add_argument("--metrics", required=True, help="metrics JSON the executor wrote")
    parser.add_argument("--format", choices=("text", "json"), default="text")


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
