"""Convergence, measured: the same model and text under each data-parallel scheme.

``planner converge`` (``planner.commands.converge``) trains one model on a byte-level corpus of
text found on this machine -- the Python standard library's own sources, read in sorted path
order, one token per byte (vocabulary 256), no download -- once per scheme (``SCHEMES``: the
flags a user would give ``planner simulate``) and world size, for the same number of steps, and
keeps loss against step and against wall-clock time, beside the planner's predicted step time
and bytes per step. Every batch is read once (the runs stay within one epoch of the corpus), so
the training loss of a step, taken before its update, is a loss on text the model has not seen.

The loss "at the budget" of a run is the mean of the ``smooth`` last losses of the steps it had
finished by then (single-batch losses are noisy); the budget is the user's, or the shortest
run of that world size, so that every scheme is compared at a time all of them reached.
Pure python apart from numpy for the corpus; the executor runs under torchrun.
"""
from __future__ import annotations

import glob
import os
import sys
import sysconfig

from planner.cost import gradcomp
from planner.errors import PlannerError

# scheme -> the `planner simulate` flags that select it
SCHEMES: dict[str, tuple[str, ...]] = {
    "allreduce": (),
    "topk-1%": ("--compression", "topk", "--compression-ratio", "0.01"),
    "randk-1%": ("--compression", "randk", "--compression-ratio", "0.01"),
    "qsgd-8bit": ("--compression", "qsgd", "--bits", "8"),
    "qsgd-4bit": ("--compression", "qsgd", "--bits", "4"),
    "qsgd-2bit": ("--compression", "qsgd", "--bits", "2"),
    "sign-1bit": ("--compression", "sign"),
    "ps": ("--dp-comm", "parameter_server"),
    "ps-stale2": ("--dp-comm", "parameter_server", "--staleness", "2"),
    "local-H8": ("--local-sgd-period", "8"),
    "diloco-H8": ("--local-sgd-period", "8", "--outer-optimizer", "nesterov"),
}


def stdlib_corpus(path: str, max_bytes: int) -> tuple[str, int]:
    """Write the first ``max_bytes`` of the standard library's ``*.py`` files (sorted by path,
    site-packages left out) as a 1-D uint8 ``.npy`` of byte tokens; (description, bytes)."""
    import numpy as np
    root = sysconfig.get_paths()["stdlib"]
    files = sorted(f for f in glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
                   if "site-packages" not in f.split(os.sep))
    if not files:
        raise PlannerError(f"no *.py files under the standard library at {root}: pass --corpus")
    chunks, total = [], 0
    for f in files:
        with open(f, "rb") as fh:
            data = fh.read(max_bytes - total)
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    np.save(path, np.frombuffer(b"".join(chunks), dtype=np.uint8))
    return f"Python {sys.version.split()[0]} standard library sources ({root}), bytes", total


def dp_bytes_per_step(prediction) -> tuple[float, float]:
    """(message bytes, bytes one rank sends) of the dp collectives per step (module doc of
    ``planner.specs.convergence``)."""
    msg = wire = 0.0
    for c in prediction.collectives:
        if c.group != "dp":
            continue
        per = c.count / c.every_steps
        msg += per * c.bytes_each
        wire += per * gradcomp.wire_bytes_per_rank(c.collective, c.bytes_each, c.group_size)
    return msg, wire


def loss_at(losses, ends, budget_s: float, smooth: int) -> float:
    """Mean loss of the last ``smooth`` steps finished within ``budget_s`` (NaN if none)."""
    done = [i for i, t in enumerate(ends) if t <= budget_s]
    if not done:
        return float("nan")
    last = done[-1]
    window = losses[max(0, last - smooth + 1):last + 1]
    return sum(window) / len(window)


def executor_command(nproc: int, plan_path: str, metrics_path: str, steps: int,
                     data_path: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", "-m", "executor", "--plan", plan_path,
            "--steps", str(steps), "--warmup", "1", "--metrics", metrics_path,
            "--data", data_path, "--count-collectives", "--quiet"]
