"""Contiguous cuts of a model's blocks where each chunk runs on its own device (mixed clusters).

``planner.partition`` cuts blocks whose cost is the same wherever they run; on a mixed cluster a
pipeline stage on a slower device pays more for the same blocks, so chunk c has its own cost per
block and the slow stages should hold fewer. Same method as ``planner.partition`` (binary
search on the bottleneck, greedy packing; Skiena sec. 10.7, PipeDream's partitioner, Narayanan
et al. SOSP'19 sec. 3.1), same chunk cost (``chunk_cost``: compute, or the boundary sends if
larger), with per-chunk prefix sums and per-chunk memory caps.
"""
from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate

from planner.errors import PlannerError
from planner.partition import ChunkMemory, chunk_cost


def partition_by_chunk(costs: Sequence[Sequence[float]], send_s: Sequence[float],
                       memory: "ChunkMemory | None" = None,
                       caps: Sequence[float] | None = None, rel_tol: float = 1e-6
                       ) -> tuple[tuple[int, ...], float]:
    """Cut the blocks into ``len(costs)`` contiguous chunks where chunk c runs on its own device:
    ``costs[c][x]`` is block x's cost there (a slower device: higher costs, so fewer blocks).

    The same binary search on the bottleneck as ``balanced_partition``. Greedy packing is
    exact while any one block fits any chunk under the probed limit (each chunk's cost grows
    with its end and shrinks with its start, so by induction the greedy cut is never left of
    a feasible one, and it always has a block to take) -- which holds when a stage holds
    several layers; otherwise a greedy chunk may be left one block it cannot afford while a
    faster chunk after it could have, and the cut is a close heuristic (still valid). With
    ``memory`` and ``caps`` each chunk must also fit its own device (``caps[c]`` bytes, by the
    same greedy); if no cut fits, the fastest is returned and the caller's memory check says
    so. Returns ``(starts, bottleneck_s)``.
    """
    hi, best, _ = fastest_by_chunk(costs, send_s, memory, caps, rel_tol)
    return tuple(best), hi


def fastest_by_chunk(costs, send_s, memory=None, caps=None, rel_tol: float = 1e-4):
    """(bottleneck reached, its starts, a value no cut beats) of ``partition_by_chunk``. The
    bisection's last infeasible probe is not that value: the greedy packing is inexact when a
    chunk cannot afford a block, so a probe it fails may still be feasible. The bound returned
    is one no cut can beat: every block costs at least its cheapest chunk's time, so the slowest
    chunk takes at least the largest such block and the mean of their sum over k chunks."""
    k, n = len(costs), len(send_s)
    if k < 1 or k > n:
        raise PlannerError(f"cannot cut {n} blocks into {k} pipeline chunks: needs "
                           f"1 <= pp * virtual_stages <= {n}")
    prefixes = [[0.0, *accumulate(c)] for c in costs]
    if k == 1:
        return prefixes[0][-1], [0], prefixes[0][-1]
    mem = (memory, caps) if memory is not None and caps is not None else None
    lo = max(min(p[-1] for p in prefixes) / k, 0.0)
    hi = max(p[-1] for p in prefixes) + 2 * max(send_s)
    best = _pack_chunks(prefixes, send_s, hi, mem)
    if best is None and mem is not None:
        mem, best = None, _pack_chunks(prefixes, send_s, hi, None)
    if best is None:     # cannot happen with non-negative costs
        raise PlannerError(f"no partition of {n} blocks into {k} chunks")
    hi = _chunks_bottleneck(prefixes, send_s, best)
    while hi - lo > rel_tol * max(hi, 1e-30):
        mid = 0.5 * (lo + hi)
        got = _pack_chunks(prefixes, send_s, mid, mem)
        if got is None:
            lo = mid
        else:
            hi, best = _chunks_bottleneck(prefixes, send_s, got), got
    cheapest = [min(c[i] for c in costs) for i in range(n)]
    return hi, best, max(max(cheapest), sum(cheapest) / k)


def _pack_chunks(prefixes, send_s, limit: float, mem) -> list[int] | None:
    """``_pack`` with chunk c's own prefix sums and, given ``mem = (ChunkMemory, caps)``, its
    own memory cap."""
    k, n = len(prefixes), len(prefixes[0]) - 1
    last = n - 1
    starts, i = [], 0
    for c in range(k):
        prefix = prefixes[c]
        starts.append(i)
        left = k - c - 1
        if left == 0:
            ok = chunk_cost(prefix, send_s, i, n - 1) <= limit
            return starts if ok and (mem is None or mem[0].of(c, i, n - 1) <= mem[1][c]) \
                else None
        base = prefix[i]
        j = min(bisect_right(prefix, base + limit) - 2, n - 1 - left)
        before = send_s[i - 1] if i > 0 else 0.0
        while j >= i:        # chunk_cost, inlined (the hot loop, as in _pack)
            cost = prefix[j + 1] - base
            sends = before + (send_s[j] if j < last else 0.0)
            if (cost if cost >= sends else sends) <= limit:
                break
            j -= 1
        if mem is not None:
            while j >= i and mem[0].of(c, i, j) > mem[1][c]:
                j -= 1
        if j < i:
            return None
        i = j + 1
    return None


def _chunks_bottleneck(prefixes, send_s, starts) -> float:
    bounds = list(starts) + [len(prefixes[0]) - 1]
    return max(chunk_cost(prefixes[c], send_s, bounds[c], bounds[c + 1] - 1)
               for c in range(len(starts)))
