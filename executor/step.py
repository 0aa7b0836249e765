"""One training step of one rank: micro-batches forward and backward, gradient combination,
optimizer update.

Without pipelining the rank runs its ``num_microbatches`` micro-batches of ``microbatch_size``
rows itself, each loss scaled by 1/num_microbatches so that the accumulated gradient is that of
the mean loss (DDP's all-reduce waits for the last micro-batch, ``no_sync`` before it). With
pipelining the schedule splits the rows into the same micro-batches and scales the gradients.
"""
from __future__ import annotations

import contextlib

import torch

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
    # auxiliary losses (a MoE router's) are scaled like the loss: the schedule divides the
    # gradients by num_microbatches afterwards; without one each loss is divided before
    set_aux_loss_scale(1.0 if par.schedule is not None else 1.0 / layout.num_microbatches)
    if par.schedule is not None:
        losses: list = []
        args = (inputs,) if par.first else ()
        kwargs = {"target": targets, "losses": losses} if par.last else {}
        with _autocast(device, amp_dtype):
            par.schedule.step(*args, **kwargs)
        for loss in losses:
            total += loss.detach().to(torch.float64)
        return total
    model, m = par.parts[0], layout.num_microbatches
    for i, (x, y) in enumerate(_microbatches(inputs, targets, layout.microbatch_size)):
        with par.dp.no_sync(last=i == m - 1), _autocast(device, amp_dtype):
            loss = loss_fn(model(x), y)
            (loss / m).backward()
        total += loss.detach().to(torch.float64)
    return total


def train_step(par, optimizer, inputs, targets, layout, loss_fn, device,
               amp_dtype=None, step: int = 0) -> torch.Tensor:
    """Step ``step``; returns this rank's share of the global loss sum (0 if it does not count,
    so that a sum over all ranks counts each micro-batch once)."""
    par.dp.before_step(step)
    total = forward_backward(par, inputs, targets, layout, loss_fn, device, amp_dtype)
    if layout.tp > 1 and not rules.fsdp_runs(layout):   # FSDP sums them itself
        reduce_partial_grads(par.parts)
    par.dp.after_backward()
    optimizer.step()
    par.dp.after_step()
    for part in par.parts:
        part.zero_grad(set_to_none=True)
    return total if par.counts_loss else torch.zeros_like(total)
