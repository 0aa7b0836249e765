"""The pipeline schedule registry: one entry per schedule, everything the rest needs of it.

A ``Schedule`` holds its operation order (``planner.schedules.orders``), its chunk placement
("loop": rank r holds chunks r, r+p, ...; "v": rank r holds r and 2p-1-r), its virtual-stage
rule, whether backward is split into input (I) and weight (W) passes, the search's lower bound
on micro-batches in flight, and the name of the ``torch.distributed.pipelining`` class the
executor runs. The simulator, the search, the layout's validation and the executor all read
these entries; nothing else names a schedule. Adding a schedule is one entry here (plus its
order in ``orders.py`` and, if torch has no class for it, an executor schedule).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from planner.errors import PlannerError
from planner.schedules import orders
from planner.schedules.frontier import live_frontier, peak_in_flight  # noqa: F401 (API)

Op = orders.Op


@dataclass(frozen=True)
class Schedule:
    name: str
    torch_class: str               # in torch.distributed.pipelining
    placement: str                 # "loop" | "v"
    split_backward: bool           # backward as I (input grad) then W (weight grad)
    min_virtual_stages: int
    max_virtual_stages: int | None  # None: no fixed upper bound (the search caps it)
    flushing_single_chunk: bool    # one chunk per rank, every micro-batch flushed: the
                                   # closed forms (bubble, in-flight counts) hold exactly
    microbatches_multiple_of_pp: bool
    _order: Callable               # (p, m, v) -> per rank list of ops
    _floor: Callable               # (p, m, v) -> per rank micro-batches in flight (a floor)
    searched: bool = True          # the search tries it (else: only with --schedule)
    # the torch class refuses fewer micro-batches than stages (the simulator and Megatron do
    # not): what the executor refuses, ``planner.rules``
    microbatches_at_least_pp: bool = False

    @property
    def multi_stage(self) -> bool:
        """Whether the torch class takes a list of stages per rank (several chunks)."""
        return self.max_virtual_stages != 1

    def expand(self, p: int, m: int, v: int = 1) -> tuple[tuple[Op, ...], ...]:
        """Each pipeline rank's operations for one step (cached: read-only)."""
        return _expand_cached(self.name, p, m, v)

    def check(self, pp: int, v: int, m: int | None = None) -> str:
        """Why ``pp`` stages, ``v`` chunks per rank and ``m`` micro-batches do not fit this
        schedule ("" if they do; ``m`` None: the virtual-stage rule only)."""
        if v < self.min_virtual_stages or (self.max_virtual_stages is not None
                                           and v > self.max_virtual_stages):
            allowed = (f"{self.min_virtual_stages}" if self.max_virtual_stages ==
                       self.min_virtual_stages else
                       f">= {self.min_virtual_stages}" if self.max_virtual_stages is None else
                       f"{self.min_virtual_stages}..{self.max_virtual_stages}")
            return (f"schedule {self.name} places {allowed} chunk(s) per rank: virtual_stages "
                    f"must be {allowed}, got {v}")
        if m is not None and self.microbatches_multiple_of_pp and pp > 1 and m % pp:
            return f"{self.name} needs num_microbatches({m}) % pp({pp}) == 0"
        return ""

    def search_virtual_stages(self, max_v: int) -> range:
        """The v values the search tries with pp > 1."""
        if self.max_virtual_stages == self.min_virtual_stages:
            return range(self.min_virtual_stages, self.min_virtual_stages + 1)
        return range(max(2, self.min_virtual_stages), max_v + 1)

    def chunk_rank(self, chunk: int, p: int) -> int:
        """The pipeline rank holding ``chunk`` (torch's ``generate_stage_to_rank_mapping``)."""
        if self.placement == "v":
            lap, pos = divmod(chunk, p)
            return pos if lap % 2 == 0 else p - 1 - pos
        return chunk % p

    def rank_chunks(self, rank: int, p: int, v: int) -> list[int]:
        """The chunks a pipeline rank holds, in pipeline order."""
        return [c for c in range(p * v) if self.chunk_rank(c, p) == rank]

    def in_flight_floor(self, p: int, m: int, v: int) -> tuple[int, ...]:
        """Per pipeline rank, a count n_r such that at some moment the rank holds n_r
        micro-batches of every one of its chunks (exact for flushing single-chunk ones)."""
        return _floor_cached(self.name, p, m, v)


def _interleaved_floor(p: int, m: int, v: int) -> tuple[int, ...]:
    """The forwards of torch's warm-up, min((v-1)*m_round + 2(p-1-r), m*v) steps dealt in
    rounds of m_round to the v chunks, plus the first steady-state forward."""
    rounds = max(1, m // p)
    per_round = m // rounds
    out = []
    for r in range(p):
        warmup = min((v - 1) * per_round + 2 * (p - 1 - r), m * v)
        steps = min(warmup + 1, m * v)
        counts = [0] * v
        for j in range(v):   # forwards among the first `steps` that go to local chunk j
            full, rest = divmod(steps, per_round * v)
            counts[j] = full * per_round + min(per_round, max(0, rest - j * per_round))
        out.append(min(counts))
    return tuple(out)


SCHEDULES: dict[str, Schedule] = {s.name: s for s in (
    Schedule("gpipe", "ScheduleGPipe", "loop", False, 1, 1, True, False,
             lambda p, m, v: orders.gpipe(p, m), lambda p, m, v: (m,) * p),
    Schedule("1f1b", "Schedule1F1B", "loop", False, 1, 1, True, False,
             lambda p, m, v: orders.one_f_one_b(p, m),
             lambda p, m, v: tuple(min(p - r, m) for r in range(p)),
             microbatches_at_least_pp=True),
    Schedule("interleaved-1f1b", "ScheduleInterleaved1F1B", "loop", False, 1, None, False, True,
             orders.interleaved_1f1b, _interleaved_floor),
    # before rank r's first backward of its second chunk it has run 2p-1-r forwards of its
    # first chunk and r+1 of its second (both capped at m)
    # breadth first: a rank holds every micro-batch of every chunk when its backwards begin;
    # never better than interleaved-1f1b in time or memory, so not searched unless asked
    Schedule("looped-bfs", "ScheduleLoopedBFS", "loop", False, 1, None, False, False,
             orders.looped_bfs, lambda p, m, v: (m,) * p, searched=False),
    Schedule("zbv", "ScheduleZBVZeroBubble", "v", True, 2, 2, False, False,
             lambda p, m, v: orders.zbv(p, m),
             lambda p, m, v: tuple(min(2 * p - 1 - r, r + 1, m) for r in range(p))),
)}
NAMES = tuple(SCHEDULES)


def get(name: str) -> Schedule:
    hit = SCHEDULES.get(name)
    if hit is None:
        raise PlannerError(f"schedule {name!r} is not one of: {', '.join(NAMES)}")
    return hit


def expand(name: str, p: int, m: int, v: int = 1) -> tuple[tuple[Op, ...], ...]:
    """Each pipeline rank's operations for one step of schedule ``name``."""
    sched = get(name)
    problem = sched.check(p, v)
    if problem:
        raise PlannerError(problem)
    return sched.expand(p, m, v)


def chunk_rank(chunk: int, p: int, name: str) -> int:
    return get(name).chunk_rank(chunk, p)


@functools.lru_cache(maxsize=256)
def _expand_cached(name: str, p: int, m: int, v: int) -> tuple[tuple[Op, ...], ...]:
    return tuple(tuple(ops) for ops in SCHEDULES[name]._order(p, m, v))


@functools.lru_cache(maxsize=4096)
def _floor_cached(name: str, p: int, m: int, v: int) -> tuple[int, ...]:
    return tuple(SCHEDULES[name]._floor(p, m, v))
