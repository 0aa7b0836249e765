"""`planner demo`: the whole product once, on built-in defaults, on this machine.

1. profile the model here (per-block times, FLOPs, bytes);
2. measure the links with a short collective sweep under torchrun (``planner profile
   --network``), unless ``--skip-network``;
3. plan it for ``localhost-cpu`` at each world size asked for (default 1 and 2);
4. run each plan with the executor under torchrun;
5. print predicted against measured step time and memory, with the error.
Everything lands in ``--workdir`` (default ``out/demo``).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from planner.children import child_env
from planner.errors import PlannerError


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="gpt-tiny")
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12, help="executor steps per plan")
    parser.add_argument("--warmup", type=int, default=2, help="executor warm-up steps")
    parser.add_argument("--repeats", type=int, default=10, help="profiler repeats per block")
    parser.add_argument("--skip-network", action="store_true",
                        help="use the localhost-cpu preset's link figures instead of measuring")
    parser.add_argument("--workdir", default=os.path.join("out", "demo"))


def _torchrun(nproc: int, module_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", "-m", *module_args]


def _call(cmd: list[str], what: str) -> None:
    print(f"$ {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, env=child_env())
    if proc.returncode:
        raise PlannerError(f"{what} failed with exit code {proc.returncode} (command above)")


def run(args) -> int:
    from planner.commands import compare, plan as plan_cmd
    from planner.noise import load_note
    from planner.outputs import check_writable
    from planner.specs import Metrics, Plan

    for flag, low in (("global_batch", 1), ("steps", 1), ("warmup", 0), ("repeats", 1)):
        if getattr(args, flag) < low:
            raise PlannerError(f"--{flag.replace('_', '-')} must be >= {low}, got "
                               f"{getattr(args, flag)}")
    if args.steps <= args.warmup:
        raise PlannerError(f"--steps {args.steps} must exceed --warmup {args.warmup}")
    if min(args.world_sizes) < 1:
        raise PlannerError(f"--world-sizes must all be >= 1, got {args.world_sizes}")
    check_writable("--workdir", args.workdir, "dir")
    os.makedirs(args.workdir, exist_ok=True)
    for n in args.world_sizes:
        if args.global_batch % n:
            raise PlannerError(f"--global-batch {args.global_batch} does not divide over world "
                               f"size {n}")
    # Two micro-batch sizes: the largest per-rank batch and 1, so the planner can fit each
    # block's fixed overhead and see that small micro-batches are not free.
    sizes = sorted({args.global_batch // min(args.world_sizes), 1}, reverse=True)
    profile_paths = []
    for mb in sizes:
        path = os.path.join(args.workdir, f"{args.model}-profile-b{mb}.json")
        print(f"[1/4] profiling {args.model} at micro-batch {mb} on this CPU", file=sys.stderr)
        _call([sys.executable, "-m", "planner.cli", "profile", "--model", args.model,
               "--microbatch-size", str(mb), "--repeats", str(args.repeats), "--threads", "1",
               "--out", path], "profiling")
        profile_paths.append(path)
    cluster = "localhost-cpu"
    if not args.skip_network and max(args.world_sizes) > 1:
        cluster = os.path.join(args.workdir, "localhost-cluster.json")
        print("[2/4] measuring collectives over gloo (2 ranks)", file=sys.stderr)
        _call(_torchrun(2, ["planner.commands.profile_network", "--out", cluster,
                            "--time-budget-s", "20"]), "network profiling")
    rows = []
    for n in args.world_sizes:
        plan_path = os.path.join(args.workdir, f"plan-w{n}.json")
        metrics_path = os.path.join(args.workdir, f"metrics-w{n}.json")
        print(f"[3/4] planning for {n} rank(s)", file=sys.stderr)
        # The same flags a user would type, parsed by `planner plan`'s own parser.
        parser = argparse.ArgumentParser(prog="planner plan")
        plan_cmd.add_arguments(parser)
        assumed = ["--no-measure"] if cluster == "localhost-cpu" else []   # --skip-network
        plan_cmd.run(parser.parse_args(
            ["--profile", *profile_paths, "--cluster", cluster, "--gpus", str(n),
             "--global-batch", str(args.global_batch), "--dtype", "float32", "--out", plan_path,
             *assumed]))
        print(f"[4/4] running the plan on {n} rank(s)", file=sys.stderr)
        _call(_torchrun(n, ["executor", "--plan", plan_path, "--steps", str(args.steps),
                            "--warmup", str(args.warmup), "--metrics", metrics_path]),
              "the executor")
        metrics = Metrics.load(metrics_path)
        rows.append((compare.compare(Plan.load(plan_path), metrics, plan_path, metrics_path),
                     metrics))
    print("\npredicted against measured (localhost-cpu, gloo, 1 thread per rank):")
    for row, metrics in rows:
        compare.print_text(row)
        for note in compare.noise_notes(row, metrics):
            print(f"  note: {note}")
    note = load_note("the profile and the measured step times")
    if note:
        print(f"note: {note}")
    return 0

