"""Co-located rank interference (planner.profile.interference) and how the simulation uses it:
compute slowdown, unoverlapped communication, FSDP2's per-call overhead. Hand-checkable toys."""
from dataclasses import replace

import pytest

from planner.clusters import dgx_a100
from planner.cost.compute import BlockCost
from planner.errors import PlannerError
from planner.profile.interference import overlap_share
from planner.sim import RunSpec, evaluate
from planner.specs import Cluster, Layout, ModelSpec


def toy(cluster, n_blocks=4, fwd=1.0, bwd=2.0, params=1000):
    spec = ModelSpec("toy", "custom", num_layers=n_blocks, hidden_size=8, callable_path="m:f")
    blocks = [BlockCost(f"b{i}", "block", fwd, bwd, 1e9, params, 100, 10)
              for i in range(n_blocks)]
    # a measured optimizer step of 0 s is "estimate"; use a tiny fixed one for clean sums
    return RunSpec(spec, cluster, "float32", "sgd", optimizer_step_s=1e-9), blocks


def comm_of(seconds):
    def comm(name, n_bytes, dim, stage=None):
        return seconds
    return comm


def test_overlap_share_bounds():
    assert overlap_share(10.0, 4.0, 10.0) == 1.0          # CA = max: fully hidden
    assert overlap_share(10.0, 4.0, 14.0) == 0.0          # CA = C + A: none
    assert overlap_share(10.0, 4.0, 12.0) == pytest.approx(0.5)
    assert overlap_share(10.0, 4.0, 20.0) == 0.0          # noise beyond C + A clips
    assert overlap_share(10.0, 4.0, 8.0) == 1.0


def test_defaults_change_nothing_on_gpu_clusters():
    c = dgx_a100()
    assert (c.compute_slowdown, c.comm_overlap, c.fsdp_call_overhead_s) == (1.0, 1.0, 0.0)


def test_cluster_rejects_bad_interference():
    with pytest.raises(PlannerError, match="compute_slowdown"):
        replace(dgx_a100(), compute_slowdown=0.5)
    with pytest.raises(PlannerError, match="comm_overlap"):
        replace(dgx_a100(), comm_overlap=1.5)
    with pytest.raises(PlannerError, match="fsdp_call_overhead_s"):
        replace(dgx_a100(), fsdp_call_overhead_s=-1.0)


def test_compute_slowdown_applies_only_with_colocated_ranks():
    slow = replace(dgx_a100(), compute_slowdown=1.5)
    run, blocks = toy(slow)
    _, one = evaluate(run, blocks, Layout.make(dp=1), comm=comm_of(0.0))
    _, two = evaluate(run, blocks, Layout.make(dp=2), comm=comm_of(0.0))
    # 4 blocks x (1 + 2) s = 12 s alone; x1.5 when the other rank computes too
    assert one.breakdown_s["compute"] == pytest.approx(12.0)
    assert two.breakdown_s["compute"] == pytest.approx(18.0)


def test_no_overlap_serialises_hidden_dp_comm():
    big = 10_000_000     # 40 MB of gradients per block: DDP buckets ready during backward
    run_ov, blocks = toy(dgx_a100(), params=big)
    run_no, _ = toy(replace(dgx_a100(), comm_overlap=0.0), params=big)
    run_half, _ = toy(replace(dgx_a100(), comm_overlap=0.5), params=big)
    layout = Layout.make(dp=2)
    _, ov = evaluate(run_ov, blocks, layout, comm=comm_of(0.5))
    _, no = evaluate(run_no, blocks, layout, comm=comm_of(0.5))
    _, half = evaluate(run_half, blocks, layout, comm=comm_of(0.5))
    busy = ov.breakdown_s["dp_comm_hidden"] + ov.breakdown_s["dp_comm_exposed"]
    hidden = ov.breakdown_s["dp_comm_hidden"]
    assert hidden > 0
    assert no.step_time_s == pytest.approx(ov.step_time_s + hidden)
    assert half.step_time_s == pytest.approx(ov.step_time_s + hidden / 2)
    assert no.breakdown_s["dp_comm_exposed"] == pytest.approx(busy)
    for pred in (no, half):
        parts = sum(v for k, v in pred.breakdown_s.items() if not k.endswith("_hidden"))
        assert parts == pytest.approx(pred.step_time_s)


def test_fsdp_call_overhead_per_collective():
    base = replace(dgx_a100(), comm_overlap=0.0)   # serial: every collective adds its time
    run0, blocks = toy(base)
    run1, _ = toy(replace(base, fsdp_call_overhead_s=0.25))
    layout = Layout.make(dp=2, zero=2)
    _, p0 = evaluate(run0, blocks, layout, comm=comm_of(0.0))
    _, p1 = evaluate(run1, blocks, layout, comm=comm_of(0.0))
    # ZeRO-2, one micro-batch: 4 all-gathers + 4 reduce-scatters per step
    assert p1.step_time_s - p0.step_time_s == pytest.approx(8 * 0.25)


def test_cluster_file_round_trips_interference(tmp_path):
    c = replace(dgx_a100(), compute_slowdown=1.4, comm_overlap=0.1, fsdp_call_overhead_s=2e-3,
                interference_source="measured: test")
    path = tmp_path / "c.json"
    c.save(str(path))
    assert Cluster.load(str(path)) == c
