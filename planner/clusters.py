"""Cluster presets and cluster files.

A cluster file is JSON or TOML with the fields of ``planner.specs.Cluster`` (see the README's
"Cluster files" section for a complete example). ``--cluster`` takes a preset name or a path.

Presets:
- ``localhost-cpu``: this machine, one rank per core, gloo over loopback. Memory per rank is
  this machine's MemTotal / cores (read from /proc/meminfo). Link figures are the gloo 2-rank
  measurements in ../shared/notes/torch-on-cpu.md; planning commands for more than one rank
  replace the preset by ``planner profile --network`` figures of this machine, measured on
  first use and cached (``planner.localhost``), unless ``--no-measure``.
- ``dgx-a100-80gb`` / ``dgx-h100-80gb``: 8 GPUs per node over NVSwitch, one InfiniBand NIC per
  GPU; peaks, memory and InfiniBand bandwidth are datasheet figures from
  ../shared/reference/hardware.md; compute comes from the device models
  ``profiles/a100-sxm4-80gb.json`` / ``profiles/h100-sxm5-80gb.json`` (``planner.devices``).
  The A100 intra-node link (per-call latency, per-step latency, effective bandwidth) is fitted
  on the measured NCCL all-reduces of ../shared/data/a100-single-node/allreduce
  (``benchmarks/comm_a100.py``); the H100 one carries the A100 fit's efficiency over to its
  datasheet NVLink bandwidth (marked "assumed"). Other figures not on a datasheet are marked
  "assumed" until fitted. The H100's dense FP8 peak (1,979 TFLOP/s, NVIDIA H100 datasheet:
  3,958 with sparsity) serves the planning-only dtype "fp8".
  Host side (offload): the GPU-host PCIe link per direction -- A100 PCIe Gen4 x16, 31.5 GB/s
  raw (16 GT/s x 16 lanes, 128b/130b; the A100 datasheet's "64 GB/s" counts both directions),
  H100 SXM5 Gen5 x16, 63 GB/s (datasheet "128 GB/s") -- at an assumed 80% of raw, what pinned
  host-device copies typically reach (25 and 50 GB/s); and each GPU's share of the host's DRAM
  bandwidth, where offload's optimizer step runs: DGX A100, 2 AMD EPYC 7742 with 8 channels of
  DDR4-3200 (25.6 GB/s each) = 409.6 GB/s per 8 GPUs; DGX H100, 2 Xeon Platinum 8480C with 8
  channels of DDR5-4800 (38.4 GB/s) = 614.4 GB/s per 8 GPUs (DGX user guides, JEDEC rates);
  and its share of the host's 2 TB (both datasheets), which the offloaded state must fit.
- ``mixed-h100-a100``: 4 ``dgx-h100-80gb`` nodes (node ranks 0-3) and 4 ``dgx-a100-80gb`` nodes
  (node ranks 4-7) on one InfiniBand fabric: each group keeps its own NVLink and its own ports
  (400 Gb/s per H100, 200 Gb/s per A100), so traffic between the two kinds runs at the A100's
  port speed (``planner.topology``). ``--gpus 32`` keeps the H100 nodes alone.

Fields beyond a uniform cluster (all optional; see ``planner.topology``):

- ``node_links``: ``[{"node_a": 0, "node_b": 1, "latency_s": 2e-5,
  "bandwidth_bytes_per_s": 12.5e9}]`` -- one link that carries all traffic between that node
  pair (instead of the per-device inter-node level through the spine); its flows share it.
- ``node_levels``: ``[{"node": 1, "inter_node": {"name": "inter_node", "latency_s": 1e-5,
  "bandwidth_bytes_per_s": 12.5e9}}]`` -- a node whose intra- or inter-node link differs
  (omitted or null: the cluster's level).
- ``nics_per_node``: network ports per node, shared evenly by its devices (0, the default: one
  per device, as on a DGX).
- ``LinkLevel.call_latency_s``: cost paid once per collective call on top of ``latency_s`` per
  message step (0 by default).
- ``collective_fits``: measured curves written by ``planner profile --network``.
- ``node_groups``: ``[{"num_nodes": 4, "device": {...}, "intra_node": {...}, "inter_node":
  {...}, "name": "a100"}]`` -- nodes of another device kind after the default group's (the
  first ``num_nodes - sum(num_nodes of the groups)`` nodes, of ``device``); links omitted or
  null are the cluster's. ``num_nodes`` counts every node; each node has ``devices_per_node``.
  Planning for such a cluster is ``planner.search.mixed``'s.
"""
from __future__ import annotations

import os

from planner import devices, serde
from planner.errors import PlannerError
from planner.specs import Cluster, DeviceSpec, LinkLevel, NodeGroup

GIB = 2**30
# Assumed, not measured (no GPU here): the CUDA context (~0.5 GiB), NCCL's channel buffers
# (~1 GiB at scale) and caching-allocator fragmentation (~3% of 80 GiB) leave no room for our
# tensors. A plan that fills the last 4 GiB of an 80 GiB card is an OOM waiting to happen.
GPU_RESERVED_BYTES = 4 * GIB


def _meminfo_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * GIB  # not Linux: a conservative figure, marked as assumed by the caller


def localhost_cpu() -> Cluster:
    cores = os.cpu_count() or 1
    device = DeviceSpec(
        name="cpu-core", memory_bytes=_meminfo_bytes() // cores, peak_flops_per_s={},
        memory_bandwidth_bytes_per_s=10e9, compute_efficiency=1.0,
        peak_source="unknown (compute comes from a measured profile)",
        efficiency_source="measured profile",
        # offload on a CPU moves tensors within host memory (a copy at memory bandwidth) and
        # saves none of it: no host_memory_bytes, so the planner does not offer it here
        host_link_bytes_per_s=10e9, host_memory_bandwidth_bytes_per_s=10e9,
        host_source="assumed: the device is the host (memory_bandwidth_bytes_per_s)")
    # gloo on loopback, 2 ranks (../shared/notes/torch-on-cpu.md): send/recv ~60-125 us small,
    # 0.33-0.40 ns/byte large -> alpha 1e-4 s, beta 0.37 ns/B.
    loopback = LinkLevel("intra_node", latency_s=1.0e-4, bandwidth_bytes_per_s=1 / 0.37e-9,
                         source="measured (shared/notes/torch-on-cpu.md, gloo send/recv)")
    return Cluster(name="localhost-cpu", num_nodes=1, devices_per_node=cores, device=device,
                   intra_node=loopback, inter_node=loopback, backend="gloo",
                   notes="one rank per core on this machine; run `planner profile --network` "
                         "to measure the links and collectives here")


# Fitted by benchmarks/comm_a100.py: ring all-reduce t = call + 2(p-1)*latency + 2(p-1)/p*n/bw,
# relative-error least squares on p = 2, 4, 8 at power-of-two sizes 1 MiB-1 GiB; held-out points
# >= 8 MiB (all of p = 3, 5, 6, 7 and the other sizes): median 6.7%, max 14.1% abs error.
A100_NVLINK_FIT = {"call_latency_s": 3.55e-5, "latency_s": 2.37e-6,
                   "bandwidth_bytes_per_s": 2.083e11}
A100_NVLINK_DATASHEET = 300e9
A100_FIT_SOURCE = ("fitted on shared/data/a100-single-node/allreduce (NCCL ring all-reduce, "
                   "2-8 GPUs, 1 MiB-1 GiB; benchmarks/comm_a100.py): efficiency 0.694 of the "
                   "300 GB/s NVLink datasheet")


def _dgx(name, gpu, peaks, hbm_bw, nvlink: LinkLevel, ib_bw, profile: str,
         host: tuple[float, float, int, str]) -> Cluster:
    # Analytic compute comes from the device model (planner.cost.roofline); compute_efficiency
    # is its large-matmul ceiling, for code that only knows FLOPs.
    model = devices.load(profile)
    device = DeviceSpec(
        name=gpu, memory_bytes=80 * GIB, peak_flops_per_s=peaks,
        memory_bandwidth_bytes_per_s=hbm_bw,
        compute_efficiency=model.matmul_efficiency_max.value,
        peak_source="datasheet (shared/reference/hardware.md)",
        efficiency_source=f"{profile}: {model.matmul_efficiency_max.source}",
        model_profile=profile, reserved_memory_bytes=GPU_RESERVED_BYTES,
        host_link_bytes_per_s=host[0], host_memory_bandwidth_bytes_per_s=host[1],
        host_memory_bytes=host[2], host_source=host[3])
    # A per-call cost is the software stack's (launch, synchronisation), not the wire's: the
    # inter-node level gets the intra-node fit's.
    ib = LinkLevel("inter_node", latency_s=10e-6, bandwidth_bytes_per_s=ib_bw,
                   call_latency_s=nvlink.call_latency_s,
                   source="bandwidth datasheet (one InfiniBand NIC per GPU); latency assumed; "
                          "call latency from the A100 NVLink fit")
    return Cluster(name=name, num_nodes=1, devices_per_node=8, device=device, intra_node=nvlink,
                   inter_node=ib, backend="nccl")


def dgx_a100() -> Cluster:
    nvlink = LinkLevel("intra_node", source=A100_FIT_SOURCE, **A100_NVLINK_FIT)
    return _dgx("dgx-a100-80gb", "A100-SXM4-80GB",
                {"bfloat16": 312e12, "float16": 312e12, "tf32": 156e12}, 2.04e12, nvlink, 25e9,
                "profiles/a100-sxm4-80gb.json",
                (0.8 * 31.5e9, 409.6e9 / 8, int(2e12 / 8),
                 "PCIe Gen4 x16 31.5 GB/s per direction x 0.8 (assumed); host DRAM 2 x 8 x "
                 "DDR4-3200 and 2 TB (DGX A100 640GB datasheet) / 8 GPUs"))


def dgx_h100() -> Cluster:
    efficiency = A100_NVLINK_FIT["bandwidth_bytes_per_s"] / A100_NVLINK_DATASHEET
    nvlink = LinkLevel(
        "intra_node", latency_s=A100_NVLINK_FIT["latency_s"],
        call_latency_s=A100_NVLINK_FIT["call_latency_s"],
        bandwidth_bytes_per_s=450e9 * efficiency,
        source=f"assumed: 450 GB/s NVLink datasheet x the A100 fit's efficiency {efficiency:.3f} "
               "and its latencies (no H100 measurements here)")
    return _dgx("dgx-h100-80gb", "H100-SXM5-80GB",
                {"bfloat16": 989e12, "float16": 989e12, "tf32": 494e12, "fp8": 1979e12},
                3.35e12, nvlink, 50e9, "profiles/h100-sxm5-80gb.json",
                (0.8 * 63e9, 614.4e9 / 8, int(2e12 / 8),
                 "PCIe Gen5 x16 63 GB/s per direction x 0.8 (assumed); host DRAM 2 x 8 x "
                 "DDR5-4800 and 2 TB (DGX H100 datasheet) / 8 GPUs"))


def mixed_h100_a100() -> Cluster:
    h100, a100 = dgx_h100(), dgx_a100()
    return Cluster(name="mixed-h100-a100", num_nodes=8, devices_per_node=8, device=h100.device,
                   intra_node=h100.intra_node, inter_node=h100.inter_node, backend="nccl",
                   node_groups=(NodeGroup(4, a100.device, a100.intra_node, a100.inter_node,
                                          name="a100"),),
                   notes="4 nodes of 8 H100 (node ranks 0-3) and 4 of 8 A100 (node ranks 4-7), "
                         "one InfiniBand fabric, each node with its own NVLink and ports")


PRESETS = {"localhost-cpu": localhost_cpu, "dgx-a100-80gb": dgx_a100, "dgx-h100-80gb": dgx_h100,
           "mixed-h100-a100": mixed_h100_a100}


def resolve_cluster(arg: str) -> Cluster:
    """A preset name or a JSON/TOML cluster file -> Cluster (errors name the file and field)."""
    if arg in PRESETS:
        return PRESETS[arg]()
    if arg.endswith(".toml"):
        return Cluster.from_dict(read_toml(arg), ctx=arg)
    if arg.endswith(".json") or os.path.exists(arg):
        return Cluster.from_dict(serde.read_json(arg), ctx=arg)
    raise PlannerError(f"--cluster {arg!r} is not a preset ({', '.join(PRESETS)}) or a "
                       ".json/.toml cluster file")


def read_toml(path: str) -> dict:
    """Parse a TOML file; a missing, unreadable, binary or malformed file is one line."""
    import tomllib
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise PlannerError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PlannerError(f"{path}: is a directory, not a TOML cluster file") from None
    except PermissionError:
        raise PlannerError(f"{path}: cannot read: permission denied") from None
    except UnicodeDecodeError:
        raise PlannerError(f"{path}: not a text file (TOML is UTF-8 text)") from None
    except tomllib.TOMLDecodeError as err:
        raise PlannerError(f"{path}: malformed TOML: {err}") from None
    except (OSError, RecursionError) as err:
        raise PlannerError(f"{path}: cannot read: {err.__class__.__name__}") from None
