"""The one torch model shape every family builds: blocks applied in order (torch).

``blocks`` is an ``nn.ModuleList`` so a pipeline can cut it at any block boundary; each block
has a ``kind`` ("embedding", "block", "head"). A family's model adds ``synthetic_batch(batch,
generator) -> (inputs, targets)``; ``loss`` is cross entropy over the last dimension.

A block may add an auxiliary loss of its own (a MoE router's load-balancing loss) through
``AuxLoss``: the loss function at the end of the pipeline never sees it, but its gradient
starts in the block's backward, scaled like the main loss (``set_aux_loss_scale``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor


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
        loss = F.cross_entropy(logits, targets.reshape(-1))
        # Vocabulary-split logits (a DTensor, under ``loss_parallel``) give a replicated loss:
        # its local value is the loss, as a plain tensor for the caller to sum and scale.
        return loss.to_local() if isinstance(loss, DTensor) else loss


class AuxLoss(torch.autograd.Function):
    """``AuxLoss.apply(x, aux)``: identity on the activations ``x`` whose backward also starts
    d(aux), so ``aux`` joins the training objective wherever the block runs (a pipeline stage,
    a recomputed forward); Megatron-core's MoEAuxLossAutoScaler. ``scale`` is the factor the
    training step applies to each micro-batch's loss before its backward."""

    scale = 1.0

    @staticmethod
    def forward(ctx, x, aux):
        ctx.save_for_backward(aux)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (aux,) = ctx.saved_tensors
        return grad, torch.full_like(aux, AuxLoss.scale)


def set_aux_loss_scale(scale: float) -> None:
    """What the step multiplies each micro-batch's loss by before its backward: 1/num_microbatches
    when it divides the loss itself, 1 when a pipeline schedule divides the gradients afterwards
    (``scale_grads``) or the batch is one micro-batch (the reference)."""
    AuxLoss.scale = float(scale)
