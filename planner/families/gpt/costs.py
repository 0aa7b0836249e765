"""GPT's analytic block costs: its kernels against a device model's roofline.

Every forward and backward pass of a block is a list of kernels (``planner.cost.roofline.Op``)
with the FLOPs they do and the bytes they move through HBM, priced by ``planner.cost.roofline``.
The operation lists follow two implementations (``implementation``):

- ``"megatron"``: Megatron-LM's ParallelTransformerLayer (Shoeybi et al. 2019, arXiv 1909.08053,
  fig. 3; megatron/model/transformer.py): fused QKV column-parallel GEMM, QK^T as baddbmm,
  fused scale-mask-softmax, attention dropout, AV bmm, context transpose, row-parallel dense,
  fused bias-dropout-add, fused bias-GeLU; embedding with dropout; head through the (tied) word
  embedding and the vocab-parallel cross entropy of megatron/core/tensor_parallel/
  cross_entropy.py (logits cast to fp32, max, subtract, exp, sum, divide; backward multiply and
  cast back); the vocabulary padded to a multiple of 128 x tp (``megatron_vocab``). This is
  what the calibration runs (Megatron-DeepSpeed) executed.
- ``"executor"``: this project's GPT (``planner.families.gpt.model``): separate q/k/v linears,
  ``scaled_dot_product_attention`` (FlashAttention-2 on A100/H100 in 16-bit: Dao 2023,
  arXiv 2307.08691 -- causal blocks above the diagonal skipped, so half of 4bs^2h FLOPs in the
  forward and 2.5x that in the backward, which recomputes QK^T; no s x s matrix in HBM), GELU,
  residual adds, no dropout, untied head and ``F.cross_entropy`` on fp32 logits, the vocabulary
  split unpadded (ceil(V/tp) rows on the largest shard).

Tensor parallelism (Megatron column/row split) divides the GEMMs' output or reduction dimension,
heads and vocabulary (both implementations shard embedding and head by vocabulary and compute
the cross entropy loss-parallel) by ``tp``; LayerNorm, dropout and residual work on the full b*s*h unless
sequence parallelism splits the tokens by ``tp`` too (Korthikanti et al. 2022, arXiv 2205.05198,
sec. 4.2.2). Communication is not here: the simulator adds it. Backward of a linear layer is two
GEMMs of the same FLOPs as its forward (input gradient dY W^T and weight gradient X^T dY);
element-wise backward reads the saved input and the incoming gradient and writes one gradient.

Without a device model: FLOPs at ``peak * compute_efficiency`` (backward = 2 x forward FLOPs).
Activation bytes saved per layer follow Korthikanti et al. 2022 Table 2 without parallelism,
s*b*h*(34 + 5*a*s/h) at 2 bytes per element, scaled to the element size.
"""
from __future__ import annotations

from planner.cost.compute import BlockCost, TpSplit
from planner.cost.precision import peak_flops
from planner.cost.roofline import (FLASH_BACKWARD_RATIO, BlockTime, Op, Shape, block_time,
                                   gemm, linear, pass_time_s, pointwise)
from planner.errors import PlannerError
from planner.families.gpt import block_forward_flops, layer_params, vocab_shard
from planner.specs import IMPLEMENTATIONS

MASK_BYTES = 1          # dropout masks are bool/uint8 tensors
FP32 = 4


def _norm(name, sh: Shape):
    n = sh.norm_tokens * sh.h
    return [pointwise(name, n, 2 * sh.e, 8)], [pointwise(name + ".bwd", n, 3 * sh.e, 12)]


def _attention_core(sh: Shape, implementation: str):
    """QK^T, softmax (+ dropout), AV of a/tp heads; returns (forward, backward) op lists.
    Under context parallelism this rank's s/cp queries meet all s keys (the ring's blocks;
    load-balanced, so the causal half of them)."""
    heads = sh.a // sh.tp
    d = sh.h // sh.a
    bh, s, e = sh.b * heads, sh.s, sh.e
    q = s // sh.cp
    if implementation == "executor":
        full = 4.0 * bh * q * s * d                  # QK^T and AV, 2 FLOPs per multiply-add
        io = e * bh * d * (2 * q + 2 * s) / 4        # q, o local; k, v all of the sequence
        fwd = [Op("flash_attn", full / 2, 4 * io, True)]              # read q,k,v, write o
        bwd = [Op("flash_attn.bwd", FLASH_BACKWARD_RATIO * full / 2, 8 * io, True)]    # + do, o; write dq,dk,dv
        return fwd, bwd
    probs = bh * q * s
    fwd = [gemm("qk", q, s, d, e, bh), pointwise("softmax", probs, 2 * e, 5),
           pointwise("attn_dropout", probs, 2 * e + MASK_BYTES),
           gemm("av", q, d, s, e, bh)]
    bwd = [gemm("av.dgrad", q, s, d, e, bh), gemm("av.wgrad", s, d, q, e, bh),
           pointwise("attn_dropout.bwd", probs, 2 * e + MASK_BYTES),
           pointwise("softmax.bwd", probs, 3 * e, 4),
           gemm("qk.dgrad", q, d, s, e, bh), gemm("qk.wgrad", s, d, q, e, bh)]
    return fwd, bwd


def attention_core_forward_ops(sh: Shape, implementation: str = "executor") -> list[Op]:
    """What selective recompute (Korthikanti et al. 2022, sec. 4) runs again in the backward."""
    return _attention_core(sh, implementation)[0]


def layer_ops(sh: Shape, implementation: str = "executor") -> tuple[list[Op], list[Op]]:
    """Forward and backward kernels of one decoder layer on one tensor-parallel rank."""
    _check(implementation)
    T, h, f, t, e = sh.tokens, sh.h, sh.f, sh.tp, sh.e
    res = sh.norm_tokens * h
    fwd, bwd = [], []

    def add(pair):
        fwd.extend(pair[0])
        bwd[:0] = pair[1]            # backward runs in reverse order

    add(_norm("ln1", sh))
    if implementation == "megatron":
        add(linear("qkv", T, h, 3 * h / t, e))
    else:
        for name in ("q", "k", "v"):
            add(linear(name, T, h, h / t, e))
    add(_attention_core(sh, implementation))
    add(([pointwise("context_copy", T * h / t, 2 * e)],
         [pointwise("context_copy.bwd", T * h / t, 2 * e)]))
    add(linear("attn_out", T, h / t, h, e))
    add(_residual("residual1", res, e, implementation))
    add(_norm("ln2", sh))
    add(linear("fc1", T, h, f / t, e))
    add(([pointwise("gelu", T * f / t, 2 * e, 8)], [pointwise("gelu.bwd", T * f / t, 3 * e, 12)]))
    add(linear("fc2", T, f / t, h, e))
    add(_residual("residual2", res, e, implementation))
    return fwd, bwd


def _residual(name, n, e, implementation):
    if implementation == "megatron":   # fused bias-dropout-add: read x and residual, write y and the mask
        return ([pointwise(name, n, 3 * e + MASK_BYTES)],
                [pointwise(name + ".bwd", n, 2 * e + MASK_BYTES)])
    return [pointwise(name, n, 3 * e)], []       # the gradient passes through unchanged


def _check(implementation: str) -> None:
    if implementation not in IMPLEMENTATIONS:
        raise PlannerError(f"implementation {implementation!r} is not one of: "
                           f"{', '.join(IMPLEMENTATIONS)}")


MEGATRON_VOCAB_DIVISIBLE_BY = 128   # Megatron-LM's --make-vocab-size-divisible-by default


def megatron_vocab(vocab_size: int, tp: int) -> int:
    """Megatron pads the vocabulary to a multiple of ``make-vocab-size-divisible-by`` (128) x
    tp (megatron/training/tokenizer/tokenizer.py, ``_vocab_size_with_padding``)."""
    step = MEGATRON_VOCAB_DIVISIBLE_BY * tp
    return -(-vocab_size // step) * step


def _vocab(sh: Shape, implementation: str) -> float:
    """Vocabulary rows on one tp rank: both split embedding and head by vocabulary (Megatron's
    VocabParallelEmbedding; the executor's RowwiseParallel/ColwiseParallel, executor/parallel/
    tp.py); Megatron pads the vocabulary first, the executor's shards are uneven."""
    if implementation == "megatron":
        return megatron_vocab(sh.v, sh.tp) // sh.tp
    return vocab_shard(sh.v, sh.tp)


def embedding_ops(sh: Shape, implementation: str = "executor") -> tuple[list[Op], list[Op]]:
    """Token + position embedding lookup; Megatron adds dropout.

    Backward: PyTorch's dense embedding backward zero-fills a V/tp x h gradient, index-adds the
    b*s rows into it and accumulates it into ``.grad`` (read + write)."""
    T, h, e = sh.tokens, sh.h, sh.e
    fwd = [pointwise("tok_lookup", T * h, 2 * e), pointwise("pos_add", T * h, 3 * e)]
    bwd = [pointwise("tok_grad", _vocab(sh, implementation) * h, 4 * e),
           pointwise("tok_index_add", T * h, 3 * e), pointwise("pos_grad", T * h, 2 * e)]
    if implementation == "megatron":
        fwd.append(pointwise("emb_dropout", T * h, 2 * e + MASK_BYTES))
        bwd.insert(0, pointwise("emb_dropout.bwd", T * h, 2 * e + MASK_BYTES))
    return fwd, bwd


def head_ops(sh: Shape, implementation: str = "executor") -> tuple[list[Op], list[Op]]:
    """Final LayerNorm, LM head GEMM and the cross-entropy loss.

    Cross entropy per logit (fp32 after a cast): Megatron's vocab-parallel version does cast
    (e read + 4 write), max (4), subtract (8), exp (8), sum (4), divide (8) forward and multiply
    (8) + cast back (4 + e) backward; ``F.cross_entropy`` does cast, log-softmax (8, with a
    max/sum pass 8) forward, and log-softmax backward (12) + cast back (4 + e).
    """
    T, h, e = sh.tokens, sh.h, sh.e
    logits = T * _vocab(sh, implementation)
    ln_f, ln_b = _norm("ln_f", sh)
    lin_f, lin_b = linear("lm_head", T, h, _vocab(sh, implementation), e, bias=False,
                          fp8=False)
    if implementation == "megatron":
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


def _launches(kind: str, sh: Shape) -> tuple[int, int]:
    """The tp collectives a block of ``kind`` launches per (forward, backward) pass."""
    from planner import families
    from planner.cost.tp import launches
    return launches(families.get("gpt"), kind, sh.sp, sh.tp)


def block_times(num_layers: int, sh: Shape, dm, dtype: str, implementation: str = "executor"
                ) -> list[BlockTime]:
    """Embedding, ``num_layers`` identical layers and the head, timed on one tp rank.

    The tp collectives of each block (``_launches``) only add host launch time: their transfer
    time belongs to the simulator. The head's forward carries ``microbatch_overhead_s``.
    Forward FLOPs are the model's for MFU (``block_forward_flops``: Narayanan et al. SC'21
    eq. 2 per layer with causal attention at half, 2bshV head).
    """
    lf, lb = layer_ops(sh, implementation)
    core = pass_time_s(attention_core_forward_ops(sh, implementation), dm, dtype)
    layer = block_time("layer", "block", lf, lb, dm, dtype, _launches("block", sh),
                       float(block_forward_flops(sh.b, sh.s, sh.h, sh.f)), core)
    emb = block_time("embedding", "embedding", *embedding_ops(sh, implementation), dm, dtype,
                     _launches("embedding", sh), 0.0)
    head = block_time("head", "head", *head_ops(sh, implementation), dm, dtype,
                      _launches("head", sh), 2.0 * sh.b * sh.s * sh.h * sh.v,
                      extra_s=dm.microbatch_overhead_s.value)
    return [emb] + [layer._replace(name=f"block{i}") for i in range(num_layers)] + [head]


def analytic_costs(spec, microbatch_size: int, device, dtype: str, bytes_per_element: int,
                   device_model=None, implementation: str = "executor") -> tuple[BlockCost, ...]:
    """Block costs of a GPT without a profile (module docstring): with a device model
    (``device_model``, or the profile ``device.model_profile`` names) each block's kernels
    against the roofline, with ``tp_split`` for tensor-parallel ranks; without one, FLOPs at
    ``peak * compute_efficiency``."""
    _check(implementation)
    if device_model is None and device.model_profile:
        from planner import devices
        device_model = devices.load(device.model_profile)
    if device_model is not None:
        return _roofline_costs(spec, microbatch_size, device_model, dtype, bytes_per_element,
                               implementation)
    peak = peak_flops(device, dtype)
    if not peak:
        raise PlannerError(f"device {device.name} has no peak_flops_per_s for dtype {dtype} to "
                           f"cost {spec.name} analytically; profile the model on it instead")
    rate = peak * device.compute_efficiency
    b, s, h, v = microbatch_size, spec.seq_len, spec.hidden_size, spec.vocab_size
    e = bytes_per_element
    act, out = _saved_bytes(spec, b, e), b * s * h * e
    block_flops = block_forward_flops(b, s, h, spec.ffn_hidden_size)
    head_flops = 2.0 * b * s * h * v
    blocks = [BlockCost("embedding", "embedding", 0.0, 0.0, 0.0, (v + s) * h, 0, out)]
    blocks += [BlockCost(f"block{i}", "block", block_flops / rate, 2 * block_flops / rate,
                         block_flops, layer_params(h, spec.ffn_hidden_size), act, out)
               for i in range(spec.num_layers)]
    blocks.append(BlockCost("head", "head", head_flops / rate, 2 * head_flops / rate, head_flops,
                            h * v + 2 * h, b * s * (h + v) * e, b * s * v * e))
    return tuple(blocks)


def _saved_bytes(spec, b: int, e: int) -> int:
    """Korthikanti et al. 2022 Table 2 without parallelism: s*b*h*(34 + 5as/h) at 2 bytes."""
    s, h, a = spec.seq_len, spec.hidden_size, spec.num_heads
    return int(s * b * h * (34 + 5 * a * s / h) * e / 2)


def _roofline_costs(spec, b: int, dm, dtype: str, e: int, implementation: str) -> tuple[BlockCost, ...]:
    """``analytic_costs`` from the roofline: times at tp=1 plus ``tp_split``."""
    s, h, f, a, v = spec.seq_len, spec.hidden_size, spec.ffn_hidden_size, spec.num_heads, \
        spec.vocab_size
    cache: dict = {}

    def times(tp: int, sp: bool, cp: int = 1):
        key = (tp, sp, cp)
        if key not in cache:
            sh = Shape(b, s, h, a, f, v, tp, sp, e, cp)
            cache[key] = block_times(1, sh, dm, dtype, implementation)
        return cache[key]

    def splitter(index: int) -> TpSplit:
        def split(tp, sp, f_comm_s=0.0, b_comm_s=0.0, cp=1, load=1.0):
            blk = times(tp, sp, cp)[index]
            # A launch-bound pass keeps issuing kernels while its collectives run on the GPU,
            # so the pass takes max(host issue time, GPU kernels + collectives): report the
            # compute share of that, the simulator adds the collectives.
            fwd = max(blk.forward_s - f_comm_s, blk.forward_gpu_s)
            bwd = max(blk.backward_s - b_comm_s, blk.backward_gpu_s)
            return fwd, bwd, blk.attention_core_forward_s
        return split

    emb, layer, head = times(1, False)[:3]
    act, out = _saved_bytes(spec, b, e), b * s * h * e
    # one splitter per kind: identical layers must compare equal (the simulator costs each
    # distinct block once)
    split_emb, split_layer, split_head = splitter(0), splitter(1), splitter(2)
    blocks = [BlockCost("embedding", "embedding", emb.forward_s, emb.backward_s, 0.0,
                        (v + s) * h, 0, out, split_emb)]
    blocks += [BlockCost(f"block{i}", "block", layer.forward_s, layer.backward_s,
                         layer.forward_flops, layer_params(h, f), act, out, split_layer)
               for i in range(spec.num_layers)]
    blocks.append(BlockCost("head", "head", head.forward_s, head.backward_s, head.forward_flops,
                            h * v + 2 * h, b * s * (h + v) * e, b * s * v * e, split_head))
    return tuple(blocks)
