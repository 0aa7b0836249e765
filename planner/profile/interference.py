"""How ranks on one node disturb each other: measured inside ``planner profile --network``.

Two quantities the per-block profile (one process, alone) cannot see, both measured in the
same torchrun job as the collectives, so under the concurrency the executor runs with:

- ``compute_slowdown``: a block-like probe (Linear, GELU, Linear forward and backward, the
  shape of a transformer MLP) timed on rank 0 alone while the others wait at a barrier, then on
  all ranks at once (slowest rank); the median of the per-repetition ratios, at least 1. On a CPU node the
  ranks share cores, caches and memory bandwidth; on GPUs each rank has its own device (~1).
- ``comm_overlap``: the share of a data-parallel collective's time that runs concurrently with
  compute. C = the probe on all ranks, A = an all-reduce alone, CA = the all-reduce issued async, the
  probe, then the wait: overlap = (C + A - CA) / min(C, A), clipped to [0, 1]. NCCL runs on its
  own stream and engines (1); gloo's communication thread needs a core the compute also uses.
- ``fsdp_call_overhead_s``: what FSDP2 (``fully_shard``) adds per all-gather/reduce-scatter
  beyond the collective itself (its hooks, DTensor bookkeeping, copy-in/copy-out): K small
  Linear blocks, each fully_shard'ed with reshard_after_forward=False (ZeRO-2: one all-gather
  and one reduce-scatter per block and step), timed forward+backward against the same blocks
  unsharded plus the K raw all-gathers and K raw reduce-scatters of the same sizes:
  (T_fsdp - T_plain - T_raw) / 2K, at least 0.

Repetitions interleave the variants (alone, together, A, CA in turn) and each figure is the
median over repetitions of that repetition's ratio or difference, so that a burst of load
elsewhere on the machine lands on all variants alike. torch is imported by the caller and passed in.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

PROBE_HIDDEN = 256          # the MLP's width; x4 inside, like a transformer block
PROBE_ROWS = 256            # tokens per probe call (batch x sequence)
FSDP_BLOCKS, FSDP_WIDTH = 8, 64
ALL_REDUCE_BYTES = 16 * 2**20   # comparable to the probe on gloo, so neither hides the other


@dataclass(frozen=True)
class Interference:
    compute_slowdown: float
    comm_overlap: float
    alone_s: float               # probe alone (median)
    together_s: float            # probe on all ranks at once (median)
    all_reduce_s: float          # A
    overlapped_s: float          # CA
    repeats: int
    fsdp_call_overhead_s: float = 0.0

    def source(self, backend: str, world: int) -> str:
        return (f"measured: planner profile --network, {world} ranks, {backend}; block-like "
                f"probe {self.alone_s * 1e3:.2f} ms alone, {self.together_s * 1e3:.2f} ms all "
                f"ranks at once; all-reduce {ALL_REDUCE_BYTES} B {self.all_reduce_s * 1e3:.2f} ms,"
                f" with the probe {self.overlapped_s * 1e3:.2f} ms; FSDP2 per collective call "
                f"{self.fsdp_call_overhead_s * 1e6:.0f} us over the raw collective "
                f"({FSDP_BLOCKS} Linear({FSDP_WIDTH}) blocks); medians of {self.repeats}")


def overlap_share(compute_s: float, comm_s: float, both_s: float) -> float:
    """(C + A - CA) / min(C, A) in [0, 1]: 1 when CA = max(C, A), 0 when CA = C + A."""
    shorter = min(compute_s, comm_s)
    if shorter <= 0:
        return 1.0
    return min(1.0, max(0.0, (compute_s + comm_s - both_s) / shorter))


def measure(torch, dist, device, repeats: int = 41) -> Interference:
    """Run the probes in every rank of an initialised process group (all ranks call it);
    returns the same figures everywhere (times are the slowest rank's)."""
    rank = dist.get_rank()
    gen = torch.Generator(device="cpu").manual_seed(rank)
    mlp = torch.nn.Sequential(torch.nn.Linear(PROBE_HIDDEN, 4 * PROBE_HIDDEN),
                              torch.nn.GELU(), torch.nn.Linear(4 * PROBE_HIDDEN, PROBE_HIDDEN))
    mlp = mlp.to(device)
    x = torch.randn(PROBE_ROWS, PROBE_HIDDEN, generator=gen).to(device)
    buf = torch.ones(ALL_REDUCE_BYTES // 4, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def probe():
        mlp(x).square().mean().backward()
        sync()

    def comm():
        dist.all_reduce(buf)
        sync()

    def both():
        work = dist.all_reduce(buf, async_op=True)
        probe()
        work.wait()
        sync()

    def timed(fn, active=True) -> float:
        dist.barrier()
        if not active:
            return 0.0
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def slowest(values):
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    for fn in (probe, comm, both):   # warm-up: allocations, connections
        fn()
    alone, together, a, ca = [], [], [], []
    for _ in range(repeats):
        # rank 0 alone (the devices are alike; one rank keeps this O(1) in the world size)
        alone.append(slowest([timed(probe, active=(rank == 0))])[0])
        together.append(slowest([timed(probe)])[0])
        a.append(slowest([timed(comm)])[0])
        ca.append(slowest([timed(both)])[0])
    med = statistics.median
    c_alone, c_all = med(alone), med(together)
    # medians of per-repetition figures: each compares calls made moments apart, so a change
    # of load elsewhere on the machine between repetitions cancels
    slow = med(t / s for t, s in zip(together, alone))
    overlap = med(overlap_share(c, x, y) for c, x, y in zip(together, a, ca))
    return Interference(fsdp_call_overhead_s=fsdp_overhead(torch, dist, device, repeats),
                        compute_slowdown=max(1.0, slow), comm_overlap=overlap,
                        alone_s=c_alone, together_s=c_all, all_reduce_s=med(a),
                        overlapped_s=med(ca), repeats=repeats)


def fsdp_overhead(torch, dist, device, repeats: int) -> float:
    """FSDP2's cost per collective call beyond the collective (see the module docstring)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    world = dist.get_world_size()

    def blocks():
        torch.manual_seed(0)
        return torch.nn.Sequential(*[torch.nn.Linear(FSDP_WIDTH, FSDP_WIDTH)
                                     for _ in range(FSDP_BLOCKS)]).to(device)

    plain, sharded = blocks(), blocks()
    mesh = init_device_mesh(device.type, (world,))
    for blk in sharded:
        fully_shard(blk, mesh=mesh, reshard_after_forward=False)
    fully_shard(sharded, mesh=mesh, reshard_after_forward=False)
    x = torch.ones(8, FSDP_WIDTH, device=device)
    numel = FSDP_WIDTH * FSDP_WIDTH + FSDP_WIDTH
    numel = -(-numel // world) * world           # FSDP pads each block to a multiple of world
    full, shard = torch.ones(numel, device=device), torch.ones(numel // world, device=device)

    def step(model):
        model(x).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    def raw():
        for _ in range(FSDP_BLOCKS):
            dist.all_gather_into_tensor(full, shard)
            dist.reduce_scatter_tensor(shard, full)
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn) -> float:
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    for _ in range(2):
        step(plain), step(sharded), raw()
    t_plain, t_fsdp, t_raw = [], [], []
    for _ in range(repeats):
        t_plain.append(timed(lambda: step(plain)))
        t_fsdp.append(timed(lambda: step(sharded)))
        t_raw.append(timed(raw))
    extra = statistics.median(f - p - r for f, p, r in zip(t_fsdp, t_plain, t_raw))
    return max(0.0, extra / (2 * FSDP_BLOCKS))
