"""Parameter-server data parallelism (Li et al., OSDI 2014), written with plain collectives.

Each parameter is owned by one of ``ps_shards`` server ranks: dp-group members 0..k-1, chosen
greedily so that every server owns about the same number of bytes (largest tensor to the least
loaded server). After the local backward passes of a step, each worker's gradients are summed
onto the owner (``dist.reduce``, one flat message per server); the owner averages them and runs
the optimizer on its own parameters only (so optimizer state lives on servers only); then each
server broadcasts its updated parameters back (one flat message per server). Per step: k reduces
and k broadcasts over the dp group, each of about 1/k of the parameter bytes.
"""
from __future__ import annotations

import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from executor.optim import make_optimizer
from executor.parallel.dp import NoDataParallel, local, params_of


def assign_owners(sizes: list[int], shards: int) -> list[int]:
    """Owner (0..shards-1) of each tensor: largest first to the least-loaded server."""
    load = [0] * shards
    owner = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        o = min(range(shards), key=lambda s: (load[s], s))
        owner[i] = o
        load[o] += sizes[i]
    return owner


class _NoState:
    """The optimizer of a rank that owns no parameters: nothing to update."""

    def step(self):
        pass

    def zero_grad(self, set_to_none: bool = True):
        pass

    def state_dict(self):
        return {"state": {}, "param_groups": []}


class ParameterServer(NoDataParallel):
    name = "parameter-server"

    def __init__(self, parts, group, shards: int):
        super().__init__(parts, group)
        self.params = params_of(parts)
        self.members = dist.get_process_group_ranks(group)
        self.me = self.members.index(dist.get_rank())
        sizes = [local(p).numel() * local(p).element_size() for p in self.params]
        owner = assign_owners(sizes, shards)
        self.owned = [[p for p, o in zip(self.params, owner) if o == s] for s in range(shards)]

    def build_optimizer(self, optimizer: str, lr: float):
        mine = self.owned[self.me] if self.me < len(self.owned) else []
        return make_optimizer(optimizer, mine, lr) if mine else _NoState()

    def after_backward(self) -> None:
        size = len(self.members)
        for server, params in enumerate(self.owned):
            grads = [local(p.grad) for p in params if p.grad is not None]
            if not grads:
                continue
            flat = _flatten_dense_tensors(grads)
            dist.reduce(flat, dst=self.members[server], group=self.group)
            if server == self.me:
                flat.div_(size)
                for g, summed in zip(grads, _unflatten_dense_tensors(flat, grads)):
                    g.copy_(summed)

    def after_step(self) -> None:
        for server, params in enumerate(self.owned):
            tensors = [local(p).data for p in params]
            if not tensors:
                continue
            flat = _flatten_dense_tensors(tensors)
            dist.broadcast(flat, src=self.members[server], group=self.group)
            if server != self.me:
                for t, new in zip(tensors, _unflatten_dense_tensors(flat, tensors)):
                    t.copy_(new)
