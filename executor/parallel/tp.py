"""Tensor parallelism: the model family's plan applied over the tp mesh (DTensor).

Which modules split how is the family's (``planner.families.<family>.model.apply_tp``: for GPT,
Megatron's column/row split with optional sequence parallelism); which tp degrees divide the
model is the family's too (``Family.tp_problem``, checked by ``planner.rules``). What is left
here is generic: resolving the partial gradients DTensor leaves behind.
"""
from __future__ import annotations

import contextlib

import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed.tensor import DTensor

from planner import families


def apply_tp(model, layout, tp_mesh) -> None:
    """Shard ``model`` in place over ``tp_mesh`` by its family's plan."""
    families.of(model.spec).model_module().apply_tp(model, tp_mesh,
                                                    layout.tensor.sequence_parallel)


def loss_context(spec, layout):
    """What forward and backward of a micro-batch run under: ``loss_parallel`` (torch's
    vocabulary-parallel cross entropy) where the family splits the head over tp, so that the
    loss of split logits and its backward reduce over the tp group (Megatron's
    vocab-parallel cross entropy), else nothing. Returns a context-manager factory."""
    if layout.tp > 1 and families.of(spec).tp_splits("head"):
        from torch.distributed.tensor.parallel import loss_parallel
        return loss_parallel
    return contextlib.nullcontext


def reduce_partial_grads(parts) -> None:
    """Sum, in one all-reduce over tp, the gradients DTensor leaves Partial: those of the
    layer norms under sequence parallelism (each rank saw only its slice of the sequence), of a
    MoE router and Qwen3's q/k norms (each rank's share of the columns or heads feeds them:
    ``Family.partial_grad_params``).
    Left alone, the optimizer would all-reduce each of them again in every operation that
    reads the gradient (3 times per parameter for Adam). FSDP resolves them itself.
    """
    pending = [p for part in parts for p in part.parameters()
               if isinstance(p.grad, DTensor) and any(x.is_partial() for x in p.grad.placements)]
    if not pending:
        return
    mesh = pending[0].grad.device_mesh
    locals_ = [p.grad.to_local() for p in pending]
    flat = _flatten_dense_tensors(locals_)
    dist.all_reduce(flat, group=mesh.get_group())
    for p, summed in zip(pending, _unflatten_dense_tensors(flat, locals_)):
        p.grad = DTensor.from_local(summed, mesh, p.placements, run_check=False)
