"""Measure collectives over the links a job actually uses, and fit them.

``sweep`` runs inside every rank of a torchrun job (torch imported lazily): for each link level
present -- ``intra_node`` (the ranks of one node) and ``inter_node`` (one rank per node, the same
local rank everywhere) -- and each collective, it times message sizes from ``min_bytes`` up,
doubling, until ``max_bytes`` or the time budget, repeating each point and keeping the median
over calls of the slowest rank's time. ``fit_bands`` fits latency + bytes / bandwidth to the
medians by least squares on *relative* error (plain least squares lets the big messages decide
and returns negative latencies on gloo: ../shared/notes/torch-on-cpu.md), one line per size band
with the split searched; the planner interpolates the measured points themselves and uses the
line only outside them (``planner.cost.comm.measured_time``). ``build_cluster`` turns the
results into a Cluster file.

Message-size conventions follow ``planner.cost.comm``: all-gather n = full output, reduce-scatter
n = full input, all-to-all n = each rank's total; send_recv is half a ping-pong round trip.
"""
from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass, replace

from planner.specs import Cluster, CollectiveFit, LinkLevel

COLLECTIVES = ("send_recv", "broadcast", "all_gather", "reduce_scatter", "all_reduce",
               "all_to_all")
KIB, MIB = 2**10, 2**20
ELEMENT_BYTES = 4  # float32 buffers


# --------------------------------------------------------------------------------------------
# Fitting (pure python)
# --------------------------------------------------------------------------------------------
def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (tiny dense systems)."""
    k = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for c in range(k):
        piv = max(range(c, k), key=lambda r: abs(m[r][c]))
        if abs(m[piv][c]) < 1e-300:
            raise ValueError("singular system")
        m[c], m[piv] = m[piv], m[c]
        for r in range(c + 1, k):
            f = m[r][c] / m[c][c]
            for j in range(c, k + 1):
                m[r][j] -= f * m[c][j]
    x = [0.0] * k
    for c in range(k - 1, -1, -1):
        x[c] = (m[c][k] - sum(m[c][j] * x[j] for j in range(c + 1, k))) / m[c][c]
    return x


def fit_relative(rows: list[list[float]], times: list[float]) -> list[float]:
    """Non-negative coefficients c minimising sum_i ((rows_i . c - t_i) / t_i)^2.

    Each row is divided by its time, so every point weighs by its relative error; a
    coefficient that comes out negative is pinned to 0 and the rest refitted (active set).
    """
    k = len(rows[0])
    free = list(range(k))
    while True:
        scaled = [[r[j] / t for j in free] for r, t in zip(rows, times)]
        ata = [[sum(s[i] * s[j] for s in scaled) for j in range(len(free))]
               for i in range(len(free))]
        atb = [sum(s[i] for s in scaled) for i in range(len(free))]
        try:
            sol = _solve(ata, atb)
        except ValueError:
            sol = [0.0] * len(free)
        neg = [free[i] for i, v in enumerate(sol) if v < 0]
        if not neg:
            coef = [0.0] * k
            for i, j in enumerate(free):
                coef[j] = sol[i]
            return coef
        free = [j for j in free if j not in neg]
        if not free:
            return [0.0] * k


def pct_errors(predicted: list[float], measured: list[float]) -> list[float]:
    return [abs(p / m - 1) * 100 for p, m in zip(predicted, measured)]


def fit_alpha_beta(sizes: list[float], times: list[float]) -> tuple[float, float, float]:
    """(latency_s, bandwidth_bytes_per_s, median abs % error) of one line t = latency +
    n / bandwidth, least squares on relative error with both terms >= 0."""
    a, b = fit_relative([[1.0, float(n)] for n in sizes], times)
    if b <= 0:  # flat: no measurable per-byte cost; keep the line finite
        b = min(t / n for n, t in zip(sizes, times)) * 1e-3
    pred = [a + b * n for n in sizes]
    return a, 1 / b, statistics.median(pct_errors(pred, times))


@dataclass(frozen=True)
class BandFit:
    """Two lines split at ``split_bytes``: latency from the small-message band, bandwidth from
    the large-message band (Hockney's alpha and beta measured where each dominates)."""
    split_bytes: int
    latency_s: float                # small band's intercept
    bandwidth_bytes_per_s: float    # large band's slope, inverted
    small: tuple[float, float]      # (latency_s, bandwidth) of the small band's line
    large: tuple[float, float]
    median_abs_pct_error: float     # of the two lines, each on its own band
    small_error_pct: float
    large_error_pct: float


def fit_bands(sizes: list[float], times: list[float], min_points: int = 3) -> BandFit:
    """Fit two relative-error lines, below and from a split chosen where they fit best (least
    summed squared relative error). One line cannot follow both the flat latency-bound start
    and the per-byte slope on real networks (formulas.md; torch-on-cpu.md), and where the bend
    sits differs by backend and collective, so it is searched rather than fixed. Each band
    keeps ``min_points`` points (two would always fit exactly); fewer points: one line."""
    k = len(sizes)
    candidates = range(min_points, k - min_points + 1) if k >= 2 * min_points else [k]
    best = None
    for i in candidates:
        small = fit_alpha_beta(sizes[:i], times[:i])
        large = fit_alpha_beta(sizes[i:], times[i:]) if i < k else small
        errs_s = pct_errors([small[0] + n / small[1] for n in sizes[:i]], times[:i])
        errs_l = pct_errors([large[0] + n / large[1] for n in sizes[i:]], times[i:])
        score = sum(e * e for e in errs_s + errs_l)
        if best is None or score < best[0]:
            best = (score, i, small, large, errs_s, errs_l)
    _, i, small, large, errs_s, errs_l = best
    return BandFit(split_bytes=int(sizes[i]) if i < k else int(sizes[-1]) + 1,
                   latency_s=small[0], bandwidth_bytes_per_s=large[1],
                   small=small[:2], large=large[:2],
                   median_abs_pct_error=statistics.median(errs_s + errs_l),
                   small_error_pct=statistics.median(errs_s) if errs_s else math.nan,
                   large_error_pct=statistics.median(errs_l) if errs_l else math.nan)


def make_fit(collective: str, level: str, group_size: int, sizes, medians) -> CollectiveFit:
    """A CollectiveFit keeping the measured medians; its line is the two-band fit's latency
    and bandwidth, its error the two bands' median relative error.

    The bandwidth, which also extends the curve past the largest size, is kept >= half the
    average rate of the largest measured message: a short or noisy sweep (the large band
    still latency-bound) otherwise yields a near-flat band whose slope would price a 100x
    bigger message at minutes.
    """
    bands = fit_bands([float(n) for n in sizes], list(medians))
    last = max(range(len(sizes)), key=lambda i: sizes[i])
    floor = 0.5 * sizes[last] / medians[last]
    return CollectiveFit(collective=collective, level=level, group_size=group_size,
                         message_bytes=tuple(int(n) for n in sizes),
                         time_s=tuple(float(t) for t in medians), latency_s=bands.latency_s,
                         bandwidth_bytes_per_s=max(bands.bandwidth_bytes_per_s, floor),
                         fit_median_abs_pct_error=round(bands.median_abs_pct_error, 2))


def sweep_sizes(min_bytes: int, max_bytes: int, points_per_octave: int = 1) -> list[int]:
    """Geometric message sizes from min_bytes to max_bytes, ``points_per_octave`` per doubling."""
    out, i = [], 0
    while True:
        n = int(round(min_bytes * 2 ** (i / points_per_octave)))
        if n > max_bytes:
            return out
        out.append(n)
        i += 1


# --------------------------------------------------------------------------------------------
# Measurement (runs inside torchrun; torch imported here only)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepConfig:
    collectives: tuple[str, ...] = COLLECTIVES
    min_bytes: int = KIB
    max_bytes: int = 256 * MIB
    points_per_octave: int = 1
    repeats: int = 5                # timed calls per point and pass, at least
    passes: int = 2                 # sweeps over the sizes whose calls pool into one median
    time_budget_s: float = 15.0
    target_point_s: float = 0.03    # small messages: more calls, up to this long per point
    max_samples: int = 41


@dataclass(frozen=True)
class Point:
    collective: str
    level: str
    group_size: int
    message_bytes: int
    time_s: float                   # median over calls of the slowest rank's time
    spread_s: float                 # inter-quartile range of those calls


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Runner:
    """One rank's side of the sweep. All ranks walk the same loops in the same order; the
    shared decisions (how many iterations, when the budget is spent) come from values reduced
    over the whole job, so every rank takes them identically."""

    def __init__(self, torch, dist, device, config: SweepConfig):
        self.torch, self.dist, self.device, self.cfg = torch, dist, device, config
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def reduce_max(self, values: list[float]) -> list[float]:
        t = self.torch.tensor(values, dtype=self.torch.float64, device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return t.tolist()

    def make_op(self, collective: str, n: int, ranks: list[int], pg):
        """A closure running one ``collective`` of ~n bytes on this rank (None: not a member)."""
        torch, dist = self.torch, self.dist
        p = len(ranks)
        if self.rank not in ranks:
            return None
        elems = max(p, (n // ELEMENT_BYTES) // p * p)
        buf = lambda k: torch.ones(k, dtype=torch.float32, device=self.device)  # noqa: E731
        if collective == "send_recv":
            a, b = ranks[0], ranks[1]
            x = buf(elems)
            if self.rank == a:
                return lambda: (dist.send(x, b), dist.recv(x, b))
            if self.rank == b:
                return lambda: (dist.recv(x, a), dist.send(x, a))
            return lambda: None
        if collective == "broadcast":
            x = buf(elems)
            return lambda: dist.broadcast(x, src=ranks[0], group=pg)
        if collective == "all_reduce":
            x = buf(elems)
            return lambda: dist.all_reduce(x, group=pg)
        if collective == "all_gather":
            out, inp = buf(elems), buf(elems // p)
            gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
            return lambda: gather(out, inp, group=pg)
        if collective == "reduce_scatter":
            out, inp = buf(elems // p), buf(elems)
            scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
            return lambda: scatter(out, inp, group=pg)
        if collective == "all_to_all":
            out, inp = buf(elems), buf(elems)
            return lambda: dist.all_to_all_single(out, inp, group=pg)
        raise ValueError(f"unknown collective {collective!r}")

    def time_point(self, op, pg, member: bool, started: float) -> tuple[list[float], float]:
        """(per-call times of the slowest rank, wall s spent) of one point, identical on every
        rank. Each call is timed on its own: on a shared machine a descheduled rank spoils
        single calls, which a median over calls skips and a mean over a loop would absorb."""
        cfg, clock = self.cfg, time.perf_counter
        calib = 0.0
        if member:
            op()  # warm-up: connections, buffers
            self.sync()
            self.dist.barrier(group=pg)
            t0 = clock()
            op()
            self.sync()
            calib = clock() - t0
        calib = self.reduce_max([calib])[0]
        calls = max(cfg.repeats, min(cfg.max_samples, math.ceil(cfg.target_point_s / calib)))
        samples = [0.0] * calls
        if member:
            self.dist.barrier(group=pg)
            for r in range(calls):
                t0 = clock()
                op()
                self.sync()
                samples[r] = clock() - t0
        *samples, wall = self.reduce_max(samples + [clock() - started])
        return samples, wall


def level_groups(nodes_of_rank: list[int]) -> dict[str, list[list[int]]]:
    """Groups per level from each rank's node: intra_node = the ranks of each node (nodes with
    >= 2 ranks), inter_node = ranks with the same local index across nodes (>= 2 nodes)."""
    by_node: dict[int, list[int]] = {}
    for r, node in enumerate(nodes_of_rank):
        by_node.setdefault(node, []).append(r)
    nodes = [by_node[k] for k in sorted(by_node)]
    out: dict[str, list[list[int]]] = {}
    intra = [g for g in nodes if len(g) >= 2]
    if intra:
        out["intra_node"] = intra
    if len(nodes) >= 2:
        local = min(len(g) for g in nodes)
        out["inter_node"] = [[g[j] for g in nodes] for j in range(local)]
    return out


def sweep(config: SweepConfig, node_rank: int, verbose: bool = True) -> tuple[list[Point], dict]:
    """Run the sweep in this rank of an initialised process group; every rank returns the same
    points. The second value describes the job (backend, nodes, ranks per node, device)."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" \
        else torch.device("cpu")
    run = _Runner(torch, dist, device, config)
    nodes_of_rank = [0] * run.world
    t = torch.tensor([node_rank], dtype=torch.float64, device=device)
    gathered = [torch.zeros_like(t) for _ in range(run.world)]
    dist.all_gather(gathered, t)
    nodes_of_rank = [int(x.item()) for x in gathered]
    levels = level_groups(nodes_of_rank)
    # Every rank must create every group, in the same order (torch.distributed.new_group).
    pgs = {}
    for level, groups in levels.items():
        for g in groups:
            pgs[(level, tuple(g))] = None if len(g) == run.world else dist.new_group(g)
    sizes = sweep_sizes(config.min_bytes, config.max_bytes, config.points_per_octave)
    slices = [(lv, c) for lv in levels for c in config.collectives]
    points: list[Point] = []
    budget = config.time_budget_s
    say = (lambda m: _log(m)) if verbose and run.rank == 0 else (lambda m: None)
    say(f"profile --network: {run.world} ranks on {len(set(nodes_of_rank))} node(s), backend "
        f"{backend}; levels {', '.join(levels) or 'none'}; budget {budget:.0f} s")
    for i, (level, coll) in enumerate(slices):
        share = budget / (len(slices) - i)  # what earlier slices left over goes to later ones
        ranks = levels[level][0]  # one group at a time: no contention from the others
        pg = pgs[(level, tuple(ranks))]

        def measure(n, coll=coll, ranks=ranks, pg=pg):
            started = time.perf_counter()
            op = run.make_op(coll, n, ranks, pg)
            return run.time_point(op, pg, op is not None, started)

        samples: dict[int, list[float]] = {}
        used, last = 0.0, 0.0
        for n in sizes:
            # stop before the next, double, size (and its later passes) would overrun the share
            if last and (used + 2.2 * last) * config.passes > share:
                say(f"  {level} {coll}: budget reached after {max(samples)} B")
                break
            samples[n], last = measure(n)
            used += last
        # Later passes walk the sizes in the other direction, so a burst of load elsewhere
        # on the machine lands on different sizes each time and the median drops it.
        for _ in range(config.passes - 1):
            for n in reversed(list(samples)):
                more, spent = measure(n)
                samples[n] += more
                used += spent
        budget -= used
        group = len(ranks) if coll != "send_recv" else 2
        for n, s in samples.items():
            q = statistics.quantiles(s, n=4) if len(s) > 1 else [s[0]] * 3
            points.append(Point(coll, level, group, _rounded(n, len(ranks)),
                                statistics.median(s), q[2] - q[0]))
        if samples:
            done = [p for p in points if p.collective == coll and p.level == level]
            say(f"  {level:10s} {coll:14s} p={group}: {len(done)} sizes "
                f"{done[0].message_bytes}-{done[-1].message_bytes} B, "
                f"{done[0].time_s * 1e6:.0f}-{done[-1].time_s * 1e6:.0f} us ({used:.1f} s)")
    info = {"backend": backend, "world": run.world, "num_nodes": len(set(nodes_of_rank)),
            "ranks_per_node": max(nodes_of_rank.count(k) for k in set(nodes_of_rank)),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch_version": torch.__version__}
    return points, info


def _rounded(n: int, p: int) -> int:
    """The bytes actually moved once n is rounded to whole float32 elements per rank."""
    return max(p, (n // ELEMENT_BYTES) // p * p) * ELEMENT_BYTES


# --------------------------------------------------------------------------------------------
# Results -> cluster file
# --------------------------------------------------------------------------------------------
def fits_from_points(points: list[Point]) -> list[CollectiveFit]:
    keys = []
    for p in points:
        k = (p.collective, p.level, p.group_size)
        if k not in keys:
            keys.append(k)
    fits = []
    for coll, level, size in keys:
        pts = [p for p in points if (p.collective, p.level, p.group_size) == (coll, level, size)]
        if len(pts) >= 2:
            fits.append(make_fit(coll, level, size, [p.message_bytes for p in pts],
                                 [p.time_s for p in pts]))
    return fits


def build_cluster(base: Cluster, fits: list[CollectiveFit], info: dict, name: str = "",
                  interference=None) -> Cluster:
    """``base`` (device figures, and links of levels that were not measured) with the measured
    levels and collective fits of this job. A level's LinkLevel is its send/recv fit: alpha per
    message and bandwidth per direction, what the formulas take for one message step.
    ``interference`` (``planner.profile.interference.Interference``, measured in the same job)
    sets ``compute_slowdown`` and ``comm_overlap``; None keeps ``base``'s."""
    if interference is not None:
        base = replace(base, compute_slowdown=interference.compute_slowdown,
                       comm_overlap=interference.comm_overlap,
                       fsdp_call_overhead_s=interference.fsdp_call_overhead_s,
                       interference_source=interference.source(info["backend"], info["world"]))
    levels = {"intra_node": base.intra_node, "inter_node": base.inter_node}
    for fit in fits:
        if fit.collective == "send_recv":
            levels[fit.level] = LinkLevel(
                fit.level, latency_s=fit.latency_s, bandwidth_bytes_per_s=fit.bandwidth_bytes_per_s,
                source=f"measured: planner profile --network, {info['backend']} send/recv "
                       f"ping-pong {fit.message_bytes[0]}-{fit.message_bytes[-1]} B, two-band "
                       f"relative-error fit (median error {fit.fit_median_abs_pct_error:.1f}%)")
    return replace(
        base, name=name or f"{base.name}-measured", num_nodes=info["num_nodes"],
        devices_per_node=info["ranks_per_node"], intra_node=levels["intra_node"],
        inter_node=levels["inter_node"], backend=info["backend"], node_links=(), node_levels=(),
        nics_per_node=0, collective_fits=tuple(fits),
        notes=f"measured by planner profile --network: {info['world']} ranks, "
              f"{info['backend']}, {info['device']}, torch {info['torch_version']}, "
              f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}; device figures from "
              f"{base.name}")
