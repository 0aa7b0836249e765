"""Expert parallelism, context parallelism, offload and fp8 on the planner's side: the rank grid
and its group names, the rules, the cost formulas, memory, and the search choosing them."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from planner import grid, rules, sim
from planner.clusters import dgx_a100, dgx_h100
from planner.cost import comm, cp as cp_cost, ep as ep_cost
from planner.cost.compute import analytic_costs
from planner.cost.roofline import Shape, pass_times_s
from planner.devices import load as load_device_model
from planner.dims import ParallelDims
from planner.errors import PlannerError
from planner.models import PRESETS
from planner.specs import Layout, ModelSpec

MOE = PRESETS["moe-tiny"]
LLAMA = PRESETS["llama-tiny"]


# -- the grid ---------------------------------------------------------------------------------
def test_ep_borrows_from_dp_times_cp_and_says_so():
    with pytest.raises(PlannerError, match=r"ep\(4\) must divide dp\(2\) \* cp\(1\) = 2"):
        ParallelDims(dp=2, ep=4)
    d = ParallelDims(dp=2, cp=2, pp=2, tp=2, ep=4)
    assert d.world_size == 16 and d.replicas == 4 and d.edp == 1
    assert d.describe() == "dp=2 tp=2 pp=2 cp=2 ep=4"
    assert d.arithmetic() == "dp(2) * tp(2) * pp(2) * cp(2) = 16"
    assert ParallelDims(dp=2).describe() == "dp=2 tp=1 pp=1"   # unchanged without cp/ep


def test_groups_of_cp_ep_and_the_reduction_are_strided_runs():
    g = grid.RankGrid(ParallelDims(dp=2, cp=2, pp=2, tp=1, ep=2))
    # rank = ((dp_i * cp + cp_i) * pp + pp_i): cp peers pp apart, dp peers cp * pp apart
    assert g.groups("cp") == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert g.groups("dp") == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert g.groups("dp_cp") == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert g.groups("ep") == g.groups("cp")            # ep == cp: the cp group
    assert g.groups("edp") == g.groups("dp")           # ... and its replicas the dp group
    g4 = grid.RankGrid(ParallelDims(dp=4, ep=2))
    assert g4.groups("ep") == [[0, 1], [2, 3]] and g4.groups("edp") == [[0, 2], [1, 3]]


@pytest.mark.parametrize("dims, names", [
    (dict(dp=4), {"dp_cp": "dp", "edp": "dp"}),       # ep 1: no ep group to name
    (dict(cp=4), {"dp_cp": "cp", "edp": "cp"}),
    (dict(dp=2, cp=2, ep=2), {"dp_cp": "dp_cp", "ep": "cp", "edp": "dp"}),
    (dict(dp=4, ep=2), {"dp_cp": "dp", "ep": "ep", "edp": "edp"}),
    (dict(dp=2, cp=2, ep=4), {"dp_cp": "dp_cp", "ep": "dp_cp", "edp": "edp"}),
])
def test_groups_with_the_same_ranks_have_one_name(dims, names):
    d = ParallelDims(**dims)
    g = grid.RankGrid(d)
    for name, canonical in names.items():
        assert d.canonical(name) == canonical
        if d.degree(name) > 1 and d.degree(canonical) > 1:
            assert g.groups(name) == g.groups(canonical)


def test_default_layouts_keep_their_identity():
    """cp, ep and offload at their defaults leave a layout's fingerprint as it was."""
    plain = Layout.make(dp=2, zero=3)
    assert not any(k.startswith(("dims.", "data.")) for k in plain.identity())
    assert Layout.make(dp=2, cp=2).identity()["dims.cp"] == 2
    assert Layout.make(dp=2, zero=3, offload=True).identity()["data.offload"] is True
    assert Layout.from_dict(plain.to_dict()) == plain


# -- rules --------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, flat, message", [
    (LLAMA, dict(cp=3), r"2 \* cp = 6 must divide seq_len\(64\)"),
    (PRESETS["mlp-tiny"], dict(cp=2), "ring attention"),
    (LLAMA, dict(dp=2, ep=2), "needs experts to shard"),
    (MOE, dict(dp=8, ep=8), r"ep\(8\) must divide num_experts\(4\)"),
    (MOE, dict(dp=2, ep=2, zero=1), "zero 1"),
    (LLAMA, dict(cp=2, recompute="full", tp=2, sequence_parallel=True), "sequence_parallel"),
    (PRESETS["gpt2-small"], dict(cp=2, recompute="selective"), "selective"),
    (MOE, dict(dp=2, ep=2, compression="bf16"), "compression"),
    (LLAMA, dict(dp=2, cp=2, local_sgd_period=4), "local_sgd_period"),
    (MOE, dict(dp=2, ep=2, compression="topk", compression_ratio=0.1), "compression"),
    (MOE, dict(dp=2, ep=2, num_microbatches=3, replica_microbatches=(3, 1)),
     "all-to-alls pair ranks of different replicas"),
    (LLAMA, dict(dp=2, cp=2, num_microbatches=3, replica_microbatches=(3, 1)),
     "uneven replica_microbatches"),
])
def test_what_the_executor_refuses(spec, flat, message):
    assert pytest.raises(PlannerError, rules.check_layout, spec, Layout.make(**flat),
                         spec.num_blocks).match(message)


def test_offload_is_fsdp2s_policy():
    with pytest.raises(PlannerError, match="needs zero 3"):
        Layout.make(dp=2, zero=2, offload=True)
    with pytest.raises(PlannerError, match="dp \\* cp > 1"):
        Layout.make(zero=3, offload=True)


# -- formulas -----------------------------------------------------------------------------------
def test_load_factor_assumption():
    spec = replace(MOE, moe_capacity_factor=0.0)
    assert ep_cost.load_factor(spec) == ep_cost.DROPLESS_LOAD_FACTOR
    assert ep_cost.load_factor(replace(spec, moe_capacity_factor=1.25)) == 1.25
    assert ep_cost.load_factor(replace(spec, moe_capacity_factor=0.5)) == 1.0
    assert ep_cost.load_factor(spec, measured=1.7) == 1.7


def test_ring_exposes_what_attention_does_not_hide():
    assert cp_cost.ring_counts(4) == (3, 7)
    f, b = cp_cost.ring_exposed(t_kv=1.0, core_forward_s=8.0, cp=4)   # 2 s of attention a step
    assert f == 0.0 and b == 4.0                  # only the gradient transfers remain
    f, b = cp_cost.ring_exposed(t_kv=1.0, core_forward_s=0.0, cp=4)
    assert f == 3.0 and b == 3.0 + 4.0


def test_all_to_all_crossing_nodes_costs_more():
    n = 64e6
    inside = comm.all_to_all_two_level(n, 1, 8, 2e-6, 1 / 300e9, 1e-5, 1 / 25e9)
    across = comm.all_to_all_two_level(n, 2, 4, 2e-6, 1 / 300e9, 1e-5, 1 / 25e9)
    assert across > 5 * inside


def test_fp8_runs_linear_gemms_at_the_fp8_peak_only():
    dm = load_device_model("profiles/h100-sxm5-80gb.json")
    sh = Shape(1, 8192, 8192, 64, 28672, 128256)
    from planner.families.llama.costs import head_ops, swiglu_ops
    mlp = swiglu_ops("mlp", sh.tokens, sh.h, sh.f, 2)[0]
    gemm_ops = [op for op in mlp if op.matmul]
    assert gemm_ops and all(op.fp8 for op in gemm_ops)
    assert not any(op.fp8 for op in head_ops(sh)[0])      # the LM head stays bf16
    bf16, _ = pass_times_s(gemm_ops, dm, "bf16-mixed")
    fp8, _ = pass_times_s(gemm_ops, dm, "fp8")
    assert 1.5 < bf16 / fp8 <= 2.0
    a100 = load_device_model("profiles/a100-sxm4-80gb.json")
    with pytest.raises(PlannerError, match="no peak_flops_per_s\\['fp8'\\]"):
        pass_times_s(gemm_ops, a100, "fp8")


# -- simulation ---------------------------------------------------------------------------------
def _h100(n=64):
    return dgx_h100().with_size(n)


def _evaluate(spec, cluster, layout, dtype="bf16-mixed"):
    run = sim.RunSpec(spec, cluster, dtype, "adam")
    blocks = analytic_costs(spec, layout.microbatch_size, cluster.device, dtype, 2)
    return sim.evaluate(run, blocks, layout, timeline=False)[1]


def test_cp_splits_compute_and_activations():
    spec = replace(PRESETS["llama3-8b"], seq_len=32768)
    cl = _h100(8)
    one = _evaluate(spec, cl, Layout.make(dp=8, zero=3, num_microbatches=1, recompute="full"))
    two = _evaluate(spec, cl, Layout.make(dp=4, cp=2, zero=3, num_microbatches=2,
                                          recompute="full"))
    # the same tokens per rank and step: compute about equal, activations per micro-batch half
    assert two.breakdown_s["compute"] == pytest.approx(one.breakdown_s["compute"], rel=0.15)
    assert two.breakdown_s["cp_comm_exposed"] > 0
    assert max(r.activations_bytes for r in two.memory) < \
        0.6 * max(r.activations_bytes for r in one.memory)


def test_ep_shards_expert_memory_and_adds_all_to_alls():
    spec = PRESETS["mixtral-8x7b"]
    spec = replace(spec, seq_len=4096)
    cl = _h100(64)
    flat = dict(dp=64, zero=3, microbatch_size=1, num_microbatches=4, recompute="full")
    plain = _evaluate(spec, cl, Layout.make(**flat))
    sharded = _evaluate(spec, cl, Layout.make(ep=8, **{**flat, "zero": 2, "recompute": "none"}))
    assert "ep_comm_exposed" not in plain.breakdown_s and sharded.breakdown_s["ep_comm_exposed"] > 0
    counts: dict = {}
    for c in sharded.collectives:
        if c.collective == "all_to_all":
            key = (c.phase, c.collective, c.group)
            counts[key] = counts.get(key, 0) + c.count
    assert counts == {("forward", "all_to_all", "ep"): 32 * 3 * 4,
                      ("backward", "all_to_all", "ep"): 32 * 2 * 4}
    params = max(r.parameters_bytes for r in sharded.memory)
    assert params < 0.2 * spec.num_layers * 8 * 3 * 4096 * 14336 * 2     # 1/8 of the experts


def test_offload_moves_state_to_the_host_and_costs_time():
    spec = PRESETS["llama3-8b"]
    cl = _h100(8)
    flat = dict(dp=8, zero=3, microbatch_size=1, num_microbatches=1)
    on_device = _evaluate(spec, cl, Layout.make(**flat))
    offloaded = _evaluate(spec, cl, Layout.make(offload=True, **flat))
    assert offloaded.step_time_s > on_device.step_time_s
    dev = max(r.optimizer_bytes + r.parameters_bytes for r in on_device.memory)
    assert max(r.optimizer_bytes + r.parameters_bytes for r in offloaded.memory) == 0
    assert max(r.host_bytes for r in offloaded.memory) >= dev
    cpu = replace(cl, device=replace(cl.device, host_memory_bytes=0))
    with pytest.raises(PlannerError, match="host_memory_bytes"):
        _evaluate(spec, cpu, Layout.make(offload=True, **flat))


# -- the command line ---------------------------------------------------------------------------
def _plan(*args):
    proc = subprocess.run([sys.executable, "-m", "planner.cli", "plan", "--format", "json",
                           *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_model_that_fits_only_offloaded_is_planned(tmp_path):
    out = _plan("--model", "llama3-70b", "--cluster", "dgx-h100-80gb", "--gpus", "8",
                "--global-batch", "8", "--out", str(tmp_path / "p.json"))
    assert out["layout"]["data"]["offload"] is True and out["fits"]


def test_mixtral_plan_uses_expert_parallelism(tmp_path):
    out = _plan("--model", "hf:tests/fixtures/mixtral-8x7b/config.json", "--seq-len", "4096",
                "--cluster", "dgx-h100-80gb", "--gpus", "64", "--global-batch", "256",
                "--out", str(tmp_path / "p.json"))
    assert out["layout"]["dims"]["ep"] > 1


def test_mixed_cluster_simulation_refuses_cp_ep_offload():
    """planner.sim.mixed prices replicas over dp, tp and pp: cp ranks would be ignored."""
    from planner.clusters import mixed_h100_a100
    from planner.cost.precision import ELEMENT_BYTES
    from planner.sim import mixed
    spec = PRESETS["llama3-8b"]
    run = sim.RunSpec(spec, mixed_h100_a100(), "bf16-mixed", "adam")

    def costs_on(device, b):
        return analytic_costs(spec, b, device, "bf16-mixed", ELEMENT_BYTES["bf16-mixed"])
    mx = mixed.MixedRun(run, costs_on)
    with pytest.raises(PlannerError, match="no cp, ep or offload"):
        mixed.evaluate_mixed(mx, Layout.make(dp=4, cp=2, tp=8, zero=3, num_microbatches=2))
