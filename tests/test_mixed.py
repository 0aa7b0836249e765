"""Mixed clusters: node groups of several device kinds, their placement, the per-replica
simulation synced at the slowest replica, the partition and micro-batch split by speed, the
mixed-aware search, and `planner plan`'s explanation of it."""
from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest

from planner import cli, rules
from planner.clusters import dgx_a100, dgx_h100, mixed_h100_a100, resolve_cluster
from planner.cost import compute
from planner.errors import PlannerError
from planner.models import PRESETS
from planner.partition import balanced_partition, chunk_cost
from planner.partition_kinds import partition_by_chunk
from planner.search import Space, search
from planner.search.mixed import arrangements, search_mixed, split_microbatches
from planner.sim import RunSpec, evaluate
from planner.sim import mixed as msim
from planner.specs import Cluster, Layout, NodeGroup, ParallelDims
from planner.topology import Placement

SMALL = PRESETS["gpt3-1.3b"]


def costs_for(spec):
    cache: dict = {}

    def costs_on(device, b):
        key = (device.name, b)
        if key not in cache:
            cache[key] = compute.analytic_costs(spec, b, device, "bf16-mixed", 2)
        return cache[key]
    return costs_on


def two_kinds(h_nodes=1, a_nodes=1) -> Cluster:
    """h_nodes DGX H100 then a_nodes DGX A100 (the preset's figures)."""
    c = mixed_h100_a100()
    return replace(c, num_nodes=h_nodes + a_nodes,
                   node_groups=(replace(c.node_groups[0], num_nodes=a_nodes),))


# --------------------------------------------------------------------------------------------
# The cluster file
# --------------------------------------------------------------------------------------------
def test_old_cluster_files_read_unchanged():
    old = dgx_a100().to_dict()
    del old["node_groups"]                       # a file written before node groups
    c = Cluster.from_dict(old)
    assert c == dgx_a100() and not c.mixed and c.uniform and len(c.groups) == 1


def test_mixed_preset_and_example_toml():
    c = resolve_cluster("mixed-h100-a100")
    assert c.mixed and not c.uniform and c.num_devices == 64
    assert [g.device.name for g in c.groups] == ["H100-SXM5-80GB", "A100-SXM4-80GB"]
    assert [c.kind_of_node(n) for n in range(8)] == [0] * 4 + [1] * 4
    assert Cluster.from_dict(c.to_dict()) == c
    toml = resolve_cluster("examples/mixed-h100-a100.toml")
    for a, b in zip(toml.groups, c.groups):
        assert (a.num_nodes, a.device.name, a.device.peak_flops_per_s) == \
            (b.num_nodes, b.device.name, b.device.peak_flops_per_s)
        assert a.intra_node.bandwidth_bytes_per_s == pytest.approx(
            b.intra_node.bandwidth_bytes_per_s)
        assert a.inter_node.bandwidth_bytes_per_s == b.inter_node.bandwidth_bytes_per_s


def test_cluster_checks_and_cuts():
    c = mixed_h100_a100()
    with pytest.raises(PlannerError, match="node_groups hold 4 nodes, more than num_nodes 3"):
        replace(c, num_nodes=3)
    clash = replace(c.node_groups[0], device=replace(dgx_a100().device, name="H100-SXM5-80GB"))
    with pytest.raises(PlannerError, match="both named 'H100-SXM5-80GB'"):
        replace(c, node_groups=(clash,))
    with pytest.raises(PlannerError, match="cannot grow"):
        c.with_size(128)
    h = c.with_size(32)                          # the H100 nodes alone
    assert not h.mixed and h.uniform and h.num_nodes == 4 and h.device.name == "H100-SXM5-80GB"
    assert c.with_size(40).mixed
    one = c.with_size(4)
    assert one.num_devices == 4 and one.device.name == "H100-SXM5-80GB"


def test_select_reorders_nodes_and_keeps_their_links():
    c = mixed_h100_a100()
    s = c.select([4, 0, 5, 1])
    assert [s.node_group(n).device.name[:4] for n in range(4)] == ["A100", "H100", "A100",
                                                                    "H100"]
    assert s.node_group(0).inter_node.bandwidth_bytes_per_s == 25e9
    assert s.node_group(1).inter_node.bandwidth_bytes_per_s == 50e9
    assert Cluster.from_dict(s.to_dict()) == s


# --------------------------------------------------------------------------------------------
# Placement prices links by the nodes they join
# --------------------------------------------------------------------------------------------
def test_links_between_kinds_run_at_the_slower_port():
    p = Placement(mixed_h100_a100())
    dims = ParallelDims(dp=8, tp=8)
    dp = p.groups("dp", dims)                     # one rank on each of the 8 nodes
    assert dp.level == "inter_node" and dp.flat.bandwidth_bytes_per_s == 25e9
    pipe = ParallelDims(pp=8, tp=8)
    assert p.boundary(pipe, 1)[1].bandwidth_bytes_per_s == 50e9    # H100 -> H100
    assert p.boundary(pipe, 3)[1].bandwidth_bytes_per_s == 25e9    # H100 -> A100
    assert p.boundary(pipe, 5)[1].bandwidth_bytes_per_s == 25e9    # A100 -> A100
    h100_nvlink = dgx_h100().intra_node.bandwidth_bytes_per_s
    a100_nvlink = dgx_a100().intra_node.bandwidth_bytes_per_s
    tp = p.groups("tp", ParallelDims(dp=8, tp=8))  # every node's NVLink: the slowest counts
    assert tp.flat.bandwidth_bytes_per_s == a100_nvlink < h100_nvlink


# --------------------------------------------------------------------------------------------
# The layout's per-replica shares and what the executor refuses with them
# --------------------------------------------------------------------------------------------
def test_replica_microbatches_field():
    lay = Layout.make(dp=3, microbatch_size=2, num_microbatches=5, replica_microbatches=(5, 1, 2))
    assert lay.global_batch_size == 16 and lay.total_microbatches == 8
    assert [lay.replica_rows(i) for i in range(3)] == [(0, 10), (10, 12), (12, 16)]
    assert lay.describe() == "dp=3 tp=1 pp=1 mb=2x5+1+2"
    assert Layout.from_dict(lay.to_dict()) == lay
    even = Layout.make(dp=3, microbatch_size=2, num_microbatches=5)
    assert "replica_microbatches" not in even.identity()      # old fingerprints hold
    assert lay.identity()["replica_microbatches"] == [5, 1, 2]
    for bad, msg in [((5, 1), "must hold dp\\(3\\) integers"), ((2, 2, 2), "are all equal"),
                     ((4, 1, 2), "must be the largest")]:
        with pytest.raises(PlannerError, match=msg):
            Layout.make(dp=3, microbatch_size=2, num_microbatches=5, replica_microbatches=bad)
    with pytest.raises(PlannerError, match="% pp\\(2\\) == 0"):
        Layout.make(dp=2, pp=2, schedule="interleaved-1f1b", virtual_stages=2,
                    num_microbatches=4, replica_microbatches=(4, 3))


def test_uneven_shares_refused_where_fsdp_gathers_per_microbatch():
    def lay(**kw):
        return Layout.make(dp=2, num_microbatches=4, replica_microbatches=(4, 2), **kw)
    assert "zero 3" in rules.executor_refuses(lay(zero=3))
    assert "without pipelining" in rules.executor_refuses(lay(zero=2))
    assert rules.executor_refuses(lay(zero=2, pp=2)) == ""
    assert rules.executor_refuses(lay(zero=1)) == ""
    # torch's Schedule1F1B refuses fewer micro-batches than stages, on any replica
    assert "needs at least pp" in rules.microbatch_problem(
        Layout.make(dp=2, pp=2, schedule="1f1b", num_microbatches=4, replica_microbatches=(4, 1)))
    assert "needs at least pp" in rules.microbatch_problem(
        Layout.make(pp=4, schedule="1f1b", num_microbatches=2))
    assert rules.microbatch_problem(Layout.make(pp=4, schedule="gpipe", num_microbatches=2)) == ""


# --------------------------------------------------------------------------------------------
# Partition and micro-batch split by speed
# --------------------------------------------------------------------------------------------
def _brute(costs, send, k):
    n = len(send)
    best = float("inf")
    for cuts in itertools.combinations(range(1, n), k - 1):
        b = [0, *cuts, n]
        best = min(best, max(chunk_cost([0.0, *itertools.accumulate(costs[c])], send, b[c],
                                        b[c + 1] - 1) for c in range(k)))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_partition_by_chunk_is_optimal(seed):
    """Exact when any one block fits any chunk at the optimum (a stage holds several layers);
    otherwise still a valid cut. Boundary sends make greedy packing a heuristic (as in
    ``balanced_partition``: the send term is not monotone in the cut), so none here."""
    import random
    rng = random.Random(seed)
    n, k = rng.randint(4, 11), rng.randint(2, 4)
    base = [rng.uniform(0.5, 2.0) for _ in range(n)]
    speed = [rng.choice([1.0, 2.9]) for _ in range(k)]     # each chunk's device
    costs = [[x * s for x in base] for s in speed]
    send = [0.0] * n
    starts, bottleneck = partition_by_chunk(costs, send)
    ends = (*starts[1:], n)
    assert len(starts) == k and starts[0] == 0 and all(a < b for a, b in zip(starts, ends))
    assert bottleneck == pytest.approx(max(sum(costs[c][starts[c]:ends[c]]) for c in range(k)))
    best = _brute(costs, send, k)
    assert bottleneck >= best * (1 - 1e-9)
    if best >= max(max(c) for c in costs):
        assert bottleneck == pytest.approx(best, rel=1e-4)


def test_slower_chunks_get_fewer_blocks_and_equal_costs_match_the_balanced_cut():
    base = [1.0] * 12
    starts, _ = partition_by_chunk([base, [3 * x for x in base]], [0.0] * 12)
    assert starts == (0, 9)                 # 9 blocks on the fast device, 3 on the slow one
    same, _ = partition_by_chunk([base] * 3, [0.0] * 12)
    assert same == (0, 4, 8) == balanced_partition(base, 3, [0.0] * 12)[0]


def test_split_microbatches_balances_finishing_times():
    assert split_microbatches([(1.0, 0.0), (3.0, 0.0)], 16, 1) == (12, 4)
    assert split_microbatches([(1.0, 0.0)] * 2 + [(3.0, 0.0)] * 2, 16, 2) == (6, 6, 2, 2)
    assert split_microbatches([(1.0, 0.0), (3.0, 0.0)], 3, 2) is None
    for cost in ([(1.0, 0.5), (2.5, 1.0), (2.5, 1.0)], [(0.7, 3.0), (1.9, 0.0)]):
        for total in range(len(cost), 12):
            got = split_microbatches(cost, total, 1)
            best = min((max(a * m + c for (a, c), m in zip(cost, ms)), ms)
                       for ms in itertools.product(range(1, total + 1), repeat=len(cost))
                       if sum(ms) == total)
            assert sum(got) == total
            assert max(a * m + c for (a, c), m in zip(cost, got)) == pytest.approx(best[0])


def test_arrangements_interleave_kinds_per_replica():
    c = two_kinds(2, 2)
    assert arrangements(c, [0, 1, 2, 3], 2, 16, True) == [(0, 1, 2, 3), (0, 2, 1, 3),
                                                          (2, 0, 3, 1)]
    assert arrangements(c, [0, 1, 2, 3], 2, 16, False) == [(0, 1, 2, 3)]
    assert arrangements(c, [0, 1, 2, 3], 4, 8, True) == [(0, 1, 2, 3)]   # one node each


# --------------------------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------------------------
def test_one_kind_simulates_as_the_homogeneous_simulator():
    c = replace(dgx_h100(), num_nodes=2)
    run = RunSpec(SMALL, c, "bf16-mixed", "adam")
    costs_on = costs_for(SMALL)
    mx = msim.MixedRun(run, costs_on)
    for lay in (Layout.make(dp=4, tp=2, pp=2, microbatch_size=2, num_microbatches=4, zero=1,
                            stage_boundaries=(0, 13)),
                Layout.make(dp=2, pp=4, tp=2, microbatch_size=1, num_microbatches=8,
                            schedule="interleaved-1f1b", virtual_stages=2, zero=2,
                            stage_boundaries=(0, 3, 6, 9, 12, 15, 18, 22))):
        if rules.executor_refuses(lay):
            lay = replace(lay, data=replace(lay.data, zero=0))
        _, pred = evaluate(run, costs_on(c.device, lay.microbatch_size), lay, timeline=False)
        _, mixed_pred, _ = msim.evaluate_mixed(mx, lay, timeline=False)
        assert mixed_pred.step_time_s == pytest.approx(pred.step_time_s, rel=1e-9)
        assert mixed_pred.peak_memory_bytes == pred.peak_memory_bytes


def test_data_parallelism_syncs_at_the_slowest_replica():
    c = two_kinds()
    run = RunSpec(SMALL, c, "bf16-mixed", "adam")
    mx = msim.MixedRun(run, costs_for(SMALL))
    even = Layout.make(dp=2, tp=8, microbatch_size=4, num_microbatches=8)
    lay, pred, step = msim.evaluate_mixed(mx, even, timeline=False)
    fast, slow = step.alone_s
    assert [r.kinds for r in step.replicas] == [(0,), (1,)]
    assert fast < slow and pred.step_time_s == pytest.approx(slow, rel=1e-9)
    assert step.results[0].step_time_s == pytest.approx(pred.step_time_s, rel=0.01)
    # give each replica micro-batches in inverse proportion to its time alone (at tp 8 this
    # small model waits on NVLink a good part of the time, so the A100 replica is less slower
    # than the peak ratio): the step is shorter and the replicas finish nearly together
    def split(k):
        return replace(even, num_microbatches=max(k, 16 - k), replica_microbatches=(k, 16 - k))
    k = round(16 * slow / (fast + slow))
    faster = msim.evaluate_mixed(mx, split(k), timeline=False)[1].step_time_s
    assert k > 8 and faster < 0.9 * pred.step_time_s
    # no other whole split of the 16 micro-batches is faster
    others = [msim.evaluate_mixed(mx, split(j), timeline=False)[1].step_time_s
              for j in range(1, 16) if j not in (8, k)]
    assert faster <= min(others) * (1 + 1e-9)
    with pytest.raises(PlannerError, match="spans 2 device kinds"):
        msim.evaluate_mixed(mx, Layout.make(tp=16, microbatch_size=2, num_microbatches=8))


def test_a_pipeline_across_kinds_gives_the_slow_stage_fewer_layers():
    c = two_kinds()
    run = RunSpec(SMALL, c, "bf16-mixed", "adam")
    mx = msim.MixedRun(run, costs_for(SMALL))
    # micro-batches of 4: at 1 this small model's tp-8 kernels are too short for the device
    # kinds to differ much (per-kernel overheads, tp communication)
    lay = Layout.make(pp=2, tp=8, microbatch_size=4, num_microbatches=8)
    lay, pred, step = msim.evaluate_mixed(mx, lay, timeline=True)
    first = lay.pipeline.stage_boundaries[1]
    assert first > SMALL.num_blocks - first            # the H100 stage holds more blocks
    # ... and the cut is the best one: a block more or less on either stage is slower
    for cut in (first - 1, first + 1):
        moved = replace(lay, pipeline=replace(lay.pipeline, stage_boundaries=(0, cut)))
        assert msim.evaluate_mixed(mx, moved, timeline=False)[1].step_time_s >= \
            pred.step_time_s * (1 - 1e-9)
    assert [m.capacity_bytes for m in pred.memory] == [c.device.usable_memory_bytes] * 2
    assert pred.fits and {e.rank for e in pred.timeline} == {0, 8}


# --------------------------------------------------------------------------------------------
# The search and the command
# --------------------------------------------------------------------------------------------
def test_search_splits_by_speed_and_beats_the_even_split():
    c = two_kinds(2, 2)
    run = RunSpec(SMALL, c, "bf16-mixed", "adam")
    res = search_mixed(run, costs_for(SMALL), 512, Space(), top_k=2)
    labels = [o.label for o in res.options]
    assert labels == ["all nodes, mixed-aware", "A100-SXM4-80GB alone", "H100-SXM5-80GB alone",
                      "even split over all nodes"]
    step = {o.label: o.best[1].step_time_s for o in res.options}
    assert res.chosen.label == "all nodes, mixed-aware"
    assert step["all nodes, mixed-aware"] < min(step["H100-SXM5-80GB alone"],
                                                step["even split over all nodes"])
    layout = res.chosen.best[0]
    assert layout.replica_microbatches or layout.pipeline.stage_boundaries
    with pytest.raises(PlannerError, match="mixes device kinds"):
        search(run, costs_for(SMALL), 32, 128)


def test_slow_devices_left_out_where_they_do_not_pay():
    """A kind 40x slower on a 1 GB/s fabric costs more in gradient sync than it computes."""
    c = two_kinds(2, 2)
    a = c.node_groups[0]
    crawl = replace(a.device, name="slow-gpu", peak_flops_per_s={
        k: v / 40 for k, v in a.device.peak_flops_per_s.items()})
    slow = replace(a, device=crawl, inter_node=replace(a.inter_node, bandwidth_bytes_per_s=1e9))
    run = RunSpec(SMALL, replace(c, node_groups=(slow,)), "bf16-mixed", "adam")
    res = search_mixed(run, costs_for(SMALL), 64, Space(), top_k=1)
    assert res.chosen.label == "H100-SXM5-80GB alone"


def test_plan_command_explains_the_split(tmp_path, capsys):
    out = tmp_path / "plan.json"
    rc = cli.main(["plan", "--model", "gpt3-1.3b", "--cluster", "mixed-h100-a100", "--gpus",
                   "40", "--global-batch", "64", "--top-k", "2", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "split       node ranks" in text and "compared    " in text
    assert "tokens/device-hour" in text and "even split over all nodes" in text
    assert "One micro-batch through the whole model" in text
    from planner.specs import Plan
    plan = Plan.load(str(out))
    assert plan.world_size == plan.cluster.num_devices
    rc = cli.main(["plan", "--model", "gpt3-1.3b", "--cluster", "mixed-h100-a100", "--gpus",
                   "40", "--global-batch", "64", "--top-k", "1", "--out", str(out),
                   "--format", "json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and sum(o["chosen"] for o in data["options"]) == 1
    assert all("tokens_per_device_hour" in o for o in data["options"] if o["layout"])


def test_plan_command_refuses_a_profile_on_a_mixed_cluster(tmp_path, capsys):
    rc = cli.main(["plan", "--profile", str(tmp_path / "p.json"), "--cluster",
                   "mixed-h100-a100", "--global-batch", "64"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "mixes H100-SXM5-80GB, A100-SXM4-80GB" in err
