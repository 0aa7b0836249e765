"""Single-process reference training: the ground truth the parallel runs must match.

One process, the whole global batch of each step in one forward and backward (no micro-batches,
no parallelism), the same model seed, data and optimizer as ``executor.train``.
"""
from __future__ import annotations

import torch

from executor.data import make_data
from executor.optim import make_optimizer
from executor.runtime import param_dtype
from planner.families.sequential import set_aux_loss_scale
from planner.models.build import build_model


def train_reference(plan, steps: int, data_path: str = "", trusted_callable: str = ""):
    """Train ``plan``'s model for ``steps`` steps; returns (losses, final state_dict). A custom
    model's code is imported only if the caller names it (``trusted_callable``, as the
    executor's ``--model``): the plan alone never makes us import code."""
    dtype = param_dtype(plan.dtype, torch.device("cpu"))
    model = build_model(plan.model, seed=plan.seed, dtype=dtype,
                        trusted_callable=trusted_callable, where="reference")
    optimizer = make_optimizer(plan.optimizer, model.parameters(), plan.learning_rate)
    data = make_data(model, plan, data_path)
    set_aux_loss_scale(1.0)                     # one micro-batch: auxiliary losses unscaled
    losses = []
    for step in range(steps):
        inputs, targets = data.rows(step, 0, plan.global_batch_size)
        loss = model.loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}
