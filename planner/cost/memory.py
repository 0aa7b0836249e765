"""Model-state memory per rank (parameters, gradients, optimizer state) under ZeRO sharding.

Source: Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models", SC'20 (arXiv 1910.02054), sec. 3.1 and 5: mixed-precision Adam keeps 2 bytes of 16-bit
weights, 2 bytes of 16-bit gradients and K = 12 bytes of fp32 master weights, momentum and
variance per parameter (16 bytes); over N_d data-parallel ranks stage 1 shards the optimizer
state (4 + 12/N_d), stage 2 also the gradients (2 + 14/N_d), stage 3 also the parameters (16/N_d).
"""
from __future__ import annotations

from planner.errors import PlannerError

ELEMENT_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2,
                 "bf16-mixed": 2, "fp16-mixed": 2}
# Optimizer state elements per parameter, in fp32 (Adam: exp_avg and exp_avg_sq).
OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "sgd": 0, "sgd-momentum": 1}


def bytes_per_param(dtype: str, optimizer: str) -> tuple[float, float, float]:
    """(parameter, gradient, optimizer-state) bytes per parameter before sharding.

    Mixed precision adds the fp32 master copy to the optimizer state (ZeRO's K = 12 for Adam);
    pure fp32/fp64 training keeps states in the parameter dtype (fp32 Adam: 4 + 4 + 8 = 16).
    """
    if dtype not in ELEMENT_BYTES:
        raise PlannerError(f"dtype {dtype!r} is not one of: {', '.join(ELEMENT_BYTES)}")
    if optimizer not in OPTIMIZER_STATES:
        raise PlannerError(f"optimizer {optimizer!r} is not one of: {', '.join(OPTIMIZER_STATES)}")
    e = ELEMENT_BYTES[dtype]
    states = OPTIMIZER_STATES[optimizer]
    if dtype.endswith("-mixed"):
        return float(e), float(e), 4.0 * (states + 1)
    return float(e), float(e), float(e * states)


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
