"""Llama in torch, and its tensor-parallel plan (Megatron-LM, Shoeybi et al. 2019, sec. 3).

Pre-norm decoder layers: RMSNorm (Zhang & Sennrich 2019), attention with ``num_kv_heads`` K/V
heads (grouped-query, Ainslie et al. 2023: ``scaled_dot_product_attention(enable_gqa=True)``,
K/V never repeated in memory), rotary position embedding on q and k (Su et al. 2021; the
rotate-half form of Hugging Face's Llama, angles computed in float64 each forward), optional
q/k/v biases (Qwen2) and per-head q/k RMSNorm (Qwen3); SwiGLU MLP (Shazeer 2020); final RMSNorm
and an LM head that is its own matrix or the embedding's (``tie_embeddings``: the head reads the
embedding's weight, held by reference so the parameter has one name).

Tensor parallel plan (DTensor ``parallelize_module``), per layer: q, k, v and the MLP's gate and
up split by output features (``ColwiseParallel``: a/tp query heads, kv/tp K/V heads -- tp must
divide ``num_kv_heads`` -- and ffn/tp columns per rank), o and down by input features
(``RowwiseParallel``: partial sums all-reduced): two all-reduces per layer forward and two in
backward, as GPT. Embedding, norms and head stay replicated. Sequence parallel as GPT's
(``planner.families.gpt.model``): norms on the rank's slice of the sequence, attention and MLP
inputs all-gathered, outputs reduce-scattered. Weights replicated over tp whose gradient each
rank computes only a share of (q/k norms, a MoE router) are Replicate DTensors read through
``partial_local``: their gradient comes back Partial and is summed over tp once per step
(``executor.parallel.tp.reduce_partial_grads``). A MoE layer's MLP is ``planner.families.moe.
model``'s; this module builds either kind of layer from the family's ``layer_variant``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, Partial, Replicate

from planner import families
from planner.families.gpt.model import GptModel
from planner.families.llama import head_dim, kv_heads
from planner.families.ring_attention import ring_attention

EPS = 1e-5


def partial_local(w):
    """The local value of a weight replicated over tp whose gradient on each rank is a partial
    sum (Replicate DTensor): the gradient comes back Partial, to be summed over tp."""
    if isinstance(w, DTensor):
        return w.to_local(grad_placements=[Partial()] * w.device_mesh.ndim)
    return w


def replicate_params(module: nn.Module, tp_mesh) -> None:
    """Make ``module``'s own parameters Replicate DTensors over ``tp_mesh`` (read through
    ``partial_local``)."""
    for name, p in list(module.named_parameters(recurse=False)):
        module.register_parameter(name, nn.Parameter(
            DTensor.from_local(p.data, tp_mesh, [Replicate()], run_check=False)))


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        w = self.weight if isinstance(x, DTensor) else partial_local(self.weight)
        return F.rms_norm(x, (x.shape[-1],), w, EPS)


def rotary(x, theta: float, positions=None):
    """Rotate-half rotary embedding of ``x`` [b, heads, s, d] (Su et al. 2021, eq. 34) at
    ``positions`` (default 0..s-1; under context parallelism the tokens' global positions)."""
    s, d = x.shape[-2], x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=x.device) / d)
    pos = (torch.arange(s, device=x.device) if positions is None else positions.to(x.device))
    ang = pos.to(torch.float64)[:, None] * inv[None]
    ang = torch.cat((ang, ang), dim=-1)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    half = d // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, spec):
        super().__init__()
        h, a, kv, d = spec.hidden_size, spec.num_heads, kv_heads(spec), head_dim(spec)
        self.head_dim, self.theta = d, spec.rope_theta
        self.q = nn.Linear(h, a * d, bias=spec.qkv_bias)
        self.k = nn.Linear(h, kv * d, bias=spec.qkv_bias)
        self.v = nn.Linear(h, kv * d, bias=spec.qkv_bias)
        self.o = nn.Linear(a * d, h, bias=False)
        self.q_norm = RMSNorm(d) if spec.qk_norm else None
        self.k_norm = RMSNorm(d) if spec.qk_norm else None
        self.cp = None          # a ring_attention.CpContext under context parallelism

    def forward(self, x):
        b, s = x.shape[0], x.shape[1]
        # -1 heads: under tensor parallelism each rank holds a/tp and kv/tp of them.
        q, k, v = (t(x).view(b, s, -1, self.head_dim) for t in (self.q, self.k, self.v))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        pos = self.cp.positions if self.cp is not None else None
        q, k = rotary(q, self.theta, pos), rotary(k, self.theta, pos)
        if self.cp is not None:
            y = ring_attention(q, k, v, self.cp)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o(y.transpose(1, 2).reshape(b, s, -1))


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.gate = nn.Linear(hidden, ffn, bias=False)
        self.up = nn.Linear(hidden, ffn, bias=False)
        self.down = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class DecoderLayer(nn.Module):
    kind = "block"

    def __init__(self, spec, mlp: nn.Module):
        super().__init__()
        self.attn_norm = RMSNorm(spec.hidden_size)
        self.attn = Attention(spec)
        self.mlp_norm = RMSNorm(spec.hidden_size)
        self.mlp = mlp

    def forward(self, x):
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class Embedding(nn.Module):
    kind = "embedding"

    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, hidden)

    def forward(self, idx):
        return self.tok(idx)


class Head(nn.Module):
    kind = "head"

    def __init__(self, hidden: int, vocab: int, tied: Embedding | None = None):
        super().__init__()
        self.norm = RMSNorm(hidden)
        self.out = None if tied is not None else nn.Linear(hidden, vocab, bias=False)
        self._tied = [tied] if tied is not None else []     # a list: not a submodule

    def forward(self, x):
        x = self.norm(x)
        return F.linear(x, self._tied[0].tok.weight) if self._tied else self.out(x)


def build(spec) -> GptModel:
    """Embedding, ``num_layers`` decoder layers (MLP per the family: dense SwiGLU, or MoE),
    head; every rank builds the same model from the same seed."""
    family = families.of(spec)
    emb = Embedding(spec.vocab_size, spec.hidden_size)
    layers = [DecoderLayer(spec, make_mlp(spec, family, i)) for i in range(spec.num_layers)]
    head = Head(spec.hidden_size, spec.vocab_size, emb if spec.tie_embeddings else None)
    model = GptModel(spec, [emb, *layers, head])
    init_weights(model, spec.num_layers)
    return model


def make_mlp(spec, family, layer: int) -> nn.Module:
    if family.layer_variant(spec, layer) == "moe":
        from planner.families.moe.model import MoE
        return MoE(spec)
    return SwiGLU(spec.hidden_size, spec.ffn_hidden_size)


RESIDUAL_OUT = ("o.weight", "down.weight", "w_down")


def init_weights(module: nn.Module, num_layers: int) -> None:
    """N(0, 0.02) matrices, the residual branches' last projections scaled by 1/sqrt(2L)
    (GPT-2's scheme, as the GPT family); norms 1, biases 0."""
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            scaled = name.endswith(RESIDUAL_OUT)
            nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * num_layers) if scaled else 0.02)
        elif name.endswith("bias"):
            nn.init.zeros_(p)


def layer_plan(layer: DecoderLayer, sequence_parallel: bool) -> dict:
    """The ``parallelize_module`` plan of one layer (module docstring)."""
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput,
                                                   RowwiseParallel, SequenceParallel)
    entry = (Shard(1),) if sequence_parallel else (Replicate(),)
    gather = dict(input_layouts=entry, desired_input_layouts=(Replicate(),),
                  use_local_output=False)
    out = dict(output_layouts=Shard(1)) if sequence_parallel else {}
    plan = {"attn": PrepareModuleInput(**gather), "attn.q": ColwiseParallel(),
            "attn.k": ColwiseParallel(), "attn.v": ColwiseParallel(),
            "attn.o": RowwiseParallel(**out)}
    if isinstance(layer.mlp, SwiGLU):
        plan.update({"mlp": PrepareModuleInput(**gather), "mlp.gate": ColwiseParallel(),
                     "mlp.up": ColwiseParallel(), "mlp.down": RowwiseParallel(**out)})
    if sequence_parallel:
        plan.update({"attn_norm": SequenceParallel(), "mlp_norm": SequenceParallel()})
    return plan


def apply_tp(model, tp_mesh, sequence_parallel: bool) -> None:
    """Shard the decoder layers of ``model`` in place over ``tp_mesh``."""
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import PrepareModuleInput, parallelize_module
    layers = [b for b in model.blocks if getattr(b, "kind", "") == "block"]
    for layer in layers:
        parallelize_module(layer, tp_mesh, layer_plan(layer, sequence_parallel))
        if layer.attn.q_norm is not None:
            replicate_params(layer.attn.q_norm, tp_mesh)
            replicate_params(layer.attn.k_norm, tp_mesh)
        if not isinstance(layer.mlp, SwiGLU):
            layer.mlp.apply_tp(tp_mesh, sequence_parallel)
    if sequence_parallel:
        parallelize_module(layers[0], tp_mesh, PrepareModuleInput(
            input_layouts=(Replicate(),), desired_input_layouts=(Shard(1),),
            use_local_output=True))
        parallelize_module(model.blocks[len(model.blocks) - 1], tp_mesh, PrepareModuleInput(
            input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
            use_local_output=True))


def apply_cp(model, ctx) -> None:
    """Context parallelism: every layer's attention runs as a ring over ``ctx``
    (``planner.families.ring_attention``) with rotary angles at the tokens' global positions;
    MoE layers route with the whole sequence's choices (``MoE.cp``)."""
    for layer in (b for b in model.blocks if getattr(b, "kind", "") == "block"):
        layer.attn.cp = ctx
        if not isinstance(layer.mlp, SwiGLU):
            layer.mlp.cp = ctx
