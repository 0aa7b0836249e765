"""Collective formulas (planner.cost.comm) against hand-computed cases, and their properties."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.cost import comm

# p = 4 ranks, n = 1000 bytes, alpha = 1 s, beta = 0.01 s/B, gamma = 0.001 s/B; log2 4 = 2,
# (p-1)/p = 0.75.
N, P, A, B, G = 1000.0, 4, 1.0, 0.01, 0.001


def test_flat_formulas_by_hand():
    assert comm.send_recv(N, A, B) == pytest.approx(1 + 10)
    assert comm.broadcast_tree(N, P, A, B) == pytest.approx(2 * (1 + 10))
    # (2 + 3) * 1 + 2 * 0.75 * 10
    assert comm.broadcast_scatter_allgather(N, P, A, B) == pytest.approx(5 + 15)
    assert comm.broadcast(N, P, A, B) == pytest.approx(20)
    assert comm.all_gather_ring(N, P, A, B) == pytest.approx(3 + 7.5)
    # 3 + 0.75 * 1000 * (0.01 + 0.001)
    assert comm.reduce_scatter_ring(N, P, A, B, G) == pytest.approx(3 + 8.25)
    # 6 + 1.5 * 10 + 0.75 * 1
    assert comm.all_reduce_ring(N, P, A, B, G) == pytest.approx(6 + 15 + 0.75)
    assert comm.all_reduce_recursive_doubling(N, P, A, B, G) == pytest.approx(2 * (1 + 10 + 1))
    assert comm.all_reduce_tree(N, P, A, B, G) == pytest.approx(2 * (2 + 20 + 1))
    assert comm.all_reduce_rabenseifner(N, P, A, B, G) == pytest.approx(4 + 15 + 0.75)
    assert comm.all_to_all_pairwise(N, P, A, B) == pytest.approx(3 + 7.5)
    # k = 2 shards: 2 * (1 + 4 * 1000 * 0.01 / 2); gamma adds 4 * 500 * 0.001
    assert comm.parameter_server(N, P, 2, A, B) == pytest.approx(42)
    assert comm.parameter_server(N, P, 2, A, B, G) == pytest.approx(44)


def test_non_power_of_two_rounds_up_the_tree():
    # p = 5: ceil(log2 5) = 3 rounds
    assert comm.broadcast_tree(N, 5, A, B) == pytest.approx(3 * 11)
    assert comm.all_reduce_rabenseifner(N, 5, A, B) == pytest.approx(6 + 2 * 0.8 * 10)


def test_two_level_formulas_by_hand():
    # 2 nodes x 4 ranks; intra alpha 1, beta 0.01; inter alpha 10, beta 0.1; n = 1000.
    args = (N, 2, 4, 1.0, 0.01, 10.0, 0.1)
    # 2*3*1 + 2*0.75*10 + 2*1*10 + 2*0.5*(1000/4)*0.1 = 6 + 15 + 20 + 25
    assert comm.all_reduce_hierarchical(*args) == pytest.approx(66)
    assert comm.reduce_scatter_hierarchical(*args) == pytest.approx(3 + 7.5 + 10 + 12.5)
    assert comm.all_gather_hierarchical(*args) == pytest.approx(10 + 12.5 + 3 + 7.5)
    # inter broadcast over 2: min(tree 110, scatter-allgather 120); intra over 4: 20
    assert comm.broadcast_hierarchical(*args) == pytest.approx(110 + 20)
    # p = 8, n/p = 125: 3 * (1 + 1.25) + 4 * (10 + 12.5)
    assert comm.all_to_all_two_level(*args) == pytest.approx(6.75 + 90)


def test_measured_curve_interpolates_log_log_and_extends_linearly():
    sizes, times = [1000.0, 10000.0], [1e-4, 1e-3]
    mid = 1000 * math.sqrt(10)
    assert comm.measured_time(sizes, times, 1e7, mid) == pytest.approx(1e-4 * math.sqrt(10))
    assert comm.measured_time(sizes, times, 1e7, 1000) == pytest.approx(1e-4)
    assert comm.measured_time(sizes, times, 1e7, 20000) == pytest.approx(1e-3 + 1e-3)
    assert comm.measured_time(sizes, times, 1e8, 500) == pytest.approx(1e-4 - 5e-6)
    # a line that would go below zero is floored by the line through the origin
    assert comm.measured_time(sizes, times, 1e7, 100) == pytest.approx(1e-5)
    assert comm.measured_time(sizes, times, 1e7, 0) == 0.0


ALGOS = [(c, a) for c, algs in comm.FLAT.items() for a in algs if a != "best"]


@pytest.mark.parametrize("collective,algorithm", ALGOS)
@pytest.mark.parametrize("p", [2, 3, 4, 7, 8, 16])
def test_factors_restate_the_formulas(collective, algorithm, p):
    steps, vol, red = comm.factors(collective, algorithm, p)
    fn = comm.FLAT[collective][algorithm]
    assert fn(N, p, A, B, G) == pytest.approx(steps * A + vol * N * B + red * N * G)


def test_factors_of_one_rank_are_zero():
    assert comm.factors("all_reduce", "ring", 1) == (0.0, 0.0, 0.0)


sizes = st.floats(0, 1e10, allow_nan=False)
ranks = st.integers(1, 512)
alphas = st.floats(0, 1e-2, allow_nan=False)
betas = st.floats(1e-13, 1e-6, allow_nan=False)
FLAT_FNS = [comm.FLAT[c][a] for c, a in ALGOS] + [
    lambda n, p, a, b, g: comm.parameter_server(n, p, max(1, p // 2), a, b, g)]
TWO_LEVEL = [comm.all_reduce_hierarchical, comm.reduce_scatter_hierarchical,
             comm.all_gather_hierarchical, comm.broadcast_hierarchical, comm.all_to_all_two_level]


@settings(max_examples=200)
@given(sizes, sizes, ranks, alphas, betas, st.floats(0, 1e-8))
def test_time_grows_with_bytes(n1, n2, p, a, b, g):
    lo, hi = sorted((n1, n2))
    for fn in FLAT_FNS:
        assert fn(lo, p, a, b, g) <= fn(hi, p, a, b, g) * (1 + 1e-12)


@given(sizes, alphas, betas)
def test_group_of_one_costs_nothing(n, a, b):
    for fn in FLAT_FNS:
        assert fn(n, 1, a, b, 1e-9) == 0.0
    for fn in TWO_LEVEL:
        assert fn(n, 1, 1, a, b, a, b) == 0.0


@settings(max_examples=200)
@given(sizes, ranks, alphas, alphas, betas, betas)
def test_slower_link_is_never_faster(n, p, a1, a2, b1, b2):
    (a_fast, a_slow), (b_fast, b_slow) = sorted((a1, a2)), sorted((b1, b2))
    for fn in FLAT_FNS:
        assert fn(n, p, a_fast, b_fast, 0.0) <= fn(n, p, a_slow, b_slow, 0.0) * (1 + 1e-12)
    for fn in TWO_LEVEL:
        q = max(1, p // 4)
        assert (fn(n, q, 4, a_fast, b_fast, a_fast, b_fast)
                <= fn(n, q, 4, a_fast, b_fast, a_slow, b_slow) * (1 + 1e-12))


@settings(max_examples=200)
@given(sizes, ranks, alphas, betas, st.floats(0, 1e-8))
def test_ring_all_reduce_is_reduce_scatter_plus_all_gather(n, p, a, b, g):
    assert comm.all_reduce_ring(n, p, a, b, g) == pytest.approx(
        comm.reduce_scatter_ring(n, p, a, b, g) + comm.all_gather_ring(n, p, a, b), rel=1e-12)


@settings(max_examples=100)
@given(sizes, st.integers(1, 16), st.integers(1, 8), alphas, betas, alphas, betas)
def test_hierarchical_all_reduce_is_its_two_halves(n, pn, pl, al, bl, ag, bg):
    whole = comm.all_reduce_hierarchical(n, pn, pl, al, bl, ag, bg)
    halves = (comm.reduce_scatter_hierarchical(n, pn, pl, al, bl, ag, bg)
              + comm.all_gather_hierarchical(n, pn, pl, al, bl, ag, bg))
    assert whole == pytest.approx(halves, rel=1e-12, abs=1e-300)


@given(st.floats(1, 1e9), st.integers(2, 64), alphas, betas)
def test_hierarchical_on_one_node_is_the_flat_ring(n, p, a, b):
    # one node of p ranks: the two-level form is the flat ring
    assert comm.all_reduce_hierarchical(n, 1, p, a, b, 9.9, 9.9) == pytest.approx(
        comm.all_reduce_ring(n, p, a, b), rel=1e-12)


@settings(max_examples=100)
@given(st.lists(st.floats(1e-6, 1), min_size=2, max_size=8), st.floats(1, 1e9),
       st.floats(1, 1e10), st.floats(1, 1e10))
def test_measured_curve_is_monotone(raw, bw, n1, n2):
    sizes = [1000.0 * 2**i for i in range(len(raw))]
    times, run = [], 0.0
    for t in raw:
        run = max(run, t)
        times.append(run)
    lo, hi = sorted((n1, n2))
    assert comm.measured_time(sizes, times, bw, lo) <= comm.measured_time(
        sizes, times, bw, hi) * (1 + 1e-12)
