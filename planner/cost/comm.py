"""Collective costs in the alpha-beta (Hockney) model: pure functions of plain numbers.

Notation (as in Thakur, Rabenseifner & Gropp, "Optimization of Collective Communication
Operations in MPICH", IJHPCA 2005, and Chan et al., "Collective communication: theory, practice,
and experience", CCPE 2007; table in ../shared/reference/formulas.md): ``p`` ranks, ``n`` bytes,
``alpha`` seconds of latency per message step, ``beta`` seconds per byte (1 / bandwidth),
``gamma`` seconds per byte of local reduction. A group of one rank, or an empty message, moves
nothing and costs 0. Which link's alpha and beta apply, and which algorithm runs, is decided in
``planner.topology``; this module only evaluates formulas.
"""
from __future__ import annotations

import bisect
import math


def _lg(p: int) -> int:
    """ceil(log2 p): rounds of a binomial tree or of recursive doubling over p ranks."""
    return (p - 1).bit_length()


# --------------------------------------------------------------------------------------------
# Flat (one link level) algorithms
# --------------------------------------------------------------------------------------------
def send_recv(n: float, alpha: float, beta: float) -> float:
    """Point-to-point: alpha + n*beta (Hockney 1994; formulas.md)."""
    return alpha + n * beta if n > 0 else 0.0


def broadcast_tree(n: float, p: int, alpha: float, beta: float) -> float:
    """Binomial-tree broadcast: ceil(log2 p) * (alpha + n*beta) (Thakur et al. 2005, sec. 4.1)."""
    if p <= 1 or n <= 0:
        return 0.0
    return _lg(p) * (alpha + n * beta)


def broadcast_scatter_allgather(n: float, p: int, alpha: float, beta: float) -> float:
    """Scatter then ring all-gather (van de Geijn), the long-message broadcast:
    (ceil(log2 p) + p - 1)*alpha + 2(p-1)/p * n*beta (Thakur et al. 2005, sec. 4.1)."""
    if p <= 1 or n <= 0:
        return 0.0
    return (_lg(p) + p - 1) * alpha + 2 * (p - 1) / p * n * beta


def broadcast(n: float, p: int, alpha: float, beta: float) -> float:
    """The cheaper of binomial tree and scatter + all-gather, as MPICH switches between them
    by message size (Thakur et al. 2005, sec. 4.1)."""
    return min(broadcast_tree(n, p, alpha, beta), broadcast_scatter_allgather(n, p, alpha, beta))


def all_gather_ring(n: float, p: int, alpha: float, beta: float) -> float:
    """Ring all-gather, n = full output bytes: (p-1)*alpha + (p-1)/p * n*beta (Thakur 2005)."""
    if p <= 1 or n <= 0:
        return 0.0
    return (p - 1) * alpha + (p - 1) / p * n * beta


def reduce_scatter_ring(n: float, p: int, alpha: float, beta: float, gamma: float = 0.0) -> float:
    """Ring reduce-scatter, n = full input bytes: (p-1)*alpha + (p-1)/p * n*(beta+gamma)
    (Thakur et al. 2005, sec. 4.3; Chan et al. 2007)."""
    if p <= 1 or n <= 0:
        return 0.0
    return (p - 1) * alpha + (p - 1) / p * n * (beta + gamma)


def all_reduce_ring(n: float, p: int, alpha: float, beta: float, gamma: float = 0.0) -> float:
    """Ring all-reduce (reduce-scatter then all-gather):
    2(p-1)*alpha + 2(p-1)/p * n*beta + (p-1)/p * n*gamma (Thakur et al. 2005, sec. 4.5)."""
    if p <= 1 or n <= 0:
        return 0.0
    return 2 * (p - 1) * alpha + 2 * (p - 1) / p * n * beta + (p - 1) / p * n * gamma


def all_reduce_recursive_doubling(n: float, p: int, alpha: float, beta: float,
                                  gamma: float = 0.0) -> float:
    """Recursive doubling: ceil(log2 p) * (alpha + n*beta + n*gamma) (Thakur et al. 2005,
    sec. 4.5, the short-message all-reduce)."""
    if p <= 1 or n <= 0:
        return 0.0
    return _lg(p) * (alpha + n * beta + n * gamma)


def all_reduce_tree(n: float, p: int, alpha: float, beta: float, gamma: float = 0.0) -> float:
    """Binomial-tree reduce then binomial-tree broadcast:
    ceil(log2 p)*(alpha + n*beta + n*gamma) + ceil(log2 p)*(alpha + n*beta)
    = ceil(log2 p)*(2*alpha + 2*n*beta + n*gamma) (Thakur et al. 2005, sec. 4.4 and 4.1)."""
    if p <= 1 or n <= 0:
        return 0.0
    return _lg(p) * (2 * alpha + 2 * n * beta + n * gamma)


def all_reduce_rabenseifner(n: float, p: int, alpha: float, beta: float,
                            gamma: float = 0.0) -> float:
    """Rabenseifner (recursive-halving reduce-scatter + recursive-doubling all-gather):
    2*ceil(log2 p)*alpha + 2(p-1)/p * n*beta + (p-1)/p * n*gamma (Thakur et al. 2005, sec. 4.5)."""
    if p <= 1 or n <= 0:
        return 0.0
    return 2 * _lg(p) * alpha + 2 * (p - 1) / p * n * beta + (p - 1) / p * n * gamma


def all_to_all_pairwise(n: float, p: int, alpha: float, beta: float) -> float:
    """Pairwise-exchange all-to-all, n = bytes each rank holds in total (it keeps n/p):
    (p-1)*alpha + (p-1)/p * n*beta (Thakur et al. 2005, sec. 4.6)."""
    if p <= 1 or n <= 0:
        return 0.0
    return (p - 1) * alpha + (p - 1) / p * n * beta


def parameter_server(n: float, p: int, k: int, alpha: float, beta: float,
                     gamma: float = 0.0) -> float:
    """p workers push n bytes of gradients and pull n bytes of parameters through k sharded
    servers; each server's link carries n/k from every worker, each way:
    2*(alpha + p*n*beta/k) (formulas.md; Li et al., "Scaling distributed machine learning with
    the parameter server", OSDI 2014). ``gamma`` adds the servers' summation, p*(n/k)*gamma
    (our addition; 0 leaves the source formula)."""
    if p <= 1 or n <= 0:
        return 0.0
    if k < 1:
        raise ValueError(f"parameter_server needs k >= 1 server shards, got {k}")
    return 2 * (alpha + p * n * beta / k) + p * (n / k) * gamma


# --------------------------------------------------------------------------------------------
# Two-level (hierarchical) forms for groups of p = p_node x p_local ranks
# --------------------------------------------------------------------------------------------
def all_reduce_hierarchical(n: float, p_node: int, p_local: int, alpha_l: float, beta_l: float,
                            alpha_g: float, beta_g: float, gamma: float = 0.0) -> float:
    """Reduce-scatter inside each node, ring all-reduce of n/p_local across nodes, all-gather
    inside the node (formulas.md, "Hierarchical (two-level) all-reduce"):
    2(p_local-1)*alpha_l + 2(p_local-1)/p_local * n*beta_l
    + 2(p_node-1)*alpha_g + 2(p_node-1)/p_node * (n/p_local)*beta_g, plus the gamma terms of the
    intra-node reduce-scatter and the inter-node all-reduce."""
    if p_node * p_local <= 1 or n <= 0:
        return 0.0
    return (reduce_scatter_ring(n, p_local, alpha_l, beta_l, gamma)
            + all_reduce_ring(n / p_local, p_node, alpha_g, beta_g, gamma)
            + all_gather_ring(n, p_local, alpha_l, beta_l))


def reduce_scatter_hierarchical(n: float, p_node: int, p_local: int, alpha_l: float,
                                beta_l: float, alpha_g: float, beta_g: float,
                                gamma: float = 0.0) -> float:
    """First half of the hierarchical all-reduce (formulas.md): ring reduce-scatter of n inside
    the node, then of the n/p_local each rank holds across nodes:
    (p_local-1)*alpha_l + (p_local-1)/p_local * n*(beta_l+gamma)
    + (p_node-1)*alpha_g + (p_node-1)/p_node * (n/p_local)*(beta_g+gamma)."""
    if p_node * p_local <= 1 or n <= 0:
        return 0.0
    return (reduce_scatter_ring(n, p_local, alpha_l, beta_l, gamma)
            + reduce_scatter_ring(n / p_local, p_node, alpha_g, beta_g, gamma))


def all_gather_hierarchical(n: float, p_node: int, p_local: int, alpha_l: float, beta_l: float,
                            alpha_g: float, beta_g: float) -> float:
    """Second half of the hierarchical all-reduce (formulas.md), n = full output: ring
    all-gather of n/p_local across nodes, then of n inside the node:
    (p_node-1)*alpha_g + (p_node-1)/p_node * (n/p_local)*beta_g
    + (p_local-1)*alpha_l + (p_local-1)/p_local * n*beta_l."""
    if p_node * p_local <= 1 or n <= 0:
        return 0.0
    return (all_gather_ring(n / p_local, p_node, alpha_g, beta_g)
            + all_gather_ring(n, p_local, alpha_l, beta_l))


def broadcast_hierarchical(n: float, p_node: int, p_local: int, alpha_l: float, beta_l: float,
                           alpha_g: float, beta_g: float) -> float:
    """Broadcast among one rank per node, then inside every node (the SMP-aware composition,
    each level by ``broadcast``): broadcast(n, p_node, g) + broadcast(n, p_local, l)."""
    return broadcast(n, p_node, alpha_g, beta_g) + broadcast(n, p_local, alpha_l, beta_l)


def all_to_all_two_level(n: float, p_node: int, p_local: int, alpha_l: float, beta_l: float,
                         alpha_g: float, beta_g: float) -> float:
    """Pairwise exchange where each of the p-1 steps sends n/p bytes over the link to that
    step's peer: (p_local-1) steps stay in the node, p - p_local cross it:
    (p_local-1)*(alpha_l + n/p*beta_l) + (p - p_local)*(alpha_g + n/p*beta_g)
    (Thakur et al. 2005 sec. 4.6, with each step priced on its own link)."""
    p = p_node * p_local
    if p <= 1 or n <= 0:
        return 0.0
    return ((p_local - 1) * (alpha_l + n / p * beta_l)
            + (p - p_local) * (alpha_g + n / p * beta_g))


# --------------------------------------------------------------------------------------------
# Algorithms by name, and their step/volume factors
# --------------------------------------------------------------------------------------------
COLLECTIVES = ("send_recv", "broadcast", "all_gather", "reduce_scatter", "all_reduce",
               "all_to_all", "parameter_server")

# collective -> algorithm -> f(n, p, alpha, beta, gamma). The first is the default: the ring is
# what NCCL runs inside a node (nccl-tests busbw convention) and gloo's default all-reduce.
FLAT = {
    "send_recv": {"direct": lambda n, p, a, b, g: send_recv(n, a, b) if p > 1 else 0.0},
    "broadcast": {"best": lambda n, p, a, b, g: broadcast(n, p, a, b),
                  "tree": lambda n, p, a, b, g: broadcast_tree(n, p, a, b),
                  "scatter_allgather":
                      lambda n, p, a, b, g: broadcast_scatter_allgather(n, p, a, b)},
    "all_gather": {"ring": lambda n, p, a, b, g: all_gather_ring(n, p, a, b)},
    "reduce_scatter": {"ring": reduce_scatter_ring},
    "all_reduce": {"ring": all_reduce_ring, "recursive_doubling": all_reduce_recursive_doubling,
                   "tree": all_reduce_tree, "rabenseifner": all_reduce_rabenseifner},
    "all_to_all": {"pairwise": lambda n, p, a, b, g: all_to_all_pairwise(n, p, a, b)},
}


def factors(collective: str, algorithm: str, p: int) -> tuple[float, float, float]:
    """(steps, volume, reduced): the formula is steps*alpha + volume*n*beta + reduced*n*gamma.

    Used to carry a curve measured at one group size to another (planner.topology); each entry
    restates the matching function above, and tests check they agree.
    """
    if p <= 1:
        return 0.0, 0.0, 0.0
    lg, f = _lg(p), (p - 1) / p
    table = {
        ("send_recv", "direct"): (1, 1, 0),
        ("broadcast", "tree"): (lg, lg, 0),
        ("broadcast", "scatter_allgather"): (lg + p - 1, 2 * f, 0),
        ("all_gather", "ring"): (p - 1, f, 0),
        ("reduce_scatter", "ring"): (p - 1, f, f),
        ("all_reduce", "ring"): (2 * (p - 1), 2 * f, f),
        ("all_reduce", "recursive_doubling"): (lg, lg, lg),
        ("all_reduce", "tree"): (2 * lg, 2 * lg, lg),
        ("all_reduce", "rabenseifner"): (2 * lg, 2 * f, f),
        ("all_to_all", "pairwise"): (p - 1, f, 0),
    }
    try:
        return table[(collective, algorithm)]
    except KeyError:
        raise ValueError(f"no factors for {collective}/{algorithm}") from None


# --------------------------------------------------------------------------------------------
# Measured curves
# --------------------------------------------------------------------------------------------
def measured_time(sizes: list[float], times: list[float], bandwidth: float, n: float) -> float:
    """Time of an n-byte collective from measured medians (sizes ascending, times made
    non-decreasing by the caller).

    Inside the measured range: linear interpolation in log(bytes)-log(time), which follows the
    bend between latency- and bandwidth-bound sizes that one straight line cannot
    (formulas.md, NCCL tuner note). Outside: a line of slope 1/``bandwidth`` (the fit's)
    through the nearest measured point, so the curve stays continuous; below the range it is
    floored by the line through the origin and the first point, which keeps it positive.
    """
    if n <= 0:
        return 0.0
    if n >= sizes[-1]:
        return times[-1] + (n - sizes[-1]) / bandwidth
    if n <= sizes[0]:
        return max(times[0] - (sizes[0] - n) / bandwidth, times[0] * n / sizes[0])
    i = bisect.bisect_right(sizes, n)
    x0, x1, t0, t1 = sizes[i - 1], sizes[i], times[i - 1], times[i]
    w = math.log(n / x0) / math.log(x1 / x0)
    return t0 * (t1 / t0) ** w
