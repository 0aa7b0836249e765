"""Fault injection for the failure-handling tests (``EXECUTOR_FAULT`` environment variable).

``EXECUTOR_FAULT=raise:RANK:STEP`` makes global rank RANK raise at the start of step STEP;
``hang:RANK:STEP`` makes it sleep instead, so that its peers hit the process-group timeout.
Unset (always, outside tests) it does nothing.
"""
from __future__ import annotations

import os
import time


def maybe_fail(rank: int, step: int) -> None:
    spec = os.environ.get("EXECUTOR_FAULT", "")
    if not spec:
        return
    kind, fault_rank, fault_step = spec.split(":")
    if rank != int(fault_rank) or step != int(fault_step):
        return
    if kind == "raise":
        raise RuntimeError(f"injected failure (EXECUTOR_FAULT={spec}) on rank {rank} at step "
                           f"{step}")
    if kind == "hang":
        time.sleep(3600)
