"""Rank grid placement, group bottlenecks over the cluster graph, and CommModel's choices."""
import csv
import importlib.util
import statistics
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner import grid, topology
from planner.cost import collectives
from planner.clusters import dgx_a100
from planner.cost import comm
from planner.errors import PlannerError
from planner.profile.network import fit_relative
from planner.specs import ParallelDims
from planner.specs import Cluster, CollectiveFit, LinkLevel, NodeLevels, NodeLink

MB = 2**20


def D(dp, pp, tp):
    """Degrees in the grid order (dp, pp, tp) as a ParallelDims."""
    return ParallelDims(dp=dp, pp=pp, tp=tp)


def two_dgx(**kw) -> Cluster:
    return replace(dgx_a100(), num_nodes=2, **kw)


def layouts(world):
    out = []
    for dp in range(1, world + 1):
        for pp in range(1, world // dp + 1):
            if world % (dp * pp) == 0:
                out.append((dp, pp, world // (dp * pp)))
    return out


# --------------------------------------------------------------------------------------------
# The rank grid worked example: 2 nodes x 8 devices, dp=4, pp=2, tp=2
# rank = (dp_i * pp + pp_i) * tp + tp_i; node = rank // 8
# --------------------------------------------------------------------------------------------
def test_worked_example_groups():
    g = grid.RankGrid(ParallelDims(dp=4, pp=2, tp=2))
    assert g.groups("tp") == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11],
                                          [12, 13], [14, 15]]
    assert g.groups("pp") == [[0, 2], [1, 3], [4, 6], [5, 7], [8, 10], [9, 11],
                                          [12, 14], [13, 15]]
    assert g.groups("dp") == [[0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14],
                                          [3, 7, 11, 15]]
    assert g.coords_of(13) == {"dp": 3, "cp": 0, "pp": 0, "tp": 1}
    assert g.rank_of(dp=3, pp=0, tp=1) == 13


def test_worked_example_which_groups_cross_nodes():
    model = collectives.CommModel(two_dgx())
    tp, pp, dp = (model.placement.groups(d, D(4, 2, 2)) for d in ("tp", "pp", "dp"))
    # TP and PP pairs stay on one node (NVSwitch); every DP group holds 2 ranks on each node.
    assert (tp.level, tp.nodes, tp.num_groups) == ("intra_node", 1, 8)
    assert (pp.level, pp.nodes, pp.num_groups) == ("intra_node", 1, 8)
    assert (dp.level, dp.nodes, dp.ranks_per_node, dp.num_groups) == ("mixed", 2, 2, 4)
    assert dp.hierarchical and dp.links == ("inter_node", "intra_node")
    assert dp.flat.bandwidth_bytes_per_s == two_dgx().inter_node.bandwidth_bytes_per_s
    assert model.placement.boundary(D(4, 2, 2), 0)[0] == "intra_node"


def test_pipeline_across_nodes():
    # dp=1, pp=2, tp=8: stage 0 is node 0, stage 1 node 1
    model = collectives.CommModel(two_dgx())
    assert model.placement.groups("pp", D(1, 2, 8)).level == "inter_node"
    level, bn, _ = model.placement.boundary(D(1, 2, 8), 0)
    assert level == "inter_node"
    assert bn.bandwidth_bytes_per_s == two_dgx().inter_node.bandwidth_bytes_per_s


@pytest.mark.parametrize("per,nodes", [(8, 2), (4, 4), (3, 2), (6, 2), (3, 4), (6, 4)])
def test_uniform_arithmetic_matches_the_grid(per, nodes):
    world = per * nodes
    for dp, pp, tp in layouts(world):
        for dim in grid.DIMS:
            groups = grid.RankGrid(ParallelDims(dp=dp, pp=pp, tp=tp)).groups(dim)
            spans = [grid.nodes_spanned(g, per) for g in groups]
            counts = [[sum(1 for r in g if r // per == k) for k in range(nodes)] for g in groups]
            rpn = max(max(c) for c in counts)
            even = len({x for c in counts for x in c if x}) == 1
            got = topology.uniform_shape(per, dim, D(dp, pp, tp))
            assert got == (max(spans), rpn, even), (dim, dp, pp, tp)
            if even:
                assert max(spans) * rpn == len(groups[0])


@pytest.mark.parametrize("per,nodes", [(8, 2), (3, 4), (6, 2)])
def test_uniform_cluster_graph_gives_the_same_answer(per, nodes):
    # node_levels that restate the cluster's levels force the graph path without changing links
    c = replace(two_dgx(), devices_per_node=per, num_nodes=nodes)
    g = replace(c, node_levels=(NodeLevels(0, c.intra_node, c.inter_node),))
    assert c.uniform and not g.uniform
    mu, mg = collectives.CommModel(c), collectives.CommModel(g)
    for dp, pp, tp in layouts(per * nodes):
        for dim in grid.DIMS:
            a, b = mu.placement.groups(dim, D(dp, pp, tp)), mg.placement.groups(dim, D(dp, pp, tp))
            shape = lambda x: (x.level, x.nodes, x.ranks_per_node, x.flat, x.intra, x.inter)  # noqa
            assert shape(a) == shape(b), (dim, dp, pp, tp)
            for coll in ("all_reduce", "all_gather", "broadcast", "all_to_all"):
                assert mu.time(coll, 64 * MB, dim, D(dp, pp, tp)) == pytest.approx(
                    mg.time(coll, 64 * MB, dim, D(dp, pp, tp)))
        for s in range(pp):
            assert mu.placement.boundary(D(dp, pp, tp), s)[:2] == mg.placement.boundary(D(dp, pp, tp), s)[:2]


def test_one_slow_link_between_two_nodes_is_shared():
    slow = NodeLink(0, 1, latency_s=20e-6, bandwidth_bytes_per_s=12.5e9)
    c = two_dgx(node_links=(slow,))
    model = collectives.CommModel(c)
    dp = model.placement.groups("dp", D(4, 2, 2))
    # 4 DP rings each cross the link once per direction: a quarter of it each
    assert dp.flat.bandwidth_bytes_per_s == pytest.approx(12.5e9 / 4)
    assert dp.links == ("intra_node", "node_link 0-1")
    # hierarchical inter phase: 4 groups x 2 local ranks = 8 two-rank rings over the one link
    assert dp.inter.bandwidth_bytes_per_s == pytest.approx(12.5e9 / 8)
    assert dp.inter.latency_s == 20e-6
    fast = collectives.CommModel(two_dgx())
    assert model.time("all_reduce", 64 * MB, "dp", D(4, 2, 2)) > fast.time(
        "all_reduce", 64 * MB, "dp", D(4, 2, 2))


def test_a_node_with_slower_nics_bounds_groups_that_touch_it():
    c = two_dgx()
    slow_ib = LinkLevel("inter_node", 10e-6, 5e9)
    model = collectives.CommModel(replace(c, node_levels=(NodeLevels(1, inter_node=slow_ib),)))
    assert model.placement.groups("dp", D(16, 1, 1)).flat.bandwidth_bytes_per_s == 5e9
    tp = model.placement.groups("tp", D(2, 1, 8))
    assert tp.flat.bandwidth_bytes_per_s == c.intra_node.bandwidth_bytes_per_s


def test_shared_nics_divide_bandwidth():
    # one NIC per node: the 8 inter-node rings of dp=2 x tp=8 all leave through it
    c = two_dgx(nics_per_node=1)
    bn = collectives.CommModel(c).placement.groups("dp", D(2, 1, 8)).flat
    assert bn.bandwidth_bytes_per_s == pytest.approx(c.inter_node.bandwidth_bytes_per_s / 8)


def test_layout_larger_than_cluster_is_refused():
    with pytest.raises(PlannerError, match="do not fit"):
        collectives.CommModel(two_dgx()).placement.groups("dp", D(32, 1, 1))


# --------------------------------------------------------------------------------------------
# CommModel choices
# --------------------------------------------------------------------------------------------
def test_formula_path_uses_bottleneck_and_call_latency():
    c = two_dgx()
    c = replace(c, intra_node=replace(c.intra_node, call_latency_s=30e-6))
    m = collectives.CommModel(c)
    lv = c.intra_node
    want = 30e-6 + comm.all_reduce_ring(64 * MB, 8, lv.latency_s, 1 / lv.bandwidth_bytes_per_s)
    assert m.time("all_reduce", 64 * MB, "tp", D(2, 1, 8)) == pytest.approx(want)
    want = 30e-6 + comm.all_reduce_rabenseifner(64 * MB, 8, lv.latency_s,
                                                1 / lv.bandwidth_bytes_per_s)
    assert m.time("all_reduce", 64 * MB, "tp", D(2, 1, 8), algorithm="rabenseifner") == \
        pytest.approx(want)
    with pytest.raises(ValueError):
        m.time("all_reduce", 1, "tp", D(2, 1, 8), algorithm="nope")


def test_groups_spanning_nodes_go_hierarchical():
    c = two_dgx()
    m = collectives.CommModel(c)
    li, lg = c.intra_node, c.inter_node
    call = max(li.call_latency_s, lg.call_latency_s)
    want = comm.all_reduce_hierarchical(64 * MB, 2, 8, li.latency_s,
                                        1 / li.bandwidth_bytes_per_s, lg.latency_s,
                                        1 / lg.bandwidth_bytes_per_s)
    assert m.time("all_reduce", 64 * MB, "dp", D(16, 1, 1)) == pytest.approx(call + want)
    # one rank per node: the flat ring over the inter-node level
    want = comm.all_reduce_ring(64 * MB, 2, lg.latency_s, 1 / lg.bandwidth_bytes_per_s)
    assert m.time("all_reduce", 64 * MB, "dp", D(2, 1, 8)) == pytest.approx(
        lg.call_latency_s + want)


def test_parameter_server_and_p2p():
    c = two_dgx()
    m = collectives.CommModel(c)
    lg = c.inter_node
    assert m.time("parameter_server", MB, "dp", D(2, 1, 8), shards=2) == pytest.approx(
        lg.call_latency_s + comm.parameter_server(MB, 2, 2, lg.latency_s,
                                                  1 / lg.bandwidth_bytes_per_s))
    assert m.p2p(MB, D(1, 2, 8)) == pytest.approx(
        lg.call_latency_s + comm.send_recv(MB, lg.latency_s, 1 / lg.bandwidth_bytes_per_s))
    assert m.time("send_recv", MB, "pp", D(1, 2, 8)) == m.p2p(MB, D(1, 2, 8))
    assert m.p2p(MB, D(16, 1, 1)) == 0.0
    # pp=4 over 2 nodes (tp=4): boundary 1 crosses, 0 and 2 do not; 3 is the wrap to stage 0
    assert [m.placement.boundary(D(1, 4, 4), s)[0] for s in range(4)] == \
        ["intra_node", "inter_node", "intra_node", "inter_node"]


def fit(coll, level, p, sizes, times, bw=1e9):
    return CollectiveFit(coll, level, p, tuple(sizes), tuple(times), latency_s=times[0],
                         bandwidth_bytes_per_s=bw, fit_median_abs_pct_error=1.0)


def test_measured_fits_win_and_carry_to_other_group_sizes():
    sizes, times = [1024, 2**20, 2**24], [1e-4, 2e-3, 3e-2]
    c = replace(two_dgx(), collective_fits=(
        fit("all_reduce", "intra_node", 2, sizes, times),
        fit("reduce_scatter", "intra_node", 8, sizes, [t / 2 for t in times]),
        fit("all_gather", "intra_node", 8, sizes, [t / 2 for t in times]),
        fit("all_reduce", "inter_node", 2, sizes, [4 * t for t in times]),
    ))
    m = collectives.CommModel(c)
    assert m.time("all_reduce", 2**20, "tp", D(8, 1, 2)) == pytest.approx(2e-3)
    # p = 4 from the p = 2 curve: volume 1.5x, 4 more message steps at the level's alpha
    alpha = c.intra_node.latency_s
    expect = comm.measured_time(sizes, times, 1e9, 1.5 * 2**20) + 4 * alpha
    assert m.time("all_reduce", 2**20, "tp", D(4, 1, 4)) == pytest.approx(expect)
    # spanning 2 nodes x 8: every phase from its own fit, no formula (no call latency added)
    n = 2**22
    expect = (comm.measured_time(sizes, [t / 2 for t in times], 1e9, n) * 2
              + comm.measured_time(sizes, [4 * t for t in times], 1e9, n / 8))
    assert m.time("all_reduce", n, "dp", D(16, 1, 1)) == pytest.approx(expect)
    # forcing an algorithm skips the measurements
    assert m.time("all_reduce", 2**20, "tp", D(8, 1, 2), algorithm="ring") != pytest.approx(2e-3)


def test_monotone_pools_violators_in_log_space():
    assert collectives.monotone([1.0, 3.0, 2.0, 4.0]) == pytest.approx([1, 6**0.5, 6**0.5, 4])
    assert collectives.monotone([1.0, 2.0, 3.0]) == pytest.approx([1.0, 2.0, 3.0])
    # a lone spike is averaged with what follows rather than lifting everything after it
    out = collectives.monotone([1.0, 8.0, 1.0, 1.0, 1.0, 10.0])
    assert out[:5] == pytest.approx([1.0] + [8 ** 0.25] * 4) and out[5] == pytest.approx(10)


def test_noisy_fit_points_never_make_bigger_cheaper():
    c = replace(two_dgx(), collective_fits=(
        fit("all_reduce", "intra_node", 8, [1024, 4096, 16384], [3e-4, 1e-4, 5e-4]),))
    m = collectives.CommModel(c)
    assert m.time("all_reduce", 4096, "tp", D(2, 1, 8)) >= m.time("all_reduce", 1024, "tp", D(2, 1, 8))


def test_comm_model_is_cached_per_cluster_object():
    c, other = two_dgx(), replace(two_dgx(), num_nodes=3)
    assert collectives.comm_model(c) is collectives.comm_model(c)
    assert collectives.comm_model(other).cluster is other


# --------------------------------------------------------------------------------------------
# Properties over the whole model
# --------------------------------------------------------------------------------------------
COLLS = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "all_to_all", "send_recv")
LAYOUTS16 = layouts(16)
CLUSTERS = [two_dgx(), two_dgx(node_links=(NodeLink(0, 1, 1e-5, 25e9),)),
            two_dgx(nics_per_node=2)]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(COLLS), st.sampled_from(LAYOUTS16), st.sampled_from(grid.DIMS),
       st.floats(0, 2**31), st.floats(0, 2**31))
def test_model_time_grows_with_bytes(coll, layout, dim, n1, n2):
    m = collectives.comm_model(CLUSTERS[0])
    lo, hi = sorted((n1, n2))
    assert m.time(coll, lo, dim, D(*layout)) <= m.time(coll, hi, dim, D(*layout)) * (1 + 1e-12)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(COLLS), st.sampled_from(LAYOUTS16), st.sampled_from(grid.DIMS),
       st.floats(1, 2**31), st.sampled_from(CLUSTERS))
def test_group_of_one_is_free_and_slower_links_are_never_faster(coll, layout, dim, n, c):
    m = collectives.comm_model(c)
    size = D(*layout).degree(dim)
    t = m.time(coll, n, dim, D(*layout))
    if size == 1:
        assert t == 0.0
    slower = replace(c, intra_node=replace(c.intra_node, bandwidth_bytes_per_s=1e9,
                                           latency_s=1e-4),
                     inter_node=replace(c.inter_node, bandwidth_bytes_per_s=1e9, latency_s=1e-4),
                     node_links=tuple(replace(k, bandwidth_bytes_per_s=1e9, latency_s=1e-4)
                                      for k in c.node_links))
    assert t <= collectives.CommModel(slower).time(coll, n, dim, D(*layout)) * (1 + 1e-12)


# --------------------------------------------------------------------------------------------
# The dgx-a100-80gb preset against measured NCCL all-reduces (tests/data: a subset of
# ../shared/data/a100-single-node/allreduce; benchmarks/comm_a100.py runs the whole of it)
# --------------------------------------------------------------------------------------------
DATA = Path(__file__).parent / "data" / "a100_allreduce_subset.csv"
SHARED = Path(__file__).parents[2] / "shared" / "data" / "a100-single-node" / "allreduce"


def a100_points():
    with open(DATA, newline="") as fh:
        rows = [r for r in csv.reader(line for line in fh if not line.startswith("#"))][1:]
    return [(int(p), int(n), float(t) * 1e-9) for p, n, t in rows]


def test_a100_preset_predicts_measured_all_reduce():
    preset = dgx_a100()
    errs: dict[int, list[float]] = {}
    for p, n, t in a100_points():
        if n >= 8 * MB:
            pred = collectives.CommModel(preset.with_size(p)).time("all_reduce", n, "dp", D(p, 1, 1))
            errs.setdefault(p, []).append(abs(pred / t - 1))
    assert sorted(errs) == [2, 3, 4, 5, 6, 7, 8]
    for p, e in errs.items():
        assert statistics.median(e) <= 0.10, (p, statistics.median(e))
        assert max(e) <= 0.20, (p, max(e))


def test_a100_preset_is_the_fit_of_its_data():
    # refit the ring model on the training points (p = 2, 4, 8, power-of-two sizes)
    rows, times = [], []
    for p, n, t in a100_points():
        if p in (2, 4, 8) and n & (n - 1) == 0:
            rows.append([1.0, 2.0 * (p - 1), 2.0 * (p - 1) / p * n])
            times.append(t)
    call, alpha, beta = fit_relative(rows, times)
    lv = dgx_a100().intra_node
    assert call == pytest.approx(lv.call_latency_s, rel=0.02)
    assert alpha == pytest.approx(lv.latency_s, rel=0.02)
    assert 1 / beta == pytest.approx(lv.bandwidth_bytes_per_s, rel=0.01)
    assert lv.source.startswith("fitted on shared/data/a100-single-node/allreduce")


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present")
def test_a100_preset_on_the_full_tables():
    spec = importlib.util.spec_from_file_location(
        "comm_a100", Path(__file__).parents[1] / "benchmarks" / "comm_a100.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = bench.load(str(SHARED))
    models = {p: collectives.CommModel(dgx_a100().with_size(p)) for p in data}
    for p, pts in data.items():
        errs = [abs(models[p].time("all_reduce", n, "dp", D(p, 1, 1)) / t - 1)
                for n, t in pts if n >= 8 * MB]
        assert statistics.median(errs) <= 0.10, p
