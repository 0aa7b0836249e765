"""Fault injection for the failure-handling tests (``EXECUTOR_FAULT`` environment variable).

``EXECUTOR_FAULT=raise:RANK:STEP`` makes global rank RANK raise at the start of step STEP;
``hang:RANK:STEP`` makes it sleep instead, so that its peers hit the process-group timeout;
``kill:RANK:STEP`` sends it SIGKILL (no Python handler runs, no error file: a killed rank);
``crash-in-checkpoint:RANK:STEP`` ends it (``os._exit``, like a kill or a power cut) while the
checkpoint of STEP completed steps is half written: shards on disk, not yet signed or renamed.
Unset (always, outside tests) it does nothing.
"""
from __future__ import annotations

import os
import signal
import time

_POINTS = {"raise": "step", "hang": "step", "kill": "step", "crash-in-checkpoint": "checkpoint"}


def maybe_fail(rank: int, step: int, point: str = "step") -> None:
    spec = os.environ.get("EXECUTOR_FAULT", "")
    if not spec:
        return
    kind, fault_rank, fault_step = spec.split(":")
    if _POINTS.get(kind) != point or rank != int(fault_rank) or step != int(fault_step):
        return
    if kind == "raise":
        raise RuntimeError(f"injected failure (EXECUTOR_FAULT={spec}) on rank {rank} at step "
                           f"{step}")
    if kind == "hang":
        time.sleep(3600)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "crash-in-checkpoint":
        os._exit(1)
