"""What a simulated step runs apart from the layout, and the figures every part shares.

``RunSpec`` is the model, cluster, precision and optimizer; ``comm_time`` the collective times of
a layout's groups (``planner.cost.collectives``); ``optimizer_time`` one optimizer step;
``compute_slowdown`` the co-located-rank interference of ``planner.profile.interference``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from planner.cost import collectives
from planner.cost.precision import bytes_per_param, optimizer_bytes_touched, peak_flops
from planner.specs import Cluster, ModelSpec

CommTime = Callable[..., float]     # (collective, n_bytes, dim, stage=None) -> seconds


@dataclass(frozen=True)
class RunSpec:
    """What the step runs apart from the layout."""
    model: ModelSpec
    cluster: Cluster
    dtype: str
    optimizer: str
    compute_source: str = "analytic"      # "profile" | "analytic"
    optimizer_step_s: float = 0.0         # measured whole-model optimizer step; 0: estimate
    flop_rate: float = 0.0                # achieved FLOP/s for estimated compute; 0: peak * eff
    implementation: str = "executor"      # planner.specs.IMPLEMENTATIONS: what runs the step
    partition: str = "balanced"           # planner.specs.PARTITIONS: chunk boundaries if unset
    straggler_cv: float = 0.0             # ranks' step-time spread (planner.sim.stragglers)
    moe_load_factor: float = 0.0          # busiest ep rank / mean tokens; 0: planner.cost.ep's

    @property
    def bytes_per_param(self) -> tuple[float, float, float]:
        """(parameter, gradient, optimizer-state) bytes per parameter before sharding."""
        return bytes_per_param(self.dtype, self.optimizer)

    @property
    def peak_flops(self) -> float:
        return peak_flops(self.cluster.device, self.dtype)


def default_comm_time(cluster: Cluster, layout) -> CommTime:
    """Collective times of this layout's groups from ``planner.cost.collectives.CommModel``
    (measured fits, hierarchical forms or alpha-beta over the bottleneck link); memoised, since
    the search asks the same (collective, bytes, group) many times. ``send_recv`` on "pp" takes
    an optional ``stage``: the boundary after that pipeline rank (default: the slowest)."""
    model = collectives.comm_model(cluster)
    dims = layout.dims
    shards = max(layout.data.ps_shards, 1)
    cache: dict = {}

    def time(name: str, n_bytes: float, dim: str, stage: int | None = None) -> float:
        key = (name, n_bytes, dim, stage)
        hit = cache.get(key)
        if hit is None:
            if name == "send_recv" and dim == "pp":
                hit = model.p2p(n_bytes, dims, stage)
            else:
                hit = model.time(name, n_bytes, dim, dims, shards=shards)
            cache[key] = hit
        return hit

    return time


def compute_slowdown(cluster: Cluster, world_size: int) -> float:
    """Factor on profiled (one process, alone) compute when other ranks of the node compute
    at the same time: ``cluster.compute_slowdown``, measured with every device of a node busy
    (``planner.profile.interference``), applied whenever a layout puts >= 2 ranks on a node."""
    return cluster.compute_slowdown if min(world_size, cluster.devices_per_node) > 1 else 1.0


def optimizer_time(run: RunSpec, params: float, total_params: float) -> float:
    """One optimizer step over ``params`` parameters on one rank.

    From a profile: the measured step of the whole model scaled by the share of parameters.
    Otherwise a roofline of an elementwise kernel (Williams et al., CACM 2009): the bytes it
    touches (``planner.cost.precision.optimizer_bytes_touched``) / memory bandwidth.
    """
    if params <= 0:
        return 0.0
    if run.optimizer_step_s > 0 and total_params > 0:
        return run.optimizer_step_s * params / total_params
    touched = optimizer_bytes_touched(run.dtype, run.optimizer)
    return params * touched / run.cluster.device.memory_bandwidth_bytes_per_s


def optimizer_shards(dims, data) -> int:
    """Over how many ranks one rank's parameters' optimizer step is split: a parameter server's
    k servers (each runs 1/k), ZeRO >= 1's data-parallel replicas, else 1 (every replica runs
    it whole). One rule for the simulator and the search's bounds."""
    if dims.replicas > 1 and data.parameter_server:
        return max(data.ps_shards, 1)
    return dims.replicas if data.zero >= 1 else 1


def step_optimizer_s(run: RunSpec, data, params: float, total_params: float) -> float:
    """One rank's optimizer step over its ``params``: on the device (``optimizer_time``), or
    on the host under offload (``planner.cost.offload.optimizer_s``)."""
    if data.offload:
        from planner.cost.offload import optimizer_s
        return optimizer_s(run, params)
    return optimizer_time(run, params, total_params)


def flop_rate(run: RunSpec) -> float:
    """Achieved FLOP/s for compute known only in FLOPs (compression's matmuls)."""
    if run.flop_rate > 0:
        return run.flop_rate
    peak = run.peak_flops
    return peak * run.cluster.device.compute_efficiency if peak else 1e12
