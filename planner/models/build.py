"""Build the torch models of the zoo. Every model is a sequence of blocks.

A zoo model exposes ``blocks`` (an ``nn.ModuleList`` applied in order, so a pipeline can cut it
at any block boundary), ``synthetic_batch(batch_size, generator)`` returning ``(inputs,
targets)`` and ``loss(outputs, targets)``. A user's ``package.module:callable`` is imported only
when the command line names it and must keep the contract of ``planner.models.custom``.

The GPT follows nanoGPT/GPT-2 (pre-norm, GELU MLP, learned positions, untied head) with separate
q/k/v projections so Megatron column splits shard whole heads, and attention that reshapes with
``-1`` heads so the same code runs on a tensor-parallel shard.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from planner.models.custom import build_custom
from planner.specs import ModelSpec


class Embedding(nn.Module):
    kind = "embedding"

    def __init__(self, vocab, seq, hidden):
        super().__init__()
        self.tok = nn.Embedding(vocab, hidden)
        self.pos = nn.Embedding(seq, hidden)

    def forward(self, idx):
        positions = torch.arange(idx.shape[1], device=idx.device)
        return self.tok(idx) + self.pos(positions)


class Attention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.head_dim = hidden // heads
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.recompute_core = False   # "selective" recompute: Korthikanti et al. 2022, sec. 4

    def _core(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def forward(self, x):
        b, s, _ = x.shape
        # -1 heads: under tensor parallelism each rank holds heads / tp of them.
        q, k, v = (t(x).view(b, s, -1, self.head_dim).transpose(1, 2)
                   for t in (self.q, self.k, self.v))
        if self.recompute_core and torch.is_grad_enabled():
            y = checkpoint(self._core, q, k, v, use_reentrant=False)
        else:
            y = self._core(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    def __init__(self, hidden, ffn):
        super().__init__()
        self.fc = nn.Linear(hidden, ffn)
        self.proj = nn.Linear(ffn, hidden)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class TransformerBlock(nn.Module):
    kind = "block"

    def __init__(self, hidden, heads, ffn):
        super().__init__()
        self.ln1 = nn.LayerNorm(hidden)
        self.attn = Attention(hidden, heads)
        self.ln2 = nn.LayerNorm(hidden)
        self.mlp = MLP(hidden, ffn)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Head(nn.Module):
    kind = "head"

    def __init__(self, hidden, vocab):
        super().__init__()
        self.ln = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, vocab, bias=False)

    def forward(self, x):
        return self.out(self.ln(x))


class ResidualMLPBlock(nn.Module):
    kind = "block"

    def __init__(self, hidden, ffn):
        super().__init__()
        self.ln = nn.LayerNorm(hidden)
        self.mlp = MLP(hidden, ffn)

    def forward(self, x):
        return x + self.mlp(self.ln(x))


class InputProjection(nn.Module):
    kind = "embedding"

    def __init__(self, hidden):
        super().__init__()
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x):
        return self.proj(x)


class SequentialModel(nn.Module):
    """Blocks applied in order plus a synthetic batch and a loss: the zoo's one model shape."""

    def __init__(self, spec: ModelSpec, blocks):
        super().__init__()
        self.spec = spec
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x

    def synthetic_batch(self, batch_size: int, generator: torch.Generator):
        s = self.spec
        if s.family == "gpt":
            tokens = torch.randint(0, s.vocab_size, (batch_size, s.seq_len + 1),
                                   generator=generator)
            return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        x = torch.randn(batch_size, s.hidden_size, generator=generator)
        return x, torch.randint(0, s.vocab_size, (batch_size,), generator=generator)

    def loss(self, outputs, targets):
        logits = outputs.reshape(-1, outputs.shape[-1])
        # Half precision is upcast for a stable softmax; float64 stays float64 (exactness tests).
        if logits.dtype != torch.float64:
            logits = logits.float()
        return F.cross_entropy(logits, targets.reshape(-1))


def _init_gpt(module: nn.Module, num_layers: int):
    """GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2L)."""
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            std = 0.02 / math.sqrt(2 * num_layers) if name.endswith("proj.weight") else 0.02
            nn.init.normal_(p, 0.0, std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)


def build_model(spec: ModelSpec, seed: int = 0, dtype: torch.dtype = torch.float32,
                trusted_callable: str = "", where: str = "plan"):
    """Build ``spec`` deterministically from ``seed`` (every rank builds the identical model).

    A custom model's code is imported only if ``trusted_callable`` (what the command line's
    ``--model`` said) is its ``callable_path``: a spec read from a file cannot run code."""
    torch.manual_seed(seed)
    if spec.family == "custom":
        model = build_custom(spec, trusted_callable, where)
    elif spec.family == "gpt":
        blocks = [Embedding(spec.vocab_size, spec.seq_len, spec.hidden_size)]
        blocks += [TransformerBlock(spec.hidden_size, spec.num_heads, spec.ffn_hidden_size)
                   for _ in range(spec.num_layers)]
        blocks.append(Head(spec.hidden_size, spec.vocab_size))
        model = SequentialModel(spec, blocks)
        _init_gpt(model, spec.num_layers)
    else:
        blocks = [InputProjection(spec.hidden_size)]
        blocks += [ResidualMLPBlock(spec.hidden_size, spec.ffn_hidden_size)
                   for _ in range(spec.num_layers)]
        blocks.append(nn.Linear(spec.hidden_size, spec.vocab_size))
        blocks[-1].kind = "head"
        model = SequentialModel(spec, blocks)
    return model.to(dtype)


def custom_spec_from_module(spec: ModelSpec, model) -> ModelSpec:
    """Fill a custom ModelSpec's sizes from the built module (blocks and widest Linear)."""
    from dataclasses import replace
    widths = [m.in_features for m in model.modules() if isinstance(m, nn.Linear)]
    return replace(spec, num_layers=len(model.blocks), hidden_size=widths[0] if widths else 1)
