"""Plans on a mixed cluster against the fast devices alone and the even split (a benchmark).

    python benchmarks/mixed_plan.py                 # gpt3-13b and llama3-70b
    python benchmarks/mixed_plan.py --model gpt3-13b --global-batch 512

Runs `planner plan --cluster mixed-h100-a100 --format json` (4 DGX H100 + 4 DGX A100 nodes,
compute from each kind's device model) as a fresh process per model and prints, for the
mixed-aware plan, the best plan on the H100 nodes alone and the best even split over all nodes:
predicted step time, throughput (tokens per second) and tokens per device-hour, with the chosen
layout and the search's time. Both models take 2^20 tokens per step (13B: 512 x 2048; Llama 3
70B: 128 x 8192).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [("gpt3-13b", 512), ("llama3-70b", 128)]


def plan(model: str, batch: int, cluster: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "planner.cli", "plan", "--model", model, "--cluster", cluster,
             "--global-batch", str(batch), "--format", "json", "--out",
             os.path.join(tmp, "plan.json")], capture_output=True, text=True, cwd=ROOT,
            check=True)
        data = json.loads(proc.stdout)
        data["command_wall_s"] = time.perf_counter() - t0
        return data


def show(model: str, batch: int, data: dict) -> None:
    print(f"{model}, global batch {batch}: planned in {data['command_wall_s']:.1f} s "
          f"(search {data['search_wall_s']:.1f} s)")
    options = {o["label"]: o for o in data["options"]}
    fast = [o for o in data["options"] if len(o["kinds"]) == 1 and o.get("layout")]
    fast = min(fast, key=lambda o: o["step_time_s"]) if fast else None
    rows = [("mixed-aware (chosen)" if o["chosen"] else o["label"], o)
            for o in data["options"] if o["chosen"]]
    if fast is not None and not fast["chosen"]:
        rows.append((f"{fast['label']}", fast))
    even = options.get("even split over all nodes")
    if even is not None and even.get("layout") and not even["chosen"]:
        rows.append(("even split over all nodes", even))
    for label, o in rows:
        print(f"  {label:28} {o['devices']:3d} dev  {o['step_time_s']:7.2f} s/step  "
              f"{o['tokens_per_s']:9.0f} tok/s  {o['tokens_per_device_hour'] / 1e6:6.2f} M "
              f"tok/device-h  MFU {o['mfu']:5.1%}")
    for line in data["split"]:
        print(f"    {line}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--global-batch", type=int)
    ap.add_argument("--cluster", default="mixed-h100-a100")
    args = ap.parse_args()
    cases = [(args.model, args.global_batch)] if args.model else CASES
    for model, batch in cases:
        show(model, batch, plan(model, batch, args.cluster))


if __name__ == "__main__":
    main()
