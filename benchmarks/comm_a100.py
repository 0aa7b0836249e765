"""Fit the dgx-a100-80gb intra-node link on measured NCCL all-reduces; check on held-out points.

Data: ../shared/data/a100-single-node/allreduce/AR_GPU{2..8}_1M_1024M_LUT.csv (nccl-tests on one
DGX A100 node, 1 MiB-1 GiB in 1 MiB steps; out-of-place time column, ns). NCCL runs a ring
all-reduce inside a node, so the model is the ring formula plus a per-call latency
(planner.cost.comm.all_reduce_ring, planner.specs.LinkLevel.call_latency_s):

    t(n, p) = call_latency + 2(p-1) * latency + 2(p-1)/p * n / bandwidth

Three coefficients, fitted by least squares on relative error (non-negative) on the training
points: group sizes --train-p (2, 4, 8) at power-of-two sizes (1 MiB .. 1 GiB, log-spaced so the
1 MiB grid's thousand large sizes do not drown the bend). Every other point is held out: all
sizes of p = 3, 5, 6, 7, and the non-power-of-two sizes of the training group sizes. Errors are
reported per group size for messages >= 8 MiB (the target: median <= 10%) and for all sizes,
over the full 1 MiB grid and over its power-of-two sizes only. The last table predicts through
the shipped preset (planner.clusters.dgx_a100 via CommModel), which must match this fit.

    python benchmarks/comm_a100.py [--data DIR] [--train-p 2,4,8]
"""
from __future__ import annotations

import argparse
import csv
import glob
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from planner.clusters import dgx_a100  # noqa: E402
from planner.profile.network import fit_relative  # noqa: E402
from planner.cost.collectives import CommModel
from planner.dims import ParallelDims  # noqa: E402

MIB = 2**20
DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                            "a100-single-node", "allreduce")


def D(dp, pp, tp):
    """Degrees in the grid order (dp, pp, tp) as a ParallelDims."""
    return ParallelDims(dp=dp, pp=pp, tp=tp)


def load(data_dir: str) -> dict[int, list[tuple[int, float]]]:
    """{p: [(bytes, out-of-place seconds), ...]} from the nccl-tests tables."""
    out = {}
    for path in sorted(glob.glob(os.path.join(data_dir, "AR_GPU*_LUT.csv"))):
        p = int(re.search(r"AR_GPU(\d+)_", os.path.basename(path)).group(1))
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))[1:]
        out[p] = [(int(r[0]), float(r[3]) * 1e-9) for r in rows if r]
    if not out:
        raise SystemExit(f"no AR_GPU*_LUT.csv under {data_dir}")
    return out


def ring_row(n: float, p: int) -> list[float]:
    return [1.0, 2.0 * (p - 1), 2.0 * (p - 1) / p * n]


def is_pow2(n: int) -> bool:
    return n & (n - 1) == 0


def fit(data, train_p) -> tuple[float, float, float]:
    """(call_latency_s, latency_s, bandwidth_bytes_per_s) on the training points."""
    rows, times = [], []
    for p in train_p:
        for n, t in data[p]:
            if is_pow2(n):
                rows.append(ring_row(n, p))
                times.append(t)
    c0, a, b = fit_relative(rows, times)
    return c0, a, 1 / b


def predict(coef, n, p) -> float:
    c0, a, bw = coef
    return c0 + 2 * (p - 1) * a + 2 * (p - 1) / p * n / bw


def _stats(errs):
    return (statistics.median(errs), max(errs), len(errs)) if errs else (float("nan"),) * 2 + (0,)


def report(data, train_p, pred_fn, title):
    print(f"\n{title}")
    print(f"{'p':>2} {'set':6s} | {'>=8MiB med%':>11s} {'max%':>6s} {'n':>5s} | "
          f"{'all med%':>8s} {'max%':>6s} | {'pow2>=8MiB med%':>15s} {'max%':>6s}")
    overall = []
    for p in sorted(data):
        held = [(n, t) for n, t in data[p] if not (p in train_p and is_pow2(n))]
        errs = {(n, t): abs(pred_fn(n, p) / t - 1) * 100 for n, t in held}
        big = [e for (n, _), e in errs.items() if n >= 8 * MIB]
        pow2 = [e for (n, _), e in errs.items() if n >= 8 * MIB and is_pow2(n)]
        if p in train_p:  # pow2 sizes were trained on: show their in-sample error instead
            pow2 = [abs(pred_fn(n, p) / t - 1) * 100 for n, t in data[p]
                    if n >= 8 * MIB and is_pow2(n)]
        overall += big
        b, a, q = _stats(big), _stats(list(errs.values())), _stats(pow2)
        print(f"{p:2d} {'train' if p in train_p else 'held':6s} | {b[0]:11.1f} {b[1]:6.1f} "
              f"{b[2]:5d} | {a[0]:8.1f} {a[1]:6.1f} | {q[0]:15.1f} {q[1]:6.1f}")
    print(f"all held-out points >= 8 MiB: median {statistics.median(overall):.1f}%, "
          f"max {max(overall):.1f}% over {len(overall)} points")
    return statistics.median(overall)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--train-p", default="2,4,8")
    args = ap.parse_args(argv)
    data = load(args.data)
    train_p = tuple(int(x) for x in args.train_p.split(","))
    coef = fit(data, train_p)
    c0, a, bw = coef
    print(f"fit on p={train_p}, power-of-two sizes 1 MiB-1 GiB "
          f"({sum(1 for p in train_p for n, _ in data[p] if is_pow2(n))} points):")
    print(f"  call_latency_s = {c0:.4g}  latency_s = {a:.4g}  bandwidth_bytes_per_s = {bw:.4g}"
          f"  (NVLink datasheet 300e9 -> efficiency {bw / 300e9:.3f})")
    report(data, train_p, lambda n, p: predict(coef, n, p), "held-out error of this fit")
    preset = dgx_a100()
    lv = preset.intra_node
    print(f"\npreset dgx-a100-80gb intra_node: call_latency_s={lv.call_latency_s:.4g} "
          f"latency_s={lv.latency_s:.4g} bandwidth_bytes_per_s={lv.bandwidth_bytes_per_s:.4g}")
    models = {p: CommModel(preset.with_size(p)) for p in data}
    report(data, train_p, lambda n, p: models[p].time("all_reduce", n, "dp", D(p, 1, 1)),
           "through the shipped preset (CommModel, dp group of p GPUs on one node)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
