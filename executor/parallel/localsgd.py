"""Local SGD (``layout.data.local_sgd_period`` H): replicas train alone, parameters meet every H.

Each replica runs its own optimizer on its own rows' gradient, with no gradient exchange; after
every H-th step (and once after the last step, so the run ends with one model) each chunk's
parameters are averaged over the dp group by one all-reduce (Stich, "Local SGD converges fast
and communicates little", ICLR 2019; Lin et al., "Don't use large mini-batches, use local SGD",
ICLR 2020). With ``outer_optimizer`` "nesterov" (DiLoCo: Douillard et al., "DiLoCo: distributed
low-communication training of language models", 2023, Algorithm 1) the average is not taken as
is: the outer gradient ``anchor - average`` (anchor: the parameters at the last
synchronisation) drives torch's SGD with Nesterov momentum on the anchor, with DiLoCo's outer
learning rate 0.7 and momentum 0.9 (sec. 3), and every replica restarts from the new anchor.
Inner optimizer state stays local. With H = 1, plain averaging and a linear optimizer (SGD,
with or without momentum) this is synchronous data parallelism: the mean of the replicas'
updates is the update of the mean gradient; Adam's update is not linear in the gradient.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from executor.parallel.dp import NoDataParallel, local

OUTER_LR = 0.7          # DiLoCo, sec. 3
OUTER_MOMENTUM = 0.9


class LocalSGD(NoDataParallel):
    name = "local-sgd"

    def __init__(self, parts, group, layout):
        super().__init__(parts, group)
        self.period = layout.data.local_sgd_period
        self.outer = layout.data.outer_optimizer
        self.p = dist.get_world_size(group)
        self.step = 0
        self.synced_after = 0            # steps done at the last synchronisation
        self.anchors, self.outer_opts = [], []
        if self.outer == "nesterov":
            for part in parts:
                flat = _flatten_dense_tensors([local(p).detach() for p in part.parameters()])
                anchor = torch.nn.Parameter(flat.clone())
                self.anchors.append(anchor)
                self.outer_opts.append(torch.optim.SGD([anchor], lr=OUTER_LR,
                                                       momentum=OUTER_MOMENTUM, nesterov=True))

    def before_step(self, step: int) -> None:
        self.step = step

    def after_step(self) -> None:
        done = self.step + 1
        if done % self.period == 0:
            self.synchronise(done)

    def finish(self, steps_done: int) -> None:
        if steps_done > self.synced_after:
            self.synchronise(steps_done)

    def synchronise(self, steps_done: int) -> None:
        for c, part in enumerate(self.parts):
            tensors = [local(p).data for p in part.parameters()]
            flat = _flatten_dense_tensors(tensors)
            dist.all_reduce(flat, group=self.group)
            flat.div_(self.p)
            if self.outer == "nesterov":
                anchor = self.anchors[c]
                anchor.grad = anchor.detach() - flat
                self.outer_opts[c].step()
                flat = anchor.detach()
            for t, new in zip(tensors, _unflatten_dense_tensors(flat, tensors)):
                t.copy_(new)
        self.synced_after = steps_done
