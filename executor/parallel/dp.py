"""Data parallelism: how gradients of the ``dp`` replicas are combined, one strategy per layout.

``apply_dp`` picks the strategy from ``layout.zero``, ``layout.dp_comm``, ``layout.compression``
and whether tensor parallelism made the parameters DTensors:

- zero 0, all_reduce: DDP (bucketed all-reduce overlapped with backward; compression hooks).
  Where DDP cannot run, gradients are all-reduced after the last backward instead
  (``ManualAllReduce``: same sums in DDP-sized buckets, no overlap): with tp > 1 (DDP's
  constructor rejects DTensor parameters) and under the zbv schedule (its weight-gradient pass
  computes gradients outside autograd's accumulation hooks, so DDP would never all-reduce them).
- zero 1: DDP for gradients + ``ZeroRedundancyOptimizer`` (optimizer state sharded, updated
  parameters broadcast from their owner).
- zero 2/3: FSDP2 ``fully_shard`` per block then per part; ``reshard_after_forward`` False for
  ZeRO-2 (parameters stay gathered between forward and backward) and True for ZeRO-3.
  FSDP reduce-scatters every micro-batch, so gradients stay sharded during accumulation.
- parameter_server: ``executor.parallel.ps``.
With dp == 1 there is nothing to combine and every strategy is the identity.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed.tensor import DTensor

from executor.optim import make_optimizer, optimizer_spec
from executor.parallel import compress
from planner.errors import PlannerError

# DDP's bucket caps (first bucket 1 MiB, ``dist._DEFAULT_FIRST_BUCKET_BYTES``; then 25 MiB):
# ManualAllReduce uses the same so that its message sizes and counts are DDP's.
FIRST_BUCKET_BYTES = 1024 * 1024
BUCKET_BYTES = 25 * 1024 * 1024


def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def params_of(parts) -> list[nn.Parameter]:
    return [p for part in parts for p in part.parameters()]


class NoDataParallel:
    """dp == 1 (or a strategy's shared defaults): gradients are already the whole batch's."""

    name = "none"

    def __init__(self, parts, group=None):
        self.parts, self.group = parts, group

    def no_sync(self, last: bool):
        return contextlib.nullcontext()

    def build_optimizer(self, optimizer: str, lr: float):
        return make_optimizer(optimizer, params_of(self.parts), lr)

    def after_backward(self) -> None:
        pass

    def after_step(self) -> None:
        pass


class DDPDataParallel(NoDataParallel):
    name = "ddp"

    def __init__(self, parts, group, layout, device):
        ids = [device] if device.type == "cuda" else None
        wrapped = []
        for part in parts:
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


def _zero_one_optimizer(parts, group, optimizer: str, lr: float):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    cls, kwargs = optimizer_spec(optimizer, lr)
    # Bucket view: each rank's updated shard goes out as one broadcast (dp per step), not one
    # broadcast per parameter.
    return ZeroRedundancyOptimizer(params_of(parts), optimizer_class=cls, process_group=group,
                                   parameters_as_bucket_view=True, **kwargs)


class ZeroOneDataParallel(DDPDataParallel):
    name = "zero1"

    def build_optimizer(self, optimizer: str, lr: float):
        return _zero_one_optimizer(self.parts, self.group, optimizer, lr)


class FSDPDataParallel(NoDataParallel):
    name = "fsdp"

    def __init__(self, parts, dp_mesh, zero: int):
        from torch.distributed.fsdp import fully_shard
        reshard = zero == 3
        for part in parts:
            # Blocks first, then the part: each block is one all-gather / reduce-scatter unit.
            for block in blocks_of(part):
                fully_shard(block, mesh=dp_mesh, reshard_after_forward=reshard)
            fully_shard(part, mesh=dp_mesh, reshard_after_forward=reshard)
        super().__init__(parts, dp_mesh.get_group())


class ManualAllReduce(NoDataParallel):
    """All-reduce the local gradient shards over the dp group after the last micro-batch."""

    name = "allreduce-after-backward"

    def after_backward(self) -> None:
        grads = [local(p.grad) for p in params_of(self.parts) if p.grad is not None]
        size = dist.get_world_size(self.group)
        for bucket in _buckets(grads, FIRST_BUCKET_BYTES, BUCKET_BYTES):
            flat = _flatten_dense_tensors(bucket)
            dist.all_reduce(flat, group=self.group)
            flat.div_(size)
            for g, synced in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                g.copy_(synced)


class ManualZeroOne(ManualAllReduce):
    name = "zero1-allreduce-after-backward"

    def build_optimizer(self, optimizer: str, lr: float):
        return _zero_one_optimizer(self.parts, self.group, optimizer, lr)


def ddp_can_run(layout) -> bool:
    """DDP needs plain parameters and gradients produced by autograd's accumulation."""
    return layout.tp == 1 and not (layout.pp > 1 and layout.schedule == "zbv")


def blocks_of(part: nn.Module):
    """The blocks of a model or pipeline chunk, in order."""
    blocks = getattr(part, "blocks", None)
    return list(blocks.values() if isinstance(blocks, nn.ModuleDict) else blocks or [])


def _buckets(tensors, first_cap_bytes, cap_bytes):
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


def apply_dp(parts, layout, mesh, device):
    """Wrap this rank's model parts for data parallelism; returns the strategy object."""
    if layout.dp == 1:
        return NoDataParallel(parts)
    group = mesh["dp"].get_group()
    if layout.dp_comm == "parameter_server":
        from executor.parallel.ps import ParameterServer
        return ParameterServer(parts, group, layout.ps_shards)
    if layout.zero >= 2:
        return FSDPDataParallel(parts, mesh["dp"], layout.zero)
    if not ddp_can_run(layout):
        return (ManualZeroOne if layout.zero == 1 else ManualAllReduce)(parts, group)
    if layout.zero == 1:
        return ZeroOneDataParallel(parts, group, layout, device)
    return DDPDataParallel(parts, group, layout, device)


def check_dp(layout, where: str = "plan") -> None:
    """Combinations the executor cannot run, refused up front with what would work."""
    field = f"{where}: field 'layout'"
    if layout.dp_comm == "parameter_server" and (layout.zero or layout.compression != "none"):
        raise PlannerError(f"{field}: parameter_server keeps whole gradients and optimizer state "
                           f"on its servers; it needs zero 0 and compression none, got zero "
                           f"{layout.zero}, compression {layout.compression}")
    if layout.compression != "none" and layout.zero >= 2:
        raise PlannerError(f"{field}: compression {layout.compression} is a DDP communication "
                           f"hook; FSDP (zero {layout.zero}) has none; use zero 0 or 1")
    if layout.compression != "none" and layout.tp > 1 and layout.dp > 1:
        raise PlannerError(f"{field}: compression {layout.compression} needs DDP, which cannot "
                           f"wrap tensor-parallel (DTensor) parameters; use tp 1 or compression none")
    if layout.zero >= 2 and layout.dp > 1 and layout.pp > 1 and layout.schedule == "zbv":
        raise PlannerError(f"{field}: zero {layout.zero} (FSDP2) under schedule zbv trains wrong "
                           f"parameters in torch {torch.__version__}: FSDP reduce-scatters before "
                           f"the zero-bubble weight-gradient pass has run; use zero 0 or 1 with "
                           f"zbv, or another schedule with zero {layout.zero}")
    if layout.compression != "none" and layout.dp > 1 and not ddp_can_run(layout):
        raise PlannerError(f"{field}: compression {layout.compression} needs DDP, whose hooks "
                           f"never see the zbv schedule's weight gradients; use another "
                           f"schedule or compression none")
    if layout.zero == 1 and layout.tp > 1 and layout.dp > 1:
        raise PlannerError(f"{field}: zero 1 (ZeroRedundancyOptimizer over DDP) cannot hold "
                           f"tensor-parallel (DTensor) parameters; use zero 2 or 3 with tp > 1")
