"""What a collective costs on a cluster: measured curves, hierarchical forms or alpha-beta.

``CommModel(cluster).time(collective, n_bytes, dim, dims)`` is what cost code calls. The
algorithm-selection policy (``AlgorithmPolicy``) is explicit; by default, in order:

1. a measured curve of the cluster (``planner profile --network``) for the group's link level
   and size, carried to other group sizes by the formula's step and volume factors
   (``planner.cost.comm.factors``);
2. where a group spans nodes with the same number of ranks on each, the hierarchical (two-level)
   form of ``planner.cost.comm`` (reduce-scatter inside nodes, all-reduce across, all-gather
   inside: NCCL's and Horovod's hierarchical all-reduce), each phase from a curve if one fits;
3. else the flat formula of the policy's algorithm (ring for all-reduce, all-gather and
   reduce-scatter: what NCCL runs inside a node and gloo's default; the cheaper of binomial
   tree and scatter+all-gather for broadcast, as MPICH switches) over the group's bottleneck
   link (``planner.topology``), plus the level's per-call latency.

Where the groups sit and which links they cross is ``planner.topology.Placement``'s business;
formulas are ``planner.cost.comm``'s. Pure python; results are cached per placement.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from planner.cost import comm
from planner.dims import ParallelDims
from planner.specs import Cluster
from planner.topology import INF, LEVELS, Bottleneck, GroupPlacement, Placement

# Algorithms whose measured curve may be carried to another group size (broadcast: MPICH's two).
_SCALE_ALGORITHMS = {"broadcast": ("tree", "scatter_allgather")}


@dataclass(frozen=True)
class AlgorithmPolicy:
    """Which algorithm prices each collective where no measured curve applies, and when the
    measured curves and the two-level forms take over (see the module docstring)."""
    flat: dict = field(default_factory=lambda: {c: next(iter(a)) for c, a in comm.FLAT.items()})
    two_level: tuple[str, ...] = ("all_reduce", "all_gather", "reduce_scatter", "broadcast",
                                  "all_to_all")
    measured_first: bool = True


DEFAULT_POLICY = AlgorithmPolicy()


# --------------------------------------------------------------------------------------------
# Measured curves
# --------------------------------------------------------------------------------------------
def monotone(times: list[float]) -> list[float]:
    """The non-decreasing sequence nearest to ``times`` in log space (pool adjacent violators,
    Ayer et al. 1955; ``scipy.optimize.isotonic_regression``): medians still wobble -- gloo's
    jump 3-4x at 256 KiB-1 MiB (../shared/notes/torch-on-cpu.md) -- and a bigger message must not
    cost less. A lone spike is averaged with the points after it instead of lifting all of them
    to its height."""
    # Imported here, not at module level: scipy.optimize costs ~0.3 s and only measured curves
    # need it (presets plan without it).
    from scipy.optimize import isotonic_regression
    return [math.exp(v) for v in isotonic_regression([math.log(t) for t in times]).x]


class _Curve:
    """A CollectiveFit made ready to evaluate: sorted, de-duplicated, non-decreasing."""
    __slots__ = ("sizes", "times", "bandwidth")

    def __init__(self, fit):
        pts: dict[float, list[float]] = {}
        for n, t in zip(fit.message_bytes, fit.time_s):
            pts.setdefault(float(n), []).append(t)
        self.sizes = sorted(pts)
        self.times = monotone([statistics.median(pts[n]) for n in self.sizes])
        self.bandwidth = fit.bandwidth_bytes_per_s

    def __call__(self, n: float) -> float:
        return comm.measured_time(self.sizes, self.times, self.bandwidth, n)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------
class CommModel:
    """Collective times over one cluster's links; see the module docstring for the choice."""

    def __init__(self, cluster: Cluster, gamma_s_per_byte: float = 0.0,
                 policy: AlgorithmPolicy = DEFAULT_POLICY):
        # gamma defaults to 0: NCCL and gloo fuse the reduction into the copy, and measured
        # curves and fitted bandwidths already include it.
        self.cluster = cluster
        self.gamma = gamma_s_per_byte
        self.policy = policy
        self.placement = Placement(cluster)
        self._fits: dict[tuple[str, str], list[tuple[int, _Curve]]] = {}
        for fit in cluster.collective_fits:
            self._fits.setdefault((fit.collective, fit.level), []).append(
                (fit.group_size, _Curve(fit)))

    # -- times -------------------------------------------------------------------------------
    def time(self, collective: str, n_bytes: float, dim: str, dims: ParallelDims,
             algorithm: str | None = None, shards: int = 1) -> float:
        """Seconds for one ``collective`` of ``n_bytes`` run by every ``dim`` group at once.

        ``n_bytes`` follows planner.cost.comm: all-gather the full output, reduce-scatter the
        full input, all-to-all each rank's total. ``algorithm`` forces a formula (skipping
        measured fits); ``shards`` is k for "parameter_server". send_recv on "pp" is the
        slowest stage-to-stage send (``p2p``).
        """
        if n_bytes <= 0:
            return 0.0
        if collective == "send_recv" and dim == "pp":
            return self.p2p(n_bytes, dims)
        pl = self.placement.groups(dim, dims)
        if pl.size <= 1:
            return 0.0
        if collective == "parameter_server":
            f = pl.flat
            return pl.call_latency_s + comm.parameter_server(
                n_bytes, pl.size, shards, f.latency_s, 1 / f.bandwidth_bytes_per_s, self.gamma)
        if collective not in comm.FLAT:
            raise ValueError(f"collective must be one of {comm.COLLECTIVES}, got {collective!r}")
        if algorithm is None:
            if pl.level in LEVELS and self.policy.measured_first:
                t = self._fitted(collective, pl.level, pl.size, n_bytes, pl.flat.latency_s)
                if t is not None:
                    return t
            elif pl.hierarchical and collective in self.policy.two_level:
                return self._two_level(collective, n_bytes, pl)
        return pl.call_latency_s + self._formula(collective, algorithm, n_bytes, pl.size, pl.flat)

    def p2p(self, n_bytes: float, dims: ParallelDims, stage: int | None = None) -> float:
        """One activation (or gradient) send between adjacent pipeline stages: the slowest
        boundary, or the one after ``stage`` (stage pp-1 is the wrap to 0 that interleaved
        schedules use)."""
        if dims.pp <= 1 or n_bytes <= 0:
            return 0.0
        stages = range(dims.pp - 1) if stage is None else (stage,)
        worst = 0.0
        for s in stages:
            level, bn, call = self.placement.boundary(dims, s)
            t = self._fitted("send_recv", level, 2, n_bytes, bn.latency_s)
            if t is None:
                t = call + comm.send_recv(n_bytes, bn.latency_s, 1 / bn.bandwidth_bytes_per_s)
            worst = max(worst, t)
        return worst

    def _formula(self, collective, algorithm, n, p, bn: Bottleneck) -> float:
        algs = comm.FLAT[collective]
        fn = algs.get(algorithm or self.policy.flat[collective])
        if fn is None:
            raise ValueError(f"{collective} algorithm must be one of {tuple(algs)}, "
                             f"got {algorithm!r}")
        return fn(n, p, bn.latency_s, 1 / bn.bandwidth_bytes_per_s, self.gamma)

    def _fitted(self, collective, level, p, n, alpha) -> float | None:
        """A measured curve for (collective, level): at its own group size as measured, at
        another carried by the formula's factors -- the volume term by reading the curve at
        n * volume(p)/volume(p_fit), the extra steps at ``alpha`` each (floored so that fewer
        steps never cost less than the scaled curve times steps(p)/steps(p_fit))."""
        curves = self._fits.get((collective, level))
        if not curves:
            return None
        pf, curve = min(curves, key=lambda c: (abs(math.log(c[0] / p)), -c[0]))
        if pf == p:
            return curve(n)
        best = INF
        for alg in _SCALE_ALGORITHMS.get(collective, (self.policy.flat[collective],)):
            steps, vol, _ = comm.factors(collective, alg, p)
            steps_f, vol_f, _ = comm.factors(collective, alg, pf)
            base = curve(n * vol / vol_f)
            best = min(best, max(base + (steps - steps_f) * alpha,
                                 base * min(1.0, steps / steps_f)))
        return best

    def _phase(self, collective, level, p, n, bn: Bottleneck) -> tuple[float, bool]:
        t = self._fitted(collective, level, p, n, bn.latency_s) if p > 1 else None
        if t is not None:
            return t, True
        return self._formula(collective, None, n, p, bn), False

    def _two_level(self, collective, n, pl: GroupPlacement) -> float:
        """Hierarchical forms (planner.cost.comm), each phase from a fit where one exists;
        formula phases share one call latency, fitted phases carry their measured own."""
        pn, pln = pl.nodes, pl.ranks_per_node
        li, gi = pl.intra, pl.inter
        if collective == "all_to_all":
            return pl.call_latency_s + comm.all_to_all_two_level(
                n, pn, pln, li.latency_s, 1 / li.bandwidth_bytes_per_s, gi.latency_s,
                1 / gi.bandwidth_bytes_per_s)
        plan = {
            "all_reduce": [("reduce_scatter", "intra_node", pln, n, li),
                           ("all_reduce", "inter_node", pn, n / pln, gi),
                           ("all_gather", "intra_node", pln, n, li)],
            "reduce_scatter": [("reduce_scatter", "intra_node", pln, n, li),
                               ("reduce_scatter", "inter_node", pn, n / pln, gi)],
            "all_gather": [("all_gather", "inter_node", pn, n / pln, gi),
                           ("all_gather", "intra_node", pln, n, li)],
            "broadcast": [("broadcast", "inter_node", pn, n, gi),
                          ("broadcast", "intra_node", pln, n, li)],
        }[collective]
        total, formula_used = 0.0, False
        for coll, level, p, nb, bn in plan:
            t, fitted = self._phase(coll, level, p, nb, bn)
            total += t
            formula_used = formula_used or not fitted
        return total + (pl.call_latency_s if formula_used else 0.0)


_MODELS: dict[int, tuple[Cluster, CommModel]] = {}


def comm_model(cluster: Cluster) -> CommModel:
    """The CommModel of ``cluster``, kept while the same cluster object is in use."""
    hit = _MODELS.get(id(cluster))
    if hit is None or hit[0] is not cluster:
        if len(_MODELS) > 32:
            _MODELS.clear()
        hit = _MODELS[id(cluster)] = (cluster, CommModel(cluster))
    return hit[1]
