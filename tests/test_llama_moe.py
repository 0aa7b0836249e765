"""The llama and moe families on the planner's side (torch-free): presets against published
parameter counts, the ModelSpec fields each family understands, fingerprints of older specs,
FLOPs against parameters, tensor-parallel rules, activation memory and PowerSGD's matrices."""
from __future__ import annotations

import pytest

from planner import families, rules
from planner.clusters import PRESETS as CLUSTERS
from planner.errors import PlannerError
from planner.families.moe import capacity, is_moe_layer, moe_layers
from planner.models import PRESETS
from planner.specs import Layout, ModelSpec
from planner.specs.common import fingerprint
from planner.specs.model import _V1_FIELDS

# Published totals: Llama 3 (Dubey et al. 2024, Table 3 and the model cards: 8.03B, 70.6B,
# 405.9B as 8,030,261,248 / 70,553,706,496 / 405,853,388,800); Mixtral 8x7B (Jiang et al. 2024:
# 46.7B total, 12.9B active).
PUBLISHED = {"llama3-8b": ("8.03", "8.03"), "llama3-70b": ("70.6", "70.6"),
             "llama3-405b": ("405.9", "405.9"), "mixtral-8x7b": ("46.7", "12.9")}


def rounds_to(count: int, billions: str) -> bool:
    """``count`` rounds to the published figure (half a unit of its last digit)."""
    decimals = len(billions.split(".")[1])
    return abs(count / 1e9 - float(billions)) <= 0.5 * 10 ** -decimals


@pytest.mark.parametrize("name", PUBLISHED)
def test_preset_parameter_counts_match_published(name):
    spec = PRESETS[name]
    total, active = families.of(spec).param_counts(spec)
    assert rounds_to(total, PUBLISHED[name][0]) and rounds_to(active, PUBLISHED[name][1])


def test_exact_llama3_counts():
    counts = {n: families.of(PRESETS[n]).param_counts(PRESETS[n])[0]
              for n in ("llama3-8b", "llama3-70b", "llama3-405b")}
    assert counts == {"llama3-8b": 8_030_261_248, "llama3-70b": 70_553_706_496,
                      "llama3-405b": 405_853_388_800}


def test_family_refuses_fields_it_does_not_understand():
    with pytest.raises(PlannerError, match=r"field 'num_experts' \(8\) is not part of family "
                                           r"'gpt'"):
        ModelSpec("g", "gpt", num_layers=2, hidden_size=64, num_heads=4, num_experts=8)
    with pytest.raises(PlannerError, match=r"field 'num_kv_heads' \(2\) is not part of family "
                                           r"'mlp'"):
        ModelSpec("m", "mlp", num_layers=2, hidden_size=64, num_kv_heads=2)
    with pytest.raises(PlannerError, match="field 'experts_per_token'"):
        ModelSpec("l", "llama", num_layers=2, hidden_size=64, num_heads=4, experts_per_token=2)
    # at their defaults the newer fields are fine everywhere
    ModelSpec("g", "gpt", num_layers=2, hidden_size=64, num_heads=4, rope_theta=10000.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_kv_heads=3), r"num_kv_heads\(3\) must divide num_heads\(4\)"),
    (dict(head_dim=7), r"head_dim\(7\) must be even"),
    (dict(rope_theta=0.0), "rope_theta must be a finite number > 0"),
])
def test_llama_validation(kwargs, match):
    with pytest.raises(PlannerError, match=match):
        ModelSpec("l", "llama", num_layers=2, hidden_size=64, num_heads=4, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_experts=0, experts_per_token=1), "num_experts must be >= 1"),
    (dict(experts_per_token=5), r"experts_per_token must be in 1..num_experts\(4\)"),
    (dict(moe_capacity_factor=float("nan")), "moe_capacity_factor must be a finite number"),
    (dict(shared_expert_gate=True), "shared_expert_gate needs a shared expert"),
    (dict(moe_first_dense_layers=2), "no MoE layer"),
])
def test_moe_validation(kwargs, match):
    base = dict(num_experts=4, experts_per_token=2)
    with pytest.raises(PlannerError, match=match):
        ModelSpec("m", "moe", num_layers=2, hidden_size=64, num_heads=4, **{**base, **kwargs})


def test_fingerprints_of_version_one_specs_do_not_change():
    """A spec that sets none of the newer fields hashes exactly as version 1 did (the V1 fields
    without the name), so old profiles and plans keep matching; one that sets them differs."""
    for spec in PRESETS.values():
        if spec.family in ("gpt", "mlp"):
            v1 = {f: getattr(spec, f) for f in _V1_FIELDS if f != "name"}
            assert spec.fingerprint() == fingerprint(v1)
    # computed by the planner before the llama/moe fields existed
    assert PRESETS["gpt-tiny"].fingerprint() == "ef6269b5000fb58e"
    assert PRESETS["gpt3-175b"].fingerprint() == "0941da7f575fd6a2"
    llama = PRESETS["llama3-8b"]
    assert llama.fingerprint() != ModelSpec(**{**llama.to_dict(), "num_kv_heads": 32}
                                            ).fingerprint()


def _layer_flops_from_params(spec, layer, b):
    """2 FLOPs per multiply-add of every matrix a token passes through (active parameters
    without norms and biases), plus attention's 4*b*s^2*a*d."""
    fam = families.of(spec)
    _, active = fam.layer_params(spec, layer)
    d = spec.head_dim or spec.hidden_size // spec.num_heads
    vectors = 2 * spec.hidden_size + (2 * d if spec.qk_norm else 0)
    if spec.qkv_bias:
        kv = spec.num_kv_heads or spec.num_heads
        vectors += (spec.num_heads + 2 * kv) * d
    t = b * spec.seq_len
    # QK^T and AV: 4bs^2 a d multiply-add FLOPs, half of them under the causal mask
    return 2.0 * t * (active - vectors) + 2.0 * b * spec.seq_len ** 2 * spec.num_heads * d


@pytest.mark.parametrize("name", ["llama3-8b", "llama3-70b", "mixtral-8x7b", "moe-tiny"])
def test_forward_flops_are_two_per_active_parameter_per_token(name):
    spec = PRESETS[name]
    fam = families.of(spec)
    for layer in range(spec.num_layers):
        assert fam.layer_forward_flops(spec, layer, 2) == pytest.approx(
            _layer_flops_from_params(spec, layer, 2), rel=1e-12)


def test_analytic_costs_sum_to_the_model():
    spec = PRESETS["mixtral-8x7b"]
    device = CLUSTERS["dgx-h100-80gb"]().device
    blocks = families.of(spec).analytic_costs(spec, 1, device, "bf16-mixed", 2)
    assert len(blocks) == spec.num_blocks
    assert sum(b.param_count for b in blocks) == families.of(spec).param_counts(spec)[0]
    one = blocks[1]
    f1, b1, _ = one.tp_split(1, False)
    f8, b8, _ = one.tp_split(8, True)
    assert f8 < f1 / 4 and b8 < b1 / 4        # split 8 ways, some of it not (router, norms)
    assert one.backward_s > 1.5 * one.forward_s


def test_tp_must_divide_kv_heads_and_every_ffn():
    llama, fam = PRESETS["llama3-70b"], families.of(PRESETS["llama3-70b"])
    assert fam.tp_problem(llama, 8, True) == ""
    assert "tp(16) must divide num_kv_heads(8)" in fam.tp_problem(llama, 16, False)
    moe = PRESETS["moe-tiny"]
    problem = families.of(moe).tp_problem(moe, 3, False)
    assert "num_kv_heads(2)" in problem
    odd = ModelSpec(**{**moe.to_dict(), "moe_ffn_hidden_size": 129})
    assert "moe_ffn_hidden_size(129)" in families.of(odd).tp_problem(odd, 2, False)


def test_tied_embeddings_refuse_pp_and_fsdp():
    tied = ModelSpec(**{**PRESETS["llama-tiny"].to_dict(), "tie_embeddings": True})
    assert "pp > 1" in rules.layout_problem(tied, Layout.make(pp=2, microbatch_size=1,
                                                             num_microbatches=2))
    assert "zero 3" in rules.layout_problem(tied, Layout.make(dp=2, zero=3, microbatch_size=1,
                                                             num_microbatches=1))
    assert rules.layout_problem(tied, Layout.make(dp=2, tp=2, microbatch_size=1,
                                                  num_microbatches=1)) == ""
    total, _ = families.of(tied).param_counts(tied)
    untied, _ = families.of(PRESETS["llama-tiny"]).param_counts(PRESETS["llama-tiny"])
    assert untied - total == tied.vocab_size * tied.hidden_size


def test_moe_layers_and_capacity():
    spec = ModelSpec("m", "moe", num_layers=8, hidden_size=64, num_heads=4, seq_len=100,
                     num_experts=8, experts_per_token=2, moe_first_dense_layers=1,
                     moe_layer_step=2, moe_capacity_factor=1.25)
    assert moe_layers(spec) == [1, 3, 5, 7]        # Qwen2-MoE: (i + 1) % step == 0
    assert not is_moe_layer(spec, 0)
    assert capacity(spec) == 32                    # ceil(1.25 * 100 * 2 / 8)


def test_activation_memory_splits_by_tp_sp_and_recompute():
    spec = PRESETS["llama3-8b"]
    fam = families.of(spec)
    sp_part, whole, split = fam.layer_activation(spec, 0)
    saved, output = 1000.0, 10.0
    total = sp_part + whole + split
    assert fam.activation_bytes(saved, output, "block", spec, 1, False, "none", 1) == saved
    at4 = fam.activation_bytes(saved, output, "block", spec, 4, False, "none", 1)
    assert at4 == pytest.approx(saved * (sp_part + whole + split / 4) / total)
    at4sp = fam.activation_bytes(saved, output, "block", spec, 4, True, "none", 1)
    assert at4sp == pytest.approx(saved * (sp_part / 4 + whole + split / 4) / total)
    assert fam.activation_bytes(saved, output, "block", spec, 4, True, "full", 1) == output / 4
    # per token: 2h norm inputs, 2h gathered inputs, q/k/v/out/copy, lse and 4f of SwiGLU
    assert (sp_part, whole, split) == (8192, 8192, 3 * 4096 + 2 * 1024 + 64 + 4 * 14336)


def test_powersgd_matrices_cover_the_layer():
    for name in ("llama-tiny", "moe-tiny"):
        spec = PRESETS[name]
        fam = families.of(spec)
        for layer in range(spec.num_layers):
            mats = fam.block_matrices("block", spec, 1, layer + 1)
            total, _ = fam.layer_params(spec, layer)
            assert sum(r * c for r, c in mats) == total - 2 * spec.hidden_size


def test_partial_gradients_of_a_moe_layer():
    spec = PRESETS["moe-tiny"]
    fam = families.of(spec)
    assert fam.partial_grad_params(spec, 0, False) == ()            # a dense layer, no sp
    assert fam.partial_grad_params(spec, 1, False) == (4 * 128, 128)    # router, shared gate
    assert fam.partial_grad_params(spec, 1, True) == (128, 128, 4 * 128, 128)
