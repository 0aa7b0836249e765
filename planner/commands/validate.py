"""`planner validate`: run the executor on the planner's top layouts and a sample of the rest.

For the model and cluster given (as to `planner plan`), the search's feasible layouts are ranked
by predicted step time; the top ``--top-k`` and ``--sample`` drawn from the others (seeded) are
written as plan files under ``--workdir`` and run with ``torchrun -m executor`` at the cluster's
world size. Printed: predicted against measured step time and memory per layout, and the
statistics of ``planner.validate`` (median/max absolute percentage error, Spearman rank
correlation, regret). ``--calibrate`` fits compute and communication scales to the runs and
writes a calibrated cluster file (and profile, when compute came from one).

Across machines (``planner.trials``): run the same command on every machine with ``--nnodes N
--node-rank R --rdzv-endpoint HOST:PORT --rdzv-id ID --workdir SHARED``; node 0 plans, writes the
trials and reports, every node runs its share of each trial. ``--slurm FILE`` plans, writes the
trials and a SLURM batch script that does the same on an allocation (``planner.slurm``), and
runs nothing; ``--trials FILE`` runs trials written earlier instead of planning.
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import replace

from planner import families, inputs as plan_inputs
from planner.errors import PlannerError
from planner.outputs import check_writable


# The sample is drawn from the search's best `max(POOL_MIN, K + POOL_PER_SAMPLE * S)` layouts.
POOL_MIN = 20
POOL_PER_SAMPLE = 4


def add_arguments(parser) -> None:
    from planner.inputs import add_layout_arguments

    plan_inputs.add_arguments(parser, batch_required=False)   # not with --trials
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
    nodes = parser.add_argument_group(
        "across machines", "run this same command on each machine (node 0 plans and reports; "
        "--workdir must be shared), or write a SLURM script that does")
    nodes.add_argument("--nnodes", type=int,
                       help="machines that run each trial together (torchrun --nnodes; default "
                            "1, with --slurm the cluster's nodes)")
    nodes.add_argument("--node-rank", type=int, default=0,
                       help="this machine's rank, 0..nnodes-1; node 0 plans and reports")
    nodes.add_argument("--rdzv-endpoint", default="", metavar="HOST:PORT",
                       help="torchrun's c10d rendezvous, on node 0's host (with --slurm: :PORT "
                            "on the allocation's first node, default 29500)")
    nodes.add_argument("--rdzv-id", default="", metavar="ID",
                       help="a new id for each validation (e.g. $SLURM_JOB_ID)")
    nodes.add_argument("--trials", metavar="FILE",
                       help="run the trials in FILE (trials.json written by --slurm or by node "
                            "0; steps and warm-up come from it) instead of planning")
    nodes.add_argument("--slurm", metavar="FILE",
                       help="plan, write the trials into --workdir and a SLURM batch script "
                            "that runs them on --nnodes nodes; run nothing")


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


def calibrate(cluster, profile, v, workdir: str) -> dict:
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
    val.calibrated_cluster(cluster, scales, profile is not None, note).save(cluster_path)
    out = {"scales": scales, "notes": notes, "cluster_path": cluster_path,
           "in_sample_median_abs_pct_error_before": before[0],
           "in_sample_median_abs_pct_error_after": after[0],
           "in_sample_max_abs_pct_error_after": after[1]}
    if profile is not None:
        profile_path = os.path.join(workdir, "calibrated-profile.json")
        val.calibrated_profile(profile, scales["compute"], note).save(profile_path)
        out["profile_path"] = profile_path
    return out


def _settings(args, workdir: str, model: str = "", steps=None, warmup=None):
    from planner.trials import RunSettings
    return RunSettings(workdir, args.steps if steps is None else steps,
                       args.warmup if warmup is None else warmup, args.timeout_s, model=model,
                       nnodes=args.nnodes or 1, node_rank=args.node_rank,
                       rdzv_endpoint=args.rdzv_endpoint, rdzv_id=args.rdzv_id)


def _model_flag(args, spec) -> str:
    """The --model to hand the executor: the command line's, when it names the custom code."""
    custom = not families.of(spec).builtin and args.model == spec.callable_path
    return args.model if custom else ""


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
    from planner import trials

    _check_numbers(args)
    if args.implementation != "executor":
        raise PlannerError(f"--implementation {args.implementation}: validate runs this "
                           "project's executor; plan for it with --implementation executor")
    if args.slurm and (args.trials or args.node_rank):
        raise PlannerError("--slurm writes the trials and the script that runs them: drop "
                           "--trials and --node-rank")
    if args.slurm:
        _slurm_port(args)
        check_writable("--slurm", args.slurm)
    if args.trials:
        return run_trials(args)
    if (args.nnodes or 1) > 1 and not args.slurm:
        if not args.workdir:
            raise PlannerError(f"--nnodes {args.nnodes} needs --workdir: a directory every node "
                               "sees (shared filesystem), where node 0 writes the trials")
        if args.node_rank > 0:
            settings = _settings(args, args.workdir, args.model or "")
            trials.check_nodes(settings)
            path = trials.wait_for_trials(settings, args.timeout_s)
            return _follow(args, path)
    return plan_and_run(args)


def plan_and_run(args) -> int:
    from planner import trials
    from planner import validate as val
    from planner.inputs import space_from_args

    inp = plan_inputs.resolve(args)
    pool = max(POOL_MIN, args.top_k + POOL_PER_SAMPLE * args.sample)
    workdir = args.workdir or os.path.join(
        "out", "validate", f"{inp.model.name}-{inp.cluster.name}-g{inp.num_devices}-"
                           f"b{inp.global_batch_size}")
    check_writable("--workdir", workdir, "dir")      # before the runs, not after them
    if args.out:
        check_writable("--out", args.out)
    settings = replace(_settings(args, workdir, _model_flag(args, inp.model)),
                       nnodes=args.nnodes or (inp.cluster.num_nodes if args.slurm else 1))
    # --slurm: the script gives the rendezvous
    trials.check_nodes(settings, inp.num_devices, rendezvous=not args.slurm)
    plans = feasible_plans(inp, space_from_args(args), pool)
    if not plans:
        raise PlannerError(f"no layout of {inp.model.name} fits {inp.cluster.name} "
                           f"x{inp.num_devices}: nothing to validate")
    roles = val.choose_layouts(plans, args.top_k, args.sample, args.sample_seed)
    describe = {"model": inp.model.name, "cluster": inp.cluster.name,
                "world_size": inp.num_devices, "global_batch_size": inp.global_batch_size}
    entries = trials.save_plans(plans, roles, workdir)
    if args.slurm:
        return write_slurm(args, inp.cluster, entries, settings, describe)
    if settings.nnodes > 1:
        trials.write_trials(entries, settings, describe, settings.rdzv_id)
    where = (f"on {settings.nnodes} nodes (node 0 of rendezvous {settings.rdzv_endpoint})"
             if settings.nnodes > 1 else "")
    print(f"{len(plans)} best fitting layouts (of at most {pool} asked of the search); "
          f"running {len(roles)} under torchrun ({inp.num_devices} rank(s)) {where}in "
          f"{workdir}", file=sys.stderr)
    return _measure_and_report(args, entries, settings, describe, inp.cluster, inp.profile)


def run_trials(args) -> int:
    """--trials FILE: run trials written earlier (by --slurm, or by node 0)."""
    from planner import trials

    ts, entries = trials.load_trials(args.trials)
    spec = entries[0].plan.model
    settings = _settings(args, os.path.dirname(os.path.abspath(args.trials)),
                         _model_flag(args, spec), ts.steps, ts.warmup_steps)
    trials.check_nodes(settings, ts.world_size)
    if settings.node_rank > 0:
        return _follow(args, args.trials)
    plan = entries[0].plan
    profile = None
    if args.calibrate and plan.profile_path and os.path.exists(plan.profile_path):
        from planner.specs import ModelProfile
        profile = ModelProfile.load(plan.profile_path)
    describe = {"model": ts.model, "cluster": ts.cluster, "world_size": ts.world_size,
                "global_batch_size": ts.global_batch_size}
    print(f"running {len(entries)} trial(s) of {args.trials} under torchrun "
          f"({ts.world_size} rank(s), {settings.nnodes} node(s))", file=sys.stderr)
    return _measure_and_report(args, entries, settings, describe, plan.cluster, profile)


def _follow(args, path: str) -> int:
    from planner import trials

    ts, entries = trials.load_trials(path)
    settings = replace(_settings(args, os.path.dirname(os.path.abspath(path)),
                                 _model_flag(args, entries[0].plan.model)),
                       steps=ts.steps, warmup=ts.warmup_steps)
    trials.check_nodes(settings, ts.world_size)
    ok = trials.follow(entries, settings, _progress)
    print(f"node {settings.node_rank} of {settings.nnodes}: ran its share of {len(entries)} "
          f"trial(s) of {path} ({ok} ended well here); node 0 reports the results")
    return 0


def write_slurm(args, cluster, entries, settings, describe) -> int:
    from planner import slurm, trials

    path = trials.write_trials(entries, settings, describe, run_id="")
    workdir = os.path.abspath(settings.workdir)
    extra = ["--timeout-s", str(args.timeout_s),
             "--out", os.path.abspath(args.out or os.path.join(workdir, "validation.json"))]
    extra += (["--calibrate"] if args.calibrate else []) + (
        ["--model", settings.model] if settings.model else []) + (
        ["--format", "json"] if args.format == "json" else [])
    text = slurm.script(os.path.abspath(path), workdir, settings.nnodes,
                        describe["world_size"] // settings.nnodes, cluster.backend == "nccl",
                        slurm.wall_time(len(entries), args.timeout_s), extra, os.getcwd(),
                        _slurm_port(args))
    from planner import serde
    serde.write_text(args.slurm, text)
    print(f"wrote {len(entries)} trial plan(s) and {path}\nwrote {args.slurm}: submit it with "
          f"`sbatch {args.slurm}` ({settings.nnodes} node(s) of "
          f"{describe['world_size'] // settings.nnodes} rank(s); {workdir} must be on a "
          "filesystem every node sees)")
    return 0


def _slurm_port(args) -> int:
    from planner import slurm

    port = args.rdzv_endpoint.rpartition(":")[2]
    if args.rdzv_endpoint and not port.isdigit():
        raise PlannerError(f"--rdzv-endpoint {args.rdzv_endpoint}: with --slurm give :PORT (the "
                           "rendezvous runs on the allocation's first node)")
    return int(port) if port else slurm.PORT


def _measure_and_report(args, entries, settings, describe, cluster, profile) -> int:
    from planner import trials

    after = None
    if settings.nnodes > 1:
        def after(k, entry, row):
            trials.write_marker(settings, k, entry, row)
    v = trials.measure_all(entries, settings, describe, _progress, after)
    for note in noise_notes(v):
        # Wall-clock step times of ranks that share cores with other work are not the costs
        # the profile measured: say so next to the numbers.
        print(f"note: {note}", file=sys.stderr)
    if args.out:
        v.save(args.out)
    cal = calibrate(cluster, profile, v, settings.workdir) if args.calibrate else None
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
