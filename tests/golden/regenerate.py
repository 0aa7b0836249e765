"""Golden plans: `planner plan` / `planner simulate` results on fixed inputs.

Each case runs the command in-process with ``--format json`` and keeps its output minus what
varies from run to run (the plan path, the search's wall time and pruning counters).
``test_search.py`` compares a fresh run with the stored file field by field (numbers within
1e-6 relative).

Regenerate after an intended change of the cost model, and say why in the commit:

    python tests/golden/regenerate.py            # every case
    python tests/golden/regenerate.py NAME ...   # some
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

CASES = {
    "plan-gpt3-1.3b-a100x16-b64": [
        "plan", "--model", "gpt3-1.3b", "--cluster", "dgx-a100-80gb", "--gpus", "16",
        "--global-batch", "64"],
    "plan-gpt3-175b-a100x1024-b1536": [
        "plan", "--model", "gpt3-175b", "--cluster", "dgx-a100-80gb", "--gpus", "1024",
        "--global-batch", "1536", "--top-k", "3"],
    "plan-gpt2-medium-h100x8-b32-fixed-pp2": [
        "plan", "--model", "gpt2-medium", "--cluster", "dgx-h100-80gb", "--gpus", "8",
        "--global-batch", "32", "--pp", "2", "--recompute", "none"],
    "simulate-gpt2-medium-a100x16-b32-zbv-tp2-sp": [
        "simulate", "--model", "gpt2-medium", "--cluster", "dgx-a100-80gb", "--gpus", "16",
        "--global-batch", "32", "--tp", "2", "--pp", "4", "--microbatch-size", "1",
        "--schedule", "zbv", "--sequence-parallel"],
    "simulate-gpt2-medium-a100x16-b32-zbv-zero1": [
        "simulate", "--model", "gpt2-medium", "--cluster", "dgx-a100-80gb", "--gpus", "16",
        "--global-batch", "32", "--pp", "4", "--microbatch-size", "1", "--schedule", "zbv",
        "--zero", "1"],
    "simulate-gpt3-6.7b-a100x32-b64-interleaved-zero3": [
        "simulate", "--model", "gpt3-6.7b", "--cluster", "dgx-a100-80gb", "--gpus", "32",
        "--global-batch", "64", "--tp", "4", "--pp", "4", "--microbatch-size", "2",
        "--schedule", "interleaved-1f1b", "--virtual-stages", "2", "--zero", "3",
        "--recompute", "selective"],
    "simulate-gpt2-small-a100x8-b16-powersgd": [
        "simulate", "--model", "gpt2-small", "--cluster", "dgx-a100-80gb", "--gpus", "8",
        "--global-batch", "16", "--microbatch-size", "1", "--compression", "powersgd",
        "--powersgd-rank", "4"],
    "simulate-gpt3-175b-a100x64-b64-megatron-even-interleaved": [
        "simulate", "--model", "gpt3-175b", "--cluster", "dgx-a100-80gb", "--gpus", "64",
        "--global-batch", "64", "--tp", "8", "--pp", "8", "--microbatch-size", "1",
        "--schedule", "interleaved-1f1b", "--virtual-stages", "3", "--recompute", "selective",
        "--sequence-parallel", "--implementation", "megatron", "--partition", "even"],
    "simulate-gpt3-1.3b-a100x16-b16-megatron-scatter-gather": [
        "simulate", "--model", "gpt3-1.3b", "--cluster", "dgx-a100-80gb", "--gpus", "16",
        "--global-batch", "16", "--tp", "8", "--pp", "2", "--microbatch-size", "1",
        "--implementation", "megatron"],
    "simulate-gpt2-small-a100x16-b32-ps2-tp2": [
        "simulate", "--model", "gpt2-small", "--cluster", "dgx-a100-80gb", "--gpus", "16",
        "--global-batch", "32", "--tp", "2", "--microbatch-size", "2", "--dp-comm",
        "parameter_server", "--ps-shards", "2", "--recompute", "full"],
}
# The plan path varies; the search's pruning counters change whenever a bound improves without
# changing any result, so only the size of the space ("enumerated") is kept of them.
VOLATILE = ("plan_path",)
SEARCH_KEPT = ("enumerated",)


def compute(name: str) -> dict:
    from planner.cli import main
    with tempfile.TemporaryDirectory() as tmp:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = main(CASES[name] + ["--format", "json", "--out", os.path.join(tmp, "p.json")])
        if rc:
            raise RuntimeError(f"{name}: exit {rc}")
    data = json.loads(buf.getvalue())
    for key in VOLATILE:
        data.pop(key, None)
    if "search" in data:
        data["search"] = {k: v for k, v in data["search"].items() if k in SEARCH_KEPT}
    return data


def main(names) -> None:
    for name in names or sorted(CASES):
        path = os.path.join(HERE, name + ".json")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(compute(name), fh, indent=1, sort_keys=True)
            fh.write("\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
