"""Balanced contiguous partition of a model's blocks into pipeline chunks.

The problem (../shared/reference/formulas.md, "Pipeline partitioning"): cut the block sequence
``c_1..c_l`` into ``k`` contiguous non-empty chunks so that the slowest chunk is as fast as
possible. The textbook recurrence F[j][k] = min_{i<j} max(F[i][k-1], sum_{i<x<=j} c_x) is
O(l^2 k); we use the equivalent "binary search on the bottleneck, greedy packing" form (the
linear-partition / bottleneck-path method; e.g. Skiena, The Algorithm Design Manual, sec. 10.7,
and the PipeDream partitioner, Narayanan et al. SOSP'19, sec. 3.1), O(k log l) per probe.

Costs include what formulas.md requires: each block's cost already holds the first/last-stage
extras (the embedding is block 0, the LM head and loss the last block), and a chunk pays for its
boundary transfers -- ``send_s[j]`` for cutting after block j, once per direction -- the way
PipeDream's partitioner does (A(j, m) = min max(A(i, m-m'), 2*C_i, T(i+1..j, m')), Narayanan et
al. SOSP'19, sec. 3.1): transfers run on their own stream, overlapped with compute, so a chunk
is as slow as the larger of its compute and its sends:

    cost(i..j) = max(sum_{x=i..j} c_x, send_s[j] (if j < l-1) + send_s[i-1] (if i > 0)).

With uniform boundary sizes (every decoder block emits b*s*h elements) greedy packing is exact;
otherwise it is a close heuristic (the boundary term is not monotone in j).
"""
from __future__ import annotations

from bisect import bisect_right
from functools import lru_cache
from collections.abc import Sequence
from itertools import accumulate

from planner.errors import PlannerError


def chunk_cost(prefix: Sequence[float], send_s: Sequence[float], i: int, j: int) -> float:
    """Cost of the chunk holding blocks i..j inclusive (prefix[x] = sum of c_0..c_{x-1})."""
    last = len(prefix) - 2
    sends = 0.0
    if j < last:
        sends += send_s[j]
    if i > 0:
        sends += send_s[i - 1]
    cost = prefix[j + 1] - prefix[i]
    return cost if cost >= sends else sends


def _pack(prefix, send_s, k: int, limit: float, mem: "ChunkMemory | None" = None,
          cap: float = float("inf")) -> list[int] | None:
    """Greedy: each chunk takes as many blocks as fit under ``limit`` (and, given ``mem``,
    within ``cap`` bytes), leaving at least one block for every chunk still to come. Both
    constraints grow with the chunk, so the greedy cut is never left of any feasible one.
    Returns the first block of each chunk, or None."""
    n = len(prefix) - 1
    last = n - 1
    starts, i = [], 0
    for c in range(k):
        starts.append(i)
        left = k - c - 1
        if left == 0:
            ok = chunk_cost(prefix, send_s, i, n - 1) <= limit
            return starts if ok and (mem is None or mem.of(c, i, n - 1) <= cap) else None
        # largest j with the pure block sum under the limit (sums are monotone in j), then
        # back off while the sends exceed it (chunk_cost, inlined: this is the hot loop)
        base = prefix[i]
        j = min(bisect_right(prefix, base + limit) - 2, n - 1 - left)
        before = send_s[i - 1] if i > 0 else 0.0
        while j >= i:
            cost = prefix[j + 1] - base
            sends = before + (send_s[j] if j < last else 0.0)
            if (cost if cost >= sends else sends) <= limit:
                break
            j -= 1
        if j < i:
            return None
        if mem is not None:
            if mem.of(c, i, i) > cap:
                return None
            lo = i                   # the memory of i..x grows with x: largest x under cap
            while lo < j:
                mid = (lo + j + 1) // 2
                if mem.of(c, i, mid) <= cap:
                    lo = mid
                else:
                    j = mid - 1
            j = lo
        i = j + 1
    return None

def balanced_partition(costs: Sequence[float], k: int, send_s: Sequence[float] | None = None,
                       rel_tol: float = 1e-6, memory: "ChunkMemory | None" = None,
                       cap: float = float("inf")) -> tuple[tuple[int, ...], float]:
    """Split ``costs`` (one per block, seconds) into ``k`` contiguous non-empty chunks.

    ``send_s[j]`` is the boundary cost of cutting after block j (0 if omitted). Returns
    ``(starts, bottleneck_s)``: the first block index of every chunk (``starts[0] == 0``; the
    layout's ``stage_boundaries``) and the cost of the slowest chunk.

    Several partitions usually share the optimal bottleneck. The cuts go near equal shares
    (``_spread``), which keeps the sums of a rank's several chunks even and leaves the slack
    spread over the stages rather than stacked at the bottleneck (stacked bottleneck stages
    lengthen a pipeline's fill and drain). Only when that partition does not fit (``memory``,
    one chunk per rank, exceeds ``cap`` bytes on some rank) is the one with the least peak
    memory among the equally fast ones chosen, by a second binary search (``_pack`` with
    ``mem``): under 1F1B stage r keeps min(p - r, m) micro-batches of activations, so the early
    stages should hold fewer blocks. The memory tie-break so never lengthens a step that fits
    without it.
    """
    n = len(costs)
    if k < 1 or k > n:
        raise PlannerError(f"cannot cut {n} blocks into {k} pipeline chunks: needs "
                           f"1 <= pp * virtual_stages <= {n}")
    if any(c < 0 for c in costs):
        raise PlannerError("block costs must be >= 0")
    send_s = tuple(send_s) if send_s is not None else (0.0,) * n
    prefix = [0.0, *accumulate(costs)]
    if k == 1:
        return (0,), prefix[-1]
    best = _even(tuple(costs), k, send_s, rel_tol)
    if memory is not None and peak_bytes(memory, best, n) > cap:
        hi, fastest, _ = _fastest(tuple(costs), k, send_s, rel_tol)
        best = _least_memory(prefix, send_s, k, hi, memory, fastest)
    bounds = list(best) + [n]
    bottleneck = max(chunk_cost(prefix, send_s, bounds[c], bounds[c + 1] - 1) for c in range(k))
    return tuple(best), bottleneck


def peak_bytes(memory: "ChunkMemory", starts: Sequence[int], n: int) -> float:
    """The fullest chunk's bytes (``ChunkMemory.of``) under the partition ``starts``."""
    bounds = list(starts) + [n]
    return max(memory.of(c, bounds[c], bounds[c + 1] - 1) for c in range(len(starts)))


@lru_cache(maxsize=4096)
def _even(costs: tuple, k: int, send_s: tuple, rel_tol: float) -> list[int]:
    """The fastest partition with its slack spread evenly (``_spread``); cached."""
    hi, best, _ = _fastest(costs, k, send_s, rel_tol)
    prefix = [0.0, *accumulate(costs)]
    return _spread_between(prefix, costs, send_s, k, hi, best) or \
        _spread(prefix, send_s, k, hi) or best


@lru_cache(maxsize=4096)
def _fastest(costs: tuple, k: int, send_s: tuple, rel_tol: float):
    """The least bottleneck (binary search with greedy packing) and a partition reaching it;
    cached, since layouts that differ only in memory-related choices share it."""
    n = len(costs)
    prefix = [0.0, *accumulate(costs)]
    # The bottleneck is at least the mean and the largest block, and greedy packing under the
    # mean plus the largest block (or the largest pair of sends) always succeeds.
    lo = max(prefix[-1] / k, max(costs))
    hi = max(lo + max(costs), 2 * max(send_s))
    best = _pack(prefix, send_s, k, hi)
    if best is None:
        hi = max(prefix[-1], 2 * max(send_s))
        best = _pack(prefix, send_s, k, hi)
    if best is None:  # cannot happen with non-negative costs; keep the contract explicit
        raise PlannerError(f"no partition of {n} blocks into {k} chunks")
    hi = _bottleneck(prefix, send_s, best)
    if _pack(prefix, send_s, k, lo) is not None:
        hi = lo
        best = _pack(prefix, send_s, k, lo)
    # Bisect to a coarse tolerance, then descend: feasibility only changes at chunk costs that
    # some partition reaches, so probing just below the best one found either fails (it is
    # optimal to rel_tol) or finds a strictly smaller one; near the optimum few such values
    # remain, so this takes fewer probes than bisecting all the way.
    coarse = max(rel_tol, 1e-3)
    while hi - lo > coarse * max(hi, 1e-30):
        mid = 0.5 * (lo + hi)
        got = _pack(prefix, send_s, k, mid)
        if got is None:
            lo = mid
        else:   # the partition found may be better than asked: jump to its bottleneck
            hi, best = _bottleneck(prefix, send_s, got), got
    while hi - lo > rel_tol * max(hi, 1e-30):
        probe = max(lo, hi * (1.0 - rel_tol))
        got = _pack(prefix, send_s, k, probe)
        if got is None:
            lo = probe
            break
        hi, best = _bottleneck(prefix, send_s, got), got
    return hi, best, lo


def least_bottleneck(costs: Sequence[float], k: int, send_s: Sequence[float],
                     rel_tol: float = 1e-6) -> float:
    """A value no partition of ``costs`` into ``k`` chunks can beat (the binary search's last
    infeasible probe, or the mean/largest block): a lower bound on any chunk layout's slowest
    chunk, from the same cache ``balanced_partition`` fills."""
    if k <= 1:
        return float(sum(costs))
    return _fastest(tuple(costs), k, tuple(send_s), rel_tol)[2]


def _bottleneck(prefix, send_s, starts) -> float:
    bounds = list(starts) + [len(prefix) - 1]
    return max(chunk_cost(prefix, send_s, bounds[c], bounds[c + 1] - 1)
               for c in range(len(starts)))


class ChunkMemory:
    """Peak bytes of chunk c holding blocks i..j: ``in_flight[c]`` micro-batches of their
    activations, their fixed bytes (parameters, gradients, optimizer state, gradient-sized
    buffers), for each list in ``peaks`` the largest entry among them (transients of one block
    at a time), ``edge[j]`` unless the chunk ends the model (boundary buffers), and
    ``capped[1](sum of capped[0])`` if given (a buffer of bounded size)."""

    def __init__(self, activation_bytes: Sequence[float], fixed_bytes: Sequence[float],
                 in_flight: Sequence[int], peaks: Sequence[Sequence[float]] = (),
                 edge: Sequence[float] | None = None, capped=None):
        self.n = len(fixed_bytes)
        self.act = [0.0, *accumulate(activation_bytes)]
        self.fixed = [0.0, *accumulate(fixed_bytes)]
        self.in_flight = list(in_flight)
        self.peaks = [list(p) for p in peaks if any(p)]
        self.edge = list(edge) if edge is not None else [0.0] * self.n
        self.capped = None
        if capped is not None:
            self.capped = ([0.0, *accumulate(capped[0])], capped[1])

    def base(self, c: int, i: int, j: int) -> float:
        total = (self.in_flight[c] * (self.act[j + 1] - self.act[i])
                 + self.fixed[j + 1] - self.fixed[i])
        if j < self.n - 1:
            total += self.edge[j]
        if self.capped is not None:
            pre, fn = self.capped
            total += fn(pre[j + 1] - pre[i])
        return total

    def of(self, c: int, i: int, j: int) -> float:
        total = self.base(c, i, j)
        for p in self.peaks:
            total += max(p[i:j + 1])
        return total


def _least_memory(prefix, send_s, k: int, limit: float, mem: ChunkMemory, fallback,
                  rel_tol: float = 1e-2):
    """Binary search on the peak memory among partitions within the time ``limit``."""
    bounds = list(fallback) + [len(prefix) - 1]
    hi = max(mem.of(c, bounds[c], bounds[c + 1] - 1) for c in range(k))
    lo = 0.0
    best = fallback
    while hi - lo > rel_tol * hi:
        mid = 0.5 * (lo + hi)
        got = _pack(prefix, send_s, k, limit, mem, mid)
        if got is None:
            lo = mid
        else:
            hi, best = mid, got
    return best


def _spread_between(prefix, costs, send_s, k: int, limit: float, right) -> list[int] | None:
    """``_spread`` in O(k log l) when costs grow with the chunk: cut j can go anywhere between
    its leftmost feasible place (greedy packing from the end) and its rightmost (greedy from the
    start, ``right``) as long as the chunk before it stays within the limit; take the place
    nearest the even target. Returns None if the result breaks the limit (the boundary terms
    are not monotone), for the general search to take over."""
    n = len(prefix) - 1
    rev_send = [send_s[n - 2 - j] if j < n - 1 else 0.0 for j in range(n)]
    rev = _pack([0.0, *accumulate(costs[::-1])], rev_send, k, limit)
    if rev is None:
        return None
    left = sorted([0] + [n - a for a in rev[1:]])
    total = prefix[-1]
    starts = [0]
    for j in range(1, k):
        lo, hi = max(left[j], starts[-1] + 1), right[j]
        # the chunk starting at starts[-1] may end no later than its reach under the limit
        reach = bisect_right(prefix, prefix[starts[-1]] + limit) - 1
        hi = min(hi, reach)
        if lo > hi:
            return None
        target = total * j / k
        x = bisect_right(prefix, target)
        if x > 0 and (x > n or abs(prefix[x - 1] - target) <= abs(prefix[x] - target)):
            x -= 1
        starts.append(min(max(x, lo), hi))
    return starts if _bottleneck(prefix, send_s, starts) <= limit else None


def _spread(prefix, send_s, k: int, limit: float) -> list[int] | None:
    """Among the partitions within ``limit``, cut near the even targets j*total/k.

    Greedy packing fills early chunks to the limit and leaves the slack at the end; with
    several chunks per rank (interleaved, zbv) that puts two full chunks on one rank. Cutting
    at the prefix sum nearest each even target, as long as the rest still fits, spreads it.
    """
    n = len(prefix) - 1
    total = prefix[-1]
    quick = _nearest_cuts(prefix, k)
    if quick is not None:
        bounds = quick + [n]
        if max(chunk_cost(prefix, send_s, bounds[c], bounds[c + 1] - 1)
               for c in range(k)) <= limit:
            return quick
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


def _nearest_cuts(prefix, k: int) -> list[int] | None:
    """The cut nearest each even target j*total/k (None if two would coincide)."""
    n = len(prefix) - 1
    total = prefix[-1]
    starts = [0]
    for j in range(1, k):
        target = total * j / k
        x = bisect_right(prefix, target)
        if x > 0 and (x > n or abs(prefix[x - 1] - target) <= abs(prefix[x] - target)):
            x -= 1
        x = min(max(x, starts[-1] + 1), n - (k - j))
        if x <= starts[-1]:
            return None
        starts.append(x)
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


@lru_cache(maxsize=1024)
def even_partition(kinds: tuple[str, ...], k: int) -> tuple[int, ...]:
    """Megatron's split (``--partition even``): the layers (blocks of kind "block") divided
    evenly over ``k`` chunks, the blocks before the first layer (the embedding) with the first
    chunk and those after the last (head and loss) with the last.

    Megatron-LM (megatron/core/transformer/transformer_block.py) gives every virtual stage
    num_layers / (pp * v) layers and refuses other counts; Megatron-DeepSpeed's GPTModelPipe
    (partition_method "type:transformer") does the same when the layers divide. When they do
    not, the first num_layers % k chunks take one layer more (DeepSpeed's
    ``ds_utils.partition_uniform``). Returns the first block of every chunk."""
    layers = [i for i, kind in enumerate(kinds) if kind == "block"]
    if k < 1 or k > max(len(layers), 1):
        raise PlannerError(f"--partition even cannot give {k} pipeline chunks at least one of "
                           f"the {len(layers)} layers each; needs pp * virtual_stages <= "
                           f"{len(layers)}")
    if k == 1:
        return (0,)
    per, extra = divmod(len(layers), k)
    starts, taken = [0], 0
    for c in range(1, k):
        taken += per + (1 if c <= extra else 0)
        starts.append(layers[taken])
    return tuple(starts)


def chunk_blocks(starts: Sequence[int], num_blocks: int) -> list[range]:
    """The block ranges of each chunk from its first-block indices."""
    ends = list(starts[1:]) + [num_blocks]
    return [range(a, b) for a, b in zip(starts, ends)]
