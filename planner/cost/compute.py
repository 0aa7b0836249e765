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


def analytic_costs(spec: ModelSpec, microbatch_size: int, device: DeviceSpec, dtype: str,
                   bytes_per_element: int, device_model=None, implementation: str = "executor"
                   ) -> tuple[BlockCost, ...]:
    """Block costs without a profile, from the model's family (``Family.analytic_costs``):
    its kernels against the device model's roofline, or FLOPs at peak * efficiency."""
    from planner import families
    return families.of(spec).analytic_costs(spec, microbatch_size, device, dtype,
                                            bytes_per_element, device_model, implementation)
