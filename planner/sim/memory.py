"""Memory of each pipeline rank: model state, activations in flight, buffers.

One formula serves the prediction (``rank_memory``), the partitioner's memory tie-break
(``chunk_memory``) and the search's lower bound (``state_bytes_per_param``), so what the search
lists is what ``planner simulate`` says.

Per block, the bytes it adds to the rank holding it (``MemRows``):
additive: parameters, gradients, optimizer state (``planner.cost.memory.model_state_bytes``:
ZeRO over dp; gradients whole when torch pipelining accumulates FSDP gradients), and
gradient-sized buffers (DDP's bucket copy -- torch's default gradient_as_bucket_view=False;
PowerSGD's error feedback; the parameter server's flat messages, 2/k of the gradients; ZeRO-1's
flat buckets in flight during backward plus the 1/dp reduce-scattered shards the optimizer
reads, ``executor.parallel.zero1``; the exchanges after backward: the flat gradient, its sum,
the error-feedback residual and the p gathered payloads (``dp_buffer_bytes``); a stale server's
master copy and the s + 1 gradients it keeps or sends ahead; DiLoCo's anchor and outer
momentum). Per
micro-batch in flight: activations. Largest over the rank's blocks: a recomputed block's
transient activations; FSDP's unsharded copies (ZeRO-3: the gathered and the prefetched block;
without pipelining the unsharded gradient of one block before its reduce-scatter). Per chunk
that sends onwards: receive buffers for its activation and gradient (2 x boundary bytes).
Capped: where the executor all-reduces (ZeRO 0) after the backward pass without DDP (tp > 1),
one 25 MiB bucket at a time.
"""
from __future__ import annotations

from dataclasses import replace
from itertools import accumulate
from operator import mul

from planner.cost import memory as mem
from planner.grid import RankGrid
from planner.partition import ChunkMemory
from planner.rules import BUCKET_CAP_BYTES
from planner.sim.pp import schedule_shape
from planner.specs import RankMemory

# Share of a chunk's activations still held between I and W (the matmul inputs the weight
# gradient needs): Korthikanti's 34 units hold 14 of matmul inputs (2 qkv, 2 proj, 2 fc, 8 fc2).
W_HELD_SHARE = 14.0 / 34.0


def state_bytes_per_param(run, dims, data, pipelined: bool, experts: bool = False
                          ) -> tuple[float, float, float]:
    """(parameter, gradient, optimizer-state) bytes per parameter on one rank's device: ZeRO
    stage ``data.zero`` over the dp * cp replicas (``experts``: an expert shard's edp
    replicas); gradients whole under pipelining with ZeRO >= 2 (torch pipelining accumulates
    FSDP gradients unsharded); a parameter server keeps the optimizer state on its k servers
    (dp rank 0 is one of them); offload (FSDP2's CPUOffloadPolicy) keeps all three in host
    memory."""
    if data.offload:
        return 0.0, 0.0, 0.0
    zero = data.zero
    shards = dims.edp if experts else dims.replicas
    ps, gs, os_ = mem.model_state_bytes(1.0, run.dtype, run.optimizer, zero, shards,
                                        not (pipelined and zero >= 2))
    if dims.dp > 1 and data.parameter_server:
        os_ /= max(data.ps_shards, 1)
    return ps, gs, os_


def buffer_bytes_per_param(run, dims, data) -> float:
    """Gradient-sized buffers per parameter on one rank (module docstring): DDP's bucket copy
    (tp 1) and PowerSGD's error feedback; ZeRO-1's flat buckets and 1/dp shards; the parameter
    server's flat messages; plus the unsynchronised schemes' (``dp_buffer_bytes``). The search's
    memory floor counts them too. Over the dp * cp replicas."""
    if dims.replicas <= 1:
        return 0.0
    e_param, e_grad, _ = run.bytes_per_param
    extra = dp_buffer_bytes(data, dims.dp, e_param, e_grad)
    if data.parameter_server:
        return 2.0 * e_grad / data.ps_shards + extra
    if data.zero == 1:
        return e_grad * (1.0 + 1.0 / dims.replicas) + extra
    if data.zero == 0:
        return (e_grad if dims.tp == 1 else 0.0) + (
            e_grad if data.compression == "powersgd" else 0.0) + extra
    return extra


def dp_buffer_bytes(d, p: int, e_param: float, e_grad: float) -> float:
    """Bytes per parameter the schemes of ``planner.cost.gradcomp``, the stale server and
    local SGD hold beyond the DDP/server buffers above (module docstring)."""
    if d.exchange:
        from planner.cost import gradcomp
        e = int(e_grad)
        per = gradcomp.payload_bytes(d, 1 << 20, e) / (1 << 20)   # payload per value
        gathered = per if d.compression == "randk" else p * per
        ef = e_grad if d.compression in ("topk", "randk", "sign") else 0.0
        return 2.0 * e_grad + ef + gathered - e_grad      # flat + sum (+ residual), no DDP copy
    if d.staleness:
        return e_param / d.ps_shards + (d.staleness + 1) * e_grad
    if d.local_sgd:
        return e_param + (2.0 * e_param if d.outer_optimizer == "nesterov" else 0.0)
    return 0.0


class MemRows:
    """Per block, the bytes it adds to the rank holding it (module docstring)."""

    def __init__(self, run, layout, rows):
        e_param, e_grad, _ = run.bytes_per_param
        d, dims = layout.data, layout.dims
        self.states = state_bytes_per_param(run, dims, d, layout.pp > 1)
        self.expert_states = state_bytes_per_param(run, dims, d, layout.pp > 1, experts=True)
        # offload: the states held in host memory instead (what ZeRO-3 would keep on device)
        self.host_states = (0.0, 0.0)
        if d.offload:
            kept = replace(d, offload=False)
            self.host_states = (sum(state_bytes_per_param(run, dims, kept, layout.pp > 1)),
                                sum(state_bytes_per_param(run, dims, kept, layout.pp > 1,
                                                          experts=True)))
        dp = dims.replicas > 1
        server = dp and d.parameter_server
        lin = buffer_bytes_per_param(run, dims, d)
        gathered = 2.0 * e_param if dp and d.zero == 3 else 0.0
        one_grad = e_grad if dp and d.zero >= 2 and layout.pp == 1 and not server else 0.0
        self.capped = dp and not server and d.zero == 0 and layout.tp > 1
        self.e_grad = e_grad
        self.params = [r.params for r in rows]
        self.experts = [r.expert_params for r in rows]
        self.linear = [r.params * lin for r in rows]
        self.act = [r.activation_bytes for r in rows]
        self.work = [r.working_bytes for r in rows]
        self.fsdp = [r.params * (gathered + one_grad) for r in rows]
        self.edge = [2.0 * r.send_bytes for r in rows]
        self.linear_pre = [0.0, *accumulate(self.linear)]
        self._largest: dict = {}

    def largest(self, name: str, blocks: range) -> float:
        """The largest ``work`` or ``fsdp`` entry over a chunk's blocks (cached per chunk:
        layouts sharing a partition ask again)."""
        key = (name, blocks.start, blocks.stop)
        hit = self._largest.get(key)
        if hit is None:
            hit = self._largest[key] = max(getattr(self, name)[blocks.start:blocks.stop])
        return hit

    def fixed(self, x: int) -> float:
        e = self.experts[x]
        return (self.params[x] - e) * sum(self.states) + e * sum(self.expert_states) \
            + self.linear[x]

    def capped_bytes(self, params: float) -> float:
        return min(params * self.e_grad, BUCKET_CAP_BYTES) if self.capped else 0.0


def chunk_memory(layout, rows: MemRows) -> ChunkMemory | None:
    """What the partition needs to prefer, among equally fast cuts, the one with the least
    peak memory: one chunk per rank under a flushing single-chunk schedule (its exact in-flight
    counts); several chunks per rank keep the even split."""
    kind, v = layout.pipeline.kind, layout.pipeline.virtual_stages
    if v != 1 or not kind.flushing_single_chunk:
        return None
    flight = kind.in_flight_floor(layout.pp, layout.num_microbatches, v)
    n = len(rows.act)
    return ChunkMemory(rows.act, [rows.fixed(x) for x in range(n)], flight,
                       peaks=(rows.work, rows.fsdp), edge=rows.edge,
                       capped=(rows.params, rows.capped_bytes) if rows.capped else None)


def fits(run, memory) -> bool:
    """Every rank's device bytes within the device's usable memory, and its offloaded state
    within the device's share of host memory."""
    device = run.cluster.device
    return all(r.total_bytes <= device.usable_memory_bytes and
               (not r.host_bytes or r.host_bytes <= device.host_memory_bytes) for r in memory)


def rank_memory(run, layout, costs) -> list[RankMemory]:
    """Peak bytes of each pipeline rank (dp and tp peers hold the same): the terms of
    ``MemRows`` over the blocks of the rank's chunks, activations weighted by the schedule's
    in-flight micro-batches (``schedule_shape``; I-to-W held share ``W_HELD_SHARE``)."""
    p, pl = layout.pp, layout.pipeline
    _, owned, frontiers = schedule_shape(pl.schedule, p, layout.num_microbatches,
                                         pl.virtual_stages)
    rows = costs.memory
    ps, gs, os_ = rows.states
    eps, egs, eos = rows.expert_states
    chunks = costs.chunks
    last = len(chunks) - 1
    grid = RankGrid(layout.dims)
    out = []
    for r in range(p):
        mine = owned[r]
        params = sum(chunks[c].params for c in mine)
        experts = sum(chunks[c].expert_params for c in mine)
        dense = params - experts
        chunk_ids, states = frontiers[r]
        sizes = [chunks[c].act_bytes for c in chunk_ids]
        if states and len(states[0]) > len(sizes):     # split schedules: I-to-W held share
            sizes += [a * W_HELD_SHARE for a in sizes]
        held = max((sum(map(mul, state, sizes)) for state in states), default=0.0)
        spans = [chunks[c].blocks for c in mine]
        act = held + max(rows.largest("work", b) for b in spans)
        buf = (sum(rows.linear_pre[b.stop] - rows.linear_pre[b.start] for b in spans)
               + max(rows.largest("fsdp", b) for b in spans)
               + sum(rows.edge[chunks[c].blocks[-1]] for c in mine if c < last)
               + rows.capped_bytes(params))
        out.append(RankMemory(rank=grid.rank_of(pp=r), stage=r,
                              parameters_bytes=int(dense * ps + experts * eps),
                              gradients_bytes=int(dense * gs + experts * egs),
                              optimizer_bytes=int(dense * os_ + experts * eos),
                              activations_bytes=int(act),
                              buffers_bytes=int(buf),
                              host_bytes=int(dense * rows.host_states[0]
                                             + experts * rows.host_states[1])))
    return out
