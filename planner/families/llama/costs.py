"""Llama's analytic block costs: its kernels against a device model's roofline.

The kernels are those of this project's torch model (``planner.families.llama.model``) on a GPU
(``implementation`` "executor", the only one): fused RMSNorm (read x, write y; backward reads x
and dy, writes dx), separate q/k/v projections (k and v at ``num_kv_heads`` heads: grouped-query attention,
Ainslie et al. 2023), rotary embedding on q and k (Su et al. 2021; read, write), optional
per-head q/k RMSNorm (Qwen3), ``scaled_dot_product_attention`` with ``enable_gqa`` as
FlashAttention-2 (Dao 2023, arXiv 2307.08691: the causal half of 4bs^2*a*d FLOPs forward and
2.5x that backward, reading q, k, v and writing o; no s x s matrix), the context copy
(transpose to contiguous), the output projection, the residual add, and the SwiGLU MLP
(Shazeer 2020, arXiv 2002.05202: gate and up projections, SiLU, product, down projection).
Embedding lookup and head as the GPT family's zoo model (``F.cross_entropy`` on fp32 logits).

Tensor parallelism (Megatron's split) divides heads, K/V heads and FFN columns by ``tp``;
norms and residual adds work on all tokens unless sequence parallelism splits them too.
Communication is not here: the simulator adds it. Backward of a linear layer is two GEMMs of its
forward's FLOPs. A MoE layer replaces the MLP half (``planner.families.moe.costs``): each layer
asks its family for its MLP kernels, so this module serves both families.

Without a device model: FLOPs at ``peak * compute_efficiency`` (backward = 2 x forward).
"""
from __future__ import annotations

from planner.cost.compute import BlockCost, TpSplit
from planner.cost.precision import peak_flops
from planner.cost.roofline import (FLASH_BACKWARD_RATIO, BlockTime, Op, Shape, block_time,
                                   linear, pass_time_s, pointwise)
from planner.errors import PlannerError
from planner.families.llama import head_dim, kv_heads

FP32 = 4


def norm_ops(name: str, elements: float, e: int):
    """Fused RMSNorm: forward reads x and writes y (~4 FLOPs per element: square, sum,
    scale, weight); backward reads x and dy and writes dx."""
    return [pointwise(name, elements, 2 * e, 4)], [pointwise(name + ".bwd", elements, 3 * e, 8)]


def swiglu_ops(name: str, tokens: float, h: int, f: float, e: int):
    """SwiGLU on ``tokens`` rows with ``f`` columns on this rank: gate and up projections,
    SiLU (reads g, writes) and the product (reads two, writes one), down projection. Backward:
    the product's (reads dy, silu(g), u; writes two), SiLU's (reads g, dy; writes)."""
    fwd, bwd = [], []
    for part in ("gate", "up"):
        f_op, b_op = linear(f"{name}.{part}", tokens, h, f, e, bias=False)
        fwd += f_op
        bwd = b_op + bwd
    n = tokens * f
    fwd += [pointwise(f"{name}.silu", n, 2 * e, 4), pointwise(f"{name}.mul", n, 3 * e)]
    bwd = [pointwise(f"{name}.mul.bwd", n, 5 * e, 2), pointwise(f"{name}.silu.bwd", n, 3 * e, 8)] \
        + bwd
    f_op, b_op = linear(f"{name}.down", tokens, f, h, e, bias=False)
    return fwd + f_op, b_op + bwd


def attention_ops(spec, sh: Shape):
    """Norm, q/k/v projections, rotary, (q/k norm), flash attention, context copy, output
    projection and residual of one layer on one tp rank: (forward, backward) op lists."""
    T, h, t, e = sh.tokens, sh.h, sh.tp, sh.e
    a, kv, d = spec.num_heads / t, kv_heads(spec) / t, head_dim(spec)
    fwd, bwd = [], []

    def add(pair):
        fwd.extend(pair[0])
        bwd[:0] = pair[1]

    add(norm_ops("attn_norm", sh.norm_tokens * h, e))
    for name, heads in (("q", a), ("k", kv), ("v", kv)):
        add(linear(name, T, h, heads * d, e, bias=spec.qkv_bias))
    if spec.qk_norm:
        add(norm_ops("qk_norm", T * (a + kv) * d, e))
    rot = T * (a + kv) * d
    add(([pointwise("rope", rot, 2 * e, 3)], [pointwise("rope.bwd", rot, 2 * e, 3)]))
    add(attention_core_ops(spec, sh))
    add(([pointwise("context_copy", T * a * d, 2 * e)],
         [pointwise("context_copy.bwd", T * a * d, 2 * e)]))
    add(linear("o", T, a * d, h, e, bias=False))
    add(([pointwise("residual1", sh.norm_tokens * h, 3 * e)], []))
    return fwd, bwd


def attention_core_ops(spec, sh: Shape):
    """FlashAttention-2 of this rank's T = b*s/cp queries against all b*s keys of a/tp heads
    (kv/tp K/V heads): the causal half of 4*b*a*(s/cp)*s*d FLOPs forward, 2.5x backward
    (under context parallelism the ring's blocks, load-balanced: each rank does 1/cp of it);
    reads q, k, v, writes o."""
    T, t, e = sh.tokens, sh.tp, sh.e
    a, kv, d = spec.num_heads / t, kv_heads(spec) / t, head_dim(spec)
    full = 4.0 * T * a * sh.s * d                   # QK^T and AV, 2 FLOPs per multiply-add
    keys = sh.b * sh.s
    return ([Op("flash_attn", full / 2, e * (2 * T * a + 2 * keys * kv) * d, True)],
            [Op("flash_attn.bwd", FLASH_BACKWARD_RATIO * full / 2, e * (4 * T * a + 4 * keys * kv) * d, True)])


def dense_mlp_ops(spec, sh: Shape, layer: int):
    """The dense half of a layer: norm, SwiGLU of ``ffn_hidden_size`` split over tp, residual."""
    nf, nb = norm_ops("mlp_norm", sh.norm_tokens * sh.h, sh.e)
    sf, sb = swiglu_ops("mlp", sh.tokens, sh.h, spec.ffn_hidden_size / sh.tp, sh.e)
    res = [pointwise("residual2", sh.norm_tokens * sh.h, 3 * sh.e)]
    return nf + sf + res, sb + nb


def layer_ops(family, spec, sh: Shape, layer: int):
    af, ab = attention_ops(spec, sh)
    mf, mb = family.mlp_ops(spec, sh, layer)
    return af + mf, mb + ab


def embedding_ops(sh: Shape):
    """Token lookup; backward zero-fills the vocab x h gradient, index-adds the b*s rows and
    accumulates it into ``.grad`` (the GPT family's zoo embedding without positions)."""
    T, h, e = sh.tokens, sh.h, sh.e
    return ([pointwise("tok_lookup", T * h, 2 * e)],
            [pointwise("tok_grad", sh.v * h, 4 * e), pointwise("tok_index_add", T * h, 3 * e)])


def head_ops(sh: Shape):
    """Final RMSNorm, LM head GEMM (replicated over tp) and ``F.cross_entropy`` on fp32
    logits: cast, log-softmax (max/sum pass and the write) forward; its backward, cast back."""
    T, h, v, e = sh.tokens, sh.h, sh.v, sh.e
    logits = T * v
    nf, nb = norm_ops("final_norm", T * h, e)
    lf, lb = linear("lm_head", T, h, v, e, bias=False, fp8=False)
    ce_f = [pointwise("ce.cast", logits, e + FP32), pointwise("ce.max_sum", logits, 2 * FP32, 4),
            pointwise("ce.log_softmax", logits, 2 * FP32, 4)]
    ce_b = [pointwise("ce.log_softmax.bwd", logits, 3 * FP32, 4),
            pointwise("ce.cast.bwd", logits, e + FP32)]
    return nf + lf + ce_f, ce_b + lb + nb


def _variants(family, spec) -> dict[str, int]:
    """One representative layer per kind of layer (dense, MoE)."""
    out: dict[str, int] = {}
    for i in range(spec.num_layers):
        out.setdefault(family.layer_variant(spec, i), i)
    return out


def _block_times(family, spec, sh: Shape, dm, dtype: str) -> dict:
    """Embedding, head and one layer per variant timed on one tp rank. Host launch time
    counts each block's tp collectives too (``planner.cost.tp.launches``: the family's
    list, e.g. the head's sequence all-gather under sequence parallelism)."""
    from planner.cost.tp import launches

    def colls_of(kind):
        return launches(family, kind, sh.sp, sh.tp)
    b = sh.b
    colls = colls_of("block")
    out = {"embedding": block_time("embedding", "embedding", *embedding_ops(sh), dm, dtype,
                                   colls_of("embedding"), 0.0),
           "head": block_time("head", "head", *head_ops(sh), dm, dtype, colls_of("head"),
                              2.0 * b * sh.s * sh.h * sh.v,
                              extra_s=dm.microbatch_overhead_s.value)}
    core = pass_time_s(attention_core_ops(spec, sh)[0], dm, dtype)
    for variant, layer in _variants(family, spec).items():
        out[variant] = block_time("layer", "block", *layer_ops(family, spec, sh, layer), dm,
                                  dtype, colls, family.layer_forward_flops(spec, layer, b), core)
    return out


def analytic_costs(family, spec, microbatch_size: int, device, dtype: str, e: int,
                   device_model=None, implementation: str = "executor"
                   ) -> tuple[BlockCost, ...]:
    """Block costs of a Llama-style model without a profile: the kernels above against the
    device model (``device_model``, or the one ``device.model_profile`` names), with
    ``tp_split`` for tensor-parallel ranks; without one, FLOPs at ``peak * efficiency``."""
    if implementation != "executor":
        raise PlannerError(f"--implementation {implementation}: the {spec.family} family is "
                           "costed only as this project's executor runs it (--implementation "
                           "executor)")
    if device_model is None and device.model_profile:
        from planner import devices
        device_model = devices.load(device.model_profile)
    b, s, h, v = microbatch_size, spec.seq_len, spec.hidden_size, spec.vocab_size
    out_bytes = b * s * h * e
    cache: dict = {}

    def times(tp: int, sp: bool, cp: int = 1, load: float = 1.0) -> dict:
        key = (tp, sp, cp, load)
        if key not in cache:
            sh = Shape(b, s, h, spec.num_heads, spec.ffn_hidden_size, v, tp, sp, e, cp, load)
            cache[key] = _block_times(family, spec, sh, device_model, dtype)
        return cache[key]

    splitters: dict = {}

    def splitter(key: str) -> TpSplit:
        # one per kind of block: identical layers must compare equal (the simulator costs each
        # distinct block once)
        if key in splitters:
            return splitters[key]

        def split(tp, sp, f_comm_s=0.0, b_comm_s=0.0, cp=1, load=1.0):
            blk: BlockTime = times(tp, sp, cp, load)[key]
            # as the GPT family: a launch-bound pass issues kernels while collectives run
            fwd = max(blk.forward_s - f_comm_s, blk.forward_gpu_s)
            bwd = max(blk.backward_s - b_comm_s, blk.backward_gpu_s)
            return fwd, bwd, blk.attention_core_forward_s
        splitters[key] = split
        return split

    if device_model is None:
        rate = peak_flops(device, dtype) * device.compute_efficiency
        if not rate:
            raise PlannerError(f"device {device.name} has no peak_flops_per_s for dtype {dtype} "
                               f"to cost {spec.name} analytically; profile the model instead")

        def pair(key, flops):
            return flops / rate, 2 * flops / rate, None
    else:
        def pair(key, flops):
            blk = times(1, False)[key]
            return blk.forward_s, blk.backward_s, splitter(key)

    head_params = h + (0 if spec.tie_embeddings else v * h)
    head_flops = 2.0 * b * s * h * v
    f_s, b_s, split = pair("embedding", 0.0)
    blocks = [BlockCost("embedding", "embedding", f_s, b_s, 0.0, v * h, 0, out_bytes, split)]
    for i in range(spec.num_layers):
        variant = family.layer_variant(spec, i)
        flops = family.layer_forward_flops(spec, i, b)
        f_s, b_s, split = pair(variant, flops)
        saved = b * s * e * sum(family.layer_activation(spec, i))
        blocks.append(BlockCost(f"block{i}", "block", f_s, b_s, flops,
                                family.layer_params(spec, i)[0], int(saved), out_bytes, split))
    f_s, b_s, split = pair("head", head_flops)
    blocks.append(BlockCost("head", "head", f_s, b_s, head_flops, head_params,
                            b * s * (h + v) * e, b * s * v * e, split))
    return tuple(blocks)
