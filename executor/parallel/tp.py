"""Tensor parallelism: the model family's plan applied over the tp mesh (DTensor).

Which modules split how is the family's (``planner.families.<family>.model.apply_tp``: for GPT,
Megatron's column/row split with optional sequence parallelism); which tp degrees divide the
model is the family's too (``Family.tp_problem``, checked by ``planner.rules``). What is left
here is generic: resolving the partial gradients DTensor leaves behind.
"""
from __future__ import annotations

import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed.tensor import DTensor

from planner import families


def apply_tp(model, layout, tp_mesh) -> None:
    """Shard ``model`` in place over ``tp_mesh`` by its family's plan."""
    families.of(model.spec).model_module().apply_tp(model, tp_mesh,
                                                    layout.tensor.sequence_parallel)


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
