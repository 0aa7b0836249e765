"""The kernels of a MoE layer's MLP half for the roofline (the attention half and the driver are
``planner.families.llama.costs``).

On one tp rank, for the T tokens of a micro-batch (all of them: under sequence parallelism the
MoE input is gathered first): the RMSNorm; the router GEMM T x h -> E (replicated over tp), its
softmax (fp32 under autocast) and top-k; the load-balancing loss's per-expert sums; the dispatch
gather of the k routed copies (T*k rows of h); the experts as grouped GEMMs -- one kernel per
projection for all E experts, each of T*k/E rows (routing taken as balanced, as
torchtitan's/Megatron's grouped GEMM runs them; the CPU executor loops over experts instead) --
on f_e / tp columns, with SiLU and product; the combine (scale by the gate weight, index-add
back to the token); the shared expert as a dense SwiGLU of f_s / tp columns with its sigmoid
gate; the residual add. Backward mirrors each (two GEMMs per projection, the gather's backward an
index-add, the combine's backward also the gate weights' gradient).
"""
from __future__ import annotations

from planner.cost.roofline import Shape, gemm, linear, pointwise
from planner.families.llama.costs import FP32, norm_ops, swiglu_ops
from planner.families.moe import expert_ffn


def grouped_linear(name: str, rows: float, k: float, n: float, e: int, groups: int):
    """``groups`` GEMMs Y[rows, n] = X[rows, k] W[k, n] as one grouped kernel; backward dX and
    dW grouped the same way (linear layers: FP8 under dtype "fp8")."""
    return ([gemm(name, rows, n, k, e, groups)._replace(fp8=True)],
            [gemm(name + ".dgrad", rows, k, n, e, groups)._replace(fp8=True),
             gemm(name + ".wgrad", k, n, rows, e, groups)._replace(fp8=True)])


def _experts(spec, sh: Shape):
    T, h, t, e = sh.tokens * sh.load, sh.h, sh.tp, sh.e
    E, k = spec.num_experts, spec.experts_per_token
    rows, f = T * k / E, expert_ffn(spec) / t
    fwd, bwd = [], []
    for part in ("gate", "up"):
        f_op, b_op = grouped_linear(f"experts.{part}", rows, h, f, e, E)
        fwd += f_op
        bwd = b_op + bwd
    n = T * k * f
    fwd += [pointwise("experts.silu", n, 2 * e, 4), pointwise("experts.mul", n, 3 * e)]
    bwd = [pointwise("experts.mul.bwd", n, 5 * e, 2),
           pointwise("experts.silu.bwd", n, 3 * e, 8)] + bwd
    f_op, b_op = grouped_linear("experts.down", rows, f, h, e, E)
    return fwd + f_op, b_op + bwd


def moe_mlp_ops(spec, sh: Shape):
    """(forward, backward) kernels of a MoE layer's MLP half on one tp rank (module docstring)."""
    T, h, e = sh.tokens, sh.h, sh.e
    E, k = spec.num_experts, spec.experts_per_token
    fwd, bwd = [], []

    def add(pair):
        fwd.extend(pair[0])
        bwd[:0] = pair[1]

    add(norm_ops("moe_norm", sh.norm_tokens * h, e))
    add(linear("router", T, h, E, e, bias=False, fp8=False))
    add(([pointwise("router.softmax", T * E, e + FP32, 5),
          pointwise("router.topk", T * E, FP32, 2),
          pointwise("router.balance", T * E, FP32, 2)],
         [pointwise("router.softmax.bwd", T * E, 3 * FP32, 4)]))
    routed = T * k * h
    add(([pointwise("dispatch", routed, 2 * e)], [pointwise("dispatch.bwd", routed, 3 * e)]))
    add(_experts(spec, sh))
    add(([pointwise("combine", routed, 3 * e, 2)], [pointwise("combine.bwd", routed, 4 * e, 2)]))
    fs = spec.shared_expert_ffn_hidden_size
    if fs:
        add(swiglu_ops("shared", T, h, fs / sh.tp, e))
        if spec.shared_expert_gate:
            add(linear("shared.gate", T, h, 1, e, bias=False))
            add(([pointwise("shared.gate.mul", T * h, 3 * e, 2)],
                 [pointwise("shared.gate.mul.bwd", T * h, 4 * e, 2)]))
    add(([pointwise("residual2", sh.norm_tokens * h, 3 * e)], []))
    return fwd, bwd
