"""Predicted step time, MFU and breakdown of large Megatron-LM runs, through `planner simulate`.

The layouts of issue 11 (Narayanan et al. SC'21 model shapes: sequence 2048, vocabulary
51200, micro-batch 1, A100 80 GB, tp 8), each with full recomputation and with selective
recomputation plus sequence parallelism, costed with ``--implementation megatron --partition
even`` on the dgx-a100-80gb preset. Nothing here is fitted to published large-run results:
the device model is the shipped one (published GEMM ceiling, the rest fitted on single-node
runs), the links the preset's.

    python benchmarks/megatron_large.py [--format text|json]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from planner import cli  # noqa: E402
from planner.serde import write_json  # noqa: E402

# name, layers, hidden, heads, tp, pp, virtual stages, GPUs, global batch
CASES = (
    ("175B", 96, 12288, 96, 8, 8, 3, 64, 64),
    ("530B", 105, 20480, 128, 8, 35, 3, 280, 280),
    ("1T", 128, 25600, 160, 8, 64, 1, 512, 512),
)
RECOMPUTE = (("full", ["--recompute", "full"]),
             ("selective+sp", ["--recompute", "selective", "--sequence-parallel"]))


def args_for(case, arch: str, recompute: list[str]) -> list[str]:
    name, layers, hidden, heads, tp, pp, v, gpus, batch = case
    schedule = ["--schedule", "interleaved-1f1b", "--virtual-stages", str(v)] if v > 1 else \
        ["--schedule", "1f1b"]
    return ["--model", arch, "--cluster", "dgx-a100-80gb", "--gpus", str(gpus),
            "--global-batch", str(batch), "--tp", str(tp), "--pp", str(pp),
            "--microbatch-size", "1", *schedule, *recompute, "--implementation", "megatron",
            "--partition", "even"]


def run_case(case, recompute, tmp: str) -> dict:
    name, layers, hidden, heads = case[:4]
    arch = os.path.join(tmp, f"gpt-{name}.json")
    write_json(arch, {"name": f"gpt-{name}", "family": "gpt", "num_layers": layers,
                      "hidden_size": hidden, "num_heads": heads, "seq_len": 2048,
                      "vocab_size": 51200})
    argv = ["simulate", *args_for(case, arch, recompute), "--format", "json", "--out",
            os.path.join(tmp, "plan.json")]
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        rc = cli.main(argv)
    if rc:
        raise SystemExit(f"planner {' '.join(argv)} exited {rc}")
    got = json.loads(out.getvalue())
    got["wall_s"] = time.perf_counter() - t0
    got["flags"] = " ".join(args_for(case, f"gpt-{name}.json", recompute))
    return got


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--format", choices=("text", "json"), default="text")
    args = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            for label, flags in RECOMPUTE:
                got = run_case(case, flags, tmp)
                results.append({"model": case[0], "recompute": label, **got})
    if args.format == "json":
        json.dump([{k: r[k] for k in ("model", "recompute", "flags", "step_time_s", "mfu",
                                      "tflops_per_device", "breakdown_s", "peak_memory_bytes",
                                      "fits")} for r in results], sys.stdout, indent=2)
        print()
        return 0
    keys = ("compute", "recompute", "tp_comm_exposed", "pp_comm_exposed", "dp_comm_exposed",
            "bubble", "optimizer")
    print(f"{'model':<6}{'recompute':<14}{'step s':>9}{'MFU':>7}{'TFLOP/s':>9}{'GiB':>7} "
          + "".join(f"{k:>16}" for k in keys))
    for r in results:
        b = r["breakdown_s"]
        print(f"{r['model']:<6}{r['recompute']:<14}{r['step_time_s']:>9.2f}{r['mfu']:>7.1%}"
              f"{r['tflops_per_device']:>9.1f}{r['peak_memory_bytes'] / 2**30:>7.1f} "
              + "".join(f"{b.get(k, 0.0):>16.2f}" for k in keys)
              + ("" if r["fits"] else "  (does not fit)") + f"  [{r['wall_s']:.1f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
