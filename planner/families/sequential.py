"""The one torch model shape every family builds: blocks applied in order (torch).

``blocks`` is an ``nn.ModuleList`` so a pipeline can cut it at any block boundary; each block
has a ``kind`` ("embedding", "block", "head"). A family's model adds ``synthetic_batch(batch,
generator) -> (inputs, targets)``; ``loss`` is cross entropy over the last dimension.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SequentialModel(nn.Module):
    """Blocks applied in order, a synthetic batch and a loss."""

    def __init__(self, spec, blocks):
        super().__init__()
        self.spec = spec
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x

    def synthetic_batch(self, batch_size: int, generator: torch.Generator):
        raise NotImplementedError

    def loss(self, outputs, targets):
        logits = outputs.reshape(-1, outputs.shape[-1])
        # Half precision is upcast for a stable softmax; float64 stays float64 (exactness tests).
        if logits.dtype != torch.float64:
            logits = logits.float()
        return F.cross_entropy(logits, targets.reshape(-1))
