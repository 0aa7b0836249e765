"""Expert parallelism: the experts of every MoE layer sharded over the ep group, tokens moved
to them and back by all-to-all (``planner.families.moe.model.Experts``).

ep borrows its ranks from data and context parallelism (``planner.dims``): the dp * cp ranks
split into edp groups of ep consecutive ones; each ep group holds all experts, E/ep per rank
(dimension 0 of the stacked weights; tp keeps splitting each expert's columns). Gradients then
differ in who must sum them (``executor.parallel.dp``): non-expert parameters over all dp * cp
ranks as before, an expert shard only over the edp ranks holding the same experts. Every rank's
loss is the mean over its own tokens, so the sum over edp replicas is divided by dp * cp
(torchtitan's ``set_gradient_divide_factor`` on the experts' FSDP unit).
"""
from __future__ import annotations

import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from executor.parallel.dp import local


def expert_modules(parts) -> list[nn.Module]:
    """The expert-holding modules (those that can be sharded) of a model or its chunks."""
    return [m for part in parts for m in part.modules() if hasattr(m, "shard_experts")]


def apply_ep(model, layout, meshes, ep_index: int) -> None:
    """Keep this rank's E/ep experts of every MoE layer (before pipelining and dp wrapping)."""
    group = meshes["ep"].get_group()
    for m in expert_modules([model]):
        m.shard_experts(group, ep_index, layout.ep)


def expert_params(parts) -> list[nn.Parameter]:
    return [p for m in expert_modules(parts) for p in m.parameters()]


def reduce_expert_grads(parts, layout, edp_group) -> None:
    """Without FSDP: sum the expert gradients over the edp replicas (one all-reduce of all of
    them, when edp > 1) and divide by dp * cp."""
    grads = [local(p.grad) for p in expert_params(parts) if p.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    if layout.dims.edp > 1:
        dist.all_reduce(flat, group=edp_group)
    flat.div_(layout.dims.replicas)
    for g, summed in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(summed)
