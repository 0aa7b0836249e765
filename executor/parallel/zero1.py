"""ZeRO-1 as Megatron-LM's distributed optimizer: gradients reduce-scattered, optimizer state
sharded over the data-parallel ranks (dp * cp of them under context parallelism, whose ranks
hold the same parameters), parameters all-gathered; with or without tensor and pipeline
parallelism.

Sources: Rajbhandari et al., "ZeRO", SC'20, sec. 5.1 (stage 1, P_os: each of N_d ranks updates
1/N_d of the parameters); Megatron-LM ``megatron/core/distributed/param_and_grad_buffer.py``
(gradients in buckets, one reduce-scatter per bucket issued as soon as the bucket's last gradient
is ready, one all-gather per bucket of the updated parameters) and
``megatron/core/optimizer/distrib_optimizer.py`` (a rank's shard of an fp32 parameter is the view
``param.detach().view(-1)[start:end]``, whose ``.grad`` is a view of the reduce-scattered
gradient; ``finalize_model_grads`` all-reduces the sequence-parallel layer-norm gradients over tp
after the data-parallel reduction).

Per part (the whole model, or one pipeline chunk) the rank's local tensors (``DTensor.to_local``
under tp: each tp rank shards its own slice) are cut into DDP-sized buckets in reverse parameter
order (``planner.rules`` caps, the same the simulator and DDP use), each padded to a multiple of
dp. Data-parallel rank r owns elements [r*S, (r+1)*S) of each bucket of S*dp elements.

- Gradients: each parameter's post-accumulate-grad hook counts the micro-batches; when every
  parameter of a bucket has accumulated its last one, the bucket is flattened, divided by the
  number of replicas (and of micro-batches under pipelining, whose schedule scales gradients
  only after its backward) and reduce-scattered asynchronously -- in bucket order, overlapping
  the rest of the backward pass. Where autograd does not accumulate the weight gradients (a
  split weight-gradient pass under pipelining, ``planner.rules.reduction_overlaps_backward``),
  the buckets go after the backward pass. fp16/bf16 compression casts the bucket before the
  reduce-scatter, as torch's ``fp16_compress_hook`` does before its all-reduce.
- Sequence parallelism: gradients DTensor leaves Partial over tp (the layer norms) are
  reduce-scattered as they are; afterwards the pieces of them this rank owns are summed over tp
  in one all-reduce (sums commute, so this equals reducing over tp first).
- Optimizer: the plan's optimizer over views of the owned pieces of the parameters (elementwise
  updates, so the same arithmetic as one process); its state exists for those elements only.
- Parameters: after the step, one all-gather per bucket of the owned elements, copied back into
  every parameter's local tensor.
"""
from __future__ import annotations

import contextlib
from itertools import accumulate
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from executor.optim import make_optimizer
from executor.parallel.dp import NoDataParallel, buckets as ddp_sized_runs
from planner import rules

_HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _local_grad(p) -> torch.Tensor:
    """This rank's slice of ``p``'s gradient, laid out as its local parameter. The gradient of
    the vocabulary-parallel embedding (a Shard(0) weight) comes back Replicate: every tp rank
    holds all of it, and takes its own rows (a local slice, no communication)."""
    g = p.grad
    if isinstance(g, DTensor) and g.placements != p.placements and not _is_partial(g):
        g = g.redistribute(p.device_mesh, p.placements)
    return _local(g)


def _is_partial(grad) -> bool:
    return isinstance(grad, DTensor) and any(x.is_partial() for x in grad.placements)


class _NoShard:
    """The optimizer of a rank that owns no element (more replicas than elements)."""

    param_groups: list = []

    def step(self):
        pass

    def zero_grad(self, set_to_none: bool = True):
        pass


class Piece(NamedTuple):
    """The part of parameter ``param`` (an index into the bucket) a rank owns: its elements
    [start, end), at ``shard_start`` in the rank's shard of the bucket."""
    param: int
    start: int
    end: int
    shard_start: int

    def of_shard(self, shard: torch.Tensor) -> torch.Tensor:
        return shard[self.shard_start:self.shard_start + self.end - self.start]


class Bucket:
    """Consecutive parameters of one part, flattened; this rank's slice of it."""

    def __init__(self, params, dp: int, rank: int):
        self.params = params
        self.flat_views = [_local(p).detach().view(-1) for p in params]
        self.sizes = [t.numel() for t in self.flat_views]
        self.total = sum(self.sizes)
        self.shard = -(-self.total // dp)
        self.dtype = self.flat_views[0].dtype
        lo, hi = rank * self.shard, (rank + 1) * self.shard
        self.pieces = []
        for i, (start, n) in enumerate(zip(accumulate([0, *self.sizes]), self.sizes)):
            a, b = max(start, lo), min(start + n, hi)
            if a < b:
                self.pieces.append(Piece(i, a - start, b - start, a - lo))
        # what the optimizer steps: views into the parameters' own storage
        self.views = [self.flat_views[x.param][x.start:x.end] for x in self.pieces]
        self.ready = 0            # parameter gradients accumulated this step (hooks)
        self.work = None          # the reduce-scatter in flight, with its input and output
        self.sent = self.received = None
        self.grad_shard = None

    def launch(self, group, divisor: float, compression: str) -> None:
        """Flatten the gradients, divide, reduce-scatter asynchronously."""
        flat = torch.zeros(self.shard * dist.get_world_size(group), dtype=self.dtype,
                           device=self.flat_views[0].device)
        grads = [torch.zeros_like(v) if p.grad is None else _local_grad(p).reshape(-1)
                 for p, v in zip(self.params, self.flat_views)]
        torch.cat(grads, out=flat[:self.total])
        flat.div_(divisor)
        if compression in _HALF:
            flat = flat.to(_HALF[compression])
        self.sent, self.received = flat, flat.new_empty(self.shard)
        self.work = dist.reduce_scatter_single(self.received, flat, group=group, async_op=True)

    def finish(self) -> None:
        self.work.wait()
        self.grad_shard = self.received.to(self.dtype)
        self.work = self.sent = self.received = None

    def partial_pieces(self) -> list[torch.Tensor]:
        """Views of the owned gradient pieces of parameters whose gradient is Partial."""
        return [x.of_shard(self.grad_shard) for x in self.pieces
                if _is_partial(self.params[x.param].grad)]

    def set_grads(self) -> None:
        for view, x in zip(self.views, self.pieces):
            view.grad = x.of_shard(self.grad_shard)

    def gather(self, group) -> None:
        """All-gather the updated owned elements; copy them into every parameter."""
        inp = self.grad_shard.new_zeros(self.shard)
        for view, x in zip(self.views, self.pieces):
            x.of_shard(inp).copy_(view)
            view.grad = None
        out = inp.new_empty(self.shard * dist.get_world_size(group))
        dist.all_gather_single(out, inp, group=group)
        for t, new in zip(self.flat_views, out[:self.total].split(self.sizes)):
            t.copy_(new)
        self.grad_shard = None
        self.ready = 0


class DistributedOptimizer(NoDataParallel):
    """The data-parallel strategy of ZeRO-1 (``executor.parallel.dp`` interface)."""

    name = "zero1-distributed-optimizer"

    def __init__(self, parts, group, layout, dp_rank: int = 0):
        self.parts, self.group = parts, group
        self.dp = dist.get_world_size(group)
        self.compression = layout.data.compression
        self.overlap = rules.reduction_overlaps_backward(layout)
        rank = dist.get_rank(group)     # which slice of each bucket this rank owns (dp * cp)
        self.m = m = layout.microbatches_of(dp_rank)    # this replica's micro-batches
        # torch pipelining divides gradients by m only after its backward pass (with even
        # shares; uneven ones scale the loss instead, ``executor.parallel.pp.loss_scale``)
        after = layout.pp > 1 and not layout.replica_microbatches
        self.hook_divisor = self.dp * (m if after else 1)
        self.parts_buckets = []
        for part in parts:
            params = [p for p in part.parameters() if p.requires_grad]
            locals_ = [_local(p).detach() for p in params]
            owner = dict(zip(map(id, locals_), params))
            runs = ddp_sized_runs(locals_, rules.FIRST_BUCKET_BYTES, rules.BUCKET_CAP_BYTES)
            self.parts_buckets.append([Bucket([owner[id(t)] for t in run], self.dp, rank)
                                       for run in runs])
        self.next = [0] * len(parts)
        if self.overlap:
            for pi, buckets in enumerate(self.parts_buckets):
                for bucket in buckets:
                    for p in bucket.params:
                        p.register_post_accumulate_grad_hook(self._hook(pi, bucket))

    def _hook(self, part: int, bucket: Bucket):
        need = len(bucket.params) * self.m

        def hook(_param):
            bucket.ready += 1
            if bucket.ready == need:
                self._launch_ready(part)
        return hook

    def _launch_ready(self, part: int) -> None:
        """Launch the part's buckets in order, as far as they are ready (the same order on
        every replica, whatever order their hooks fire in)."""
        buckets = self.parts_buckets[part]
        while self.next[part] < len(buckets):
            bucket = buckets[self.next[part]]
            if bucket.ready < len(bucket.params) * self.m:
                return
            bucket.launch(self.group, self.hook_divisor, self.compression)
            self.next[part] += 1

    def no_sync(self, last: bool):
        return contextlib.nullcontext()     # the hooks count micro-batches themselves

    def build_optimizer(self, optimizer: str, lr: float):
        views = [v for buckets in self.parts_buckets for b in buckets for v in b.views]
        return make_optimizer(optimizer, views, lr) if views else _NoShard()

    def after_backward(self) -> None:
        """Reduce-scatter what the hooks did not (all of it without overlap), wait, resolve
        sequence-parallel Partial pieces over tp, hand the shards to the optimizer."""
        for pi, buckets in enumerate(self.parts_buckets):
            for bucket in buckets[self.next[pi]:]:
                bucket.launch(self.group, self.dp, self.compression)
            self.next[pi] = 0
        every = [b for buckets in self.parts_buckets for b in buckets]
        for bucket in every:
            bucket.finish()
        self._reduce_partial_over_tp(every)
        for bucket in every:
            bucket.set_grads()

    def _reduce_partial_over_tp(self, buckets) -> None:
        partial = [p for b in buckets for p in b.params if _is_partial(p.grad)]
        if not partial:
            return
        pieces = [t for b in buckets for t in b.partial_pieces()]
        tp_group = partial[0].grad.device_mesh.get_group()
        flat = torch.cat(pieces) if pieces else buckets[0].grad_shard.new_empty(0)
        dist.all_reduce(flat, group=tp_group)      # once per step, even if this rank owns none
        for t, summed in zip(pieces, flat.split([t.numel() for t in pieces])):
            t.copy_(summed)

    def after_step(self) -> None:
        for buckets in self.parts_buckets:
            for bucket in buckets:
                bucket.gather(self.group)
