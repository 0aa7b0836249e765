"""Training precision: element sizes, optimizer state, and which peak a dtype's matmuls run at.

One copy of each table; memory (``planner.cost.memory``), the optimizer step (``planner.sim``),
device models (``planner.devices``) and analytic costs read them here.

Source for the state bytes: Rajbhandari et al., "ZeRO", SC'20 (arXiv 1910.02054), sec. 3.1:
mixed-precision Adam keeps 2 bytes of 16-bit weights, 2 bytes of 16-bit gradients and K = 12
bytes of fp32 master weights, momentum and variance per parameter.
"""
from __future__ import annotations

from functools import lru_cache

from planner.errors import PlannerError

ELEMENT_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2,
                 "bf16-mixed": 2, "fp16-mixed": 2, "fp8": 2}
# "fp8" (planning only; the executor refuses it): FP8 GEMMs in the linear layers, bf16
# elsewhere, as Transformer Engine's ``fp8_autocast`` runs te.Linear / LayerNormLinear /
# LayerNormMLP and grouped expert GEMMs (Micikevicius et al. 2022, "FP8 Formats for Deep
# Learning", arXiv 2209.05433: E4M3 for activations and weights, E5M2 for gradients; tensors
# between kernels and the attention core -- softmax(QK^T)V, FlashAttention in bf16 -- stay
# 16-bit, as do norms, softmax, the router, embedding and LM head). Memory is that of
# bf16-mixed (fp32 master weights and Adam state, 16-bit activations); the FP8 copies of
# weights and the cast/transpose kernels TE adds are not modelled (the GEMMs' operand bytes stay
# at 2 per element, which roughly stands in for them). MFU stays relative to the bf16 peak.
FP8 = "fp8"
MIXED = ("bf16-mixed", "fp16-mixed", FP8)
# Optimizer state elements per parameter, in fp32 under mixed precision (Adam: exp_avg and
# exp_avg_sq; SGD with momentum: the momentum buffer).
OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "sgd": 0, "sgd-momentum": 1}


def peak_key(dtype: str) -> str:
    """The ``peak_flops_per_s`` entry a training dtype's matmuls run at. Mixed precision runs
    its matmuls in the 16-bit type; float32 at the tf32 peak, which assumes TF32 matmuls are
    enabled (``torch.set_float32_matmul_precision("high")``; PyTorch's default since 1.12 is
    full fp32, 19.5 TFLOP/s on an A100)."""
    return {"bf16-mixed": "bfloat16", "fp16-mixed": "float16", "float32": "tf32",
            FP8: "bfloat16"}.get(dtype, dtype)


def peak_flops(device, dtype: str) -> float:
    """A DeviceSpec's dense peak for ``dtype`` (0 when unknown, e.g. a CPU)."""
    return float(device.peak_flops_per_s.get(peak_key(dtype), 0.0))


@lru_cache(maxsize=64)
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
    if dtype in MIXED:
        return float(e), float(e), 4.0 * (states + 1)
    return float(e), float(e), float(e * states)


@lru_cache(maxsize=64)
def optimizer_bytes_touched(dtype: str, optimizer: str) -> float:
    """HBM bytes one optimizer step reads and writes per parameter (fused kernels): the state
    read and written (master weights included under mixed precision), the gradient read, and
    the parameter written (read too without a master copy). Mixed-precision Adam:
    2*12 + 2 + 2 = 28 bytes; fp32 Adam: 2*8 + 4 + 2*4 = 28."""
    p, g, o = bytes_per_param(dtype, optimizer)
    return 2.0 * o + g + (p if dtype in MIXED else 2.0 * p)
