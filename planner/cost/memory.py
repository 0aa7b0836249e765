"""Memory per rank: model state (parameters, gradients, optimizer state) under ZeRO sharding,
and activations under tensor/sequence parallelism and recomputation (Korthikanti et al., below).

Source: Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models", SC'20 (arXiv 1910.02054), sec. 3.1 and 5: mixed-precision Adam keeps 2 bytes of 16-bit
weights, 2 bytes of 16-bit gradients and K = 12 bytes of fp32 master weights, momentum and
variance per parameter (16 bytes); over N_d data-parallel ranks stage 1 shards the optimizer
state (4 + 12/N_d), stage 2 also the gradients (2 + 14/N_d), stage 3 also the parameters (16/N_d).
"""
from __future__ import annotations

from functools import lru_cache

from planner.errors import PlannerError

ELEMENT_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2,
                 "bf16-mixed": 2, "fp16-mixed": 2}
# Optimizer state elements per parameter, in fp32 (Adam: exp_avg and exp_avg_sq).
OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "sgd": 0, "sgd-momentum": 1}


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


# --------------------------------------------------------------------------------------------
# Activations (Korthikanti et al. 2022, arXiv 2205.05198, sec. 4 and Table 2)
# --------------------------------------------------------------------------------------------
# Per decoder layer, in units of s*b*h bytes at 16 bits: 10 units stay whole on every tensor-
# parallel rank (layer-norm inputs 4, q/k/v input 2, MLP input 2, two dropout masks 2), 24 are
# split over t (q, k 4; v 2; attention output 2; GeLU input and output 16), and the attention
# core keeps 5*a*s/h more (scores, softmax, its dropout mask), also split over t. Sequence
# parallelism splits the 10 as well; selective recompute drops the 5*a*s/h; full recompute keeps
# only the layer input (2 units = the block's output bytes).
GPT_WHOLE, GPT_SPLIT = 10.0, 24.0


def attention_core_units(spec) -> float:
    """5*a*s/h: the attention core's share of a layer's activations (Korthikanti Table 2)."""
    return 5.0 * spec.num_heads * spec.seq_len / spec.hidden_size


def block_activation_bytes(saved_bytes: float, output_bytes: float, kind: str, spec, tp: int,
                           sequence_parallel: bool, recompute: str) -> float:
    """Activation bytes one block keeps per micro-batch on one rank.

    ``saved_bytes`` is what the unsplit block keeps without recompute (measured by the profiler
    or Korthikanti's s*b*h*(34 + 5as/h)); it is divided among Korthikanti's parts in the
    proportions above, each part scaled as Table 2 says. MLP-family blocks keep the layer-norm
    and fc inputs whole (2h) and the GeLU input/output split (2*ffn). Embedding and head are not
    split or recomputed by the executor, so they keep ``saved_bytes`` (the head's logits).
    """
    if kind != "block":
        return saved_bytes
    split_rest = tp if sequence_parallel else 1
    if recompute == "full":
        return output_bytes / split_rest
    if spec.family == "gpt":
        core = attention_core_units(spec)
        unit = saved_bytes / (GPT_WHOLE + GPT_SPLIT + core)
        kept_core = 0.0 if recompute == "selective" else core
        return unit * (GPT_WHOLE / split_rest + (GPT_SPLIT + kept_core) / tp)
    whole, split = 2.0 * spec.hidden_size, 2.0 * spec.ffn_hidden_size
    unit = saved_bytes / (whole + split)
    return unit * (whole / split_rest + split / tp)


def recompute_working_bytes(saved_bytes: float, output_bytes: float, kind: str, spec, tp: int,
                            sequence_parallel: bool, recompute: str) -> float:
    """Transient bytes while a recomputed block runs its backward: its activations come back
    for the duration of that block (full: all of them; selective: the attention core's)."""
    if kind != "block" or recompute == "none":
        return 0.0
    if recompute == "full":
        return block_activation_bytes(saved_bytes, output_bytes, kind, spec, tp,
                                      sequence_parallel, "none")
    if spec.family != "gpt":
        return 0.0
    core = attention_core_units(spec)
    unit = saved_bytes / (GPT_WHOLE + GPT_SPLIT + core)
    return unit * core / tp


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
