"""`planner converge`: train one model under each data-parallel scheme and compare convergence.

For every world size and scheme (``planner.converge.SCHEMES``, the flags `planner simulate`
takes): write the plan with `planner simulate`'s own parser and code (its prediction is the
predicted step time), run it with ``torchrun -m executor --data corpus.npy`` for ``--steps``
steps, and keep loss against step and wall-clock time and the bytes per step. Prints, per world
size, predicted against measured step time, bytes per step and the loss reached within the
wall-clock budget; writes a Convergence JSON that `planner report --convergence` draws.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import subprocess
import sys

from planner.children import child_env
from planner import converge as conv
from planner.errors import PlannerError
from planner.specs import OPTIMIZERS


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="gpt-tiny")
    parser.add_argument("--profile", nargs="+", help="profiles of the model (default: those in "
                        "profiles/, else measured now into the workdir)")
    parser.add_argument("--cluster", default="localhost-cpu")
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300, help="training steps per run")
    parser.add_argument("--schemes", nargs="+", choices=list(conv.SCHEMES),
                        default=list(conv.SCHEMES))
    parser.add_argument("--budget-s", type=float,
                        help="wall-clock budget the loss is read at (default: per world size, "
                             "the shortest run's duration)")
    parser.add_argument("--smooth", type=int, default=10,
                        help="losses averaged for the loss at the budget (default 10)")
    parser.add_argument("--corpus", help="a .npy of byte tokens (default: the Python standard "
                                         "library's sources, written into the workdir)")
    parser.add_argument("--corpus-bytes", type=int, default=8 * 2**20)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--straggler-cv", type=float, default=0.0,
                        help="as for `planner simulate`, for the predictions")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="wall limit per run")
    parser.add_argument("--workdir", default=os.path.join("out", "converge"))
    parser.add_argument("--out", help="Convergence JSON (default <workdir>/convergence.json)")


def _check(args) -> None:
    if args.steps < 4:
        raise PlannerError(f"--steps must be >= 4 (a warm-up, a counted last step and some "
                           f"to compare), got {args.steps}")
    for w in args.world_sizes:
        if w < 2 or args.global_batch % w:
            raise PlannerError(f"--world-sizes {w}: needs >= 2 ranks dividing --global-batch "
                               f"{args.global_batch}")
    if args.smooth < 1:
        raise PlannerError(f"--smooth must be >= 1, got {args.smooth}")
    if args.budget_s is not None and not args.budget_s > 0:
        raise PlannerError(f"--budget-s must be > 0, got {args.budget_s}")
    if not args.timeout_s > 0 or args.timeout_s == float("inf"):
        raise PlannerError(f"--timeout-s must be a positive number of seconds, got "
                           f"{args.timeout_s}")
    if args.corpus_bytes < 1:
        raise PlannerError(f"--corpus-bytes must be >= 1, got {args.corpus_bytes}")


def _first_line(err) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _profiles(args) -> list[str]:
    """The profiles to plan from: given, found in profiles/, or measured now."""
    from planner.inputs import find_profiles
    from planner.models import resolve_model
    if args.profile:
        return list(args.profile)
    found = find_profiles(resolve_model(args.model), "cpu", "float32")
    if found:
        return [path for path, _ in found]
    paths = []
    for mb in sorted({args.global_batch // w for w in args.world_sizes}, reverse=True):
        path = os.path.join(args.workdir, f"{args.model}-profile-b{mb}.json")
        print(f"profiling {args.model} at micro-batch {mb}", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "planner.cli", "profile", "--model", args.model,
               "--microbatch-size", str(mb), "--threads", "1", "--out", path]
        proc = subprocess.run(cmd, env=child_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode:
            raise PlannerError(f"profiling {args.model} at micro-batch {mb} failed (exit "
                               f"{proc.returncode}): {_first_line(proc.stderr or 'no output')}")
        paths.append(path)
    return paths


def _plan(args, profiles, world: int, flags, path: str):
    """The plan of one scheme, by `planner simulate` itself."""
    from planner.commands import simulate
    from planner.specs import Plan
    parser = argparse.ArgumentParser(prog="planner simulate")
    simulate.add_arguments(parser)
    sim_args = parser.parse_args(
        ["--profile", *profiles, "--cluster", args.cluster, "--gpus", str(world),
         "--global-batch", str(args.global_batch), "--dtype", "float32", "--optimizer",
         args.optimizer, "--lr", str(args.lr), "--seed", str(args.seed), "--straggler-cv",
         str(args.straggler_cv), "--format", "json", "--out", path, *flags])
    with contextlib.redirect_stdout(io.StringIO()):
        simulate.run(sim_args)
    return Plan.load(path)


def _run_one(args, profiles, world: int, scheme: str, corpus: str):
    from planner.specs import Metrics
    from planner.specs.convergence import ConvergenceRun
    from planner.trials import run_executor
    stem = os.path.join(args.workdir, f"w{world}-{scheme}")
    flags = conv.SCHEMES[scheme]
    plan = _plan(args, profiles, world, flags, stem + "-plan.json")
    base = dict(scheme=scheme, flags=flags, world_size=world, layout=plan.layout,
                plan_path=stem + "-plan.json")
    metrics_path = stem + "-metrics.json"
    if os.path.exists(metrics_path):
        os.unlink(metrics_path)
    status = run_executor(conv.executor_command(world, base["plan_path"], metrics_path,
                                                args.steps, corpus),
                          stem + ".log", args.timeout_s)
    if status != "ok":
        return ConvergenceRun(**base, status=status)
    m = Metrics.load(metrics_path)
    msg, wire = conv.dp_bytes_per_step(plan.prediction)
    return ConvergenceRun(
        **base, predicted_step_time_s=plan.prediction.step_time_s,
        measured_step_time_s=m.step_time_s, bytes_per_step=msg, wire_bytes_per_step=wire,
        measured_last_step_bytes=sum(v for k, v in m.collective_bytes.items()
                                     if k.endswith("@dp")),
        losses=m.losses[:-1], step_end_s=m.step_end_s[:-1])


def _with_budgets(args, runs):
    from dataclasses import replace
    budgets = {}
    for w in args.world_sizes:
        ok = [r for r in runs if r.world_size == w and r.status == "ok" and r.step_end_s]
        if ok:
            budgets[str(w)] = args.budget_s or min(r.step_end_s[-1] for r in ok)
    out = []
    for r in runs:
        if r.status == "ok" and str(r.world_size) in budgets:
            r = replace(r, loss_at_budget=conv.loss_at(r.losses, r.step_end_s,
                                                       budgets[str(r.world_size)], args.smooth))
        out.append(r)
    return budgets, tuple(out)


def print_text(c, out=sys.stdout) -> None:
    print(f"converge {c.model} on {c.corpus_bytes / 2**20:.1f} MiB of {c.corpus}; global batch "
          f"{c.global_batch_size}, {c.steps} steps, {c.optimizer} lr {c.learning_rate:g}; "
          f"load average {c.load_average:.1f}", file=out)
    for w, budget in c.budget_s.items():
        print(f"\nworld {w}: loss = mean of {c.smooth_steps} steps finished within "
              f"{budget:.1f} s", file=out)
        print(f"  {'scheme':11} {'pred ms':>8} {'meas ms':>8} {'err%':>6} {'KiB/step':>9} "
              f"{'wire KiB':>9} {'steps':>5} {'loss@budget':>11} {'final loss':>10}", file=out)
        for r in c.runs:
            if str(r.world_size) != w:
                continue
            if r.status != "ok":
                print(f"  {r.scheme:11} not measured: {r.status}", file=out)
                continue
            err = 100 * (r.predicted_step_time_s - r.measured_step_time_s) / r.measured_step_time_s
            done = sum(t <= budget for t in r.step_end_s)
            final = sum(r.losses[-c.smooth_steps:]) / len(r.losses[-c.smooth_steps:])
            print(f"  {r.scheme:11} {r.predicted_step_time_s * 1e3:8.1f} "
                  f"{r.measured_step_time_s * 1e3:8.1f} {err:+6.1f} "
                  f"{r.bytes_per_step / 1024:9.1f} {r.wire_bytes_per_step / 1024:9.1f} "
                  f"{done:5d} {r.loss_at_budget:11.4f} {final:10.4f}", file=out)


def run(args) -> int:
    from planner.specs.convergence import Convergence
    _check(args)
    os.makedirs(args.workdir, exist_ok=True)
    corpus, what = args.corpus, f"{args.corpus} (given)"
    if corpus:
        import numpy as np
        if not os.path.isfile(corpus):
            raise PlannerError(f"--corpus {corpus}: no such file")
        try:
            nbytes = int(np.load(corpus, mmap_mode="r", allow_pickle=False).size)
        except (ValueError, OSError) as err:
            raise PlannerError(f"--corpus {corpus}: not a .npy array of byte tokens (as "
                               f"numpy.save writes; {type(err).__name__}); nothing is "
                               "unpickled") from None
    else:
        corpus = os.path.join(args.workdir, "corpus-stdlib.npy")
        what, nbytes = conv.stdlib_corpus(corpus, args.corpus_bytes)
    profiles = _profiles(args)
    runs = []
    todo = [(w, s) for w in args.world_sizes for s in args.schemes]
    for i, (w, scheme) in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] world {w}: {scheme}", file=sys.stderr, flush=True)
        runs.append(_run_one(args, profiles, w, scheme, corpus))
    budgets, runs = _with_budgets(args, runs)
    c = Convergence(model=args.model, corpus=what, corpus_bytes=nbytes,
                    global_batch_size=args.global_batch, steps=args.steps,
                    smooth_steps=args.smooth, budget_s=budgets, runs=runs,
                    learning_rate=args.lr, optimizer=args.optimizer,
                    created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(
                        timespec="seconds"), load_average=os.getloadavg()[0])
    out = args.out or os.path.join(args.workdir, "convergence.json")
    c.save(out)
    print_text(c)
    print(f"\nwrote {out}; draw it with: planner report --convergence {out}")
    return 0 if any(r.status == "ok" for r in runs) else 1
