"""`planner models`: the model presets, with their parameter counts and shapes.

Parameter counts come from each family's formula (``Family.param_counts``), the same the plan
prints; nothing is built or imported beyond the torch-free planner.
"""
from __future__ import annotations

import json
import sys


def add_arguments(parser) -> None:
    parser.add_argument("--format", choices=("text", "json"), default="text")


def rows() -> list[dict]:
    from planner import families
    from planner.models import PRESETS
    out = []
    for spec in PRESETS.values():
        counts = families.of(spec).param_counts(spec)
        out.append({"name": spec.name, "family": spec.family,
                    "parameters": counts[0] if counts else None,
                    "active_parameters": counts[1] if counts else None,
                    "num_layers": spec.num_layers, "hidden_size": spec.hidden_size,
                    "num_heads": spec.num_heads, "num_kv_heads": spec.num_kv_heads or None,
                    "num_experts": spec.num_experts or None, "seq_len": spec.seq_len,
                    "vocab_size": spec.vocab_size})
    return out


def _short(n) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def run(args) -> int:
    table = rows()
    if args.format == "json":
        json.dump(table, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'preset':14} {'family':6} {'params':>9} {'active':>9} {'layers':>6} {'hidden':>6} "
          f"{'heads':>8} {'experts':>7} {'seq_len':>7} {'vocab':>7}")
    for r in table:
        heads = f"{r['num_heads']}" + (f"/{r['num_kv_heads']}" if r["num_kv_heads"] else "")
        active = _short(r["active_parameters"]) if r["active_parameters"] != r["parameters"] \
            else ""
        print(f"{r['name']:14} {r['family']:6} {_short(r['parameters']):>9} {active:>9} "
              f"{r['num_layers']:>6} {r['hidden_size']:>6} {heads:>8} "
              f"{r['num_experts'] or '':>7} {r['seq_len']:>7} {r['vocab_size']:>7}")
    print("heads: query/key-value heads where they differ (grouped-query attention); active: "
          "parameters a token uses (mixture of experts). Also: --model ARCH.json, "
          "hf:PATH/config.json or package.module:callable.")
    return 0
