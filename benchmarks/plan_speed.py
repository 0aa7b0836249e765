"""How fast `planner plan` searches the full layout space (a benchmark, not a test).

    python benchmarks/plan_speed.py            # the 175B and 1T cases and the scaling tables
    python benchmarks/plan_speed.py --quick    # the 175B case only

Case 1 (issue 4): gpt3-175b on dgx-a100-80gb, 1024 GPUs, global batch 1536, every dimension
searched. Case 2: gpt-1t on 16384 GPUs (global batch 3072, as Narayanan et al. SC'21 Table 1 for
the 1T model). Then planning time against the number of layers (gpt3-175b shapes with 24..192
layers) and against the GPU count (gpt3-175b, 256..16384 GPUs, batch scaled with the GPUs).

Each case is timed in a fresh process (no warm caches), which imports only planning code (the
script checks that torch, pandas and matplotlib stay unimported). Wall and CPU seconds are
printed; on a shared machine the wall time includes waiting for the cores, so CPU seconds are
the steadier figure. The 175B target is under 2 s wall on a 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, sys, time
w0, c0 = time.perf_counter(), time.process_time()
from planner.clusters import resolve_cluster
from planner.cost import compute
from planner.models import PRESETS
from planner.search import Space, search
from planner.sim import RunSpec
from planner.specs import ModelSpec
from dataclasses import replace
name, layers, gpus, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
spec = PRESETS[name]
if layers and layers != spec.num_layers:
    spec = replace(spec, name=f"{name}-{layers}l", num_layers=layers)
cluster = resolve_cluster("dgx-a100-80gb").with_size(gpus)
run = RunSpec(spec, cluster, "bf16-mixed", "adam")
costs = {}
def blocks_for(b):
    if b not in costs:
        costs[b] = compute.analytic_costs(spec, b, cluster.device, "bf16-mixed", 2)
    return costs[b]
w1, c1 = time.perf_counter(), time.process_time()
res = search(run, blocks_for, gpus, batch, Space(), top_k=5)
w2, c2 = time.perf_counter(), time.process_time()
bad = [m for m in ("torch", "pandas", "matplotlib") if m in sys.modules]
best = res.ranked[0] if res.ranked else None
print(json.dumps({
    "startup_wall_s": w1 - w0, "search_wall_s": w2 - w1, "search_cpu_s": c2 - c1,
    "total_wall_s": w2 - w0, "total_cpu_s": c2 - c0,
    "enumerated": res.enumerated, "refused": res.refused, "simulated": res.simulated,
    "memory_pruned": res.memory_pruned, "not_fitting": res.not_fitting,
    "dominated": res.dominated, "bounded_out": res.bounded_out, "heavy_imports": bad,
    "best": best[0].describe() if best else None,
    "best_step_s": best[1].step_time_s if best else None,
    "best_mfu": best[1].mfu if best else None}))
"""


def run_case(name: str, layers: int, gpus: int, batch: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, name, str(layers), str(gpus), str(batch)],
                          capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(proc.stdout)


def show(label: str, r: dict) -> None:
    print(f"{label:38} wall {r['total_wall_s']:6.2f} s (search {r['search_wall_s']:5.2f}, cpu "
          f"{r['search_cpu_s']:5.2f})  enumerated {r['enumerated']:6d} (+{r['refused']} the "
          f"executor refuses)  simulated "
          f"{r['simulated']:4d}  -> {r['best']}  {r['best_step_s']:.2f} s/step, "
          f"MFU {r['best_mfu']:.1%}" if r["best"] else f"{label}: nothing fits")
    if r["heavy_imports"]:
        print(f"  WARNING: planning imported {r['heavy_imports']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the 175B case")
    args = ap.parse_args()
    show("gpt3-175b, 1024 x A100, batch 1536", run_case("gpt3-175b", 0, 1024, 1536))
    if args.quick:
        return
    show("gpt-1t, 16384 x A100, batch 3072", run_case("gpt-1t", 0, 16384, 3072))
    print("\nplanning time against layers (gpt3-175b shape, 1024 GPUs, batch 1536):")
    for layers in (24, 48, 96, 192):
        show(f"  {layers} layers", run_case("gpt3-175b", layers, 1024, 1536))
    print("\nplanning time against GPUs (gpt3-175b, batch 1.5 x GPUs):")
    for gpus in (256, 1024, 4096, 16384):
        show(f"  {gpus} GPUs", run_case("gpt3-175b", 0, gpus, gpus * 3 // 2))


if __name__ == "__main__":
    main()
