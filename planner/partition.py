"""Balanced contiguous partition of a model's blocks into pipeline chunks.

The problem (../shared/reference/formulas.md, "Pipeline partitioning"): cut the block sequence
``c_1..c_l`` into ``k`` contiguous non-empty chunks so that the slowest chunk is as fast as
possible. The textbook recurrence F[j][k] = min_{i<j} max(F[i][k-1], sum_{i<x<=j} c_x) is
O(l^2 k); we use the equivalent "binary search on the bottleneck, greedy packing" form (the
linear-partition / bottleneck-path method; e.g. Skiena, The Algorithm Design Manual, sec. 10.7,
and the PipeDream partitioner, Narayanan et al. SOSP'19, sec. 3.1), O(k log l) per probe.

Costs include what formulas.md requires: each block's cost already holds the first/last-stage
extras (the embedding is block 0, the LM head and loss the last block), and a chunk that does
not end the model pays ``send_s[j]`` for its boundary transfer (activations forward, the same
bytes of gradients backward), the receiving side paying the same. A chunk's cost is

    cost(i..j) = sum_{x=i..j} c_x + (send_s[j] if j < l-1) + (send_s[i-1] if i > 0).

With uniform boundary sizes (every decoder block emits b*s*h elements) greedy packing is exact;
otherwise it is a close heuristic (the boundary term is not monotone in j).
"""
from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate

from planner.errors import PlannerError


def chunk_cost(prefix: Sequence[float], send_s: Sequence[float], i: int, j: int) -> float:
    """Cost of the chunk holding blocks i..j inclusive (prefix[x] = sum of c_0..c_{x-1})."""
    last = len(prefix) - 2
    cost = prefix[j + 1] - prefix[i]
    if j < last:
        cost += send_s[j]
    if i > 0:
        cost += send_s[i - 1]
    return cost


def _pack(prefix, send_s, k: int, limit: float) -> list[int] | None:
    """Greedy: each chunk takes as many blocks as fit under ``limit``, leaving at least one
    block for every chunk still to come. Returns the first block of each chunk, or None."""
    n = len(prefix) - 1
    starts, i = [], 0
    for chunk in range(k):
        starts.append(i)
        left = k - chunk - 1
        if left == 0:
            return starts if chunk_cost(prefix, send_s, i, n - 1) <= limit else None
        j_max = n - 1 - left
        # largest j with the pure block sum under the limit (sums are monotone in j)
        j = min(bisect_right(prefix, prefix[i] + limit) - 2, j_max)
        while j >= i and chunk_cost(prefix, send_s, i, j) > limit:
            j -= 1
        if j < i:
            return None
        i = j + 1
    return None


def balanced_partition(costs: Sequence[float], k: int, send_s: Sequence[float] | None = None,
                       rel_tol: float = 1e-7) -> tuple[tuple[int, ...], float]:
    """Split ``costs`` (one per block, seconds) into ``k`` contiguous non-empty chunks.

    ``send_s[j]`` is the boundary cost of cutting after block j (0 if omitted). Returns
    ``(starts, bottleneck_s)``: the first block index of every chunk (``starts[0] == 0``; the
    layout's ``stage_boundaries``) and the cost of the slowest chunk.
    """
    n = len(costs)
    if k < 1 or k > n:
        raise PlannerError(f"cannot cut {n} blocks into {k} pipeline chunks: needs "
                           f"1 <= pp * virtual_stages <= {n}")
    if any(c < 0 for c in costs):
        raise PlannerError("block costs must be >= 0")
    send_s = list(send_s) if send_s is not None else [0.0] * n
    prefix = [0.0, *accumulate(costs)]
    if k == 1:
        return (0,), prefix[-1]
    # The bottleneck lies between the largest single block (with its boundaries) and the whole.
    lo = max(prefix[-1] / k, max(costs))
    hi = prefix[-1] + 2 * max(send_s)
    best = _pack(prefix, send_s, k, hi)
    if best is None:  # cannot happen with non-negative costs; keep the contract explicit
        raise PlannerError(f"no partition of {n} blocks into {k} chunks")
    if _pack(prefix, send_s, k, lo) is not None:
        hi = lo
        best = _pack(prefix, send_s, k, lo)
    while hi - lo > rel_tol * max(hi, 1e-30):
        mid = 0.5 * (lo + hi)
        got = _pack(prefix, send_s, k, mid)
        if got is None:
            lo = mid
        else:
            hi, best = mid, got
    best = _spread(prefix, send_s, k, hi) or best
    bounds = list(best) + [n]
    bottleneck = max(chunk_cost(prefix, send_s, bounds[c], bounds[c + 1] - 1) for c in range(k))
    return tuple(best), bottleneck


def _spread(prefix, send_s, k: int, limit: float) -> list[int] | None:
    """Among the partitions within ``limit``, cut near the even targets j*total/k.

    Greedy packing fills early chunks to the limit and leaves the slack at the end; with
    several chunks per rank (interleaved, zbv) that puts two full chunks on one rank. Cutting
    at the prefix sum nearest each even target, as long as the rest still fits, spreads it.
    """
    n = len(prefix) - 1
    total = prefix[-1]
    fits_suffix: dict = {}

    def suffix_ok(i: int, chunks: int) -> bool:
        key = (i, chunks)
        if key not in fits_suffix:
            fits_suffix[key] = _pack_from(prefix, send_s, i, chunks, limit)
        return fits_suffix[key]

    starts, i = [0], 0
    for j in range(1, k):
        target = prefix[0] + total * j / k
        # candidate first blocks of chunk j: i+1 .. n-(k-j), nearest the target first
        lo, hi = i + 1, n - (k - j)
        mid = min(max(bisect_right(prefix, target) - 1, lo), hi)
        order = sorted(range(lo, hi + 1), key=lambda x: (abs(prefix[x] - target), x))
        if mid not in order:
            return None
        chosen = None
        for x in order:
            if chunk_cost(prefix, send_s, i, x - 1) <= limit and suffix_ok(x, k - j):
                chosen = x
                break
        if chosen is None:
            return None
        starts.append(chosen)
        i = chosen
    return starts


def _pack_from(prefix, send_s, i0: int, k: int, limit: float) -> bool:
    """Whether blocks i0.. fit in ``k`` chunks under ``limit`` (greedy, as ``_pack``)."""
    n = len(prefix) - 1
    i = i0
    for chunk in range(k):
        left = k - chunk - 1
        if left == 0:
            return chunk_cost(prefix, send_s, i, n - 1) <= limit
        j = min(bisect_right(prefix, prefix[i] + limit) - 2, n - 1 - left)
        while j >= i and chunk_cost(prefix, send_s, i, j) > limit:
            j -= 1
        if j < i:
            return False
        i = j + 1
    return False


def chunk_blocks(starts: Sequence[int], num_blocks: int) -> list[range]:
    """The block ranges of each chunk from its first-block indices."""
    ends = list(starts[1:]) + [num_blocks]
    return [range(a, b) for a, b in zip(starts, ends)]
