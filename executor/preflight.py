"""What the executor checks before the process group starts, so that a run never trains all its
steps and then loses its results: flag values, and that every output can be written
(``planner.outputs.check_writable``).
"""
from __future__ import annotations

import math

from planner.errors import PlannerError
from planner.outputs import check_writable


def check_numbers(args) -> None:
    if args.steps < 1:
        raise PlannerError(f"--steps must be >= 1, got {args.steps}")
    if args.warmup < 0:
        raise PlannerError(f"--warmup must be >= 0 (steps left out of the timing), got "
                           f"{args.warmup}")
    if args.checkpoint_every < 0:
        raise PlannerError(f"--checkpoint-every must be >= 0 (0: only at the end), got "
                           f"{args.checkpoint_every}")
    if not (math.isfinite(args.timeout_s) and args.timeout_s > 0):
        raise PlannerError(f"--timeout-s must be a positive number of seconds, got "
                           f"{args.timeout_s}")


def outputs(args, rank: int) -> list[tuple[str, str, str]]:
    """(flag, path, "file" | "dir") of what this rank will write: metrics on rank 0 only."""
    out = [("--metrics", args.metrics, "file")] if rank == 0 else []
    out += [("--trace-dir", args.trace_dir, "dir"),
            ("--checkpoint-dir", args.checkpoint_dir, "dir"),
            ("--save-params", args.save_params, "dir")]
    return [o for o in out if o[1]]


def check_outputs(args, rank: int) -> None:
    for flag, path, kind in outputs(args, rank):
        check_writable(flag, path, kind)
