"""One training step of one rank: micro-batches forward and backward, gradient combination,
optimizer update.

Without pipelining the rank runs its replica's m micro-batches (``Layout.microbatches_of``) of
``microbatch_size`` rows itself, each loss scaled by 1/m so that the accumulated gradient is
that of the replica's mean loss (DDP's all-reduce waits for the last micro-batch, ``no_sync``
before it). With pipelining the schedule splits the rows into the same micro-batches and scales
the gradients (``executor.parallel.pp.loss_scale``). Where replicas run different numbers of
micro-batches (mixed clusters), each loss is also multiplied by the replica's weight
w = m * dp / M (``Layout.replica_weight``, M micro-batches in all): the replicas' gradients
are then averaged as usual (DDP, FSDP and the parameter server divide their sum by dp), and
sum_i w_i g_i / dp = sum over all M micro-batches of their gradients / M, the gradient of the
mean loss over the global batch.
"""
from __future__ import annotations

import contextlib

import torch

from executor.parallel.pp import loss_scale
from executor.parallel.tp import reduce_partial_grads
from planner import rules
from planner.families.sequential import set_aux_loss_scale


def _autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def _microbatches(inputs, targets, size):
    xs = inputs.split(size)
    return zip(xs, targets.split(size) if targets is not None else [None] * len(xs))


def forward_backward(par, inputs, targets, layout, loss_fn, device, amp_dtype) -> torch.Tensor:
    """Sum of this rank's micro-batch losses (float64, detached); gradients left in ``.grad``."""
    total = torch.zeros((), dtype=torch.float64, device=device)
    weight = layout.replica_weight(par.dp_rank)
    m = layout.microbatches_of(par.dp_rank)
    # auxiliary losses (a MoE router's) are scaled like the loss: a pipeline schedule's loss
    # carries loss_scale (1 when it divides the gradients by m afterwards); without one each
    # loss is multiplied by weight / m before its backward
    set_aux_loss_scale(loss_scale(layout, par.dp_rank) if par.schedule is not None
                       else weight / m)
    # the loss-parallel head computes its cross-entropy inside this context (tp)
    loss_context = par.loss_context or contextlib.nullcontext
    if par.schedule is not None:
        losses: list = []
        args = (inputs,) if par.first else ()
        kwargs = {"target": targets, "losses": losses} if par.last else {}
        with _autocast(device, amp_dtype), loss_context():
            par.schedule.step(*args, **kwargs)
        scale = loss_scale(layout, par.dp_rank)   # what the schedule's loss carries
        for loss in losses:
            total += loss.detach().to(torch.float64) / scale
        return total
    model = par.parts[0]
    for i, (x, y) in enumerate(_microbatches(inputs, targets, layout.microbatch_size)):
        with par.dp.no_sync(last=i == m - 1), _autocast(device, amp_dtype), loss_context():
            loss = loss_fn(model(x), y)
            (loss / m if weight == 1.0 else loss * (weight / m)).backward()
        total += loss.detach().to(torch.float64)
    return total


def train_step(par, optimizer, inputs, targets, layout, loss_fn, device,
               amp_dtype=None, step: int = 0) -> torch.Tensor:
    """Step ``step``; returns this rank's share of the global loss sum (0 if it does not count,
    so that a sum over all ranks counts each micro-batch once)."""
    par.dp.before_step(step)
    total = forward_backward(par, inputs, targets, layout, loss_fn, device, amp_dtype)
    if layout.tp > 1 and rules.partial_grads_by(layout) == "step":
        reduce_partial_grads(par.parts)
    par.dp.after_backward()
    if par.expert_sync is not None:                      # ep without FSDP on the experts
        par.expert_sync()
    optimizer.step()
    par.dp.after_step()
    for part in par.parts:
        part.zero_grad(set_to_none=True)
    return total if par.counts_loss else torch.zeros_like(total)
