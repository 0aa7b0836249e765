"""The MLP family in torch, and its tensor-parallel plan (GPT's MLP split: fc by columns,
proj by rows; ``planner.families.gpt.model.block_plan`` without attention)."""
from __future__ import annotations

import torch
from torch import nn

from planner.families.gpt.model import MLP, block_plan
from planner.families.sequential import SequentialModel


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


class MlpModel(SequentialModel):
    def synthetic_batch(self, batch_size: int, generator: torch.Generator):
        s = self.spec
        x = torch.randn(batch_size, s.hidden_size, generator=generator)
        return x, torch.randint(0, s.vocab_size, (batch_size,), generator=generator)


def build(spec) -> MlpModel:
    blocks = [InputProjection(spec.hidden_size)]
    blocks += [ResidualMLPBlock(spec.hidden_size, spec.ffn_hidden_size)
               for _ in range(spec.num_layers)]
    blocks.append(nn.Linear(spec.hidden_size, spec.vocab_size))
    blocks[-1].kind = "head"
    return MlpModel(spec, blocks)


def apply_tp(model, tp_mesh, sequence_parallel: bool) -> None:
    from torch.distributed.tensor.parallel import parallelize_module
    for block in model.blocks:
        if getattr(block, "kind", "") == "block":
            parallelize_module(block, tp_mesh, block_plan(False, attention=False))
