"""`planner validate`: run the executor on the planner's top layouts and a sample of the rest.

For the model and cluster given (as to `planner plan`), the search's feasible layouts are ranked
by predicted step time; the top ``--top-k`` and ``--sample`` drawn from the others (seeded) are
written as plan files under ``--workdir`` and run with ``torchrun -m executor`` at the cluster's
world size. Printed: predicted against measured step time and memory per layout, and the
statistics of ``planner.validate`` (median/max absolute percentage error, Spearman rank
correlation, regret). ``--calibrate`` fits compute and communication scales to the runs and
writes a calibrated cluster file (and profile, when compute came from one).
"""
from __future__ import annotations

import json
import math
import os
import sys

from planner import families, inputs as plan_inputs
from planner.errors import PlannerError
from planner.outputs import check_writable


# The sample is drawn from the search's best `max(POOL_MIN, K + POOL_PER_SAMPLE * S)` layouts.
POOL_MIN = 20
POOL_PER_SAMPLE = 4


def add_arguments(parser) -> None:
    from planner.inputs import add_layout_arguments

    plan_inputs.add_arguments(parser)
    add_layout_arguments(parser)  # as for `planner plan`: a flag fixes that dimension
    parser.add_argument("--top-k", type=int, default=3, help="best predicted layouts to run")
    parser.add_argument("--sample", type=int, default=2,
                        help="other feasible layouts to run, drawn at random (seeded)")
    parser.add_argument("--sample-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=6, help="executor steps per layout")
    parser.add_argument("--warmup", type=int, default=2, help="of which warm-up (not timed)")
    parser.add_argument("--timeout-s", type=float, default=600.0,
                        help="wall limit per executor run; a run over it is killed and listed")
    parser.add_argument("--workdir", help="plans, metrics and logs (default out/validate/"
                                          "<model>-<cluster>-g<N>-b<B>)")
    parser.add_argument("--out", help="also write the result as JSON here (for planner report)")
    parser.add_argument("--calibrate", action="store_true",
                        help="fit compute/communication scales to the runs; write calibrated "
                             "cluster (and profile) files into the workdir")
    parser.add_argument("--format", choices=("text", "json"), default="text")


def feasible_plans(inp, space, pool: int) -> list:
    """Plans of the ``pool`` best fitting layouts of the search, best predicted step first.

    The same search, simulator inputs and space flags as ``planner plan``, so "the planner's
    pick" here is the layout `planner plan` writes. The sample of "the others" is drawn from
    this pool beyond the top K: layouts the planner ranks, not ones its bounds prove hopeless.
    """
    from planner import search
    from planner import planfile

    search.check_space(space, inp.num_devices, inp.global_batch_size)
    res = search.search(planfile.run_spec(inp), inp.block_costs, inp.num_devices,
                        inp.global_batch_size, space, top_k=pool)
    return [planfile.make_plan(inp, layout, pred) for layout, pred in res.ranked]


def print_text(v, out=None) -> None:
    out = out or sys.stdout   # looked up per call: stdout may be replaced
    mib = 2**20
    print(f"validate {v.model} on {v.cluster} x{v.world_size}, global batch "
          f"{v.global_batch_size}, {v.steps} steps ({v.warmup_steps} warm-up) per layout", file=out)
    w = max([6] + [len(r.layout.describe()) for r in v.rows])
    head = (f"{'#':>3} {'role':6} {'layout':{w}} {'pred ms':>9} {'meas ms':>9} {'IQR':>7} "
            f"{'err%':>7} {'pred MiB':>9} {'meas MiB':>9} {'err%':>7}")
    print(head, file=out)
    for r in v.rows:
        lay = r.layout.describe()
        if r.status != "ok":
            print(f"{r.predicted_rank:>3} {r.role:6} {lay:{w}} {r.predicted_step_time_s * 1e3:9.1f}"
                  f"  not measured: {r.status}", file=out)
            continue
        print(f"{r.predicted_rank:>3} {r.role:6} {lay:{w}} {r.predicted_step_time_s * 1e3:9.1f} "
              f"{r.measured_step_time_s * 1e3:9.1f} {r.measured_step_time_iqr_s * 1e3:7.1f} "
              f"{r.step_time_error_pct:+7.1f} {r.predicted_peak_memory_bytes / mib:9.1f} "
              f"{r.measured_peak_memory_bytes / mib:9.1f} {r.memory_error_pct:+7.1f}", file=out)
    measures = sorted({r.memory_measure for r in v.rows if r.status == "ok"})
    if measures:
        print(f"memory measured by: {'; '.join(measures)}", file=out)

    def pct(x):
        return "n/a" if x is None else f"{x:.1f}%"
    rho = "n/a" if v.rank_correlation is None else f"{v.rank_correlation:+.3f}"
    regret = "n/a" if v.regret is None else f"{v.regret:.1%}"
    print(f"step time  |error| median {pct(v.median_abs_pct_error)}, max "
          f"{pct(v.max_abs_pct_error)}; Spearman rank correlation {rho}; regret of the pick "
          f"{regret}", file=out)
    print(f"memory     |error| median {pct(v.memory_median_abs_pct_error)}, max "
          f"{pct(v.memory_max_abs_pct_error)}", file=out)


def calibrate(inp, v, workdir: str) -> dict:
    """Fit the scales (planner.validate.fit_scales) and write the calibrated files."""
    from planner import validate as val

    ok = [r for r in v.rows if r.status == "ok"]
    if not ok:
        raise PlannerError("--calibrate: no layout was measured; nothing to fit")
    terms = [val.critical_terms(r.predicted_breakdown_s, r.predicted_step_time_s) for r in ok]
    measured = [r.measured_step_time_s for r in ok]
    scales, notes = val.fit_scales(terms, measured)
    before = val.median_max(val.abs_pct_errors([r.predicted_step_time_s for r in ok], measured))
    after = val.median_max(val.abs_pct_errors([val.apply_scales(t, scales) for t in terms],
                                              measured))
    note = f"planner validate --calibrate, {len(ok)} runs"
    cluster_path = os.path.join(workdir, "calibrated-cluster.json")
    val.calibrated_cluster(inp.cluster, scales, inp.profile is not None, note).save(cluster_path)
    out = {"scales": scales, "notes": notes, "cluster_path": cluster_path,
           "in_sample_median_abs_pct_error_before": before[0],
           "in_sample_median_abs_pct_error_after": after[0],
           "in_sample_max_abs_pct_error_after": after[1]}
    if inp.profile is not None:
        profile_path = os.path.join(workdir, "calibrated-profile.json")
        val.calibrated_profile(inp.profile, scales["compute"], note).save(profile_path)
        out["profile_path"] = profile_path
    return out


def _check_numbers(args) -> None:
    if args.steps <= args.warmup:
        raise PlannerError(f"--steps {args.steps} must exceed --warmup {args.warmup} (no timed "
                           "step would be left)")
    for flag, low in (("warmup", 0), ("top_k", 1), ("sample", 0)):
        if getattr(args, flag) < low:
            raise PlannerError(f"--{flag.replace('_', '-')} must be >= {low}, got "
                               f"{getattr(args, flag)}")
    if not (math.isfinite(args.timeout_s) and args.timeout_s > 0):
        raise PlannerError(f"--timeout-s must be a positive number of seconds, got "
                           f"{args.timeout_s}")


def noise_notes(v) -> list[str]:
    """A loaded machine, and layouts whose measured steps spread widely (``planner.noise``)."""
    from planner import noise
    notes = [noise.load_note("the measured step times")]
    wide = [r for r in v.rows if r.status == "ok" and noise.relative_spread(
        r.measured_step_time_iqr_s, r.measured_step_time_s) > noise.NOISY_SPREAD]
    if wide:
        worst = max(wide, key=lambda r: r.measured_step_time_iqr_s / r.measured_step_time_s)
        notes.append(f"{len(wide)} of the measured layouts spread by more than "
                     f"{noise.NOISY_SPREAD:.0%} of their median (IQR column; worst "
                     f"{worst.layout.describe()}: "
                     f"{worst.measured_step_time_iqr_s / worst.measured_step_time_s:.0%}): "
                     "errors and rank correlations below that are noise")
    return [n for n in notes if n]


def run(args) -> int:
    from planner import validate as val

    _check_numbers(args)
    inp = plan_inputs.resolve(args)
    pool = max(POOL_MIN, args.top_k + POOL_PER_SAMPLE * args.sample)
    from planner.inputs import space_from_args

    workdir = args.workdir or os.path.join(
        "out", "validate", f"{inp.model.name}-{inp.cluster.name}-g{inp.num_devices}-"
                           f"b{inp.global_batch_size}")
    check_writable("--workdir", workdir, "dir")      # before the runs, not after them
    if args.out:
        check_writable("--out", args.out)
    plans = feasible_plans(inp, space_from_args(args), pool)
    if not plans:
        raise PlannerError(f"no layout of {inp.model.name} fits {inp.cluster.name} "
                           f"x{inp.num_devices}: nothing to validate")
    roles = val.choose_layouts(plans, args.top_k, args.sample, args.sample_seed)
    custom = not families.of(inp.model).builtin and args.model == inp.model.callable_path
    settings = val.RunSettings(workdir, args.steps, args.warmup, args.timeout_s,
                               model=args.model if custom else "")
    print(f"{len(plans)} best fitting layouts (of at most {pool} asked of the search); "
          f"running {len(roles)} under torchrun "
          f"({inp.num_devices} rank(s)) in {workdir}", file=sys.stderr)
    v = val.validate(plans, roles, settings,
                     {"model": inp.model.name, "cluster": inp.cluster.name,
                      "world_size": inp.num_devices, "global_batch_size": inp.global_batch_size},
                     progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    for note in noise_notes(v):
        # Wall-clock step times of ranks that share cores with other work are not the costs
        # the profile measured: say so next to the numbers.
        print(f"note: {note}", file=sys.stderr)
    if args.out:
        v.save(args.out)
    cal = calibrate(inp, v, workdir) if args.calibrate else None
    if args.format == "json":
        doc = v.to_dict()
        if cal is not None:
            doc["calibration"] = cal
        json.dump(doc, sys.stdout, indent=2)
        print()
    else:
        print_text(v)
        if cal is not None:
            print(f"calibration: compute x{cal['scales']['compute']:.3f}, communication "
                  f"x{cal['scales']['comm']:.3f}; in-sample median |error| "
                  f"{cal['in_sample_median_abs_pct_error_before']:.1f}% -> "
                  f"{cal['in_sample_median_abs_pct_error_after']:.1f}%")
            for n in cal["notes"]:
                print(f"  note: {n}")
            print(f"  wrote {cal['cluster_path']}" + (f" and {cal['profile_path']}"
                                                     if "profile_path" in cal else ""))
    return 0 if any(r.status == "ok" for r in v.rows) else 1
