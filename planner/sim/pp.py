"""Pipeline parallelism in the simulator: what the event loop and memory need of a schedule.

``schedule_plan`` turns a schedule's per-rank operation orders (``planner.schedules``) into
records the event loop reads: which slot an operation waits on (the activation of (chunk, mb)
for F, its gradient for B/I), which it fills, and over which boundary link it sends.
``schedule_shape`` gives chunk owners and each rank's live-activation frontier for memory.
``chunk_links`` prices each boundary send (``planner.cost.pp``). All cached per shape.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

from planner import schedules
from planner.cost import pp as pp_cost
from planner.schedules.frontier import live_frontier

KINDS = {"F": 0, "B": 1, "I": 2, "W": 3}    # index of an op kind in the durations table
_new = tuple.__new__


class OpRecord(NamedTuple):
    """One operation of a rank, as the event loop reads it."""
    waits: int          # slot whose arrival it needs (-1: none, only the rank's stream)
    duration: int       # index into the durations table (kind * chunks + chunk)
    fills: int          # slot its output fills (-1: none)
    link: int           # chunk whose boundary link carries the output (-1: same rank)
    kind: str
    chunk: int
    microbatch: int


@dataclass(frozen=True)
class SchedulePlan:
    ops: tuple                  # per rank, the schedule's (kind, chunk, mb) operations
    records: tuple              # per rank, the OpRecords
    owner: tuple[int, ...]      # per chunk, the pipeline rank holding it
    last_backward: dict         # per chunk, (rank, op index) of its last B or W


@functools.lru_cache(maxsize=256)
def schedule_plan(schedule: str, p: int, m: int, v: int) -> SchedulePlan:
    """The event loop's view of ``schedule`` with ``p`` ranks, ``m`` micro-batches, ``v``
    chunks per rank. Slots 0..nch*m-1 are activations of (chunk, mb), nch*m.. gradients."""
    kind_of = schedules.get(schedule)
    ops = kind_of.expand(p, m, v)
    nch = p * v
    owner = tuple(kind_of.chunk_rank(c, p) for c in range(nch))
    grad0 = nch * m
    recs = []
    for rank_ops in ops:
        rr = []
        for kind, c, mb in rank_ops:
            link = -1
            if kind == "F":
                waits = c * m + mb
                if c + 1 < nch:
                    fills = (c + 1) * m + mb
                    link = -1 if owner[c + 1] == owner[c] else c
                else:
                    fills = grad0 + c * m + mb    # the loss: this chunk's backward may go
            elif kind == "W":
                waits, fills = -1, -1
            else:
                waits = grad0 + c * m + mb
                fills = grad0 + (c - 1) * m + mb if c > 0 else -1
                if c > 0 and owner[c - 1] != owner[c]:
                    link = c - 1
            # tuple.__new__: NamedTuple's own constructor is several times slower, and a search
            # builds tens of thousands of these
            rr.append(_new(OpRecord, (waits, KINDS[kind] * nch + c, fills, link, kind, c, mb)))
        recs.append(tuple(rr))
    last = {}
    for r in range(p):
        for i, (kind, c, _) in enumerate(ops[r]):
            if kind in ("B", "W"):
                last[c] = (r, i)
    return SchedulePlan(tuple(tuple(o) for o in ops), tuple(recs), owner, last)


@functools.lru_cache(maxsize=1024)
def schedule_shape(schedule: str, p: int, m: int, v: int):
    """What memory needs of a schedule: chunk owners, each rank's chunks and its live-activation
    frontier (``planner.schedules.frontier.live_frontier``; for flushing single-chunk schedules
    directly the in-flight counts m and min(p - r, m), formulas.md)."""
    kind = schedules.get(schedule)
    owner = tuple(kind.chunk_rank(c, p) for c in range(p * v))
    mine = tuple(tuple(c for c in range(p * v) if owner[c] == r) for r in range(p))
    if kind.flushing_single_chunk and v == 1:
        frontiers = tuple(((r,), ((n,),)) for r, n in enumerate(kind.in_flight_floor(p, m, v)))
    else:
        frontiers = tuple(live_frontier(o) for o in kind.expand(p, m, v))
    return owner, mine, frontiers


def chunk_links(chunks, layout, comm, scatter: bool = False) -> None:
    """Price each chunk's boundary send (``Chunk.send_s``) where the next chunk sits on another
    rank: the link between ranks a and b; p-1 -> 0 is the wrap of looped schedules.
    ``scatter``: Megatron's scatter/gather over the tp ranks (``planner.cost.pp``)."""
    p = layout.pp
    kind = layout.pipeline.kind
    for i, c in enumerate(chunks[:-1]):
        a, b = kind.chunk_rank(i, p), kind.chunk_rank(i + 1, p)
        if a != b:
            stage = p - 1 if {a, b} == {p - 1, 0} and p > 2 else min(a, b)
            c.send_s = pp_cost.send_time(comm, c.send_bytes, layout.tp, scatter, stage)
