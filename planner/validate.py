"""Predicted against measured: statistics, layout sampling and calibration (the runs themselves:
``planner.trials``).

The statistics are pure functions of plain numbers:

- absolute percentage error ``|predicted - measured| / measured * 100`` per layout, summarised
  by its median and maximum;
- Spearman's rank correlation of predicted and measured step times (Spearman 1904): the
  Pearson correlation of the ranks, ties given their average rank (``scipy.stats.spearmanr``,
  after values equal up to rounding are made equal);
- regret of the planner's pick: ``measured(pick) / min(measured) - 1`` (0 when the pick was
  also the fastest measured layout).

Calibration (``calibrate``) fits one scale per group of breakdown terms by least squares of the
relative residual, ``min_s sum_i ((measured_i - sum_g s_g * x_ig) / measured_i)^2``, where
``x_ig`` is layout i's predicted time on the critical path in group g ("compute": compute,
recompute, bubble and optimizer; "comm": exposed communication). Hidden (overlapped)
communication is off the critical path and left out. ``s_compute`` then divides the device
efficiency (or multiplies profiled block times), ``s_comm`` multiplies link latencies and
divides bandwidths: the same relative change in every predicted time of that group.
"""
from __future__ import annotations

import math
import random
import statistics

from planner.errors import PlannerError


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------
def pct_error(predicted: float, measured: float) -> float:
    """Signed percentage error: 100 * (predicted - measured) / measured."""
    if measured <= 0:
        raise PlannerError(f"measured value {measured} must be > 0 to compute an error")
    return 100.0 * (predicted - measured) / measured


def abs_pct_errors(predicted, measured) -> list[float]:
    return [abs(pct_error(p, m)) for p, m in zip(predicted, measured, strict=True)]


def median_max(values) -> tuple[float | None, float | None]:
    values = list(values)
    if not values:
        return None, None
    return statistics.median(values), max(values)


TIE_REL_TOL = 1e-9


def snap_ties(values) -> list[float]:
    """``values`` with each one within ``TIE_REL_TOL`` (relative) of the first of its run in
    sorted order replaced by that first value: two predictions that differ only by
    floating-point rounding of the same sum must tie, not get an order."""
    out = [float(v) for v in values]
    first = None
    for i in sorted(range(len(out)), key=out.__getitem__):
        if first is not None and math.isclose(out[i], first, rel_tol=TIE_REL_TOL):
            out[i] = first
        else:
            first = out[i]
    return out


def spearman(x, y) -> float | None:
    """Spearman's rho (``scipy.stats.spearmanr``: Pearson's r of the average ranks) after
    ``snap_ties``. None if undefined: fewer than 2 points or a constant series (checked here,
    so scipy never warns)."""
    if len(x) != len(y):
        raise ValueError(f"spearman needs equal lengths, got {len(x)} and {len(y)}")
    xs, ys = snap_ties(x), snap_ties(y)
    if len(xs) < 2 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    from scipy.stats import spearmanr   # ~0.3 s to import: only when validating
    return float(spearmanr(xs, ys).statistic)


def regret(pick_measured: float, all_measured) -> float:
    """How much slower the planner's pick ran than the fastest layout measured (0 = best)."""
    best = min(all_measured)
    if best <= 0:
        raise PlannerError(f"measured step times must be > 0, got {best}")
    return pick_measured / best - 1.0


def summarise(rows) -> dict:
    """Statistics over ``ValidationRow``s with status "ok" (see the module docstring)."""
    ok = [r for r in rows if r.status == "ok"]
    times = median_max(abs(r.step_time_error_pct) for r in ok)
    mems = median_max(abs(r.memory_error_pct) for r in ok if r.measured_peak_memory_bytes > 0)
    picks = [r for r in ok if r.role == "pick"]
    return {
        "median_abs_pct_error": times[0], "max_abs_pct_error": times[1],
        "rank_correlation": spearman([r.predicted_step_time_s for r in ok],
                                     [r.measured_step_time_s for r in ok]) if len(ok) >= 2 else None,
        "regret": regret(picks[0].measured_step_time_s, [r.measured_step_time_s for r in ok])
        if picks else None,
        "memory_median_abs_pct_error": mems[0], "memory_max_abs_pct_error": mems[1],
    }


# --------------------------------------------------------------------------------------------
# Which layouts to run
# --------------------------------------------------------------------------------------------
def choose_layouts(ranked: list, top_k: int, sample: int, seed: int = 0) -> list[tuple[int, str]]:
    """Indices into ``ranked`` (feasible layouts, best first) to run, with their role.

    The first ``top_k`` (index 0 is the planner's pick), then ``sample`` drawn uniformly without
    replacement from the rest with a seeded generator, so a rerun measures the same layouts.
    """
    if top_k < 1:
        raise PlannerError(f"--top-k must be >= 1, got {top_k}")
    if sample < 0:
        raise PlannerError(f"--sample must be >= 0, got {sample}")
    head = [(i, "pick" if i == 0 else "top-k") for i in range(min(top_k, len(ranked)))]
    rest = list(range(len(head), len(ranked)))
    drawn = sorted(random.Random(seed).sample(rest, min(sample, len(rest))))
    return head + [(i, "sample") for i in drawn]


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------
# Condition number of the (relative) design matrix above which the scales are called uncertain:
# a 1% change in the measured times then moves a scale by more than ~100%.
ILL_CONDITIONED = 100.0
COMPUTE_TERMS = ("compute", "recompute", "bubble", "optimizer", "forward", "backward")


def term_group(key: str) -> str | None:
    """Which calibration group a breakdown key belongs to; None when off the critical path."""
    k = key.lower()
    if "hidden" in k:
        return None
    if "comm" in k or "exposed" in k:
        return "comm"
    if any(t in k for t in COMPUTE_TERMS):
        return "compute"
    return None


def critical_terms(breakdown_s: dict[str, float], step_time_s: float) -> dict[str, float]:
    """Predicted seconds per group, rescaled so that the groups add up to the step time.

    The rescale keeps the fit honest when a simulator's breakdown does not sum exactly to its
    step time (e.g. overlap accounted in two terms).
    """
    groups = {"compute": 0.0, "comm": 0.0}
    for key, value in breakdown_s.items():
        g = term_group(key)
        if g:
            groups[g] += value
    total = sum(groups.values())
    if total <= 0:
        return {"compute": step_time_s, "comm": 0.0}
    return {g: v * step_time_s / total for g, v in groups.items()}


def fit_scales(terms: list[dict[str, float]], measured: list[float]) -> tuple[dict, list[str]]:
    """Least-squares scale per group minimising the relative residual (module docstring).

    Returns ``(scales, notes)``. A group that is zero in every run cannot be identified and
    keeps scale 1; so does one whose fitted scale comes out <= 0 (noise swamping a small term,
    e.g. a few percent of exposed communication), after which the others are refitted alone.
    With fewer runs than groups only the largest group is fitted. ``notes`` say which of these
    happened, for the user.
    """
    import numpy as np

    if len(terms) != len(measured) or not terms:
        raise PlannerError(f"calibration needs at least one measured layout, got {len(measured)}")
    notes: list[str] = []
    scales = {"compute": 1.0, "comm": 1.0}
    groups = [g for g in scales if any(t.get(g, 0.0) > 0 for t in terms)]
    for g in scales:
        if g not in groups:
            notes.append(f"{g}: zero in every run, not identifiable; kept at 1")
    if len(groups) > len(measured):
        groups = [max(groups, key=lambda g: sum(t.get(g, 0.0) for t in terms))]
        notes.append(f"{len(measured)} run(s) for 2 groups: fitted {groups[0]} only")
    while groups:
        # Groups kept at 1 still take their share of each measured time.
        fixed = [sum(v for g, v in t.items() if g not in groups) for t in terms]
        a = np.array([[t.get(g, 0.0) / m for g in groups] for t, m in zip(terms, measured)])
        b = np.array([1.0 - f / m for f, m in zip(fixed, measured)])
        sol, *_ = np.linalg.lstsq(a, b, rcond=None)
        bad = [g for g, v in zip(groups, sol) if v <= 0]
        if not bad:
            scales.update({g: float(v) for g, v in zip(groups, sol)})
            cond = np.linalg.cond(a) if len(groups) > 1 else 1.0
            if cond > ILL_CONDITIONED:
                notes.append(f"the runs barely separate {' from '.join(groups)} (condition "
                             f"number {cond:.0f}): the fitted scales are uncertain; measure "
                             "layouts whose communication shares differ more")
            break
        notes.append(f"{bad[0]}: fitted a non-positive scale ({sol[groups.index(bad[0])]:.3g}); "
                     "the runs do not separate it from the other terms; kept at 1")
        groups.remove(bad[0])
    return scales, notes


def apply_scales(terms: dict[str, float], scales: dict[str, float]) -> float:
    """The step time the calibrated model predicts for one layout's critical terms."""
    return sum(scales.get(g, 1.0) * v for g, v in terms.items())


def calibrated_cluster(cluster, scales: dict[str, float], compute_from_profile: bool, note: str):
    """``cluster`` with link and collective-fit times scaled by ``scales["comm"]`` and, when
    compute was analytic, the device efficiency divided by ``scales["compute"]`` (capped at 1).
    """
    from dataclasses import replace

    s = scales.get("comm", 1.0)
    source = f"fitted ({note}: x{s:.3f} of {{}})"

    def link(level):
        if level is None:
            return None
        return replace(level, latency_s=level.latency_s * s,
                       call_latency_s=level.call_latency_s * s,
                       bandwidth_bytes_per_s=level.bandwidth_bytes_per_s / s,
                       source=source.format(level.source))

    fits = tuple(replace(f, time_s=tuple(t * s for t in f.time_s), latency_s=f.latency_s * s,
                         bandwidth_bytes_per_s=f.bandwidth_bytes_per_s / s)
                 for f in cluster.collective_fits)
    device = cluster.device
    if not compute_from_profile:
        eff = min(1.0, device.compute_efficiency / scales.get("compute", 1.0))
        device = replace(device, compute_efficiency=eff,
                         efficiency_source=f"fitted ({note}: /{scales.get('compute', 1.0):.3f} "
                                           f"of {device.compute_efficiency:.3g})")
    return replace(cluster, device=device, intra_node=link(cluster.intra_node),
                   inter_node=link(cluster.inter_node), collective_fits=fits,
                   node_links=tuple(replace(n, latency_s=n.latency_s * s,
                                            bandwidth_bytes_per_s=n.bandwidth_bytes_per_s / s)
                                    for n in cluster.node_links),
                   node_levels=tuple(replace(n, intra_node=link(n.intra_node),
                                             inter_node=link(n.inter_node))
                                     for n in cluster.node_levels))


def calibrated_profile(profile, scale: float, note: str):
    """``profile`` with every measured time multiplied by the fitted compute ``scale``."""
    from dataclasses import replace

    blocks = tuple(replace(b, forward_time_s=b.forward_time_s * scale,
                           backward_time_s=b.backward_time_s * scale,
                           forward_time_spread_s=b.forward_time_spread_s * scale,
                           backward_time_spread_s=b.backward_time_spread_s * scale)
                   for b in profile.blocks)
    return replace(profile, blocks=blocks, step_time_s=profile.step_time_s * scale,
                   step_time_spread_s=profile.step_time_spread_s * scale,
                   optimizer_step_time_s=profile.optimizer_step_time_s * scale,
                   source=f"{profile.source}; times x{scale:.3f} ({note})")
