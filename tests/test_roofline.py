"""Roofline block costs and device-model profiles, checked by hand."""
import json
import math

import pytest

from planner import devices
from planner.clusters import resolve_cluster
from planner.cost import compute, roofline as rl
from planner.cost.precision import optimizer_bytes_touched
from planner.families.gpt import costs as gpt_costs
from planner.errors import PlannerError
from planner.models import resolve_model

A100 = "profiles/a100-sxm4-80gb.json"
H100 = "profiles/h100-sxm5-80gb.json"


def model(**values):
    """The shipped A100 model with some figures replaced (so hand numbers stay simple)."""
    return devices.load(A100).with_values(**values)


def test_gemm_counts_flops_and_bytes_by_hand():
    # C[1024, 4096] = A[1024, 2048] B[2048, 4096] in bf16: 2*m*n*k FLOPs; reads A, B, writes C.
    op = rl.gemm("x", 1024, 4096, 2048, 2)
    assert op.flops == 2 * 1024 * 4096 * 2048
    assert op.bytes == 2 * (1024 * 2048 + 2048 * 4096 + 1024 * 4096)
    assert op.matmul


def test_op_time_is_the_larger_roof_plus_kernel_overhead():
    dm = model(matmul_efficiency_max=0.5, matmul_efficiency_scale_flops=1e6,
               memory_efficiency=0.5, kernel_overhead_s=2e-6)
    peak, bw = 312e12, dm.memory_bandwidth_bytes_per_s.value
    big = rl.Op("gemm", 1e13, 1e6, True)             # compute bound; eff = 0.5 * (1 - e^-1e7)
    assert rl.op_time_s(big, dm, peak) == pytest.approx(1e13 / (peak * 0.5) + 2e-6)
    copy = rl.Op("copy", 1e6, 1e9, False)             # memory bound
    assert rl.op_time_s(copy, dm, peak) == pytest.approx(1e9 / (bw * 0.5) + 2e-6)


def test_matmul_efficiency_saturates_with_size():
    dm = model(matmul_efficiency_max=0.8, matmul_efficiency_scale_flops=1e9,
               kernel_overhead_s=0.0)
    peak = 312e12
    rates = [f / rl.op_time_s(rl.Op("g", f, 0.0, True), dm, peak) for f in (1e8, 1e9, 1e10, 1e11)]
    assert rates == sorted(rates)
    assert rates[1] == pytest.approx(peak * 0.8 * (1 - math.exp(-1)))
    assert rates[-1] == pytest.approx(peak * 0.8, rel=1e-6)


@pytest.mark.parametrize("impl", ["megatron", "executor"])
def test_layer_matmul_flops_match_the_megatron_formula(impl):
    # Forward matmuls: 24bsh^2 + 4bs^2h (Narayanan et al. SC'21 eq. 2 / 3 per layer); the
    # backward of every matmul is two GEMMs of the same FLOPs (flash attention excepted).
    b, s, h, a = 2, 1024, 2048, 16
    fwd, bwd = gpt_costs.layer_ops(rl.Shape(b, s, h, a, 4 * h, 50304), impl)
    gemm_f = sum(o.flops for o in fwd if o.matmul and not o.name.startswith("flash"))
    gemm_b = sum(o.flops for o in bwd if o.matmul and not o.name.startswith("flash"))
    if impl == "megatron":
        assert gemm_f == pytest.approx(24 * b * s * h * h + 4 * b * s * s * h)
    else:
        assert gemm_f == pytest.approx(24 * b * s * h * h)
        flash = [o for o in fwd if o.name == "flash_attn"][0]
        assert flash.flops == pytest.approx(4 * b * s * s * h / 2)   # causal half
    assert gemm_b == pytest.approx(2 * gemm_f)


def test_tensor_parallel_divides_matmuls_and_sequence_parallel_the_norms():
    full = rl.Shape(4, 1024, 2048, 16, 8192, 50304)
    shard = full._replace(tp=4)
    sp = full._replace(tp=4, sp=True)

    def total(ops, matmul):
        return sum(o.flops for o in ops if o.matmul == matmul)

    f1, f4, fsp = (gpt_costs.layer_ops(x, "megatron")[0] for x in (full, shard, sp))
    assert total(f4, True) == pytest.approx(total(f1, True) / 4)
    ln = {o.name: o.bytes for o in f4}["ln1"]
    assert ln == {o.name: o.bytes for o in f1}["ln1"]             # replicated without SP
    assert {o.name: o.bytes for o in fsp}["ln1"] == pytest.approx(ln / 4)


def test_launch_bound_pass_takes_kernels_times_host_overhead():
    dm = model(host_overhead_s=1e-3)
    ops = gpt_costs.layer_ops(rl.Shape(1, 128, 256, 4, 1024, 512), "megatron")[0]
    gpu, host = rl.pass_times_s(ops, dm, "bf16-mixed", extra_kernels=2)
    assert host == pytest.approx((len(ops) + 2) * 1e-3) and host > gpu
    assert rl.pass_time_s(ops, dm, "bf16-mixed", 2) == host


def test_optimizer_bytes_mixed_adam_by_hand():
    # 2 (16-bit grad) + 2*4*3 (fp32 master, m, v read and written) + 2 (16-bit weight written)
    assert optimizer_bytes_touched("bf16-mixed", "adam") == 28
    assert optimizer_bytes_touched("float32", "adam") == 28
    assert optimizer_bytes_touched("float32", "sgd") == 4 + 8


def test_profiles_mark_every_figure_and_use_datasheet_peaks():
    for path, bf16, bw in ((A100, 312e12, 2.039e12), (H100, 989e12, 3.35e12)):
        dm = devices.load(path)
        assert dm.peak("bf16-mixed") == bf16
        assert dm.memory_bandwidth_bytes_per_s.value == bw
        assert dm.peak_flops_per_s["bfloat16"].source.startswith("datasheet")
        for name in devices.FITTED:
            src = getattr(dm, name).source
            assert src.startswith(("fitted", "assumed")), (path, name, src)


def test_presets_use_the_device_models_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for preset, gpu in (("dgx-a100-80gb", "A100"), ("dgx-h100-80gb", "H100")):
        device = resolve_cluster(preset).device
        assert device.model_profile and gpu in devices.load(device.model_profile).name
    spec = resolve_model("gpt3-1.3b")
    a100 = compute.analytic_costs(spec, 2, resolve_cluster("dgx-a100-80gb").device,
                                  "bf16-mixed", 2)
    h100 = compute.analytic_costs(spec, 2, resolve_cluster("dgx-h100-80gb").device,
                                  "bf16-mixed", 2)
    assert all(c.tp_split is not None for c in a100)
    assert h100[1].forward_s < a100[1].forward_s   # higher peaks and bandwidth


def test_tp_split_per_rank_costs():
    dm = devices.load(A100)
    spec = resolve_model("gpt3-6.7b")
    blocks = compute.analytic_costs(spec, 1, resolve_cluster("dgx-a100-80gb").device,
                                    "bf16-mixed", 2, device_model=dm)
    layer = blocks[1]
    f1, b1, _ = layer.tp_split(1, False, 0.0, 0.0)
    assert (f1, b1) == (layer.forward_s, layer.backward_s)
    f8, b8, core8 = layer.tp_split(8, False, 0.0, 0.0)
    # Smaller shards run less efficiently: more than 1/8 of the time, less than all of it.
    assert f1 / 8 < f8 < f1 and b1 / 8 < b8 < b1
    assert 0 < core8 < f8
    # A collective on the stream hides behind a launch-bound pass, never below the GPU time.
    g = gpt_costs.block_times(1, rl.Shape(1, 2048, 4096, 32, 16384, 51200, 8), dm, "bf16-mixed",
                              "executor")[1]
    assert layer.tp_split(8, False, 1.0, 1.0)[:2] == (g.forward_gpu_s, g.backward_gpu_s)


def test_bad_profile_is_a_one_line_error(tmp_path):
    data = json.load(open(devices.resolve_path(A100)))
    data["memory_efficiency"]["value"] = 1.5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(PlannerError, match=r"bad.json: field 'memory_efficiency.value' must be"):
        devices.load(str(bad))
    data["memory_efficiency"]["value"] = 0.8
    data["memory_efficency"] = data.pop("memory_efficiency")
    bad.write_text(json.dumps(data))
    with pytest.raises(PlannerError, match="unknown field 'memory_efficency'"):
        devices.load(str(bad))
    with pytest.raises(PlannerError, match="no such file"):
        devices.load("profiles/nope.json")
