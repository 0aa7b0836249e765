"""Per-block compute costs: from a measured profile, or analytically from FLOPs.

Either way the result is a tuple of ``BlockCost`` at the requested micro-batch size, the one
input the DP/TP/PP cost functions and the simulator need about compute.
"""
from __future__ import annotations

from typing import NamedTuple

from planner.errors import PlannerError
from planner.specs import DeviceSpec, ModelProfile, ModelSpec


class BlockCost(NamedTuple):
    name: str
    kind: str
    forward_s: float
    backward_s: float
    forward_flops: float
    param_count: int
    saved_activation_bytes: int
    output_bytes: int


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
                   bytes_per_element: int) -> tuple[BlockCost, ...]:
    """Block costs from FLOPs at ``peak * compute_efficiency`` (backward = 2 x forward FLOPs).

    Activation bytes saved per layer follow Korthikanti et al. 2022 (arXiv 2205.05198) Table 2
    without parallelism, s*b*h*(34 + 5*a*s/h) at 2 bytes per element, scaled to the element size.
    """
    if spec.family != "gpt":
        raise PlannerError(f"model {spec.name!r} (family {spec.family}) has no analytic cost "
                           "model: profile it with `planner profile --model ...` first")
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
