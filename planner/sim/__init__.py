"""Event simulation of one training step of a layout: step time, breakdown, memory, collectives.

A package mirroring the parallel dimensions (``planner/cost/*``, ``executor/parallel/*``):

- ``run``: what the step runs apart from the layout (``RunSpec``), collective times, the
  optimizer step, co-located-rank slowdown;
- ``blocks``: per-block rows after the TP split and recomputation, per-chunk sums;
- ``costs``: the partition into pipeline chunks and their costs (``prepare``);
- ``pp``: the schedule as the event loop and memory read it; boundary sends;
- ``dp`` (+ ``compress``): data parallelism as hooks on the event loop;
- ``memory``: per-rank memory (prediction, partition tie-break, search bound alike);
- ``engine``: the event loop, which knows no parallel strategy;
- ``predict``: the Prediction; ``bounds``: lower bounds for the search.

This module is the public API; the search and the commands use nothing else.
"""
from planner.sim.blocks import RowsBundle, Split, rows_bundle
from planner.sim.bounds import chain_bound, memory_floor, step_floor
from planner.sim.costs import LayoutCosts, layout_costs, prepare, with_memory
from planner.sim.engine import BREAKDOWN_KEYS
from planner.sim.memory import rank_memory
from planner.sim.predict import StepResult, evaluate, predict, simulate
from planner.sim.run import (CommTime, RunSpec, compute_slowdown, default_comm_time,
                             optimizer_time)

__all__ = [
    "BREAKDOWN_KEYS", "CommTime", "LayoutCosts", "RowsBundle", "RunSpec", "Split", "StepResult",
    "chain_bound", "compute_slowdown", "default_comm_time", "evaluate", "layout_costs",
    "memory_floor", "optimizer_time", "predict", "prepare", "rank_memory", "rows_bundle",
    "simulate", "step_floor", "with_memory",
]
