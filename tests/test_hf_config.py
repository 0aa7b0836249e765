"""``--model hf:PATH/config.json``: real Hugging Face configs (tests/fixtures, written from the
published files) read into the family's spec with the published parameter counts; fields that
would change the cost are mapped or refused, never ignored."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from planner import families
from planner.errors import PlannerError
from planner.models import PRESETS, resolve_model
from planner.models.hf import load_hf_config

FIXTURES = "tests/fixtures"
# Published totals (and active per token): Llama 3 8B model card; Mixtral 8x7B (Jiang et al.
# 2024); Qwen1.5-MoE-A2.7B's release note: 14.3B total, 2.7B activated.
PUBLISHED = {"llama3-8b": (8.03e9, 8.03e9, 0.005e9), "mixtral-8x7b": (46.7e9, 12.9e9, 0.05e9),
             "qwen1.5-moe-a2.7b": (14.3e9, 2.7e9, 0.05e9)}


@pytest.mark.parametrize("name", PUBLISHED)
def test_fixture_parameter_counts(name):
    spec = resolve_model(f"hf:{FIXTURES}/{name}/config.json")
    total, active = families.of(spec).param_counts(spec)
    want_total, want_active, tol = PUBLISHED[name]
    assert abs(total - want_total) <= tol and abs(active - want_active) <= tol
    assert spec.name == name


def test_llama_config_is_the_preset():
    spec = resolve_model(f"hf:{FIXTURES}/llama3-8b/config.json")
    assert spec.fingerprint() == PRESETS["llama3-8b"].fingerprint()


def test_mixtral_and_qwen_moe_fields():
    mix = resolve_model(f"hf:{FIXTURES}/mixtral-8x7b/config.json")
    assert (mix.family, mix.num_experts, mix.experts_per_token, mix.moe_renormalize,
            mix.moe_aux_loss_coeff, mix.seq_len) == ("moe", 8, 2, True, 0.02, 32768)
    assert mix.fingerprint() == PRESETS["mixtral-8x7b"].fingerprint()
    qwen = resolve_model(f"hf:{FIXTURES}/qwen1.5-moe-a2.7b/config.json", seq_len=4096)
    assert (qwen.num_experts, qwen.experts_per_token, qwen.moe_ffn_hidden_size,
            qwen.shared_expert_ffn_hidden_size, qwen.shared_expert_gate, qwen.qkv_bias,
            qwen.moe_renormalize, qwen.seq_len) == (60, 4, 1408, 5632, True, True, False, 4096)


def _write(tmp_path, **fields):
    base = json.load(open(f"{FIXTURES}/llama3-8b/config.json"))
    base.update(fields)
    path = tmp_path / "m" / "config.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({k: v for k, v in base.items() if v != "DROP"}))
    return str(path)


QWEN3_0_6B = dict(model_type="qwen3", hidden_size=1024, intermediate_size=3072,
                  num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                  head_dim=128, vocab_size=151936, tie_word_embeddings=True,
                  max_position_embeddings=40960, rope_theta=1000000, attention_bias=False,
                  use_sliding_window=False, sliding_window=None, max_window_layers=28,
                  pretraining_tp="DROP", rope_scaling="DROP")


def test_qwen3_head_dim_qk_norm_and_tied_head(tmp_path):
    """Qwen3-0.6B: 16 heads of 128 on a 1024 residual, q/k norms, tied: 0.6B (0.44B without
    the embedding), as its model card says."""
    spec = load_hf_config(_write(tmp_path, **QWEN3_0_6B), seq_len=4096)
    assert (spec.head_dim, spec.qk_norm, spec.tie_embeddings) == (128, True, True)
    total, _ = families.of(spec).param_counts(spec)
    embedding = spec.vocab_size * spec.hidden_size
    assert round(total / 1e9, 1) == 0.6 and round((total - embedding) / 1e9, 2) == 0.44


@pytest.mark.parametrize("fields, match", [
    (dict(foo_scale=2.0), r"field 'foo_scale' \(2.0\) is not understood"),
    (dict(model_type="deepseek_v3"), r"field 'model_type': 'deepseek_v3' is not one of"),
    (dict(hidden_act="gelu"), r"field 'hidden_act' \('gelu'\): only SwiGLU"),
    (dict(attention_bias=True), "field 'attention_bias'"),
    (dict(model_type="mistral", sliding_window=4096, max_position_embeddings=32768),
     r"field 'sliding_window' \(4096\): sliding-window attention narrower than seq_len 32768"),
    (dict(model_type="mistral", max_position_embeddings=32768),   # the class default: 4096
     r"field 'sliding_window' \(4096\): sliding-window"),
    (dict(num_hidden_layers="DROP"), "missing required field 'num_hidden_layers'"),
    (dict(model_type="qwen2_moe", num_experts=8, num_experts_per_tok=2,
          moe_intermediate_size=64, mlp_only_layers=[3]), r"field 'mlp_only_layers' \(\[3\]\)"),
])
def test_refused_fields_name_the_field(tmp_path, fields, match):
    with pytest.raises(PlannerError, match=match):
        load_hf_config(_write(tmp_path, **fields))


def test_seq_len_against_max_positions(tmp_path):
    path = f"{FIXTURES}/llama3-8b/config.json"
    assert load_hf_config(path, seq_len=2048).seq_len == 2048
    with pytest.raises(PlannerError, match=r"seq_len 16384 exceeds field "
                                           r"'max_position_embeddings' \(8192\)"):
        load_hf_config(path, seq_len=16384)
    # a mistral whose window covers the sequence is plain causal attention
    ok = _write(tmp_path, model_type="mistral", sliding_window=4096, max_position_embeddings=32768)
    assert load_hf_config(ok, seq_len=4096).seq_len == 4096


def test_qwen_moe_dense_first_layers(tmp_path):
    path = _write(tmp_path, model_type="qwen2_moe", num_experts=8, num_experts_per_tok=2,
                  moe_intermediate_size=64, mlp_only_layers=[0, 1], decoder_sparse_step=1,
                  shared_expert_intermediate_size=0)
    spec = load_hf_config(path, seq_len=128)
    assert (spec.moe_first_dense_layers, spec.shared_expert_ffn_hidden_size) == (2, 0)


@pytest.mark.parametrize("name", ["llama3-8b", "mixtral-8x7b"])
def test_plan_prints_parameters_and_memory(name, tmp_path):
    """The issue's done-when: plan 64 H100 for global batch 256 from a Hugging Face config."""
    out = subprocess.run(
        [sys.executable, "-m", "planner.cli", "plan", "--model",
         f"hf:{FIXTURES}/{name}/config.json", "--cluster", "dgx-h100-80gb", "--gpus", "64",
         "--global-batch", "256", "--seq-len", "4096", "--out", str(tmp_path / "p.json"),
         "--format", "json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    total, active = families.of(resolve_model(f"hf:{FIXTURES}/{name}/config.json")
                                ).param_counts(resolve_model(f"hf:{FIXTURES}/{name}/config.json"))
    assert (data["parameters"], data["active_parameters"], data["seq_len"]) == (total, active,
                                                                               4096)
    assert data["fits"] and all(0 < m <= data["device_memory_bytes"]
                                for m in data["memory_per_rank_bytes"])


def test_cli_refuses_an_unknown_field_in_one_line(tmp_path):
    from test_cli_errors import assert_user_error, planner
    path = _write(tmp_path, moe_layer_freq=2)
    assert_user_error(planner("plan", "--model", f"hf:{path}", "--global-batch", "8",
                              "--cluster", "dgx-h100-80gb"), "config.json",
                      "field 'moe_layer_freq' (2) is not understood")
