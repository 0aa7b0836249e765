"""GPT in torch, and its tensor-parallel plan (Megatron-LM, Shoeybi et al. 2019, sec. 3).

nanoGPT/GPT-2 shape: pre-norm, GELU MLP, learned positions, untied head, with separate q/k/v
projections so Megatron column splits shard whole heads, and attention that reshapes with ``-1``
heads so the same code runs on a tensor-parallel shard.

Tensor parallel plan (DTensor ``parallelize_module``), per block: q, k, v and mlp.fc split by
output features (``ColwiseParallel``: heads / tp whole heads and ffn / tp hidden units per rank),
attn.proj and mlp.proj by input features (``RowwiseParallel``: partial sums all-reduced). Two
all-reduces per block forward and two in backward. Layer norms and position embeddings stay
replicated (their gradients are identical on every tp rank, so they need no tp collective).

Vocabulary parallel, as Megatron-LM does (Shoeybi et al. 2019 sec. 3, VocabParallelEmbedding
and the vocab-parallel cross entropy) and torchtitan with torch's own APIs: the token embedding
is split by vocabulary rows (``RowwiseParallel(input_layouts=Replicate())``: each rank looks up
its rows, the partial sums are all-reduced), the LM head by output features with the logits
left split (``ColwiseParallel(output_layouts=Shard(-1), use_local_output=False)``), and the
cross entropy runs on the split logits under ``torch.distributed.tensor.parallel.loss_parallel``
(the executor enters it around forward and backward; three all-reduces of one value per
token). Uneven splits (a vocabulary tp does not divide) are DTensor's: ceil(V/tp) rows first.

Sequence parallel (Korthikanti et al. 2022, sec. 4.2.2): the residual stream between blocks is
the rank's slice of the sequence, as a plain tensor (mixing DTensor and tensor in the residual
add fails); layer norms run on that slice (``SequenceParallel``), attention and MLP inputs are
all-gathered (``PrepareModuleInput``) and their row-parallel outputs reduce-scattered back to a
slice. The first block slices the replicated embedding output; the head's norm runs on the
slice and its GEMM all-gathers its input (reduce-scattering the input's gradient back).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from planner.families.ring_attention import ring_attention
from planner.families.sequential import SequentialModel


class Embedding(nn.Module):
    kind = "embedding"

    def __init__(self, vocab, seq, hidden):
        super().__init__()
        self.tok = nn.Embedding(vocab, hidden)
        self.pos = nn.Embedding(seq, hidden)
        self.cp = None          # a ring_attention.CpContext under context parallelism

    def forward(self, idx):
        if self.cp is not None:     # this rank's tokens sit at these positions of the sequence
            positions = self.cp.positions.to(idx.device)
        else:
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
        self.cp = None                # a ring_attention.CpContext under context parallelism

    def _core(self, q, k, v):
        if self.cp is not None:
            return ring_attention(q, k, v, self.cp)
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


class GptModel(SequentialModel):
    def synthetic_batch(self, batch_size: int, generator: torch.Generator):
        s = self.spec
        tokens = torch.randint(0, s.vocab_size, (batch_size, s.seq_len + 1), generator=generator)
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def _init(module: nn.Module, num_layers: int):
    """GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2L)."""
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            std = 0.02 / math.sqrt(2 * num_layers) if name.endswith("proj.weight") else 0.02
            nn.init.normal_(p, 0.0, std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)


def build(spec) -> GptModel:
    blocks = [Embedding(spec.vocab_size, spec.seq_len, spec.hidden_size)]
    blocks += [TransformerBlock(spec.hidden_size, spec.num_heads, spec.ffn_hidden_size)
               for _ in range(spec.num_layers)]
    blocks.append(Head(spec.hidden_size, spec.vocab_size))
    model = GptModel(spec, blocks)
    _init(model, spec.num_layers)
    return model


def block_plan(sequence_parallel: bool, attention: bool = True) -> dict:
    """The ``parallelize_module`` plan of one block (module docstring)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput,
                                                   RowwiseParallel, SequenceParallel)
    # attn and mlp take their input as one DTensor, so the gradients of q, k and v sum as a
    # Partial and are reduced once where the input entered (Megatron's "f" operator: one
    # all-reduce, or under sp one reduce-scatter, per attention and per MLP in backward);
    # plain-tensor inputs would give every column-parallel Linear its own all-reduce.
    entry = (Shard(1),) if sequence_parallel else (Replicate(),)
    gather = dict(input_layouts=entry, desired_input_layouts=(Replicate(),),
                  use_local_output=False)
    out = dict(output_layouts=Shard(1)) if sequence_parallel else {}
    plan = {}
    if attention:
        plan.update({"attn": PrepareModuleInput(**gather),
                     "attn.q": ColwiseParallel(), "attn.k": ColwiseParallel(),
                     "attn.v": ColwiseParallel(), "attn.proj": RowwiseParallel(**out)})
    plan.update({"mlp": PrepareModuleInput(**gather),
                 "mlp.fc": ColwiseParallel(), "mlp.proj": RowwiseParallel(**out)})
    if sequence_parallel:
        plan.update({"ln1": SequenceParallel(), "ln2": SequenceParallel()})
    return plan


def vocab_plans(sequence_parallel: bool) -> tuple[dict, dict]:
    """The ``parallelize_module`` plans of the embedding and the head (module docstring)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                   SequenceParallel)
    embedding = {"tok": RowwiseParallel(input_layouts=Replicate())}
    logits = dict(output_layouts=Shard(-1), use_local_output=False)
    if sequence_parallel:
        head = {"ln": SequenceParallel(), "out": ColwiseParallel(input_layouts=Shard(1), **logits)}
    else:
        head = {"out": ColwiseParallel(**logits)}
    return embedding, head


def apply_tp(model, tp_mesh, sequence_parallel: bool) -> None:
    """Shard ``model`` in place over ``tp_mesh``: decoder blocks (Megatron), embedding and head
    (vocabulary parallel)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import PrepareModuleInput, parallelize_module
    blocks = [b for b in model.blocks if getattr(b, "kind", "") == "block"]
    for block in blocks:
        parallelize_module(block, tp_mesh, block_plan(sequence_parallel))
    embedding, head = vocab_plans(sequence_parallel)
    parallelize_module(model.blocks[0], tp_mesh, embedding)
    parallelize_module(model.blocks[len(model.blocks) - 1], tp_mesh, head)
    if sequence_parallel:
        parallelize_module(blocks[0], tp_mesh, PrepareModuleInput(
            input_layouts=(Replicate(),), desired_input_layouts=(Shard(1),),
            use_local_output=True))


def apply_cp(model, ctx) -> None:
    """Context parallelism: attention as a ring over ``ctx`` (``planner.families.
    ring_attention``), learned positions looked up at the tokens' global positions."""
    for block in model.blocks:
        if getattr(block, "kind", "") == "embedding":
            block.cp = ctx
        elif getattr(block, "kind", "") == "block":
            block.attn.cp = ctx
