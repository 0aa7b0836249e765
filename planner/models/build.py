"""Build the torch model of a ModelSpec. Every model is a sequence of blocks.

A zoo model comes from its family's ``model`` module (``planner.families``); it exposes
``blocks`` (an ``nn.ModuleList`` applied in order, so a pipeline can cut it at any block
boundary), ``synthetic_batch(batch_size, generator)`` returning ``(inputs, targets)`` and
``loss(outputs, targets)``. A user's ``package.module:callable`` is imported only when the
command line names it and must keep the contract of ``planner.models.custom``.
"""
from __future__ import annotations

import torch
from torch import nn

from planner import families
from planner.specs import ModelSpec


def build_model(spec: ModelSpec, seed: int = 0, dtype: torch.dtype = torch.float32,
                trusted_callable: str = "", where: str = "plan"):
    """Build ``spec`` deterministically from ``seed`` (every rank builds the identical model).

    A custom model's code is imported only if ``trusted_callable`` (what the command line's
    ``--model`` said) is its ``callable_path``: a spec read from a file cannot run code."""
    torch.manual_seed(seed)
    family = families.of(spec)
    module = family.model_module()
    model = module.build(spec) if family.builtin else module.build(spec, trusted_callable, where)
    return model.to(dtype)


def custom_spec_from_module(spec: ModelSpec, model) -> ModelSpec:
    """Fill a custom ModelSpec's sizes from the built module (blocks and widest Linear)."""
    from dataclasses import replace
    widths = [m.in_features for m in model.modules() if isinstance(m, nn.Linear)]
    return replace(spec, num_layers=len(model.blocks), hidden_size=widths[0] if widths else 1)
