"""Pipeline schedules expanded into each pipeline rank's ordered operations.

An operation is ``(kind, chunk, microbatch)``: ``kind`` "F" forward, "B" full backward, "I"
backward for the input gradient only, "W" backward for the weight gradient only (the split of
zero-bubble schedules); ``chunk`` is the global model-chunk index in pipeline order (0 .. p*v-1).
The orders reproduce the schedule classes of ``torch.distributed.pipelining`` (torch 2.13,
``schedules.py``), which the executor runs, so a predicted timeline is what actually runs:

- ``gpipe``: ``ScheduleGPipe`` -- all forwards, then all backwards (Huang et al. 2019).
- ``1f1b``: ``Schedule1F1B`` -- ``min(m, p - r)`` warm-up forwards on rank r, then alternate one
  backward and one forward, then the remaining backwards (PipeDream-Flush, Narayanan et al.
  2021, sec. 2.2; identical to Megatron's p-1-r warm-up followed by 1F1B pairs).
- ``interleaved-1f1b``: ``ScheduleInterleaved1F1B`` -- v chunks per rank in looped placement
  (rank r holds chunks r, r+p, ...), depth-first over rounds of ``m // rounds`` micro-batches
  (Narayanan et al. SC'21, sec. 2.2), including torch's warm-up count
  ``(v-1)*mb_per_round + 2*(p-1-r)`` capped at ``m*v``.
- ``looped-bfs``: ``ScheduleLoopedBFS`` -- looped placement like interleaved, but each chunk's
  forwards run for every micro-batch before the next chunk's (breadth first).
- ``zbv``: ``ScheduleZBVZeroBubble`` -- two chunks per rank in V placement (rank r holds chunks
  r and 2p-1-r), backward split into I and W (Qi et al. 2023, arXiv 2401.10241, sec. 6).

The torch code pads with idle slots (None) to draw a lock-step picture; the simulator needs only
the order, so they are dropped here. ``planner.schedules`` registers each order with the rest of
what a schedule means (placement, virtual stages, torch class, bounds).
"""
from __future__ import annotations

from collections.abc import Sequence

from planner.errors import PlannerError

Op = tuple[str, int, int]


def gpipe(p: int, m: int) -> list[list[Op]]:
    return [[("F", r, i) for i in range(m)] + [("B", r, i) for i in range(m)] for r in range(p)]


def one_f_one_b(p: int, m: int) -> list[list[Op]]:
    out = []
    for r in range(p):
        warmup = min(m, p - r)
        ops = [("F", r, i) for i in range(warmup)]
        f, b = warmup, 0
        while b < m:
            ops.append(("B", r, b))
            b += 1
            if f < m:
                ops.append(("F", r, f))
                f += 1
        out.append(ops)
    return out


def interleaved_1f1b(p: int, m: int, v: int) -> list[list[Op]]:
    """Port of ``ScheduleInterleaved1F1B._calculate_single_rank_operations`` (no bubbles).

    torch deals forward step s to local chunk (s // m_round) % v and counts micro-batches per
    chunk; the count is (s // (m_round * v)) * m_round + s % m_round, computed directly here
    (backward the same with local chunk v - 1 - ...).
    """
    rounds = max(1, m // p)
    if m % rounds:
        raise PlannerError(f"interleaved-1f1b needs num_microbatches({m}) to be a multiple of "
                           f"max(1, m // pp) = {rounds}")
    per_round = m // rounds
    lap = per_round * v
    total = m * v
    out = []
    for r in range(p):
        warmup = min((v - 1) * per_round + 2 * (p - 1 - r), total)
        ops: list[Op] = []
        append = ops.append
        for step in range(total + warmup):
            if step < total:
                q, rest = divmod(step, lap)
                append(("F", (rest // per_round) * p + r, q * per_round + rest % per_round))
            if step >= warmup:
                q, rest = divmod(step - warmup, lap)
                append(("B", (v - 1 - rest // per_round) * p + r,
                        q * per_round + rest % per_round))
        out.append(ops)
    return out


def looped_bfs(p: int, m: int, v: int) -> list[list[Op]]:
    """Port of ``ScheduleLoopedBFS._calculate_single_rank_operations`` (Lamy-Poirier 2022,
    arXiv 2211.05953: breadth-first pipeline parallelism): looped placement, every micro-batch
    of a rank's first chunk forward, then of its next, ...; then the backwards, last chunk
    first and last micro-batch first."""
    out = []
    for r in range(p):
        chunks = range(r, p * v, p)
        ops = [("F", c, i) for c in chunks for i in range(m)]
        ops += [("B", c, i) for c in reversed(chunks) for i in reversed(range(m))]
        out.append(ops)
    return out


def zbv(p: int, m: int) -> list[list[Op]]:
    """Port of ``ScheduleZBVZeroBubble._calculate_single_rank_operations`` (no bubbles)."""
    n_micro = max(2 * p - 1, m)
    out = []
    for r in range(p):
        c0, c1 = r, 2 * p - 1 - r
        ops: list[Op] = []
        f0 = f1 = b0 = b1 = 0
        for _ in range(2 * (p - r) - 1):
            ops.append(("F", c0, f0))
            f0 += 1
        for _ in range(r):
            ops += [("F", c1, f1), ("F", c0, f0)]
            f1 += 1
            f0 += 1
        for _ in range(p - r):
            ops += [("F", c1, f1), ("I", c1, b1), ("W", c1, b1)]
            f1 += 1
            b1 += 1
        while f1 < f0 or f0 < n_micro:
            if f0 < n_micro:
                ops.append(("F", c0, f0))
                f0 += 1
            ops += [("I", c0, b0), ("W", c0, b0), ("F", c1, f1), ("I", c1, b1), ("W", c1, b1)]
            b0 += 1
            f1 += 1
            b1 += 1
        w0, w1 = b0, b1
        for _ in range(r):
            ops += [("I", c0, b0), ("I", c1, b1)]
            b0 += 1
            b1 += 1
        for _ in range(p - r):
            ops += [("I", c0, b0), ("W", c0, w0)]
            b0 += 1
            w0 += 1
        while w1 < b1:
            ops.append(("W", c1, w1))
            w1 += 1
        while w0 < b0:
            ops.append(("W", c0, w0))
            w0 += 1
        out.append([op for op in ops if op[2] < m])
    return out
