"""Analytic block times of a GPT from its operations against a device model (a roofline).

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

The operation lists follow two implementations (``impl``):

- ``"megatron"``: Megatron-LM's ParallelTransformerLayer (Shoeybi et al. 2019, arXiv 1909.08053,
  fig. 3; megatron/model/transformer.py): fused QKV column-parallel GEMM, QK^T as baddbmm,
  fused scale-mask-softmax, attention dropout, AV bmm, context transpose, row-parallel dense,
  fused bias-dropout-add, fused bias-GeLU; embedding with dropout; head through the (tied) word
  embedding and the vocab-parallel cross entropy of megatron/core/tensor_parallel/
  cross_entropy.py (logits cast to fp32, max, subtract, exp, sum, divide; backward multiply and
  cast back). This is what the calibration runs (Megatron-DeepSpeed) executed.
- ``"zoo"``: this project's GPT (planner.models.build): separate q/k/v linears,
  ``scaled_dot_product_attention`` (FlashAttention-2 on A100/H100 in 16-bit: Dao 2023,
  arXiv 2307.08691 -- causal blocks above the diagonal skipped, so half of 4bs^2h FLOPs in the
  forward and 2.5x that in the backward, which recomputes QK^T; no s x s matrix in HBM), GELU,
  residual adds, no dropout, untied head and ``F.cross_entropy`` on fp32 logits.

Tensor parallelism (Megatron column/row split) divides the GEMMs' output or reduction dimension,
heads and vocabulary by ``tp``; LayerNorm, dropout and residual work on the full b*s*h unless
sequence parallelism splits the tokens by ``tp`` too (Korthikanti et al. 2022, arXiv 2205.05198,
sec. 4.2.2). Communication (TP all-reduce / all-gather / reduce-scatter) is not here: the
simulator adds it from ``planner.cost.comm``. Backward of a linear layer is two GEMMs of the same
FLOPs as its forward (input gradient dY W^T and weight gradient X^T dY); element-wise backward
reads the saved input and the incoming gradient and writes one gradient.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from planner.devices import DeviceModel
from planner.errors import PlannerError

IMPLS = ("zoo", "megatron")
MASK_BYTES = 1          # dropout masks are bool/uint8 tensors
FP32 = 4


class Op(NamedTuple):
    name: str
    flops: float
    bytes: float
    matmul: bool


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

    @property
    def tokens(self) -> int:
        return self.b * self.s

    @property
    def norm_tokens(self) -> float:
        """Tokens seen by LayerNorm/dropout/residual: split by tp under sequence parallelism."""
        return self.tokens / self.tp if self.sp else self.tokens


def gemm(name: str, m: float, n: float, k: float, e: int, batch: float = 1) -> Op:
    """C[m,n] = A[m,k] B[k,n], ``batch`` times: 2mnk FLOPs, reads A and B, writes C."""
    return Op(name, 2.0 * batch * m * n * k, float(e * batch * (m * k + k * n + m * n)), True)


def pointwise(name: str, elements: float, bytes_per_element: float, flops_per_element=1.0) -> Op:
    return Op(name, flops_per_element * elements, float(bytes_per_element * elements), False)


def linear(name: str, tokens: float, k: float, n: float, e: int, bias: bool = True):
    """Y[T,n] = X[T,k] W[k,n] (+ b): forward GEMM; backward dX, dW and the bias reduction."""
    fwd = [gemm(name, tokens, n, k, e)]
    bwd = [gemm(name + ".dgrad", tokens, k, n, e), gemm(name + ".wgrad", k, n, tokens, e)]
    if bias:
        bwd.append(pointwise(name + ".bgrad", tokens * n, e))
    return fwd, bwd


def _norm(name, sh: Shape):
    n = sh.norm_tokens * sh.h
    return [pointwise(name, n, 2 * sh.e, 8)], [pointwise(name + ".bwd", n, 3 * sh.e, 12)]


def _attention_core(sh: Shape, impl: str):
    """QK^T, softmax (+ dropout), AV of a/tp heads; returns (forward, backward) op lists."""
    heads = sh.a // sh.tp
    d = sh.h // sh.a
    bh, s, e = sh.b * heads, sh.s, sh.e
    if impl == "zoo":
        full = 4.0 * bh * s * s * d                  # QK^T and AV, 2 FLOPs per multiply-add
        io = e * bh * s * d
        fwd = [Op("flash_attn", full / 2, 4 * io, True)]              # read q,k,v, write o
        bwd = [Op("flash_attn.bwd", 2.5 * full / 2, 8 * io, True)]    # + do, o; write dq,dk,dv
        return fwd, bwd
    probs = bh * s * s
    fwd = [gemm("qk", s, s, d, e, bh), pointwise("softmax", probs, 2 * e, 5),
           pointwise("attn_dropout", probs, 2 * e + MASK_BYTES),
           gemm("av", s, d, s, e, bh)]
    bwd = [gemm("av.dgrad", s, s, d, e, bh), gemm("av.wgrad", s, d, s, e, bh),
           pointwise("attn_dropout.bwd", probs, 2 * e + MASK_BYTES),
           pointwise("softmax.bwd", probs, 3 * e, 4),
           gemm("qk.dgrad", s, d, s, e, bh), gemm("qk.wgrad", s, d, s, e, bh)]
    return fwd, bwd


def attention_core_forward_ops(sh: Shape, impl: str = "zoo") -> list[Op]:
    """What selective recompute (Korthikanti et al. 2022, sec. 4) runs again in the backward."""
    return _attention_core(sh, impl)[0]


def layer_ops(sh: Shape, impl: str = "zoo") -> tuple[list[Op], list[Op]]:
    """Forward and backward kernels of one decoder layer on one tensor-parallel rank."""
    if impl not in IMPLS:
        raise PlannerError(f"impl {impl!r} is not one of: {', '.join(IMPLS)}")
    T, h, f, t, e = sh.tokens, sh.h, sh.f, sh.tp, sh.e
    res = sh.norm_tokens * h
    fwd, bwd = [], []

    def add(pair):
        fwd.extend(pair[0])
        bwd[:0] = pair[1]            # backward runs in reverse order

    add(_norm("ln1", sh))
    if impl == "megatron":
        add(linear("qkv", T, h, 3 * h / t, e))
    else:
        for name in ("q", "k", "v"):
            add(linear(name, T, h, h / t, e))
    add(_attention_core(sh, impl))
    add(([pointwise("context_copy", T * h / t, 2 * e)],
         [pointwise("context_copy.bwd", T * h / t, 2 * e)]))
    add(linear("attn_out", T, h / t, h, e))
    add(_residual("residual1", res, e, impl))
    add(_norm("ln2", sh))
    add(linear("fc1", T, h, f / t, e))
    add(([pointwise("gelu", T * f / t, 2 * e, 8)], [pointwise("gelu.bwd", T * f / t, 3 * e, 12)]))
    add(linear("fc2", T, f / t, h, e))
    add(_residual("residual2", res, e, impl))
    return fwd, bwd


def _residual(name, n, e, impl):
    if impl == "megatron":   # fused bias-dropout-add: read x and residual, write y and the mask
        return ([pointwise(name, n, 3 * e + MASK_BYTES)],
                [pointwise(name + ".bwd", n, 2 * e + MASK_BYTES)])
    return [pointwise(name, n, 3 * e)], []       # the gradient passes through unchanged


def _vocab(sh: Shape, impl: str) -> float:
    """Vocabulary rows on one tp rank: Megatron splits embedding and head by vocabulary
    (VocabParallelEmbedding); the zoo's executor keeps them replicated (executor/parallel/tp.py)."""
    return sh.v / sh.tp if impl == "megatron" else sh.v


def embedding_ops(sh: Shape, impl: str = "zoo") -> tuple[list[Op], list[Op]]:
    """Token + position embedding lookup; Megatron adds dropout.

    Backward: PyTorch's dense embedding backward zero-fills a V/tp x h gradient, index-adds the
    b*s rows into it and accumulates it into ``.grad`` (read + write)."""
    T, h, e = sh.tokens, sh.h, sh.e
    fwd = [pointwise("tok_lookup", T * h, 2 * e), pointwise("pos_add", T * h, 3 * e)]
    bwd = [pointwise("tok_grad", _vocab(sh, impl) * h, 4 * e),
           pointwise("tok_index_add", T * h, 3 * e), pointwise("pos_grad", T * h, 2 * e)]
    if impl == "megatron":
        fwd.append(pointwise("emb_dropout", T * h, 2 * e + MASK_BYTES))
        bwd.insert(0, pointwise("emb_dropout.bwd", T * h, 2 * e + MASK_BYTES))
    return fwd, bwd


def head_ops(sh: Shape, impl: str = "zoo") -> tuple[list[Op], list[Op]]:
    """Final LayerNorm, LM head GEMM and the cross-entropy loss.

    Cross entropy per logit (fp32 after a cast): Megatron's vocab-parallel version does cast
    (e read + 4 write), max (4), subtract (8), exp (8), sum (4), divide (8) forward and multiply
    (8) + cast back (4 + e) backward; ``F.cross_entropy`` does cast, log-softmax (8, with a
    max/sum pass 8) forward, and log-softmax backward (12) + cast back (4 + e).
    """
    T, h, e = sh.tokens, sh.h, sh.e
    logits = T * _vocab(sh, impl)
    ln_f, ln_b = _norm("ln_f", sh)
    lin_f, lin_b = linear("lm_head", T, h, _vocab(sh, impl), e, bias=False)
    if impl == "megatron":
        ce_f = [pointwise("ce.cast", logits, e + FP32), pointwise("ce.max", logits, FP32),
                pointwise("ce.sub", logits, 2 * FP32), pointwise("ce.exp", logits, 2 * FP32, 4),
                pointwise("ce.sum", logits, FP32), pointwise("ce.div", logits, 2 * FP32)]
        ce_b = [pointwise("ce.mul.bwd", logits, 2 * FP32),
                pointwise("ce.cast.bwd", logits, e + FP32)]
    else:
        ce_f = [pointwise("ce.cast", logits, e + FP32),
                pointwise("ce.max_sum", logits, 2 * FP32, 4),
                pointwise("ce.log_softmax", logits, 2 * FP32, 4)]
        ce_b = [pointwise("ce.log_softmax.bwd", logits, 3 * FP32, 4),
                pointwise("ce.cast.bwd", logits, e + FP32)]
    return ln_f + lin_f + ce_f, ce_b + lin_b + ln_b


def op_time_s(op: Op, dm: DeviceModel, peak_flops_per_s: float) -> float:
    """The roofline time of one kernel (module docstring)."""
    eff = dm.matmul_efficiency_max.value
    if op.matmul:
        eff *= -math.expm1(-op.flops / dm.matmul_efficiency_scale_flops.value)
    compute = op.flops / (peak_flops_per_s * eff) if op.flops else 0.0
    memory = op.bytes / (dm.memory_bandwidth_bytes_per_s.value * dm.memory_efficiency.value)
    return max(compute, memory) + dm.kernel_overhead_s.value


def pass_times_s(ops, dm: DeviceModel, dtype: str, extra_kernels: int = 0
                 ) -> tuple[float, float]:
    """(GPU time of the kernels, host time to issue them and ``extra_kernels`` more -- e.g.
    the collectives the simulator adds inside the block)."""
    peak = dm.peak(dtype)
    gpu = sum(op_time_s(op, dm, peak) for op in ops)
    return gpu, (len(ops) + extra_kernels) * dm.host_overhead_s.value


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


def _block(name, kind, fwd_ops, bwd_ops, dm, dtype, colls, flops, core=0.0, extra_s=0.0):
    fg, fh = pass_times_s(fwd_ops, dm, dtype, colls)
    bg, bh = pass_times_s(bwd_ops, dm, dtype, colls)
    return BlockTime(name, kind, max(fg, fh) + extra_s, max(bg, bh), fg + extra_s, bg, flops, core)


def gpt_block_times(num_layers: int, sh: Shape, dm: DeviceModel, dtype: str, impl: str = "zoo",
                    tp_collectives_per_layer: int = 0) -> list[BlockTime]:
    """Embedding, ``num_layers`` identical layers and the head, timed on one tp rank.

    ``tp_collectives_per_layer`` (per pass) only adds host launch time: their transfer time
    belongs to the simulator. The head's forward carries ``microbatch_overhead_s``. Forward
    FLOPs are the model's (Narayanan et al. SC'21 eq. 2 per layer, 2bshV head) for MFU, not the
    kernels' (flash attention skips the masked half of causal attention).
    """
    lf, lb = layer_ops(sh, impl)
    core = pass_time_s(attention_core_forward_ops(sh, impl), dm, dtype)
    layer_flops = (8 * sh.b * sh.s * sh.h ** 2 + 4 * sh.b * sh.s * sh.h * sh.f
                   + 4 * sh.b * sh.s ** 2 * sh.h)
    layer = _block("layer", "block", lf, lb, dm, dtype, tp_collectives_per_layer,
                   float(layer_flops), core)
    emb = _block("embedding", "embedding", *embedding_ops(sh, impl), dm, dtype, 0, 0.0)
    head = _block("head", "head", *head_ops(sh, impl), dm, dtype, 0,
                  2.0 * sh.b * sh.s * sh.h * sh.v, extra_s=dm.microbatch_overhead_s.value)
    return [emb] + [layer._replace(name=f"block{i}") for i in range(num_layers)] + [head]


def optimizer_bytes_per_param(dtype: str, optimizer: str) -> float:
    """HBM traffic of one optimizer step per parameter (fused/multi-tensor kernels).

    Mixed-precision Adam (ZeRO sec. 3.1 state): read 16-bit gradient, read+write fp32 master,
    momentum and variance, write the 16-bit weight: 2 + 24 + 2 = 28 bytes. fp32 Adam: read
    gradient, read+write weight, momentum, variance: 4 + 24 = 28. SGD: gradient + weight
    (+ momentum) read/written.
    """
    mixed = dtype.endswith("-mixed")
    e = 2 if mixed or dtype in ("bfloat16", "float16") else (8 if dtype == "float64" else 4)
    states = {"adam": 2, "adamw": 2, "sgd": 0, "sgd-momentum": 1}[optimizer]
    master = 2 * FP32 if mixed else 2 * e
    return e + master + states * 2 * (FP32 if mixed else e) + (e if mixed else 0)


def optimizer_step_s(param_count: float, dm: DeviceModel, dtype: str, optimizer: str) -> float:
    """Optimizer step of ``param_count`` parameters held on this rank: memory bound."""
    nbytes = param_count * optimizer_bytes_per_param(dtype, optimizer)
    return nbytes / (dm.memory_bandwidth_bytes_per_s.value * dm.memory_efficiency.value)
