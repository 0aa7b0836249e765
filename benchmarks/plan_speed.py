"""How fast `planner plan` searches the full layout space (a benchmark, not a test).

    python benchmarks/plan_speed.py                     # the cases below, this checkout
    python benchmarks/plan_speed.py --baseline 83830f3  # ... and an older commit, same run
    python benchmarks/plan_speed.py --quick             # the 175B case only
    python benchmarks/plan_speed.py --repeats 3         # median of 3 runs per case

Each case is the command a user types, `planner plan --model M --cluster dgx-a100-80gb --gpus N
--global-batch B --format json`, timed as a fresh process (imports, search, the winner's
timeline and writing the plan file all count): process wall time, and the CPU seconds the
child used (steadier on a shared machine, where wall time includes waiting for the cores).
Cases: gpt3-175b on 1,024 GPUs (the interactive target: under 1.5 s here), gpt-1t on 16,384
GPUs (under 3 s), a 192-layer 175B shape, and the growth with layers and GPUs. The child must
not import torch, pandas or matplotlib (checked).

``--baseline REF`` checks REF out into a temporary git worktree and times the same commands
there in the same run, alternating old and new per case so load drifts hit both alike.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = [  # (label, model, layers (0: the preset's), gpus, batch)
    ("gpt3-175b, 1024 x A100, batch 1536", "gpt3-175b", 0, 1024, 1536),
    ("gpt-1t, 16384 x A100, batch 4096", "gpt-1t", 0, 16384, 4096),
    ("gpt3-175b shape with 192 layers, 1024", "gpt3-175b", 192, 1024, 1536),
]
GROWTH = ([(f"  {n} layers (175B shape, 1024 GPUs)", "gpt3-175b", n, 1024, 1536)
           for n in (24, 48, 96)]
          + [(f"  {g} GPUs (175B, batch 1.5 x GPUs)", "gpt3-175b", 0, g, g * 3 // 2)
             for g in (256, 4096, 16384)])

# Runs the CLI in-process after recording which heavy modules planning imported.
SHIM = r"""
import json, sys
from planner.cli import main
rc = main(sys.argv[1:])
bad = [m for m in ("torch", "pandas", "matplotlib") if m in sys.modules]
sys.stderr.write("HEAVY=" + json.dumps(bad) + "\n")
sys.exit(rc)
"""


def _model_arg(tree: str, model: str, layers: int, tmp: str) -> str:
    """The preset, or an architecture file of its shape with ``layers`` layers."""
    if not layers:
        return model
    sys.path.insert(0, tree)
    try:
        from planner.models import PRESETS
        spec = PRESETS[model].to_dict()
    finally:
        sys.path.pop(0)
    keep = ("family", "num_heads", "hidden_size", "seq_len", "vocab_size", "ffn_hidden_size")
    arch = {k: spec[k] for k in keep} | {"num_layers": layers}
    path = os.path.join(tmp, f"{model}-{layers}l.json")
    with open(path, "w") as fh:
        json.dump(arch, fh)
    return path


def run_case(tree: str, model: str, layers: int, gpus: int, batch: int, tmp: str) -> dict:
    out = os.path.join(tmp, "plan.json")
    cmd = [sys.executable, "-c", SHIM, "plan", "--model", _model_arg(tree, model, layers, tmp),
           "--cluster", "dgx-a100-80gb", "--gpus", str(gpus), "--global-batch", str(batch),
           "--format", "json", "--out", out]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tree,
                          env=dict(os.environ, PYTHONPATH=tree))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{tree}: {' '.join(cmd[3:])} failed:\n{proc.stderr[-2000:]}")
    data = json.loads(proc.stdout)
    heavy = [ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY=")]
    return {"wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime)
            + (after.ru_stime - before.ru_stime),
            "search": data.get("search", {}), "step_time_s": data["step_time_s"],
            "mfu": data["mfu"], "layout": data["layout"],
            "heavy": json.loads(heavy[0][6:]) if heavy else []}


def median_run(tree, case, tmp, repeats: int) -> dict:
    runs = [run_case(tree, *case[1:], tmp) for _ in range(repeats)]
    best = dict(runs[0])
    best["wall_s"] = statistics.median(r["wall_s"] for r in runs)
    best["cpu_s"] = statistics.median(r["cpu_s"] for r in runs)
    best["spread_s"] = max(r["wall_s"] for r in runs) - min(r["wall_s"] for r in runs)
    return best


def show(label: str, r: dict, tag: str = "") -> None:
    s = r["search"]
    print(f"{label:40} {tag:8} wall {r['wall_s']:5.2f} s (spread {r['spread_s']:.2f}) cpu "
          f"{r['cpu_s']:5.2f} s  simulated {s.get('simulated', '?'):>4}  "
          f"-> {r['step_time_s']:.2f} s/step, MFU {r['mfu']:.1%}")
    if r["heavy"]:
        print(f"  WARNING: planning imported {r['heavy']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the 175B case")
    ap.add_argument("--baseline", metavar="REF", help="also time this git commit, same run")
    ap.add_argument("--repeats", type=int, default=1, help="runs per case (median)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="plan-speed-")
    trees = [("", ROOT)]
    try:
        if args.baseline:
            old = os.path.join(tmp, "baseline")
            subprocess.run(["git", "worktree", "add", "--detach", "-q", old, args.baseline],
                           cwd=ROOT, check=True)
            trees.insert(0, (args.baseline[:8], old))
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        cases = CASES[:1] if args.quick else CASES + GROWTH
        for case in cases:
            for tag, tree in trees:
                show(case[0], median_run(tree, case, tmp, args.repeats), tag or "this")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
    finally:
        if args.baseline:
            subprocess.run(["git", "worktree", "remove", "--force", os.path.join(tmp, "baseline")],
                           cwd=ROOT)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
