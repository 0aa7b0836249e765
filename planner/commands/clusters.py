"""`planner clusters`: the cluster presets and their key figures (devices, memory, peak
FLOP/s, link bandwidths and latencies), each as ``planner.clusters`` defines it; a cluster
file (``--cluster PATH``) may be listed the same way."""
from __future__ import annotations

import json
import sys


def add_arguments(parser) -> None:
    parser.add_argument("--cluster", nargs="*", default=[],
                        help="cluster files or presets to list (default: every preset)")
    parser.add_argument("--format", choices=("text", "json"), default="text")


def row(name: str) -> dict:
    from planner.clusters import resolve_cluster
    c = resolve_cluster(name)
    d = c.device
    return {"name": name, "nodes": c.num_nodes, "devices_per_node": c.devices_per_node,
            "device": d.name, "memory_bytes": d.memory_bytes,
            "usable_memory_bytes": d.usable_memory_bytes,
            "peak_flops_per_s": dict(d.peak_flops_per_s), "backend": c.backend,
            "intra_node_bandwidth_bytes_per_s": c.intra_node.bandwidth_bytes_per_s,
            "intra_node_latency_s": c.intra_node.latency_s,
            "inter_node_bandwidth_bytes_per_s": c.inter_node.bandwidth_bytes_per_s,
            "inter_node_latency_s": c.inter_node.latency_s,
            "measured_collective_fits": len(c.collective_fits)}


def run(args) -> int:
    from planner.clusters import PRESETS
    table = [row(name) for name in (args.cluster or PRESETS)]
    if args.format == "json":
        json.dump(table, sys.stdout, indent=2)
        print()
        return 0
    gib = 2**30
    print(f"{'cluster':22} {'devices':>9} {'device':16} {'memory GiB':>14} {'peak TFLOP/s':>13} "
          f"{'intra GB/s':>10} {'inter GB/s':>10} {'latency us':>10} backend")
    for r in table:
        peak = r["peak_flops_per_s"]
        best = max(peak.values()) / 1e12 if peak else None
        mem = f"{r['usable_memory_bytes'] / gib:.1f}/{r['memory_bytes'] / gib:.1f}"
        print(f"{r['name'][:22]:22} {r['nodes']:>3}x{r['devices_per_node']:<5} "
              f"{r['device'][:16]:16} {mem:>14} "
              f"{(f'{best:.0f} ' + max(peak, key=peak.get)) if best else 'measured':>13} "
              f"{r['intra_node_bandwidth_bytes_per_s'] / 1e9:>10.1f} "
              f"{r['inter_node_bandwidth_bytes_per_s'] / 1e9:>10.1f} "
              f"{r['intra_node_latency_s'] * 1e6:>4.1f}/{r['inter_node_latency_s'] * 1e6:<5.1f} "
              f"{r['backend']}")
    print("memory: usable/total per device; latency: intra/inter node; a preset's --gpus "
          "grows it by whole nodes. localhost-cpu: one rank per core of this machine, compute "
          "from `planner profile`.")
    return 0
