"""Calibrate the A100 device model on measured Megatron-DeepSpeed iteration times.

Data: ../shared/data/a100-single-node/megatron_deepspeed_iteration_times.csv (1,440 iteration
times of GPT models, hidden 1024/2048, 12-24 layers, sequence 1024, on 2-8 A100s of one DGX node,
with tp/dp/pp, global and micro batch; from the VIA-Research/vTrain repository). Mixed precision;
optimizer and recomputation are not recorded, so each recompute assumption is fitted and the
one with the lowest training error is kept (the held-out errors of all are reported).

Each row is predicted exactly as `planner simulate` predicts it (planner.calibrate.
SimulatorPredictor: the row's flags, --implementation megatron --partition even, 1F1B, on
dgx-a100-80gb), fitted on a random half (--seed) and scored on the other half. The matmul
ceiling is not fitted: it is the profile's (published maximum achievable GEMM throughput, or a
`planner profile --gemm` measurement); --ceilings refits the rest at other ceilings to show the
data cannot tell them apart. Each fitted figure's sensitivity (how far the held-out median error
moves when the figure moves by 10%) is printed and recorded. With --write the fitted figures and
the calibration record go into profiles/a100-sxm4-80gb.json, and the H100 profile gets the same
fitted figures marked as carried over (no H100 data; its ceiling stays its own).

--check-cli runs the rows through the command line itself (planner.cli.main in this process,
one `planner simulate` per row with an architecture file per model) with the shipped profile,
and prints the errors a user gets and the largest difference from the calibration's own
prediction (0: one costing path).

    python benchmarks/calibrate_a100.py [--data CSV] [--seed 0] [--recompute full,none,selective]
                                        [--ceilings 0.64,0.75] [--write]
    python benchmarks/calibrate_a100.py --check-cli [--sample N]
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

from planner import calibrate as cal, devices  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
# ../shared beside the repository (or beside the worktrees folder a worktree sits in)
DATA = next((p for p in (os.path.join(ROOT, *up, "shared", "data", "a100-single-node",
                                      "megatron_deepspeed_iteration_times.csv")
                         for up in (("..",), ("..", ".."))) if os.path.exists(p)),
            os.path.join(ROOT, "..", "shared", "data", "a100-single-node",
                         "megatron_deepspeed_iteration_times.csv"))
DATA_NAME = "shared/data/a100-single-node/megatron_deepspeed_iteration_times.csv"
A100 = os.path.join(ROOT, "profiles", "a100-sxm4-80gb.json")
H100 = os.path.join(ROOT, "profiles", "h100-sxm5-80gb.json")
# Nelder-Mead is local, and the launch-bound floor max(GPU, host) is flat in host_overhead_s
# until it binds: start from the previous calibration's figures (fitted with the ceiling free,
# 2026-11-25), and (unless --starts 1) once more with a binding host floor and fast matmuls.
STARTS = (
    dict(matmul_efficiency_scale_flops=8.574e9, memory_efficiency=0.6776,
         kernel_overhead_s=3.428e-5, host_overhead_s=8.076e-5, microbatch_overhead_s=1.344e-3),
    dict(matmul_efficiency_scale_flops=1e9, memory_efficiency=0.88, kernel_overhead_s=2.5e-5,
         host_overhead_s=5e-5, microbatch_overhead_s=3e-3),
)
CEILING = "matmul_efficiency_max"


def table(rows, predict, dm):
    """Mean signed error (%) per tensor-parallel size and micro-batch size: where it misses."""
    errs = {}
    for r in rows:
        e = 100 * (predict(r, dm) - r.time_s) / r.time_s
        errs.setdefault((r.tp, r.microbatch_size), []).append(e)
    bs = sorted({b for _, b in errs})
    print("  signed error %, mean (max |.|) by tp x micro-batch:")
    print("  tp\\b " + "".join(f"{b:>16}" for b in bs))
    for tp in sorted({t for t, _ in errs}):
        cells = []
        for b in bs:
            v = errs.get((tp, b))
            cells.append(f"{np.mean(v):7.1f} ({np.max(np.abs(v)):5.1f})" if v else " " * 16)
        print(f"  {tp:>4} " + "".join(f"{c:>16}" for c in cells))


def check_cli(rows, sample: int, seed: int) -> int:
    """Predict ``rows`` (a random ``sample`` of them; 0: all) through `planner simulate` with
    the shipped profile; print the errors and the largest difference from the predictor."""
    import contextlib
    import io
    import json
    import random
    import tempfile

    from planner import cli
    from planner.serde import write_json
    predict = cal.SimulatorPredictor(**devices.load(A100).calibration.predictor)
    dm = devices.load(A100)
    if sample:
        rows = random.Random(seed).sample(list(rows), sample)
    pred, via_cli = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, row in enumerate(rows):
            arch = os.path.join(tmp, f"gpt-l{row.num_layers}-h{row.hidden_size}.json")
            if not os.path.exists(arch):
                write_json(arch, predict.architecture(row))
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                rc = cli.main(["simulate", *predict.cli_args(row, arch), "--format", "json",
                               "--out", os.path.join(tmp, "plan.json")])
            if rc != 0:
                raise SystemExit(f"row {i}: planner simulate exited {rc}")
            via_cli.append(json.loads(out.getvalue())["step_time_s"])
            pred.append(predict(row, dm))
    measured = np.array([r.time_s for r in rows])
    err = 100 * np.abs(np.array(via_cli) - measured) / measured
    diff = max(abs(a - b) / b for a, b in zip(via_cli, pred))
    print(f"{len(rows)} rows through `planner simulate {' '.join(predict.cli_args(rows[0], 'ARCH'))}`"
          f" ...: median {np.median(err):.2f}%, mean {np.mean(err):.2f}%, max {np.max(err):.2f}%;"
          f" largest relative difference from the calibration's prediction {diff:.1e}")
    return 0


def ceiling_refits(train, held, predict, starts, values) -> dict:
    """Held-out medians after refitting the fitted figures with the ceiling fixed at each of
    ``values``: the ceiling's identifiability on this data."""
    out = {}
    for v in values:
        fixed = [s.with_values(**{CEILING: v}) for s in starts]
        dm, _ = cal.fit_multistart(train, predict, fixed, devices.FITTED)
        out[f"ceiling {v:g}"] = float(np.median(cal.evaluate(held, predict, dm)))
        print(f"  ceiling fixed at {v:g}: held-out median {out[f'ceiling {v:g}']:.2f}%")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recompute", default="full,selective,none")
    ap.add_argument("--ceilings", default="", help="refit at these fixed ceilings too")
    ap.add_argument("--starts", type=int, default=len(STARTS),
                    help=f"Nelder-Mead starts per fit, of the {len(STARTS)} in STARTS")
    ap.add_argument("--write", action="store_true", help="update profiles/*.json")
    ap.add_argument("--check-cli", action="store_true",
                    help="predict the rows through `planner simulate` (no fitting)")
    ap.add_argument("--sample", type=int, default=0, help="with --check-cli: rows (0: all)")
    args = ap.parse_args(argv)
    rows = cal.load_rows(args.data)
    if args.check_cli:
        return check_cli(rows, args.sample, args.seed)
    base = devices.load(A100)
    starts = [base.with_values(**s) for s in STARTS[:max(args.starts, 1)]]
    train, held = cal.split(rows, args.seed)
    print(f"{len(rows)} rows: fit on {len(train)}, held out {len(held)} (seed {args.seed}); "
          f"{CEILING} fixed at {getattr(base, CEILING).value:.4f} (its source: "
          f"{getattr(base, CEILING).source[:60]}...)")
    results, losses, predictors = {}, {}, {}
    for rc in args.recompute.split(","):
        predict = cal.SimulatorPredictor(rc)
        t0 = time.perf_counter()
        dm, loss = cal.fit_multistart(train, predict, starts, devices.FITTED)
        res = cal.Result(dm, len(train), len(held), cal.evaluate(train, predict, dm),
                         cal.evaluate(held, predict, dm))
        results[rc], losses[rc], predictors[rc] = res, loss, predict
        print(f"recompute={rc:<9} train loss {loss:.5f}  train median "
              f"{np.median(res.train_errors):5.2f}%  held-out median {res.heldout_median:5.2f}% "
              f"mean {np.mean(res.heldout_errors):5.2f}% max {res.heldout_max:5.2f}%  "
              f"({time.perf_counter() - t0:.0f} s)")
        print("  " + ", ".join(f"{n}={getattr(dm, n).value:.4g}" for n in devices.FITTED))
    best = min(losses, key=losses.get)
    res, predict = results[best], predictors[best]
    print(f"kept recompute={best} (lowest training loss)")
    table(held, predict, res.model)
    sens = cal.sensitivity(held, predict, res.model, (*devices.FITTED, CEILING))
    print("  held-out median error change (percentage points) when a figure moves -10% / +10%:")
    for name, moved in sens.items():
        print(f"    {name:<32} {moved['-10%']:+7.2f} {moved['+10%']:+7.2f}"
              + ("   (not fitted)" if name == CEILING else ""))
    refits = ceiling_refits(train, held, predict, starts,
                            [float(x) for x in args.ceilings.split(",") if x])
    if args.write:
        write(res, results, losses, best, predict, sens, refits, args.seed)
    return 0


def write(res, results, losses, best, predict, sens, refits, seed) -> None:
    date = datetime.date.today().isoformat()
    assumptions = {
        "precision": "16-bit mixed precision (bf16 or fp16: the same A100 tensor-core peak)",
        "optimizer": "Adam (fp32 master weights and states), the Megatron-DeepSpeed default",
        "recompute": f"{best}: the lowest training loss of " + ", ".join(
            f"{k} {v:.5f}" for k, v in sorted(losses.items(), key=lambda kv: kv[1])),
        "implementation": "megatron: Megatron-LM layer (fused QKV, unfused softmax attention "
                          "with dropout), vocabulary-parallel embedding and cross entropy, "
                          "vocabulary 50257 padded to 128*tp, pipeline scatter/gather",
        "schedule": "1F1B over pp stages, layers split evenly (--partition even); gradient "
                    "accumulation over micro-batches; data-parallel all-reduce of 16-bit "
                    "gradients",
        "matmul ceiling": f"{getattr(res.model, CEILING).value:.4f}, not fitted (its source); "
                          "held-out median with the rest refitted at other ceilings: " + (
                              ", ".join(f"{k}: {v:.2f}%" for k, v in refits.items())
                              or "not run"),
    }
    fitted = cal.fitted_profile(res, DATA_NAME, date, seed, assumptions, predict.settings(),
                                results, losses, sens)
    fitted.save(A100)
    h100 = cal.carried_over(devices.load(H100), fitted, "A100 fit carried over, no H100 data")
    h100.save(H100)
    print(f"wrote {A100} and {H100}")


if __name__ == "__main__":
    sys.exit(main())
