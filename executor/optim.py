"""The optimizers a plan may name, with the hyper-parameters the executor fixes.

Betas and epsilon are PyTorch's defaults, which are those of Kingma & Ba 2015 (sec. 2: beta1 0.9,
beta2 0.999, eps 1e-8); AdamW's decoupled weight decay 0.01 is PyTorch's default for AdamW
(Loshchilov & Hutter 2019); "sgd-momentum" uses the heavy-ball momentum 0.9 that most recipes use.
The planner's memory model counts 2 state tensors for adam/adamw, 1 for sgd-momentum, 0 for sgd.
"""
from __future__ import annotations

import torch

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
ADAMW_WEIGHT_DECAY = 0.01
SGD_MOMENTUM = 0.9


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
