"""A parameter server with a staleness bound s >= 1 (stale synchronous parallel).

Ho et al., "More effective distributed ML via a stale synchronous parallel parameter server",
NeurIPS 2013: a worker at clock c may run only while the slowest worker is at clock >= c - s.
Here the bound is also the delay: at clock c (step c) every worker computes its gradient on the
parameter version c - s (version v = the initial parameters updated with the averaged gradients
of clocks 0..v-1), the deterministic worst case the bound allows (the fixed-delay SGD of Agarwal
& Duchi, NeurIPS 2011), so that runs are reproducible and a reference can check them:

    theta_{c+1} = opt(theta_c, mean_i grad_i(theta_{max(0, c-s)}))

Servers are dp ranks 0..k-1 owning the parameters as ``executor.parallel.ps`` assigns them,
each with its own master copy and optimizer. Everything moves point to point (gloo isend/recv on
the dp group), with no barrier: after its backward pass a worker sends each remote server that
server's share of its gradient (isend, and goes on); when a server starts clock c it receives
clock c-s-1's gradients from every worker (blocking), steps its optimizer and sends version c-s
of its share to every worker; a worker at clock c waits only for version c-s. A worker is thus
at most s clocks ahead of the slowest (the servers being workers too, none passes a server).
After the last clock the servers apply the last s + 1 clocks and send every version out, so the
run ends with theta_T on every rank. s = 0 is ``executor.parallel.ps`` (collectives, in step).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from executor.optim import make_optimizer
from executor.parallel.dp import NoDataParallel, local, params_of
from executor.parallel.ps import _NoState, assign_owners

GRAD_TAG, VERSION_TAG = 1, 2


class StaleParameterServer(NoDataParallel):
    name = "stale-parameter-server"

    def __init__(self, parts, group, shards: int, staleness: int):
        super().__init__(parts, group)
        self.params = params_of(parts)
        self.members = dist.get_process_group_ranks(group)
        self.me = self.members.index(dist.get_rank())
        self.p, self.s = len(self.members), staleness
        sizes = [local(p).numel() * local(p).element_size() for p in self.params]
        owner = assign_owners(sizes, shards)
        self.owned = [[p for p, o in zip(self.params, owner) if o == j] for j in range(shards)]
        self.step = 0
        self.version = 0                  # version the model's parameters hold
        self.own_grads: dict = {}         # clock -> this rank's share for its own server
        self.sends: list = []             # (clock, work, tensor) of isends not yet waited on
        self.master, self.server_opt = None, None

    @property
    def server(self) -> bool:
        return self.me < len(self.owned) and bool(self.owned[self.me])

    def build_optimizer(self, optimizer: str, lr: float):
        if self.server:
            self.master = [torch.nn.Parameter(local(p).detach().clone())
                           for p in self.owned[self.me]]
            self.server_opt = make_optimizer(optimizer, self.master, lr)
        return _NoState()                 # the workers' model is only ever overwritten

    # -- one clock --------------------------------------------------------------------------
    def before_step(self, step: int) -> None:
        self.step = step
        if self.server and step - self.s - 1 >= 0:
            self._serve(step - self.s - 1)
        self._load(max(0, step - self.s))
        self._reap(step - self.s - 2)

    def after_backward(self) -> None:
        for j, params in enumerate(self.owned):
            if not params:
                continue
            flat = _flatten_dense_tensors([local(p.grad) for p in params])
            if j == self.me:
                self.own_grads[self.step] = flat
            else:
                self._isend(flat, j, GRAD_TAG)

    def finish(self, steps_done: int) -> None:
        for clock in range(max(0, steps_done - self.s - 1), steps_done):
            if self.server:
                self._serve(clock)
        self._load(steps_done)
        self._reap(steps_done)

    # -- server and worker halves -------------------------------------------------------------
    def _serve(self, clock: int) -> None:
        """Average ``clock``'s gradients of every worker (rank order), step, send the version."""
        own = self.own_grads.pop(clock)
        total = None
        for i in range(self.p):
            if i == self.me:
                g = own
            else:
                g = torch.empty_like(own)
                dist.recv(g, src=self.members[i], group=self.group, tag=GRAD_TAG)
            total = g.clone() if total is None else total.add_(g)
        total.div_(self.p)
        for m, g in zip(self.master, _unflatten_dense_tensors(total, self.master)):
            m.grad = g.clone()
        self.server_opt.step()
        new = _flatten_dense_tensors([m.detach() for m in self.master])
        for i in range(self.p):
            if i != self.me:
                self._isend(new, i, VERSION_TAG)

    def _load(self, version: int) -> None:
        """Receive versions up to ``version`` from every remote server (each server sends every
        version once, in order) and set the model's parameters to it."""
        while self.version < version:
            self.version += 1
            for j, params in enumerate(self.owned):
                if not params:
                    continue
                tensors = [local(p).data for p in params]
                if j == self.me:
                    new = [m.detach() for m in self.master]
                else:
                    flat = _flatten_dense_tensors(tensors)
                    dist.recv(flat, src=self.members[j], group=self.group, tag=VERSION_TAG)
                    new = _unflatten_dense_tensors(flat, tensors)
                if self.version == version:
                    for t, v in zip(tensors, new):
                        t.copy_(v)

    def _isend(self, tensor: torch.Tensor, i: int, tag: int) -> None:
        work = dist.isend(tensor, dst=self.members[i], group=self.group, tag=tag)
        self.sends.append((self.step, work, tensor))

    def _reap(self, clock: int) -> None:
        """Wait for the sends of clocks <= ``clock`` and drop their buffers (gloo's send work
        reports completion only through ``wait``). At clock t every push of clock t-s-2 has
        been received (version t-s, just loaded, needed clock t-s-1's gradients of every
        worker) and so has every version sent then, so this does not block in steady state."""
        keep = []
        for item in self.sends:
            if item[0] <= clock:
                item[1].wait()
            else:
                keep.append(item)
        self.sends = keep
