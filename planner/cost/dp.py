"""Data-parallel gradient reduction: DDP buckets and their overlap with the backward pass.

DDP (Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training",
VLDB 2020, sec. 3.2) packs gradients into buckets in reverse parameter order -- the first bucket
capped at 1 MiB (``dist._DEFAULT_FIRST_BUCKET_BYTES``), the rest at ``bucket_cap_mb`` = 25 MiB --
and launches one all-reduce per bucket as soon as all of its gradients are ready, in bucket
order, on one communication stream, while the backward pass goes on.
"""
from __future__ import annotations

from collections.abc import Sequence

from planner.rules import BUCKET_CAP_BYTES, FIRST_BUCKET_BYTES


def ddp_buckets(grad_bytes_reverse: Sequence[float], first_cap: float = FIRST_BUCKET_BYTES,
                cap: float = BUCKET_CAP_BYTES) -> list[tuple[float, int]]:
    """Split gradients (in backward order, one entry per block) into DDP buckets.

    Returns ``(bucket_bytes, ready_after_block)`` pairs: the bucket is ready when the backward of
    block ``ready_after_block`` (an index into ``grad_bytes_reverse``) ends. A block larger than
    the cap spans several buckets, all ready when that block ends.
    """
    buckets: list[tuple[float, int]] = []
    fill, limit = 0.0, first_cap
    for i, nbytes in enumerate(grad_bytes_reverse):
        left = float(nbytes)
        while left > 0:
            take = min(left, limit - fill)
            fill += take
            left -= take
            if fill >= limit:
                buckets.append((fill, i))
                fill, limit = 0.0, cap
    if fill > 0:
        buckets.append((fill, len(grad_bytes_reverse) - 1))
    return buckets


def last_bucket_bytes(total_bytes: float, first_cap: float = FIRST_BUCKET_BYTES,
                      cap: float = BUCKET_CAP_BYTES) -> float:
    """The size of the last of ``ddp_buckets`` over ``total_bytes`` of gradients, in O(1):
    the first bucket holds ``first_cap``, the rest ``cap`` each."""
    if total_bytes <= first_cap:
        return float(total_bytes)
    rest = (total_bytes - first_cap) % cap
    return float(rest if rest > 0 else cap)


def powersgd_split(matrices: list[tuple[int, int]], rank: int, min_rate: float = 2.0
                   ) -> tuple[int, int, float]:
    """PowerSGD (Vogels et al., NeurIPS 2019) on a bucket's matrices, as torch's powerSGD_hook.

    A rows x cols matrix is sent as P (rows x r) and Q (cols x r) -- r*(rows+cols) elements --
    when that compresses it more than ``min_rate`` (torch's ``min_compression_rate``, default 2);
    otherwise it travels uncompressed. Returns (compressed elements, uncompressed matrix
    elements, compression FLOPs): P = M Q and Q = M^T P cost 2*rows*cols*r each, decompression
    P Q^T another 2*rows*cols*r (6*rows*cols*r in all; orthogonalisation is O(rows*r^2)).
    """
    packed = raw = 0
    flops = 0.0
    for rows, cols in matrices:
        if rows * cols > min_rate * rank * (rows + cols):
            packed += rank * (rows + cols)
            flops += 6.0 * rows * cols * rank + 2.0 * rows * rank * rank
        else:
            raw += rows * cols
    return packed, raw, flops
