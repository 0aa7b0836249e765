"""The Llama family: token embedding, pre-norm decoder layers (RMSNorm; grouped-query attention
with rotary position embedding; SwiGLU MLP of ``ffn_hidden_size``), final RMSNorm and an LM
head, tied to the embedding or not (Touvron et al. 2023, arXiv 2302.13971; Llama 3: Dubey et
al. 2024, arXiv 2407.21783, Table 3). Mistral and Qwen2/Qwen3 dense models are this shape too
(``qkv_bias``: Qwen2's q/k/v biases; ``qk_norm``: Qwen3's per-head RMSNorm of q and k).

The planner's side of the family: validation, parameter and FLOP counts, tensor-parallel rules
(Megatron's column/row split; tp must divide ``num_kv_heads``, as Megatron-LM requires of
``num_query_groups``, so every rank holds whole K/V heads and none is replicated), activation
memory under tp/sp/recompute, PowerSGD's matrices. Kernels for the roofline are in ``costs``,
the torch model and its tensor-parallel plan in ``model``.

Activation memory (elements per token a layer keeps for its backward), derived from what the
torch model saves with fused GPU kernels (FlashAttention-2 via ``scaled_dot_product_attention``,
fused RMSNorm); the SwiGLU part is checked against saved-tensor hooks in
``tests/test_moe_model.py``:

- split by sequence parallelism (the residual stream): the two RMSNorm inputs, 2h;
- whole on every rank (the inputs of the column-parallel matmuls, gathered under sp): 2h;
- split by tp: q, k, v as attention saves them (a*d + 2*kv*d), its output and the contiguous
  copy the output projection reads (2*a*d), its log-sum-exp (a floats: 2a at 16 bits), the
  SwiGLU's gate and up outputs, SiLU output and product (4f); with ``qk_norm`` the
  un-normalised q and k (a*d + kv*d).

Unlike Korthikanti et al. 2022 (the GPT family's table) there is no s x s attention matrix:
flash attention keeps only the log-sum-exp, so selective recompute (which drops that matrix)
has nothing to save and the family does not offer it. Full recompute keeps the layer input.
"""
from __future__ import annotations

import math

from planner.errors import PlannerError
from planner.families import megatron
from planner.families.base import Family

FIELDS = ("num_kv_heads", "head_dim", "tie_embeddings", "rope_theta", "qkv_bias", "qk_norm")


def kv_heads(spec) -> int:
    return spec.num_kv_heads or spec.num_heads


def head_dim(spec) -> int:
    return spec.head_dim or spec.hidden_size // spec.num_heads


def attention_params(spec) -> int:
    """q, k, v, o projections (+ q/k/v biases, + q/k norms)."""
    h, a, kv, d = spec.hidden_size, spec.num_heads, kv_heads(spec), head_dim(spec)
    n = 2 * h * a * d + 2 * h * kv * d
    if spec.qkv_bias:
        n += a * d + 2 * kv * d
    if spec.qk_norm:
        n += 2 * d
    return n


def swiglu_params(h: int, f: int) -> int:
    """Gate, up (h -> f) and down (f -> h) projections, no biases."""
    return 3 * h * f


def attention_forward_flops(spec, b: int) -> float:
    """Forward FLOPs of attention: 2 per multiply-add of the q, k, v, o projections (k and v
    at kv heads) and 2*b*s^2*a*d for QK^T and AV under the causal mask (the unmasked half
    causal kernels compute; the GPT family's ``block_forward_flops`` says why not 4)."""
    s, h, a, kv, d = spec.seq_len, spec.hidden_size, spec.num_heads, kv_heads(spec), \
        head_dim(spec)
    t = b * s
    return 2.0 * t * h * (2 * a * d + 2 * kv * d) + 2.0 * b * s * s * a * d


def attention_activation(spec) -> tuple[float, float, float]:
    """(split by sp, whole, split by tp) elements per token of the attention half (module
    docstring)."""
    h, a, kv, d = spec.hidden_size, spec.num_heads, kv_heads(spec), head_dim(spec)
    split = 3 * a * d + 2 * kv * d + 2 * a
    if spec.qk_norm:
        split += a * d + kv * d
    return h, h, split


def swiglu_activation(spec, f: int) -> tuple[float, float, float]:
    """(split by sp, whole, split by tp) elements per token of a SwiGLU MLP and its norm."""
    h = spec.hidden_size
    return h, h, 4 * f


class LlamaFamily(Family):
    name = "llama"
    context_parallel = True
    has_sequence = True
    selective_recompute = False
    fields = FIELDS

    # -- the spec ------------------------------------------------------------------------------
    def validate(self, spec) -> None:
        a, kv = spec.num_heads, kv_heads(spec)
        if a % kv:
            raise PlannerError(f"num_kv_heads({kv}) must divide num_heads({a}): "
                               f"{a} % {kv} = {a % kv}")
        if not spec.head_dim and spec.hidden_size % a:
            raise PlannerError(f"hidden_size({spec.hidden_size}) % num_heads({a}) = "
                               f"{spec.hidden_size % a}, must be 0 (or give head_dim)")
        if head_dim(spec) % 2:
            raise PlannerError(f"head_dim({head_dim(spec)}) must be even: rotary embedding "
                               "rotates pairs of dimensions")
        if not math.isfinite(spec.rope_theta) or spec.rope_theta <= 0:
            raise PlannerError(f"rope_theta must be a finite number > 0, got {spec.rope_theta}")
        for name in ("num_kv_heads", "head_dim"):
            if getattr(spec, name) < 0:
                raise PlannerError(f"{name} must be >= 0 (0: the default), got "
                                   f"{getattr(spec, name)}")

    def kv_elements_per_token(self, spec) -> int:
        return 2 * kv_heads(spec) * head_dim(spec)

    def layer_variant(self, spec, layer: int) -> str:
        """Layers of one variant have the same costs ("dense" here; MoE adds "moe")."""
        return "dense"

    def layer_params(self, spec, layer: int) -> tuple[int, int]:
        """(total, active per token) parameters of one decoder layer."""
        n = attention_params(spec) + 2 * spec.hidden_size \
            + swiglu_params(spec.hidden_size, spec.ffn_hidden_size)
        return n, n

    def param_counts(self, spec):
        h, v = spec.hidden_size, spec.vocab_size
        ends = v * h + h + (0 if spec.tie_embeddings else v * h)
        layers = [self.layer_params(spec, i) for i in range(spec.num_layers)]
        return ends + sum(t for t, _ in layers), ends + sum(a for _, a in layers)

    def layer_forward_flops(self, spec, layer: int, b: int) -> float:
        """Model FLOPs of one layer's forward (MFU counts these)."""
        t = b * spec.seq_len
        return attention_forward_flops(spec, b) + 6.0 * t * spec.hidden_size * spec.ffn_hidden_size

    def layer_activation(self, spec, layer: int) -> tuple[float, float, float]:
        """(split by sp, whole, split by tp) elements per token one layer keeps."""
        parts = zip(attention_activation(spec), swiglu_activation(spec, spec.ffn_hidden_size))
        return tuple(x + y for x, y in parts)

    def layout_problem(self, spec, layout) -> str:
        if not spec.tie_embeddings:
            return ""
        if layout.pp > 1:
            return ("tie_embeddings with pp > 1 puts the tied weight on the first and the last "
                    "stage; the executor has no embedding-group all-reduce (Megatron's) to "
                    "keep them equal: use pp 1 or an untied head")
        if layout.dp > 1 and layout.data.zero >= 2:
            return (f"tie_embeddings with zero {layout.data.zero}: FSDP2 shards embedding and "
                    "head as separate units, and a tied weight must live in one: use zero 0/1")
        return ""

    # -- tensor parallelism ----------------------------------------------------------------------
    def tp_divisors(self, spec) -> tuple[tuple[str, int], ...]:
        """The sizes tp must divide: whole K/V heads per rank (hence whole query heads), whole
        FFN columns."""
        return (("num_kv_heads", kv_heads(spec)), ("ffn_hidden_size", spec.ffn_hidden_size))

    def tp_problem(self, spec, tp: int, sequence_parallel: bool) -> str:
        return megatron.tp_divisibility_problem(spec, tp, sequence_parallel,
                                                self.tp_divisors(spec))

    def tp_collectives(self, kind: str, sequence_parallel: bool):
        return megatron.block_collectives(kind, sequence_parallel)

    def tp_splits(self, kind: str) -> bool:
        return kind == "block"

    def partial_grad_params(self, spec, layer, sequence_parallel):
        """The two RMSNorm weights under sequence parallelism (each rank normalises its slice
        of the sequence); Qwen3's q/k norm weights always (each rank normalises its heads)."""
        out = (spec.hidden_size,) * 2 if sequence_parallel else ()
        if spec.qk_norm:
            out += (head_dim(spec),) * 2
        return out

    # -- memory --------------------------------------------------------------------------------
    def activation_bytes(self, saved, output, kind, spec, tp, sequence_parallel, recompute,
                         block=None):
        """``saved`` (measured, or the analytic sum of the module docstring's parts) divided
        among the parts in their proportions, each split as its part says."""
        if kind != "block":
            return saved
        rest = tp if sequence_parallel else 1
        if recompute == "full":
            return output / rest
        sp_part, whole, split = self.layer_activation(spec, _layer(block))
        return saved * (sp_part / rest + whole + split / tp) / (sp_part + whole + split)

    def recompute_working_bytes(self, saved, output, kind, spec, tp, sequence_parallel,
                                recompute, block=None):
        if kind != "block" or recompute != "full":
            return 0.0
        return self.activation_bytes(saved, output, kind, spec, tp, sequence_parallel, "none",
                                     block)

    # -- compute -------------------------------------------------------------------------------
    def block_matrices(self, kind, spec, tp, block=None):
        """q (a*d/t x h), k and v (kv*d/t x h), o (h x a*d/t), and the MLP's matrices; the
        embedding's vocab x h; the head's vocab x h unless tied to the embedding."""
        h, t, v = spec.hidden_size, tp, spec.vocab_size
        if kind == "block":
            a, kv, d = spec.num_heads, kv_heads(spec), head_dim(spec)
            return [(a * d // t, h), (kv * d // t, h), (kv * d // t, h), (h, a * d // t)] \
                + self.mlp_matrices(spec, _layer(block), t)
        if kind == "embedding":
            return [(v, h)]
        return [] if spec.tie_embeddings else [(v, h)]

    def mlp_matrices(self, spec, layer: int, tp: int) -> list[tuple[int, int]]:
        h, f = spec.hidden_size, spec.ffn_hidden_size // tp
        return [(f, h), (f, h), (h, f)]

    def mlp_ops(self, spec, sh, layer: int):
        """The roofline kernels of layer ``layer``'s MLP half (``costs``)."""
        from planner.families.llama.costs import dense_mlp_ops
        return dense_mlp_ops(spec, sh, layer)

    def analytic_costs(self, spec, microbatch_size, device, dtype, element_bytes,
                       device_model=None, implementation="executor"):
        from planner.families.llama.costs import analytic_costs
        return analytic_costs(self, spec, microbatch_size, device, dtype, element_bytes,
                              device_model, implementation)


def _layer(block) -> int:
    """Decoder layer index of block ``block`` (the embedding is block 0); layer 0 when the
    caller does not say (every layer of a dense model is the same)."""
    return 0 if block is None else max(block - 1, 0)
