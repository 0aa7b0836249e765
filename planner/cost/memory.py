"""Memory per rank: model state (parameters, gradients, optimizer state) under ZeRO sharding.

Activations under tensor/sequence parallelism and recomputation depend on the model: each
family computes them (``planner.families``, e.g. Korthikanti et al. 2022 for GPT).

Source: Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models", SC'20 (arXiv 1910.02054), sec. 3.1 and 5: mixed-precision Adam keeps 2 bytes of 16-bit
weights, 2 bytes of 16-bit gradients and K = 12 bytes of fp32 master weights, momentum and
variance per parameter (16 bytes); over N_d data-parallel ranks stage 1 shards the optimizer
state (4 + 12/N_d), stage 2 also the gradients (2 + 14/N_d), stage 3 also the parameters (16/N_d).
"""
from __future__ import annotations

from planner.cost.precision import ELEMENT_BYTES, OPTIMIZER_STATES, bytes_per_param  # noqa: F401


def zero_sharded(param: float, grad: float, opt: float, zero: int, dp: int
                 ) -> tuple[float, float, float]:
    """Apply ZeRO stage ``zero`` over ``dp`` ranks to per-parameter bytes (ZeRO sec. 5)."""
    if zero >= 1:
        opt /= dp
    if zero >= 2:
        grad /= dp
    if zero >= 3:
        param /= dp
    return param, grad, opt


def model_state_bytes(params: float, dtype: str, optimizer: str, zero: int, dp: int,
                      grads_sharded: bool = True) -> tuple[float, float, float]:
    """(parameter, gradient, optimizer-state) bytes of ``params`` parameters on one rank.

    ZeRO stage ``zero`` over ``dp`` ranks (``zero_sharded``). ``grads_sharded`` False keeps the
    gradients whole even at stage 2/3: torch.distributed.pipelining accumulates FSDP gradients
    unsharded over micro-batches and reduce-scatters once at the end of the step
    (``PipelineStage.backward_maybe_with_nosync`` / ``perform_reduce_grad``).
    """
    p, g, o = bytes_per_param(dtype, optimizer)
    ps, gs, os_ = zero_sharded(p, g, o, zero, dp)
    if not grads_sharded:
        gs = g
    return params * ps, params * gs, params * os_
