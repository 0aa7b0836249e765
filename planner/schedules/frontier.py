"""Activation footprints of a rank's operation order (what pipeline memory needs).

``peak_in_flight`` walks one order with given sizes; ``live_frontier`` extracts, once per
schedule shape, the states worth checking for any sizes. For GPipe and 1F1B these reduce to the
closed forms m and min(p - r, m) micro-batches in flight on rank r (formulas.md, Narayanan et
al. SC'21 sec. 2.2).
"""
from __future__ import annotations

from collections.abc import Sequence

Op = tuple[str, int, int]


def peak_in_flight(ops: Sequence[Op], chunk_bytes: dict[int, float],
                   weight_fraction: float = 0.0) -> float:
    """Largest activation footprint over a rank's operation order.

    A forward of (chunk, mb) keeps ``chunk_bytes[chunk]`` until its backward; a split backward
    ("I") keeps ``weight_fraction`` of it (the inputs the weight gradient needs) until "W".
    For 1F1B this gives min(p - r, m) micro-batches on rank r, GPipe m (formulas.md).
    """
    live = peak = 0.0
    for kind, chunk, _ in ops:
        size = chunk_bytes[chunk]
        if kind == "F":
            live += size
            peak = max(peak, live)
        elif kind == "B":
            live -= size
        elif kind == "I":
            live -= size * (1.0 - weight_fraction)
        else:
            live -= size * weight_fraction
    return peak


def live_frontier(ops: Sequence[Op]) -> tuple[tuple[int, ...], tuple[tuple, ...]]:
    """The activation states of a rank worth checking for its peak, independent of sizes.

    Returns (chunks, states): each state gives, per chunk in ``chunks``, the micro-batches
    whose forward ran and backward did not (full) and -- for split schedules only -- then
    those between I and W (held for the weight gradient), at the moments right after a run of
    forwards (the only times the footprint grows), keeping only states not dominated by
    another. ``peak_in_flight`` over any
    non-negative sizes is the largest weighted sum over these states.
    """
    chunks = tuple(sorted({c for _, c, _ in ops}))
    pos = {c: i for i, c in enumerate(chunks)}
    k = len(chunks)
    split = any(kind == "I" for kind, _, _ in ops)
    full, held = [0] * k, [0] * k
    states = []
    last = len(ops) - 1
    for n, (kind, chunk, _) in enumerate(ops):
        j = pos[chunk]
        if kind == "F":
            full[j] += 1
            # only the last of a run of forwards can be a peak
            if n == last or ops[n + 1][0] != "F":
                states.append(tuple(full) + tuple(held) if split else tuple(full))
        elif kind == "B":
            full[j] -= 1
        elif kind == "I":
            full[j] -= 1
            held[j] += 1
        else:
            held[j] -= 1
    if k == 1:
        return chunks, (max(states),) if states else ()
    uniq = sorted(set(states), reverse=True)
    keep: list = []
    for st in uniq:
        for other in keep:
            for a, b in zip(other, st):
                if a < b:
                    break
            else:
                break          # dominated by `other`
        else:
            keep.append(st)
    return chunks, tuple(keep)
