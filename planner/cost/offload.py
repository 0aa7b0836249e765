"""Offload (FSDP2's ``CPUOffloadPolicy``): what keeping the sharded parameters, their
gradients and the optimizer state in host memory costs.

FSDP2 copies each sharded parameter host-to-device before its all-gather and each reduced
gradient shard device-to-host after its reduce-scatter, and runs the optimizer step on the host
(torch's ``CPUOffloadPolicy`` docstring; ZeRO-Offload, Ren et al., USENIX ATC 2021, sec. 4,
the same split). The copies cross the device-host link (``DeviceSpec.host_link_bytes_per_s``,
PCIe per direction); the host's optimizer step is the GPU's elementwise roofline
(``planner.cost.precision.optimizer_bytes_touched``) at this device's share of the host's DRAM
bandwidth (``host_memory_bandwidth_bytes_per_s``) -- an upper bound on its speed: torch's
foreach Adam on a CPU runs below memory bandwidth (ZeRO-Offload's vectorised CPU-Adam exists to
close that gap), so expect the optimizer term to be optimistic.
"""
from __future__ import annotations

from planner.cost.precision import optimizer_bytes_touched
from planner.errors import PlannerError


def host_link(run) -> float:
    """The device-host bandwidth per direction (one-line error when the cluster lacks a host
    figure offload needs)."""
    device = run.cluster.device
    if not device.offload_known:
        raise PlannerError(f"offload: device {device.name} of cluster {run.cluster.name} needs "
                           f"host_link_bytes_per_s (PCIe to host memory), "
                           f"host_memory_bandwidth_bytes_per_s and host_memory_bytes > 0, got "
                           f"{device.host_link_bytes_per_s}, "
                           f"{device.host_memory_bandwidth_bytes_per_s}, "
                           f"{device.host_memory_bytes}: give them in the cluster file's device")
    return device.host_link_bytes_per_s


def copy_s(nbytes: float, bandwidth: float) -> float:
    """One host-device copy of ``nbytes`` (0 without offload: ``bandwidth`` 0)."""
    return nbytes / bandwidth if bandwidth > 0 and nbytes > 0 else 0.0


def optimizer_s(run, params: float) -> float:
    """The host's optimizer step over ``params`` parameters."""
    bw = run.cluster.device.host_memory_bandwidth_bytes_per_s
    if bw <= 0:
        raise PlannerError(f"offload: device {run.cluster.device.name} has no "
                           "host_memory_bandwidth_bytes_per_s (where the optimizer then runs)")
    return params * optimizer_bytes_touched(run.dtype, run.optimizer) / bw
