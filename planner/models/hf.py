"""``--model hf:PATH/config.json``: a Hugging Face ``config.json`` as a ModelSpec, no
``transformers`` needed (plain JSON; nothing is imported or executed).

Read: ``model_type`` llama, mistral, qwen2, qwen3 (family "llama") and mixtral, qwen2_moe,
qwen3_moe (family "moe"). Field meanings and the defaults of fields a file leaves out follow
transformers' config classes (``configuration_<type>.py``, version 5); a field that changes what
the model costs is mapped onto the spec or refused. Every key must be known: mapped (``MAPPED``),
checked against the values we model (``_check``), or in ``HARMLESS`` (it changes neither the
architecture's cost nor its shape: token ids, init, epsilon, caching, dtype of the checkpoint,
rope frequency scaling, router jitter, whether HF returns router logits). Anything else is an
error naming the field, so that a config we do not understand is never planned as something
else. ``seq_len`` is ``max_position_embeddings`` unless given (and may not exceed it).

What the torch model built from such a spec leaves out: rope scaling (Llama 3.1's "llama3"
frequencies, YaRN) and router jitter; neither changes a cost.
"""
from __future__ import annotations

import os

from planner import serde
from planner.errors import PlannerError
from planner.specs import ModelSpec

FAMILY = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama",
          "mixtral": "moe", "qwen2_moe": "moe", "qwen3_moe": "moe"}
MAPPED = {"model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size",
          "max_position_embeddings", "tie_word_embeddings", "rope_theta", "rope_parameters",
          "num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
          "shared_expert_intermediate_size", "decoder_sparse_step", "mlp_only_layers",
          "norm_topk_prob", "router_aux_loss_coef", "qkv_bias"}
CHECKED = {"hidden_act", "attention_bias", "mlp_bias", "attention_dropout", "pretraining_tp",
           "sliding_window", "use_sliding_window", "max_window_layers", "layer_types",
           "rope_scaling"}
HARMLESS = {"architectures", "bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype",
            "dtype", "transformers_version", "initializer_range", "rms_norm_eps", "use_cache",
            "output_router_logits", "router_jitter_noise", "_name_or_path", "return_dict",
            "output_hidden_states", "output_attentions", "use_return_dict"}
# Defaults of the class when a file leaves a field out (transformers 5): K/V heads (None: as
# many as query heads), sliding window (None: off), tied head, renormalised top-k.
DEFAULTS = {
    "llama": {"num_key_value_heads": None, "sliding_window": None, "norm_topk_prob": True},
    "mistral": {"num_key_value_heads": 8, "sliding_window": 4096, "norm_topk_prob": True},
    "mixtral": {"num_key_value_heads": 8, "sliding_window": None, "norm_topk_prob": True,
                "router_aux_loss_coef": 0.001},
    "qwen2": {"num_key_value_heads": 32, "sliding_window": None},
    "qwen3": {"num_key_value_heads": 32, "sliding_window": None, "head_dim": 128},
    "qwen2_moe": {"num_key_value_heads": 16, "sliding_window": None, "norm_topk_prob": False,
                  "router_aux_loss_coef": 0.001, "decoder_sparse_step": 1,
                  "shared_expert_intermediate_size": 5632},
    "qwen3_moe": {"num_key_value_heads": 4, "sliding_window": None, "norm_topk_prob": False,
                  "router_aux_loss_coef": 0.001, "decoder_sparse_step": 1},
}
REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "vocab_size", "max_position_embeddings")


def load_hf_config(path: str, seq_len: int | None = None) -> ModelSpec:
    """The ModelSpec of a Hugging Face ``config.json`` (module docstring), or a one-line
    PlannerError naming the file and the field."""
    data = serde.read_json(path)
    if not isinstance(data, dict):
        raise PlannerError(f"{path}: expected a JSON object (a Hugging Face config.json)")
    mtype = data.get("model_type")
    if mtype not in FAMILY:
        raise PlannerError(f"{path}: field 'model_type': {mtype!r} is not one of: "
                           f"{', '.join(FAMILY)}")
    for key in data:
        if key not in MAPPED | CHECKED | HARMLESS:
            raise PlannerError(f"{path}: field '{key}' ({data[key]!r}) is not understood: it "
                               f"may change the model's cost, so it is not ignored")
    for key in REQUIRED:
        if key not in data:
            raise PlannerError(f"{path}: missing required field '{key}'")

    def get(key, default=None):
        return data.get(key, DEFAULTS[mtype].get(key, default))

    max_pos = data["max_position_embeddings"]
    seq = max_pos if seq_len is None else seq_len
    if isinstance(max_pos, int) and seq > max_pos:
        raise PlannerError(f"{path}: seq_len {seq} exceeds field 'max_position_embeddings' "
                           f"({max_pos})")
    _check(path, data, mtype, get, seq)
    heads = data["num_attention_heads"]
    fields = dict(name=_name(path), family=FAMILY[mtype], num_layers=data["num_hidden_layers"],
                  hidden_size=data["hidden_size"], num_heads=heads, seq_len=seq,
                  vocab_size=data["vocab_size"], ffn_hidden_size=data["intermediate_size"],
                  num_kv_heads=get("num_key_value_heads") or heads,
                  tie_embeddings=bool(data.get("tie_word_embeddings", False)),
                  rope_theta=float(_rope_theta(path, data)),
                  qkv_bias=bool(get("qkv_bias", mtype in ("qwen2", "qwen2_moe"))),
                  qk_norm=mtype in ("qwen3", "qwen3_moe"))
    if fields["num_kv_heads"] == heads:
        fields["num_kv_heads"] = 0
    d = get("head_dim")
    if d and d * heads != data["hidden_size"]:
        fields["head_dim"] = d
    if FAMILY[mtype] == "moe":
        fields.update(_moe_fields(path, data, mtype, get))
    return ModelSpec.from_dict(fields, ctx=path)


def _check(path, data, mtype, get, seq: int) -> None:
    """Fields allowed only at the values the family models."""
    def refuse(key, why, value=None):
        shown = data.get(key) if value is None else value
        raise PlannerError(f"{path}: field '{key}' ({shown!r}): {why}")
    if data.get("hidden_act", "silu") != "silu":
        refuse("hidden_act", "only SwiGLU (silu) MLPs are modelled")
    for key in ("attention_bias", "mlp_bias"):
        if data.get(key):
            refuse(key, "biases on the output/MLP projections are not modelled")
    if data.get("attention_dropout", 0.0):
        refuse("attention_dropout", "attention dropout is not modelled (must be 0)")
    if data.get("pretraining_tp", 1) != 1:
        refuse("pretraining_tp", "only 1 (Llama 2's sliced matmuls) is modelled")
    window = get("sliding_window")
    if mtype.startswith("qwen") and not data.get("use_sliding_window", False):
        window = None
    if window is not None and window < seq:
        refuse("sliding_window", f"sliding-window attention narrower than seq_len {seq} is "
                                 "not modelled (pass a seq_len <= the window)", window)
    # ``layer_types`` naming sliding layers needs no check of its own: with a window narrower
    # than seq_len it is refused above, and without one those layers attend fully
    scaling = data.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, dict):
        refuse("rope_scaling", "expected an object or null")


def _rope_theta(path, data) -> float:
    params = data.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:
        theta = params["rope_theta"]
    else:
        theta = data.get("rope_theta", 10000.0)
    if isinstance(theta, bool) or not isinstance(theta, (int, float)):
        raise PlannerError(f"{path}: field 'rope_theta': expected a number, got {theta!r}")
    return theta


def _moe_fields(path, data, mtype, get) -> dict:
    experts = data.get("num_local_experts") if mtype == "mixtral" else data.get("num_experts")
    key = "num_local_experts" if mtype == "mixtral" else "num_experts"
    if not experts:
        raise PlannerError(f"{path}: missing required field '{key}' (a MoE model needs experts)")
    if "num_experts_per_tok" not in data:
        raise PlannerError(f"{path}: missing required field 'num_experts_per_tok'")
    out = dict(num_experts=experts, experts_per_token=data["num_experts_per_tok"],
               moe_renormalize=bool(get("norm_topk_prob")),
               moe_aux_loss_coeff=float(get("router_aux_loss_coef", 0.0)))
    if mtype != "mixtral":
        out["moe_ffn_hidden_size"] = data.get("moe_intermediate_size", 0)
        if not out["moe_ffn_hidden_size"]:
            raise PlannerError(f"{path}: missing required field 'moe_intermediate_size'")
        out["moe_layer_step"] = get("decoder_sparse_step")
        dense = list(data.get("mlp_only_layers") or [])
        if dense != list(range(len(dense))):
            raise PlannerError(f"{path}: field 'mlp_only_layers' ({dense}): only the first k "
                               "layers can be dense (0, 1, ..., k-1)")
        out["moe_first_dense_layers"] = len(dense)
    if mtype == "qwen2_moe" and get("shared_expert_intermediate_size"):
        out["shared_expert_ffn_hidden_size"] = get("shared_expert_intermediate_size")
        out["shared_expert_gate"] = True
    return out


def _name(path: str) -> str:
    """The model's directory name (config.json sits in it), else the file name."""
    full = os.path.abspath(path)
    parent = os.path.basename(os.path.dirname(full))
    if os.path.basename(full) == "config.json" and parent:
        return parent
    return os.path.splitext(os.path.basename(full))[0]
