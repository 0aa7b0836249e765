"""Build the torch model of a ModelSpec. Every model is a sequence of blocks.

A zoo model comes from its family's ``model`` module (``planner.families``); it exposes
``blocks`` (an ``nn.ModuleList`` applied in order, so a pipeline can cut it at any block
boundary), ``synthetic_batch(batch_size, generator)`` returning ``(inputs, targets)`` and
``loss(outputs, targets)``. A user's ``package.module:callable`` must return an ``nn.Module``
that is an ``nn.Sequential`` or has ``blocks``; if it lacks ``synthetic_batch`` / ``loss``,
inputs are ``randn(batch, hidden_size)`` and the loss is the mean square of the output.
"""
from __future__ import annotations

import importlib
import os
import sys

import torch
from torch import nn

from planner import families
from planner.errors import PlannerError
from planner.families.sequential import SequentialModel
from planner.specs import ModelSpec


def build_model(spec: ModelSpec, seed: int = 0, dtype: torch.dtype = torch.float32):
    """Build ``spec`` deterministically from ``seed`` (every rank builds the identical model):
    a zoo family's ``model.build`` (``planner.families``), or the user's callable."""
    torch.manual_seed(seed)
    return families.of(spec).model_module().build(spec).to(dtype)


class _CustomWrapper(SequentialModel):
    def __init__(self, spec, inner, blocks):
        super().__init__(spec, blocks)
        self._inner_batch = getattr(inner, "synthetic_batch", None)
        self._inner_loss = getattr(inner, "loss", None)

    def synthetic_batch(self, batch_size, generator):
        if self._inner_batch is not None:
            return self._inner_batch(batch_size, generator)
        first = next(m for m in self.modules() if isinstance(m, nn.Linear))
        return torch.randn(batch_size, first.in_features, generator=generator), None

    def loss(self, outputs, targets):
        if self._inner_loss is not None:
            return self._inner_loss(outputs, targets)
        return outputs.float().pow(2).mean()


def _build_custom(spec: ModelSpec):
    module_name, _, attr = spec.callable_path.partition(":")
    # As `python -m` does: a user's module in the working directory is importable.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise PlannerError(f"--model {spec.callable_path}: cannot import {module_name!r}: "
                           f"{err}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise PlannerError(f"--model {spec.callable_path}: {module_name!r} has no callable "
                           f"{attr!r}")
    inner = factory()
    if isinstance(inner, nn.Sequential):
        blocks = list(inner)
    elif isinstance(getattr(inner, "blocks", None), (nn.ModuleList, nn.Sequential)):
        blocks = list(inner.blocks)
    else:
        raise PlannerError(f"--model {spec.callable_path}: returned {type(inner).__name__}, "
                           "which is neither an nn.Sequential nor exposes 'blocks' "
                           "(an nn.ModuleList applied in order)")
    for b in blocks:
        if not hasattr(b, "kind"):
            b.kind = "block"
    return _CustomWrapper(spec, inner, blocks)


def custom_spec_from_module(spec: ModelSpec, model) -> ModelSpec:
    """Fill a custom ModelSpec's sizes from the built module (blocks and widest Linear)."""
    from dataclasses import replace
    widths = [m.in_features for m in model.modules() if isinstance(m, nn.Linear)]
    return replace(spec, num_layers=len(model.blocks), hidden_size=widths[0] if widths else 1)
