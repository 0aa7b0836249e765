"""Analytic block times from a block's kernels against a device model (a roofline).

Every forward and backward pass of a block is a list of kernels (``Op``) with the FLOPs they do
and the bytes they move through HBM. One kernel takes (Williams, Waterman & Patterson,
"Roofline", CACM 2009, with a compute ceiling that depends on the kernel's size):

    t_op = max(F / (peak * eff(F)),  bytes / (bandwidth * memory_efficiency)) + kernel_overhead_s
    eff(F) = matmul_efficiency_max * (1 - exp(-F / matmul_efficiency_scale_flops))   (matmuls)
    eff    = matmul_efficiency_max                                                    (others)

The saturating eff(F) stands for what makes small GEMMs slow on a GPU -- too few output tiles to
fill every SM, partial last waves, fixed prologue/epilogue -- with two fitted numbers. Eager
PyTorch issues kernels from one CPU thread, so a pass also cannot be shorter than its kernel
count times ``host_overhead_s``: pass time = max(sum of t_op, kernels * host_overhead_s) (the
steady state of a launch queue: the GPU waits for the CPU or the CPU for the GPU, not both).

The operation lists are the model family's (e.g. ``planner.families.gpt.costs``): this module
holds the kernel shapes (``gemm``, ``pointwise``, ``linear``) and prices them. Communication is
not here: the simulator adds it from ``planner.cost.collectives``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from planner.devices import DeviceModel
from planner.errors import PlannerError

# Backward FLOPs of the attention core over its forward: FlashAttention's backward recomputes
# QK^T and computes dV, dP, dQ and dK -- 5 matmuls against the forward's 2 (Dao 2023, arXiv
# 2307.08691, sec. 3.1: "2.5x the forward"); the executor's ring attention does the same.
FLASH_BACKWARD_RATIO = 2.5



class Op(NamedTuple):
    name: str
    flops: float
    bytes: float
    matmul: bool
    fp8: bool = False       # a linear layer's GEMM: runs at the fp8 peak under dtype "fp8"


class Shape(NamedTuple):
    """What a tensor-parallel rank computes of one block for one micro-batch."""
    b: int          # micro-batch size
    s: int          # sequence length
    h: int          # hidden size
    a: int          # attention heads
    f: int          # FFN hidden size
    v: int          # vocabulary
    tp: int = 1
    sp: bool = False
    e: int = 2      # bytes per activation element
    cp: int = 1     # context-parallel ranks: this rank holds s / cp of each sequence's tokens
    load: float = 1.0   # tokens of the busiest expert-parallel rank / the mean (MoE experts)

    @property
    def tokens(self) -> int:
        """Tokens this rank computes: its b sequences' s / cp positions."""
        return self.b * self.s // self.cp

    @property
    def norm_tokens(self) -> float:
        """Tokens seen by LayerNorm/dropout/residual: split by tp under sequence parallelism."""
        return self.tokens / self.tp if self.sp else self.tokens


def gemm(name: str, m: float, n: float, k: float, e: int, batch: float = 1) -> Op:
    """C[m,n] = A[m,k] B[k,n], ``batch`` times: 2mnk FLOPs, reads A and B, writes C."""
    return Op(name, 2.0 * batch * m * n * k, float(e * batch * (m * k + k * n + m * n)), True)


def pointwise(name: str, elements: float, bytes_per_element: float, flops_per_element=1.0) -> Op:
    return Op(name, flops_per_element * elements, float(bytes_per_element * elements), False)


def linear(name: str, tokens: float, k: float, n: float, e: int, bias: bool = True,
           fp8: bool = True):
    """Y[T,n] = X[T,k] W[k,n] (+ b): forward GEMM; backward dX, dW and the bias reduction.
    ``fp8``: the three GEMMs are a linear layer's, which FP8 training runs in FP8
    (``planner.cost.precision.FP8``); False for those kept in 16 bits (the LM head)."""
    fwd = [gemm(name, tokens, n, k, e)._replace(fp8=fp8)]
    bwd = [gemm(name + ".dgrad", tokens, k, n, e)._replace(fp8=fp8),
           gemm(name + ".wgrad", k, n, tokens, e)._replace(fp8=fp8)]
    if bias:
        bwd.append(pointwise(name + ".bgrad", tokens * n, e))
    return fwd, bwd


def matmul_efficiency(flops: float, ceiling: float, scale_flops: float) -> float:
    """eff(F) = ceiling * (1 - exp(-F / scale)): the share of peak a GEMM of F FLOPs reaches."""
    return ceiling * -math.expm1(-flops / scale_flops)


def fit_matmul_efficiency(flops, efficiency) -> tuple[float, float]:
    """(ceiling, scale_flops) of ``matmul_efficiency`` fitted to measured (FLOPs, achieved /
    peak) pairs: least squares on log efficiency. For a given scale the best log ceiling is the
    mean of log(eff / (1 - exp(-F/scale))), so only the scale is searched: a log-spaced grid over
    the measured FLOPs range (x 1e-3 .. x 1e3), then golden-section refinement around the best
    grid point. numpy only (planning code never imports scipy)."""
    import numpy as np
    f = np.asarray(flops, float)
    e = np.asarray(efficiency, float)
    if len(f) < 2 or np.any(f <= 0) or np.any(e <= 0) or not np.all(np.isfinite(e)):
        raise ValueError("need >= 2 points with positive FLOPs and efficiencies")
    log_e = np.log(e)

    def ceiling_and_loss(log_scale: float) -> tuple[float, float]:
        shape = np.log(-np.expm1(-f / math.exp(log_scale)))
        log_c = float(np.mean(log_e - shape))
        return log_c, float(np.sum((log_e - log_c - shape) ** 2))

    grid = np.linspace(math.log(f.min()) - 3 * math.log(10), math.log(f.max()) + 3 * math.log(10),
                       241)
    losses = [ceiling_and_loss(x)[1] for x in grid]
    i = int(np.argmin(losses))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if ceiling_and_loss(a)[1] < ceiling_and_loss(b)[1]:
            hi = b
        else:
            lo = a
    best = 0.5 * (lo + hi)
    return math.exp(ceiling_and_loss(best)[0]), math.exp(best)


def op_time_s(op: Op, dm: DeviceModel, peak_flops_per_s: float) -> float:
    """The roofline time of one kernel (module docstring)."""
    eff = dm.matmul_efficiency_max.value
    if op.matmul:
        eff = matmul_efficiency(op.flops, eff, dm.matmul_efficiency_scale_flops.value)
    compute = op.flops / (peak_flops_per_s * eff) if op.flops else 0.0
    memory = op.bytes / (dm.memory_bandwidth_bytes_per_s.value * dm.memory_efficiency.value)
    return max(compute, memory) + dm.kernel_overhead_s.value


def pass_times_s(ops, dm: DeviceModel, dtype: str, extra_kernels: int = 0
                 ) -> tuple[float, float]:
    """(GPU time of the kernels, host time to issue them and ``extra_kernels`` more -- e.g.
    the collectives the simulator adds inside the block). Under dtype "fp8" the linear
    layers' GEMMs (``Op.fp8``) run at the device's fp8 peak, everything else at bf16's."""
    peak = dm.peak(dtype)
    fp8 = fp8_peak(dm) if dtype == "fp8" else peak
    gpu = sum(op_time_s(op, dm, fp8 if op.fp8 else peak) for op in ops)
    return gpu, (len(ops) + extra_kernels) * dm.host_overhead_s.value


def fp8_peak(dm: DeviceModel) -> float:
    """The device's dense FP8 tensor-core peak (one-line error when it has none)."""
    fig = dm.peak_flops_per_s.get("fp8")
    if fig is None:
        raise PlannerError(f"dtype fp8: device model {dm.name} has no peak_flops_per_s['fp8'] "
                           f"(FP8 tensor cores: H100 and later); it has: "
                           f"{', '.join(dm.peak_flops_per_s)}")
    return fig.value


def pass_time_s(ops, dm: DeviceModel, dtype: str, extra_kernels: int = 0) -> float:
    """A pass takes its GPU time or its host issue time, whichever is longer."""
    return max(pass_times_s(ops, dm, dtype, extra_kernels))


class BlockTime(NamedTuple):
    name: str
    kind: str
    forward_s: float                 # max(GPU, host issue) time of the forward pass
    backward_s: float
    forward_gpu_s: float             # the GPU kernels alone
    backward_gpu_s: float
    forward_flops: float             # the model's FLOPs (2 per multiply-add), all tp ranks
    attention_core_forward_s: float  # what selective recompute repeats


def block_time(name, kind, fwd_ops, bwd_ops, dm, dtype, colls, flops, core=0.0, extra_s=0.0):
    """A block's passes timed: each takes max(GPU kernels, host issue) (module docstring);
    ``colls`` (forward, backward) collectives the block launches besides its kernels."""
    fg, fh = pass_times_s(fwd_ops, dm, dtype, colls[0])
    bg, bh = pass_times_s(bwd_ops, dm, dtype, colls[1])
    return BlockTime(name, kind, max(fg, fh) + extra_s, max(bg, bh), fg + extra_s, bg, flops, core)
