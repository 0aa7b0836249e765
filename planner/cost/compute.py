"""Per-block compute costs: from a measured profile, or analytically from FLOPs.

Either way the result is a tuple of ``BlockCost`` at the requested micro-batch size, the one
input the DP/TP/PP cost functions and the simulator need about compute.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from planner.errors import PlannerError
from planner.specs import DeviceSpec, ModelProfile, ModelSpec

# (tp, sequence_parallel, forward TP-collective seconds, backward TP-collective seconds)
#   -> (forward_s, backward_s, attention_core_forward_s) on one tensor-parallel rank
TpSplit = Callable[[int, bool, float, float], tuple[float, float, float]]


class BlockCost(NamedTuple):
    """One block at one micro-batch size, on one unsplit device.

    ``tp_split``, when set (analytic costs from a device model), gives the block's compute on
    one rank of a tensor-parallel group directly -- matmuls shrink and lose efficiency, a
    launch-bound pass does not shrink at all -- instead of ``forward_s / tp``.
    """
    name: str
    kind: str
    forward_s: float
    backward_s: float
    forward_flops: float
    param_count: int
    saved_activation_bytes: int
    output_bytes: int
    tp_split: TpSplit | None = None


def from_profile(profile: ModelProfile, microbatch_size: int) -> tuple[BlockCost, ...]:
    """Measured block costs scaled to ``microbatch_size``.

    Time, FLOPs and activation bytes are taken as proportional to the micro-batch size (tokens
    per block call); this holds once a block's matmuls are large enough to run at steady
    efficiency (``benchmarks/extrapolate_cpu.py`` measures how far off it is on small blocks;
    with profiles at two sizes ``planner.inputs`` fits overhead + work/throughput instead).
    Parameter counts do not scale.
    """
    k = microbatch_size / profile.microbatch_size
    return tuple(BlockCost(b.name, b.kind, b.forward_time_s * k, b.backward_time_s * k,
                           b.forward_flops * k, b.param_count, int(b.saved_activation_bytes * k),
                           int(b.output_bytes * k)) for b in profile.blocks)


def gpt_block_forward_flops(b: int, s: int, h: int, f: int) -> float:
    """Forward FLOPs of one decoder block: 8bsh^2 (q,k,v,o) + 4bshf (MLP) + 4bs^2h (QK^T, AV).

    With f = 4h this is 24bsh^2 + 4bs^2h, one third of the per-layer training FLOPs
    72bsh^2(1 + s/6h) of Narayanan et al. SC'21 (arXiv 2104.04473), eq. (2) without the head.
    Causal masking is not credited (as in that paper and in PaLM's MFU, appendix B).
    """
    return 8 * b * s * h * h + 4 * b * s * h * f + 4 * b * s * s * h


def analytic_costs(spec: ModelSpec, microbatch_size: int, device: DeviceSpec, dtype: str,
                   bytes_per_element: int, device_model=None, impl: str = "zoo"
                   ) -> tuple[BlockCost, ...]:
    """Block costs of a GPT without a profile.

    With a device model (``device_model``, or the profile ``device.model_profile`` names): each
    block's operations against the roofline of ``planner.cost.roofline`` (``impl`` "zoo" is this
    project's GPT, "megatron" Megatron-LM's layer), with ``tp_split`` for tensor-parallel ranks.
    Without one: FLOPs at ``peak * compute_efficiency`` (backward = 2 x forward FLOPs).

    Activation bytes saved per layer follow Korthikanti et al. 2022 (arXiv 2205.05198) Table 2
    without parallelism, s*b*h*(34 + 5*a*s/h) at 2 bytes per element, scaled to the element size.
    """
    if spec.family != "gpt":
        raise PlannerError(f"model {spec.name!r} (family {spec.family}) has no analytic cost "
                           "model: profile it with `planner profile --model ...` first")
    if device_model is None and device.model_profile:
        from planner import devices
        device_model = devices.load(device.model_profile)
    if device_model is not None:
        return _roofline_costs(spec, microbatch_size, device_model, dtype, bytes_per_element,
                               impl)
    peak_key = "bfloat16" if dtype in ("bf16-mixed", "bfloat16") else (
        "float16" if dtype in ("fp16-mixed", "float16") else "tf32")
    peak = device.peak_flops_per_s.get(peak_key)
    if not peak:
        raise PlannerError(f"device {device.name} has no peak_flops_per_s[{peak_key!r}] to cost "
                           f"{spec.name} analytically; profile the model on it instead")
    rate = peak * device.compute_efficiency
    b, s, h, f, a, v = (microbatch_size, spec.seq_len, spec.hidden_size, spec.ffn_hidden_size,
                        spec.num_heads, spec.vocab_size)
    e = bytes_per_element
    act = int(s * b * h * (34 + 5 * a * s / h) * e / 2)
    out = b * s * h * e
    layer_params = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h  # q,k,v,o + MLP + 2 LayerNorms
    block_flops = gpt_block_forward_flops(b, s, h, f)
    head_flops = 2.0 * b * s * h * v
    blocks = [BlockCost("embedding", "embedding", 0.0, 0.0, 0.0, (v + s) * h, 0, out)]
    blocks += [BlockCost(f"block{i}", "block", block_flops / rate, 2 * block_flops / rate,
                         block_flops, layer_params, act, out) for i in range(spec.num_layers)]
    blocks.append(BlockCost("head", "head", head_flops / rate, 2 * head_flops / rate, head_flops,
                            h * v + 2 * h, b * s * (h + v) * e, b * s * v * e))
    return tuple(blocks)


def _roofline_costs(spec: ModelSpec, b: int, dm, dtype: str, e: int, impl: str
                    ) -> tuple[BlockCost, ...]:
    """``analytic_costs`` from ``planner.cost.roofline``: times at tp=1 plus ``tp_split``."""
    from planner.cost import roofline

    s, h, f, a, v = spec.seq_len, spec.hidden_size, spec.ffn_hidden_size, spec.num_heads, \
        spec.vocab_size
    cache: dict = {}

    def times(tp: int, sp: bool):
        key = (tp, sp)
        if key not in cache:
            sh = roofline.Shape(b, s, h, a, f, v, tp, sp, e)
            # The TP collectives of a block are launches too (2 all-reduces, or 2 all-gathers
            # and 2 reduce-scatters with sequence parallelism, per pass).
            colls = 0 if tp == 1 else (4 if sp else 2)
            cache[key] = roofline.gpt_block_times(1, sh, dm, dtype, impl, colls)
        return cache[key]

    def splitter(index: int) -> TpSplit:
        def split(tp, sp, f_comm_s=0.0, b_comm_s=0.0):
            blk = times(tp, sp)[index]
            # A launch-bound pass keeps issuing kernels while its collectives run on the GPU,
            # so the pass takes max(host issue time, GPU kernels + collectives): report the
            # compute share of that, the simulator adds the collectives.
            fwd = max(blk.forward_s - f_comm_s, blk.forward_gpu_s)
            bwd = max(blk.backward_s - b_comm_s, blk.backward_gpu_s)
            return fwd, bwd, blk.attention_core_forward_s
        return split

    base = times(1, False)
    emb, layer, head = base[0], base[1], base[2]
    act = int(s * b * h * (34 + 5 * a * s / h) * e / 2)
    out = b * s * h * e
    layer_params = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h  # q,k,v,o + MLP + 2 LayerNorms
    split_emb, split_layer, split_head = splitter(0), splitter(1), splitter(2)
    blocks = [BlockCost("embedding", "embedding", emb.forward_s, emb.backward_s, 0.0,
                        (v + s) * h, 0, out, split_emb)]
    blocks += [BlockCost(f"block{i}", "block", layer.forward_s, layer.backward_s,
                         layer.forward_flops, layer_params, act, out, split_layer)
               for i in range(spec.num_layers)]
    blocks.append(BlockCost("head", "head", head.forward_s, head.backward_s, head.forward_flops,
                            h * v + 2 * h, b * s * (h + v) * e, b * s * v * e, split_head))
    return tuple(blocks)
