"""Fault injection for the failure-handling tests (``EXECUTOR_FAULT`` environment variable).

``EXECUTOR_FAULT=raise:RANK:STEP`` makes global rank RANK raise at the start of step STEP;
``hang:RANK:STEP`` makes it sleep instead, so that its peers hit the process-group timeout;
``kill:RANK:STEP`` sends it SIGKILL (no Python handler runs, no error file: a killed rank);
``crash-in-checkpoint:RANK:STEP`` ends it (``os._exit``, like a kill or a power cut) while the
checkpoint of STEP completed steps is half written: shards on disk, not yet signed or renamed.

Elastic runs (every rank of the torchrun agent whose environment holds them; WORLD is the world
size the rank runs in, so that a fault fires in one membership of the job and not the next):

- ``lose-node:STEP:WORLD``: at the start of the first step >= STEP in a world of WORLD ranks,
  SIGKILL the rank's torchrun agent (its parent) and then the rank: the machine is gone;
- ``wait-for-node:STEP:WORLD``: at the start of a step >= STEP in a world of WORLD ranks that is
  not this process's first step (so it has checkpointed at this world size), sleep until the
  agent stops the rank: a node joining the rendezvous makes torchrun restart every worker.

Several faults are separated by commas. Unset (always, outside tests) it does nothing.
"""
from __future__ import annotations

import os
import signal
import time

_POINTS = {"raise": "step", "hang": "step", "kill": "step", "crash-in-checkpoint": "checkpoint"}
_ELASTIC = ("lose-node", "wait-for-node")
_begun = {"steps": 0}          # steps this process has started


def maybe_fail(rank: int, step: int, point: str = "step") -> None:
    spec = os.environ.get("EXECUTOR_FAULT", "")
    if not spec:
        return
    first_in_process = False
    if point == "step":
        first_in_process = _begun["steps"] == 0
        _begun["steps"] += 1
    for one in spec.split(","):
        kind, *fields = one.strip().split(":")
        if kind in _ELASTIC:
            if point == "step":
                _elastic(kind, int(fields[0]), int(fields[1]), step, first_in_process)
        elif (_POINTS.get(kind) == point and rank == int(fields[0])
              and step == int(fields[1])):
            _fire(kind, one.strip(), rank, step)


def _fire(kind: str, spec: str, rank: int, step: int) -> None:
    if kind == "raise":
        raise RuntimeError(f"injected failure (EXECUTOR_FAULT={spec}) on rank {rank} at step "
                           f"{step}")
    if kind == "hang":
        time.sleep(3600)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "crash-in-checkpoint":
        os._exit(1)


def _elastic(kind: str, from_step: int, world: int, step: int, first_in_process: bool) -> None:
    if step < from_step or int(os.environ.get("WORLD_SIZE", "1")) != world:
        return
    if kind == "lose-node":
        os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "wait-for-node" and not first_in_process:
        while True:                    # ended by torchrun (SIGTERM) when the world changes
            time.sleep(3600)
