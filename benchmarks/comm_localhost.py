"""Does the fitted communication model predict message sizes it was not fitted on? (localhost)

Runs ``planner profile --network`` on 2 gloo ranks of this machine with two message sizes per
octave (1 KiB * 2^(k/2)), then splits every collective's points: whole octaves (1, 2, 4 KiB ...)
are the training set, half octaves (1.4, 2.8, 5.7 KiB ...) are held out. A cluster holding only
the training fits goes into ``planner.collectives.CommModel`` -- the code path planning uses -- and
its predictions for the held-out sizes are compared with their measured medians. Also shown:
the held-out error of the two-band fitted lines alone (no interpolation), and of one straight
line, to show why the model interpolates.

    python benchmarks/comm_localhost.py [--max-bytes 32MiB] [--time-budget-s 40]
    python benchmarks/comm_localhost.py --from cluster.json     (re-analyse an earlier sweep)
    python benchmarks/comm_localhost.py --against earlier.json  (also: run-to-run noise)

Timings on a shared 2-core machine are noisy: run it when nothing else runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import replace

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from planner.profile.network import fit_alpha_beta, fit_bands, make_fit  # noqa: E402
from planner.specs import Cluster  # noqa: E402
from planner.cost.collectives import CommModel
from planner.dims import ParallelDims  # noqa: E402


def D(dp, pp, tp):
    """Degrees in the grid order (dp, pp, tp) as a ParallelDims."""
    return ParallelDims(dp=dp, pp=pp, tp=tp)


def sweep(path: str, max_bytes: str, budget: float) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "planner.commands.profile_network", "--out", path, "--points-per-octave", "2",
           "--max-bytes", max_bytes, "--time-budget-s", str(budget)]
    subprocess.run(cmd, check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))


def analyse(cluster: Cluster) -> float:
    train_fits, held = [], {}
    for f in cluster.collective_fits:
        pts = list(zip(f.message_bytes, f.time_s))
        train, test = pts[0::2], pts[1::2]
        if len(train) < 2 or not test:
            continue
        train_fits.append(make_fit(f.collective, f.level, f.group_size,
                                   [n for n, _ in train], [t for _, t in train]))
        held[(f.collective, f.level, f.group_size)] = (train, test)
    model = CommModel(replace(cluster, collective_fits=tuple(train_fits)))
    print(f"{'collective':14s} {'held':>4s} {'range':>17s} | {'model med%':>10s} {'max%':>6s} | "
          f"{'2-band med%':>11s} | {'1-line med%':>11s}")
    all_errs = []
    for (coll, level, p), (train, test) in held.items():
        assert level == "intra_node" and p == 2, "this benchmark runs one node, 2 ranks"
        model_errs = [abs(model.time(coll, n, "dp", D(2, 1, 1)) / t - 1) * 100 for n, t in test]
        bands = fit_bands([float(n) for n, _ in train], [t for _, t in train])

        def band_line(n):
            lat, bw = bands.small if n < bands.split_bytes else bands.large
            return lat + n / bw
        band_errs = [abs(band_line(n) / t - 1) * 100 for n, t in test]
        lat, bw, _ = fit_alpha_beta([float(n) for n, _ in train], [t for _, t in train])
        line_errs = [abs((lat + n / bw) / t - 1) * 100 for n, t in test]
        all_errs += model_errs
        print(f"{coll:14s} {len(test):4d} {test[0][0]:>8d}-{test[-1][0]:<8d} | "
              f"{statistics.median(model_errs):10.1f} {max(model_errs):6.1f} | "
              f"{statistics.median(band_errs):11.1f} | {statistics.median(line_errs):11.1f}")
    med = statistics.median(all_errs)
    print(f"all held-out sizes: median {med:.1f}%, max {max(all_errs):.1f}% "
          f"over {len(all_errs)} points (model = CommModel on the training fits)")
    return med


def run_to_run(a: Cluster, b: Cluster) -> float:
    """Median abs % difference of the same points in two sweeps: the noise floor here."""
    other = {(f.collective, f.level): dict(zip(f.message_bytes, f.time_s))
             for f in b.collective_fits}
    diffs = []
    for f in a.collective_fits:
        mine = dict(zip(f.message_bytes, f.time_s))
        theirs = other.get((f.collective, f.level), {})
        diffs += [abs(theirs[n] / t - 1) * 100 for n, t in mine.items() if n in theirs]
    med = statistics.median(diffs)
    print(f"run-to-run: the same sizes measured in two sweeps differ by median {med:.1f}%, "
          f"max {max(diffs):.1f}% over {len(diffs)} points")
    return med


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="source", help="analyse this cluster file, do not measure")
    ap.add_argument("--max-bytes", default="32MiB")
    ap.add_argument("--time-budget-s", type=float, default=40.0)
    ap.add_argument("--keep", help="also save the measured cluster file here")
    ap.add_argument("--against", help="an earlier sweep's file: report run-to-run noise")
    args = ap.parse_args(argv)
    if args.source:
        path = args.source
    else:
        path = args.keep or os.path.join(tempfile.mkdtemp(prefix="comm-localhost-"), "c.json")
        sweep(path, args.max_bytes, args.time_budget_s)
    cluster = Cluster.load(path)
    analyse(cluster)
    if args.against:
        run_to_run(cluster, Cluster.load(args.against))
    return 0


if __name__ == "__main__":
    sys.exit(main())
