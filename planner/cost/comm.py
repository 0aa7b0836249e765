"""Collective costs in the alpha-beta (Hockney) model: pure functions of plain numbers.

Notation (as in Thakur, Rabenseifner & Gropp, "Optimization of Collective Communication
Operations in MPICH", IJHPCA 2005, and Chan et al., "Collective communication: theory, practice,
and experience", CCPE 2007): ``p`` ranks, ``n`` bytes, ``alpha`` seconds of latency per message
step, ``beta`` seconds per byte (1 / bandwidth), ``gamma`` seconds per byte of local reduction.
A group of one rank moves nothing and costs 0.
"""
from __future__ import annotations

import math


def send_recv(n: float, alpha: float, beta: float) -> float:
    """Point-to-point: alpha + n*beta (Hockney 1994)."""
    return alpha + n * beta if n > 0 else 0.0


def broadcast_tree(n: float, p: int, alpha: float, beta: float) -> float:
    """Binomial-tree broadcast: ceil(log2 p) * (alpha + n*beta) (Thakur et al. 2005, sec. 4.1)."""
    if p <= 1 or n <= 0:
        return 0.0
    return math.ceil(math.log2(p)) * (alpha + n * beta)


def all_gather_ring(n: float, p: int, alpha: float, beta: float) -> float:
    """Ring all-gather, n = full output bytes: (p-1)*alpha + (p-1)/p * n*beta (Thakur 2005)."""
    if p <= 1 or n <= 0:
        return 0.0
    return (p - 1) * alpha + (p - 1) / p * n * beta


def reduce_scatter_ring(n: float, p: int, alpha: float, beta: float, gamma: float = 0.0) -> float:
    """Ring reduce-scatter, n = full input bytes: (p-1)*alpha + (p-1)/p * n*(beta+gamma)."""
    if p <= 1 or n <= 0:
        return 0.0
    return (p - 1) * alpha + (p - 1) / p * n * (beta + gamma)


def all_reduce_ring(n: float, p: int, alpha: float, beta: float, gamma: float = 0.0) -> float:
    """Ring all-reduce (reduce-scatter then all-gather):
    2(p-1)*alpha + 2(p-1)/p * n*beta + (p-1)/p * n*gamma (Thakur et al. 2005, sec. 4.5)."""
    if p <= 1 or n <= 0:
        return 0.0
    return 2 * (p - 1) * alpha + 2 * (p - 1) / p * n * beta + (p - 1) / p * n * gamma
