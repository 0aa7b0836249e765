"""Data parallelism: how gradients of the ``dp`` replicas are combined, one strategy per layout.

``apply_dp`` picks the strategy from ``layout.data.zero``, ``layout.data.comm``, ``layout.data.compression``
and whether tensor parallelism made the parameters DTensors:

- zero 0, all_reduce: DDP (bucketed all-reduce overlapped with backward; compression hooks).
  Where DDP cannot run (``planner.rules.ddp_runs``: tp > 1, whose DTensor parameters DDP's
  constructor rejects, and schedules with a split weight-gradient pass, which computes gradients
  outside autograd's accumulation hooks), gradients are all-reduced after the last backward
  instead (``ManualAllReduce``: same sums in DDP-sized buckets, no overlap).
- zero 1: Megatron's distributed optimizer (``executor.parallel.zero1``): gradients
  reduce-scattered in DDP-sized buckets during backward, optimizer state sharded, updated
  parameters all-gathered; it holds the local shards of tensor-parallel (DTensor) parameters,
  so it runs with any tp and pp. It replaced DDP + ``ZeroRedundancyOptimizer``, which cannot
  hold DTensors and moved more bytes (an all-reduce, then one broadcast per replica: 3 x the
  parameter bytes per step against 2 x for reduce-scatter + all-gather).
- zero 2/3: FSDP2 ``fully_shard`` per block then per part; ``reshard_after_forward`` False for
  ZeRO-2 (parameters stay gathered between forward and backward) and True for ZeRO-3.
  FSDP reduce-scatters every micro-batch, so gradients stay sharded during accumulation.
- parameter_server: ``executor.parallel.ps``; with a staleness bound s >= 1,
  ``executor.parallel.ps_async``.
- compression topk/randk/qsgd/sign: ``executor.parallel.gradcomp`` (an exchange after the
  backward pass); fp16/bf16/powersgd are DDP hooks (``executor.parallel.compress``).
- local SGD (``local_sgd_period`` >= 1): ``executor.parallel.localsgd``.
With dp == 1 there is nothing to combine and every strategy is the identity. Which
combinations run at all is ``planner.rules.executor_refuses``, shared with the planner.

Context parallelism adds its ranks to the reduction: the group is dp * cp ("dp_cp",
``planner.dims``). Expert parallelism takes the experts out of it (``executor.parallel.ep``):
DDP ignores them and the step sums them over edp after the backward pass; FSDP shards each MoE
layer's experts as a unit of their own over the edp mesh (gradients divided by dp * cp), or,
with one replica per expert shard, leaves them alone. ``offload``: FSDP2's
``CPUOffloadPolicy`` (sharded parameters, gradients and optimizer state in host memory).
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed.tensor import DTensor

from executor.optim import make_optimizer
from executor.parallel import compress
from planner import rules



def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def params_of(parts) -> list[nn.Parameter]:
    return [p for part in parts for p in part.parameters()]


class NoDataParallel:
    """dp == 1 (or a strategy's shared defaults): gradients are already the whole batch's."""

    name = "none"
    shards_experts = False      # FSDP reduces the expert gradients itself (over edp)

    def __init__(self, parts, group=None):
        self.parts, self.group = parts, group

    def no_sync(self, last: bool):
        return contextlib.nullcontext()

    def before_step(self, step: int) -> None:
        """Called first in step ``step`` (strategies whose randomness or timing follows it)."""

    def finish(self, steps_done: int) -> None:
        """Called once after the last step: leave every replica holding the final model."""

    def build_optimizer(self, optimizer: str, lr: float):
        return make_optimizer(optimizer, params_of(self.parts), lr)

    def after_backward(self) -> None:
        pass

    def after_step(self) -> None:
        pass


def _expert_names(part) -> list[str]:
    """Names (in ``part``) of the expert parameters expert parallelism shards."""
    from executor.parallel.ep import expert_params
    mine = {id(p) for p in expert_params([part])}
    return [n for n, p in part.named_parameters() if id(p) in mine]


class DDPDataParallel(NoDataParallel):
    name = "ddp"

    def __init__(self, parts, group, layout, device):
        ids = [device] if device.type == "cuda" else None
        wrapped = []
        for part in parts:
            if layout.ep > 1:        # expert shards differ per rank: reduced over edp instead
                nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                    part, _expert_names(part))
            ddp = nn.parallel.DistributedDataParallel(part, process_group=group, device_ids=ids)
            compress.register(ddp, layout, group)
            wrapped.append(ddp)
        super().__init__(wrapped, group)

    def no_sync(self, last: bool):
        stack = contextlib.ExitStack()
        if not last:    # accumulate locally; the last micro-batch's backward all-reduces
            for part in self.parts:
                stack.enter_context(part.no_sync())
        return stack


class FSDPDataParallel(NoDataParallel):
    name = "fsdp"

    def __init__(self, parts, dp_mesh, layout, edp_mesh=None, cuda: bool = False):
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard
        from executor.parallel.ep import expert_modules
        kw = dict(reshard_after_forward=layout.data.zero == 3,
                  offload_policy=CPUOffloadPolicy(pin_memory=cuda) if layout.data.offload
                  else OffloadPolicy())
        d = layout.dims
        ignored: set = set()
        self.shards_experts = d.ep == 1 or d.edp > 1
        for part in parts:
            # Blocks first, then the part: each block is one all-gather / reduce-scatter unit;
            # under ep a MoE layer's experts are a unit of their own over the edp mesh.
            for block in blocks_of(part):
                for experts in (expert_modules([block]) if d.ep > 1 else []):
                    if d.edp > 1:
                        fully_shard(experts, mesh=edp_mesh, **kw)
                        experts.set_gradient_divide_factor(float(d.replicas))
                    else:
                        ignored.update(experts.parameters())
                fully_shard(block, mesh=dp_mesh, ignored_params=ignored or None, **kw)
            fully_shard(part, mesh=dp_mesh, ignored_params=ignored or None, **kw)
        super().__init__(parts, dp_mesh.get_group())


class ManualAllReduce(NoDataParallel):
    """All-reduce the local gradient shards over the dp group after the last micro-batch."""

    name = "allreduce-after-backward"

    skip_experts = False        # ep > 1: expert shards are reduced over edp instead

    def after_backward(self) -> None:
        from executor.parallel.ep import expert_params
        experts = {id(p) for p in expert_params(self.parts)} if self.skip_experts else set()
        grads = [local(p.grad) for p in params_of(self.parts)
                 if p.grad is not None and id(p) not in experts]
        size = dist.get_world_size(self.group)
        # DDP's caps (planner.rules), so that message sizes and counts are DDP's
        for bucket in buckets(grads, rules.FIRST_BUCKET_BYTES, rules.BUCKET_CAP_BYTES):
            flat = _flatten_dense_tensors(bucket)
            dist.all_reduce(flat, group=self.group)
            flat.div_(size)
            for g, synced in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                g.copy_(synced)


def blocks_of(part: nn.Module):
    """The blocks of a model or pipeline chunk, in order."""
    blocks = getattr(part, "blocks", None)
    return list(blocks.values() if isinstance(blocks, nn.ModuleDict) else blocks or [])


def buckets(tensors, first_cap_bytes, cap_bytes):
    """Consecutive same-dtype runs of at most the cap (reverse order, as DDP's buckets follow
    gradients becoming ready from the last layer backwards); the first bucket is smaller."""
    bucket, size, cap = [], 0, first_cap_bytes
    for t in reversed(tensors):
        nbytes = t.numel() * t.element_size()
        if bucket and (size + nbytes > cap or t.dtype != bucket[0].dtype):
            yield bucket
            bucket, size, cap = [], 0, cap_bytes
        bucket.append(t)
        size += nbytes
    if bucket:
        yield bucket


def apply_dp(parts, layout, mesh, device, seed: int = 0, dp_rank: int = 0):
    """Wrap this rank's model parts for data parallelism; returns the strategy object.
    ``seed`` (the plan's) seeds the compressions that draw random numbers; ``dp_rank`` is this
    rank's replica (whose share of the batch it runs)."""
    if layout.dims.replicas == 1:
        return NoDataParallel(parts)
    reduce_mesh = mesh.reduce(layout)
    group = reduce_mesh.get_group()
    d = layout.data
    if d.comm == "parameter_server":
        if d.staleness:
            from executor.parallel.ps_async import StaleParameterServer
            return StaleParameterServer(parts, group, d.ps_shards, d.staleness)
        from executor.parallel.ps import ParameterServer
        return ParameterServer(parts, group, d.ps_shards)
    if d.local_sgd:
        from executor.parallel.localsgd import LocalSGD
        return LocalSGD(parts, group, layout)
    if d.exchange:
        from executor.parallel.gradcomp import CompressedExchange
        return CompressedExchange(parts, group, layout, seed)
    if layout.data.zero >= 2:
        edp = mesh["edp"] if layout.ep > 1 and layout.dims.edp > 1 else None
        return FSDPDataParallel(parts, reduce_mesh, layout, edp, device.type == "cuda")
    if layout.data.zero == 1:
        from executor.parallel.zero1 import DistributedOptimizer
        return DistributedOptimizer(parts, group, layout, dp_rank)
    if not rules.ddp_runs(layout):
        manual = ManualAllReduce(parts, group)
        manual.skip_experts = layout.ep > 1
        return manual
    return DDPDataParallel(parts, group, layout, device)
