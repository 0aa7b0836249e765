"""`planner compare`: a plan's predicted step time and memory against executor metrics, each
with its interval (the prediction's uncertainty band, the measured inter-quartile range)."""
from __future__ import annotations

import json
import sys

from planner.compare import compare, pct_error  # noqa: F401 (pct_error: API)
from planner.explain import format_duration
from planner.specs import Metrics, Plan


def add_arguments(parser) -> None:
    parser.add_argument("--plan", required=True, help="plan JSON the executor ran")
    parser.add_argument("--metrics", required=True, help="metrics JSON the executor wrote")
    parser.add_argument("--format", choices=("text", "json"), default="text")


def _span(low: float, high: float) -> str:
    return f"{format_duration(low)} .. {format_duration(high)}"


def print_text(row: dict, out=None) -> None:
    out = out or sys.stdout   # looked up per call: stdout may be replaced
    mib = 2**20
    print(f"layout {row['layout']} (world {row['world_size']}), "
          f"{row['steps_measured']} measured steps", file=out)
    band = row.get("uncertainty", 0.0)
    predicted = format_duration(row["predicted_step_time_s"])
    if band:
        predicted += f" (+-{band:.1%}: {_span(row['predicted_low_s'], row['predicted_high_s'])})"
    measured = format_duration(row["measured_step_time_s"])
    if "measured_q1_s" in row:
        measured += f" (IQR {_span(row['measured_q1_s'], row['measured_q3_s'])})"
    verdict = ("within the noise: the intervals overlap" if row.get("within_noise")
               else "outside both intervals")
    print(f"  step time  predicted {predicted}   measured {measured}   error "
          f"{row['step_time_error_pct']:+.1f}%, {verdict}", file=out)
    print(f"  peak mem   predicted {row['predicted_peak_memory_bytes'] / mib:9.1f} MiB  measured "
          f"{row['measured_peak_memory_bytes'] / mib:9.1f} MiB   error "
          f"{row['memory_error_pct']:+.1f}%  ({row['memory_measure']})", file=out)


def noise_notes(row: dict, metrics=None) -> list[str]:
    """A machine that was loaded during the run, and measured steps that spread widely
    (``planner.noise``)."""
    from planner import noise
    notes = [noise.spread_note("the measured steps", row["measured_step_time_iqr_s"],
                               row["measured_step_time_s"])]
    if metrics is not None and metrics.cpu_count and metrics.load_average > metrics.cpu_count:
        notes.append(f"the machine was loaded when the run ended (load average "
                     f"{metrics.load_average:.1f} on {metrics.cpu_count} cores): measured times "
                     "include waiting for a core")
    return [n for n in notes if n]


def run(args) -> int:
    metrics = Metrics.load(args.metrics)
    row = compare(Plan.load(args.plan), metrics, args.plan, args.metrics)
    notes = noise_notes(row, metrics)
    if args.format == "json":
        json.dump({**row, "notes": notes}, sys.stdout, indent=2)
        print()
    else:
        print_text(row)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    return 0
