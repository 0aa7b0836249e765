"""The optimizers a plan may name, built with the hyper-parameters of ``planner.optimizers``
(where they are cited; torch-free, so ``planner export`` writes the same ones)."""
from __future__ import annotations

import torch

from planner.optimizers import ADAM_BETAS, ADAM_EPS, ADAMW_WEIGHT_DECAY, SGD_MOMENTUM  # noqa: F401


def optimizer_spec(name: str, lr: float) -> tuple[type, dict]:
    """(optimizer class, keyword arguments) for ``name``; ZeroRedundancyOptimizer needs both."""
    if name == "adam":
        return torch.optim.Adam, {"lr": lr, "betas": ADAM_BETAS, "eps": ADAM_EPS}
    if name == "adamw":
        return torch.optim.AdamW, {"lr": lr, "betas": ADAM_BETAS, "eps": ADAM_EPS,
                                   "weight_decay": ADAMW_WEIGHT_DECAY}
    if name == "sgd":
        return torch.optim.SGD, {"lr": lr}
    if name == "sgd-momentum":
        return torch.optim.SGD, {"lr": lr, "momentum": SGD_MOMENTUM}
    raise ValueError(f"unknown optimizer {name!r}")   # Plan validation already rejected it


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    cls, kwargs = optimizer_spec(name, lr)
    return cls(list(params), **kwargs)
