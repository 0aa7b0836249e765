"""Event simulation of one training step of a layout: step time, breakdown, memory, collectives.

One pipeline is simulated: a single data-parallel replica and a single tensor-parallel rank per
stage stand for all of them (replicas and TP peers run in lock-step), so a 1024-GPU layout costs
O(pp * m * v) events. Each pipeline rank has three streams:

- ``compute``: the schedule's operations (``planner.schedule``) in order; an operation starts when
  the stream is free and its input has arrived (activations for F, the gradient for B/I). Its
  duration is the blocks' compute on one tensor-parallel rank (the block's ``tp_split`` from the
  roofline model, else ``planner.cost.tp.split_time``) plus the tensor-parallel collectives
  inside them, which block the compute (``planner.cost.tp``), plus recomputation (full: the
  forward again, collectives included; selective: the attention core's forward).
- ``p2p``: boundary sends to the next/previous stage (``planner.cost.pp.boundary_bytes``), FIFO,
  started when the producing operation ends; the receiver waits for the transfer's end. torch
  pipelining issues them on the pp process group, a stream of its own.
- ``comm``: data-parallel collectives, FIFO (DDP/FSDP run them on their own NCCL stream):
  * ZeRO 0/1 (DDP; ``planner.cost.dp.ddp_buckets``): all-reduce buckets in reverse block order
    during the last micro-batch's backward of each chunk, each started when its last gradient is
    ready and the stream is free (where DDP cannot run -- tp > 1, zbv -- the executor
    all-reduces after the backward pass, ``ddp_runs``); ZeRO-1 then broadcasts updated
    parameters (the volume of an all-gather) after the optimizer step.
  * ZeRO 2/3 (FSDP2): an all-gather of each block's parameters before its forward (ZeRO-2: only
    while resharded; ZeRO-3: also before its backward), prefetched one block ahead, and a
    reduce-scatter of each block's gradients -- per micro-batch without pipelining, once at the
    end of the step under torch pipelining (which accumulates FSDP gradients unsharded).
  * parameter server (``planner.cost.comm.parameter_server``) after the backward pass:
    push, the servers' optimizer step on their 1/k, pull.
  * compression: fp16/bf16 halve 4-byte gradients (a cast pass at memory bandwidth);
    PowerSGD sends P and Q (``planner.cost.dp.powersgd_split``) and computes its matmuls.
  The optimizer step (``optimizer_time``) starts once a rank's reductions are done.

Breakdown (``breakdown_s``): each pipeline rank's wall time is split into compute, recompute,
tensor-parallel communication (all exposed), time waiting for a pipeline transfer
(pp_comm_exposed) or for a data-parallel collective (dp_comm_exposed), optimizer, and bubble
(idle with nothing in flight); the keys are means over pipeline ranks and sum to the step time.
``*_hidden`` is a stream's busy time that did not stall compute.

Co-located ranks (``planner.profile.interference``, measured by ``planner profile --network``;
defaults leave GPU/NCCL clusters unchanged): profiled compute and the optimizer step are scaled
by ``cluster.compute_slowdown`` when >= 2 ranks share a node (``compute_slowdown``); the share
1 - ``cluster.comm_overlap`` of the data-parallel and pipeline transfer time the streams hid
stalls compute instead (``_unoverlapped_comm``; gloo's communication thread needs a core);
each FSDP2 all-gather and reduce-scatter costs ``cluster.fsdp_call_overhead_s`` on top.

Collective times come from ``planner.topology.CommModel`` (``default_comm_time``) or any
``comm(collective, n_bytes, dim, stage=None) -> seconds`` the caller passes.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import accumulate

from planner import grid, schedule as sched, topology
from planner.cost import dp as dp_cost, memory as mem, pp as pp_cost
from planner.cost import tp as tp_cost
from planner.cost.compute import BlockCost
from planner.errors import PlannerError
from planner.partition import ChunkMemory, balanced_partition, chunk_blocks
from planner.specs import (Cluster, CollectiveCount, Layout, ModelSpec, Prediction, RankMemory,
                           TimelineEvent)

CommTime = Callable[[str, float, str], float]
BREAKDOWN_KEYS = ("compute", "recompute", "tp_comm_exposed", "tp_comm_hidden", "pp_comm_exposed",
                  "pp_comm_hidden", "dp_comm_exposed", "dp_comm_hidden", "bubble", "optimizer")
# Share of a block's backward that computes weight gradients (the "W" of zero-bubble
# schedules): for a matmul, dX = dY W^T and dW = X^T dY cost the same (Qi et al. 2023, sec. 2);
# an embedding has no input gradient to compute.
WEIGHT_GRAD_SHARE = {"block": 0.5, "head": 0.5, "embedding": 1.0}
# Share of a chunk's activations still held between I and W (the matmul inputs the weight
# gradient needs): Korthikanti's 34 units hold 14 of matmul inputs (2 qkv, 2 proj, 2 fc, 8 fc2).
W_HELD_SHARE = 14.0 / 34.0


@dataclass(frozen=True)
class RunSpec:
    """What the step runs apart from the layout."""
    model: ModelSpec
    cluster: Cluster
    dtype: str
    optimizer: str
    compute_source: str = "analytic"      # "profile" | "analytic"
    optimizer_step_s: float = 0.0         # measured whole-model optimizer step; 0: estimate
    flop_rate: float = 0.0                # achieved FLOP/s for estimated compute; 0: peak * eff


def peak_flops(device, dtype: str) -> float:
    """The device's dense peak for ``dtype`` (0 when unknown, e.g. a CPU)."""
    key = {"bf16-mixed": "bfloat16", "fp16-mixed": "float16", "float32": "tf32"}.get(dtype, dtype)
    return float(device.peak_flops_per_s.get(key, 0.0))


def default_comm_time(cluster: Cluster, layout: Layout) -> CommTime:
    """Collective times of this layout's groups from ``planner.topology.CommModel`` (measured
    fits, hierarchical forms or alpha-beta over the bottleneck link); memoised, since the
    search asks the same (collective, bytes, group) many times. ``send_recv`` on "pp" takes an
    optional ``stage``: the boundary after that pipeline rank (default: the slowest)."""
    model = topology.comm_model(cluster)
    dp, pp, tp = layout.dp, layout.pp, layout.tp
    shards = max(layout.ps_shards, 1)
    cache: dict = {}

    def time(name: str, n_bytes: float, dim: str, stage: int | None = None) -> float:
        key = (name, n_bytes, dim, stage)
        hit = cache.get(key)
        if hit is None:
            if name == "send_recv":
                hit = model.p2p(n_bytes, dp, pp, tp, stage)
            else:
                hit = model.time(name, n_bytes, dim, dp, pp, tp, shards=shards)
            cache[key] = hit
        return hit

    return time


# --------------------------------------------------------------------------------------------
# Per-block and per-chunk costs of a layout
# --------------------------------------------------------------------------------------------
class _Chunk:
    """One model chunk's costs per micro-batch on one rank. Sums come from prefix sums; the
    per-block details only the event loop's DP/FSDP hooks read are built on first use."""

    def __init__(self, blocks: range, rows, zbv: bool, param_e: float, grad_e: float):
        self.blocks = blocks
        self._rows, self._zbv, self._param_e, self._grad_e = rows, zbv, param_e, grad_e
        self._detail = None
        self.send_s = 0.0          # boundary transfer after this chunk (each way)
        self.send_bytes = 0

    def _build(self):
        rows, zbv = self._rows, self._zbv
        b_off, w_off, gbytes, bblk, pbytes = [], [], [], [], []
        tb = tw = 0.0
        for x in reversed(self.blocks):
            f, f_tp, b, rec, b_tp, ws, params = rows[x][:7]
            step = rec + b_tp + (b * (1.0 - ws) if zbv else b)
            tb += step
            tw += b * ws
            b_off.append(tb)
            w_off.append(tw)
            bblk.append(step)
            gbytes.append(params * self._grad_e)
            pbytes.append(params * self._param_e)
        self._detail = (tuple(b_off), tuple(w_off), tuple(gbytes),
                        tuple(rows[x][0] + rows[x][1] for x in self.blocks), tuple(bblk),
                        tuple(reversed(pbytes)))
        return self._detail

    # per block, in backward (reverse) order: end offsets inside B (or I) and W, gradient bytes
    @property
    def b_offsets(self):
        return (self._detail or self._build())[0]

    @property
    def w_offsets(self):
        return (self._detail or self._build())[1]

    @property
    def grad_bytes_rev(self):
        return (self._detail or self._build())[2]

    @property
    def f_block_s(self):          # per block forward durations, forward order
        return (self._detail or self._build())[3]

    @property
    def b_block_s(self):          # per block backward (or I) durations, reverse order
        return (self._detail or self._build())[4]

    @property
    def param_bytes_blocks(self):  # forward order
        return (self._detail or self._build())[5]


class _Sums:
    """Prefix sums of the block rows, so that any chunk's totals cost O(1)."""

    def __init__(self, rows):
        def pre(values):
            return [0.0, *accumulate(values)]
        self.f = pre(r[0] for r in rows)
        self.f_tp = pre(r[1] for r in rows)
        self.b = pre(r[2] for r in rows)
        self.rec = pre(r[3] for r in rows)
        self.b_tp = pre(r[4] for r in rows)
        self.w = pre(r[2] * r[5] for r in rows)
        self.params = pre(r[6] for r in rows)
        self.act = pre(r[7] for r in rows)
        self.work = [r[8] for r in rows]

    def fill(self, c: "_Chunk", mem_rows: "_MemRows") -> None:
        i, j = c.blocks.start, c.blocks.stop
        c.f_comp = self.f[j] - self.f[i]
        c.f_tp = self.f_tp[j] - self.f_tp[i]
        c.b_comp = self.b[j] - self.b[i]
        c.b_rec = self.rec[j] - self.rec[i]
        c.b_tp = self.b_tp[j] - self.b_tp[i]
        c.w_s = self.w[j] - self.w[i]
        c.i_comp = c.b_comp - c.w_s
        c.params = self.params[j] - self.params[i]
        c.act_bytes = self.act[j] - self.act[i]
        c.work_bytes = max(self.work[i:j])
        c.linear_bytes = mem_rows.linear_pre[j] - mem_rows.linear_pre[i]
        c.fsdp_bytes = max(mem_rows.fsdp[i:j])
        c.f_s = c.f_comp + c.f_tp
        c.b_s = c.b_rec + c.b_comp + c.b_tp
        c.i_s = c.b_rec + c.i_comp + c.b_tp


@dataclass
class _Costs:
    chunks: list
    block_s: list             # per block cost used for partitioning (one micro-batch)
    send_s: list              # per block boundary cost if cut after it
    tp_counts: dict           # (phase, collective, bytes) -> per-step count
    model_flops_mb: float     # forward FLOPs of one micro-batch through the model (unsplit)
    recompute_flops_mb: float
    memory: "_MemRows | None" = None


def _block_rows(run: RunSpec, blocks: Sequence[BlockCost], layout: Layout, comm: CommTime):
    """Per block, one micro-batch on one rank: (f, f_tp, b, rec, b_tp, w_share, params, act,
    work, out_bytes, tp names) after the TP split, recompute and sequence parallelism."""
    spec, t, sp, rc = run.model, layout.tp, layout.sequence_parallel, layout.recompute
    slow = compute_slowdown(run.cluster, layout)
    e = mem.ELEMENT_BYTES[run.dtype]
    msg = tp_cost.activation_message_bytes(layout.microbatch_size, spec.seq_len,
                                           spec.hidden_size, e)
    rows = []
    memo: dict = {}
    for blk in blocks:
        same = blk[1:]          # decoder layers are usually identical: cost each kind once
        hit = memo.get(same)
        if hit is not None:
            rows.append(hit)
            continue
        fwd_names, bwd_names = tp_cost.block_collectives(blk.kind, spec.family, sp, t)
        f_tp = tp_cost.collective_time(fwd_names, msg, comm)
        b_tp = tp_cost.collective_time(bwd_names, msg, comm)
        core = None
        if blk.tp_split is not None:   # analytic per-rank costs (planner.cost.roofline)
            f, b, core = blk.tp_split(t, sp, f_tp, b_tp)
        else:
            f = tp_cost.split_time(blk.forward_s, blk.kind, t)
            b = tp_cost.split_time(blk.backward_s, blk.kind, t)
        f, b = f * slow, b * slow
        core = core * slow if core is not None else None
        rec = 0.0
        if blk.kind == "block" and rc == "full":
            rec = f + f_tp   # the forward runs again, collectives included (Megatron)
        elif blk.kind == "block" and rc == "selective" and spec.family == "gpt":
            rec = core if core is not None else f * _core_share(blk, spec, layout.microbatch_size)
        params = blk.param_count / t if tp_cost.is_split(blk.kind) else blk.param_count
        act = mem.block_activation_bytes(blk.saved_activation_bytes, blk.output_bytes, blk.kind,
                                         spec, t, sp, rc)
        work = mem.recompute_working_bytes(blk.saved_activation_bytes, blk.output_bytes,
                                           blk.kind, spec, t, sp, rc)
        row = (f, f_tp, b, rec, b_tp, WEIGHT_GRAD_SHARE.get(blk.kind, 0.5), params, act,
               work, pp_cost.boundary_bytes(blk.output_bytes, t, sp), fwd_names, bwd_names)
        memo[same] = row
        rows.append(row)
    return rows, msg


def compute_slowdown(cluster: Cluster, layout: Layout) -> float:
    """Factor on profiled (one process, alone) compute when other ranks of the node compute
    at the same time: ``cluster.compute_slowdown``, measured with every device of a node busy
    (``planner.profile.interference``), applied whenever a layout puts >= 2 ranks on a node."""
    return cluster.compute_slowdown if min(layout.world_size, cluster.devices_per_node) > 1 \
        else 1.0


def _unoverlapped_comm(cluster: Cluster, layout: Layout, ranks: list) -> None:
    """Where communication does not run beside compute (``cluster.comm_overlap`` < 1, e.g.
    gloo, whose communication thread needs a core the compute uses), the share 1 - overlap of
    each rank's hidden data-parallel and pipeline transfer time stalls its compute instead:
    added to the rank's end and to the exposed terms (``planner.profile.interference``)."""
    lost = 1.0 - cluster.comm_overlap
    if lost <= 0 or layout.world_size == 1:
        return
    for st in ranks:
        dp = lost * max(0.0, st.dp_busy - st.acc["dp_comm_exposed"])
        pp = lost * max(0.0, st.sends - st.acc["pp_comm_exposed"])
        st.acc["dp_comm_exposed"] += dp
        st.acc["pp_comm_exposed"] += pp
        st.comp += dp + pp


def _core_share(blk: BlockCost, spec: ModelSpec, b: int) -> float:
    """Attention core's share of a block's forward: 4*b*s^2*h of its FLOPs (QK^T and AV,
    Narayanan et al. SC'21 eq. 2), the best split available without a per-op profile."""
    if blk.forward_flops <= 0:
        return 0.0
    core = 4.0 * b * spec.seq_len ** 2 * spec.hidden_size
    return min(1.0, core / blk.forward_flops)


_BUNDLES: dict = {}


def _rows_bundle(run: RunSpec, blocks: Sequence[BlockCost], layout: Layout, comm: CommTime):
    """The per-block rows and what follows from them alone, memoised on (run, blocks, comm,
    tp, sp, recompute): the search costs many layouts that share them. The cache holds the
    objects it was keyed on, so an id can never be reused for another."""
    key = (id(run), id(blocks), id(comm), layout.tp, layout.sequence_parallel, layout.recompute,
           layout.microbatch_size, compute_slowdown(run.cluster, layout))
    hit = _BUNDLES.get(key)
    if hit is not None and hit[0] is run and hit[1] is blocks and hit[2] is comm:
        return hit[3]
    rows, msg = _block_rows(run, blocks, layout, comm)
    block_s = [r[0] + r[1] + r[2] + r[3] + r[4] for r in rows]
    send_s = [comm("send_recv", r[9], "pp") for r in rows]
    tp_per_mb: dict = {}
    for r in rows:
        for phase, names in (("forward", r[10]), ("backward", r[11])):
            for name in names:
                tp_per_mb[(phase, name, msg)] = tp_per_mb.get((phase, name, msg), 0) + 1
        if r[3] and layout.recompute == "full":
            for name in r[10]:   # the recomputed forward issues its collectives again
                tp_per_mb[("backward", name, msg)] = tp_per_mb.get(("backward", name, msg), 0) + 1
    model_flops = sum(blk.forward_flops for blk in blocks)
    rec_flops = sum(blk.forward_flops * (1.0 if layout.recompute == "full" else
                                         _core_share(blk, run.model, layout.microbatch_size))
                    for blk in blocks if blk.kind == "block" and layout.recompute != "none"
                    and (layout.recompute == "full" or run.model.family == "gpt"))
    bundle = (rows, msg, block_s, send_s, (tp_per_mb, model_flops, rec_flops), _Sums(rows))
    if len(_BUNDLES) > 2048:
        _BUNDLES.clear()
    _BUNDLES[key] = (run, blocks, comm, bundle)
    return bundle


def layout_costs(run: RunSpec, blocks: Sequence[BlockCost], layout: Layout, comm: CommTime
                 ) -> tuple[Layout, _Costs]:
    """Partition the blocks (unless the layout fixes ``stage_boundaries``) and cost each chunk.

    Returns the layout with its stage boundaries filled in and the chunk costs.
    """
    rows, msg, block_s, send_s, per_mb, sums = _rows_bundle(run, blocks, layout, comm)
    param_e, grad_e = mem.bytes_per_param(run.dtype, run.optimizer)[:2]
    k = layout.pp * layout.virtual_stages
    if len(blocks) < k:
        raise PlannerError(f"pp({layout.pp}) * virtual_stages({layout.virtual_stages}) = {k} "
                           f"chunks > {len(blocks)} blocks of {run.model.name}")
    mem_rows = _MemRows(run, layout, rows)
    starts = layout.stage_boundaries
    if not starts:
        starts = balanced_partition(block_s, k, send_s,
                                    memory=_chunk_memory(layout, mem_rows))[0] if k > 1 else (0,)
        layout = replace(layout, stage_boundaries=tuple(starts) if k > 1 else ())
    elif starts[-1] >= len(blocks):
        raise PlannerError(f"stage_boundaries {list(starts)} start a chunk at block {starts[-1]}; "
                           f"{run.model.name} has {len(blocks)} blocks")
    chunks = []
    zbv = layout.schedule == "zbv"
    for rng in chunk_blocks(starts, len(blocks)):
        c = _Chunk(rng, rows, zbv, param_e, grad_e)
        sums.fill(c, mem_rows)
        c.send_bytes = rows[rng[-1]][9]
        chunks.append(c)
    p = layout.pp
    for i, c in enumerate(chunks[:-1]):
        a = sched.chunk_rank(i, p, layout.schedule)
        b = sched.chunk_rank(i + 1, p, layout.schedule)
        if a != b:   # the link between ranks a and b; p-1 -> 0 is the wrap of looped schedules
            stage = p - 1 if {a, b} == {p - 1, 0} and p > 2 else min(a, b)
            c.send_s = comm("send_recv", c.send_bytes, "pp", stage)
    m = layout.num_microbatches
    tp_per_mb, model_flops, rec_flops = per_mb
    tp_counts = {key: k_mb * m for key, k_mb in tp_per_mb.items()}
    return layout, _Costs(chunks, block_s, send_s, tp_counts, model_flops, rec_flops,
                          mem_rows)


class _MemRows:
    """Per block, the bytes it adds to the rank holding it (one formula for ``rank_memory``
    and for the partition's memory objective).

    Additive: parameters, gradients, optimizer state (``memory.model_state_bytes``: ZeRO over
    dp; gradients whole when torch pipelining accumulates FSDP gradients), and gradient-sized
    buffers (DDP's bucket copy -- torch's default gradient_as_bucket_view=False; PowerSGD's
    error feedback; the parameter server's flat messages, 2/k of the gradients). Per micro-batch
    in flight: activations. Largest over the rank's blocks: a recomputed block's transient
    activations; FSDP's unsharded copies (ZeRO-3: the gathered and the prefetched block; without
    pipelining the unsharded gradient of one block before its reduce-scatter). Per chunk that
    sends onwards: receive buffers for its activation and gradient (2 x boundary bytes). Capped:
    with tp > 1 the executor all-reduces DDP-less, one 25 MiB bucket at a time.
    """

    def __init__(self, run: RunSpec, layout: Layout, rows):
        e_param, e_grad, _ = mem.bytes_per_param(run.dtype, run.optimizer)
        ps, gs, os_ = mem.model_state_bytes(1.0, run.dtype, run.optimizer, layout.zero,
                                            layout.dp, not (layout.pp > 1 and layout.zero >= 2))
        dp = layout.dp > 1
        server = dp and layout.dp_comm == "parameter_server"
        if server:   # optimizer state lives on the k servers only; dp rank 0 is one of them
            os_ /= layout.ps_shards
        lin = 0.0
        if server:
            lin = 2.0 * e_grad / layout.ps_shards
        elif dp and layout.zero <= 1:
            lin = (e_grad if layout.tp == 1 else 0.0) + (
                e_grad if layout.compression == "powersgd" else 0.0)
        gathered = 2.0 * e_param if dp and layout.zero == 3 else 0.0
        one_grad = e_grad if dp and layout.zero >= 2 and layout.pp == 1 and not server else 0.0
        self.capped = dp and not server and layout.zero <= 1 and layout.tp > 1
        self.e_grad = e_grad
        self.params = [r[6] for r in rows]
        self.states = (ps, gs, os_)
        self.linear = [r[6] * lin for r in rows]
        self.act = [r[7] for r in rows]
        self.work = [r[8] for r in rows]
        self.fsdp = [r[6] * (gathered + one_grad) for r in rows]
        self.edge = [2.0 * r[9] for r in rows]
        self.linear_pre = [0.0, *accumulate(self.linear)]

    def fixed(self, x: int) -> float:
        return self.params[x] * sum(self.states) + self.linear[x]

    def capped_bytes(self, params: float) -> float:
        return min(params * self.e_grad, dp_cost.BUCKET_CAP_BYTES) if self.capped else 0.0


def _chunk_memory(layout: Layout, rows: _MemRows) -> ChunkMemory | None:
    """What the partition needs to prefer, among equally fast cuts, the one with the least
    peak memory: one chunk per rank under 1F1B (min(p - r, m) micro-batches in flight) or
    GPipe (m); the interleaved and zbv placements keep the even split."""
    if layout.virtual_stages != 1 or layout.schedule not in ("1f1b", "gpipe"):
        return None
    p, m = layout.pp, layout.num_microbatches
    flight = [m if layout.schedule == "gpipe" else min(p - r, m) for r in range(p)]
    n = len(rows.act)
    return ChunkMemory(rows.act, [rows.fixed(x) for x in range(n)], flight,
                       peaks=(rows.work, rows.fsdp), edge=rows.edge,
                       capped=(rows.params, rows.capped_bytes) if rows.capped else None)


# --------------------------------------------------------------------------------------------
# Data-parallel plan: what the comm stream does per chunk
# --------------------------------------------------------------------------------------------
def optimizer_time(run: RunSpec, params: float, total_params: float) -> float:
    """One optimizer step over ``params`` parameters on one rank.

    From a profile: the measured step of the whole model scaled by the share of parameters.
    Otherwise a roofline of an elementwise kernel (Williams et al., CACM 2009): bytes touched /
    memory bandwidth, reading and writing the optimizer state (master weights included under
    mixed precision), reading the gradient and writing the parameter.
    """
    if params <= 0:
        return 0.0
    if run.optimizer_step_s > 0 and total_params > 0:
        return run.optimizer_step_s * params / total_params
    p, g, o = mem.bytes_per_param(run.dtype, run.optimizer)
    touched = 2.0 * o + g + (p if run.dtype.endswith("-mixed") else 2.0 * p)
    return params * touched / run.cluster.device.memory_bandwidth_bytes_per_s


def _flop_rate(run: RunSpec) -> float:
    if run.flop_rate > 0:
        return run.flop_rate
    peak = peak_flops(run.cluster.device, run.dtype)
    return peak * run.cluster.device.compute_efficiency if peak else 1e12


@dataclass
class _DpPlan:
    """How one chunk's gradients reach the other replicas."""
    buckets: list             # [(ready block (reverse index), duration_s, bytes)], last mb
    per_mb: bool              # FSDP without pipelining: per-block reduce-scatter every micro-batch
    rs_block_s: tuple         # per block (reverse order) reduce-scatter time, FSDP
    gather_block_s: tuple     # per block (forward order) all-gather time, FSDP
    at_end: bool              # reductions start only after the rank's backward pass


def _dp_plan(run: RunSpec, layout: Layout, chunk: _Chunk, comm: CommTime, counts: dict
             ) -> _DpPlan:
    n = layout.dp
    empty = _DpPlan([], False, (), (), False)
    if n == 1:
        return empty
    if layout.zero >= 2:
        # FSDP2's own per-call cost (hooks, DTensor, copy-in/out) on top of each collective
        extra = run.cluster.fsdp_call_overhead_s
        rs = tuple(comm("reduce_scatter", g, "dp") + extra for g in chunk.grad_bytes_rev)
        ag = tuple(comm("all_gather", pb, "dp") + extra for pb in chunk.param_bytes_blocks)
        per_mb = layout.pp == 1
        # under pipelining: one reduce-scatter pass when the chunk's last backward op ends
        buckets = [] if per_mb else [(-1, sum(rs), sum(chunk.grad_bytes_rev))]
        m = layout.num_microbatches
        for g in chunk.grad_bytes_rev:
            _count(counts, "backward", "reduce_scatter", "dp", n, g, m if per_mb else 1)
        gathers = _fsdp_gathers_per_step(layout)
        for pb in chunk.param_bytes_blocks:
            for phase, k in gathers:
                _count(counts, phase, "all_gather", "dp", n, pb, k)
        return _DpPlan(buckets, per_mb, rs, ag, False)
    if layout.dp_comm == "parameter_server":
        total = sum(chunk.grad_bytes_rev)
        t = comm("parameter_server", total, "dp")
        k = layout.ps_shards
        _count(counts, "backward", "reduce", "dp", n, total / k, k)
        _count(counts, "optimizer", "broadcast", "dp", n, total / k, k)
        return _DpPlan([(len(chunk.grad_bytes_rev) - 1, t, total)], False, (), (), True)
    # Buckets that become ready together (a block larger than the cap) run back to back on
    # the stream: one event each group, same finish time as bucket by bucket.
    buckets: list = []
    sizes: dict = {}
    seen: dict = {}
    for nbytes, ready in dp_cost.ddp_buckets(chunk.grad_bytes_rev):
        if nbytes not in sizes:
            sizes[nbytes] = _bucket_time(run, layout, chunk, nbytes, comm)
        seen[nbytes] = seen.get(nbytes, 0) + 1
        if buckets and buckets[-1][0] == ready:
            r0, d0, b0 = buckets[-1]
            buckets[-1] = (ready, d0 + sizes[nbytes], b0 + nbytes)
        else:
            buckets.append((ready, sizes[nbytes], nbytes))
    for nbytes, k in seen.items():
        for msg in _bucket_messages(run, layout, chunk, nbytes):
            _count(counts, "backward", "all_reduce", "dp", n, msg, k)
    return _DpPlan(buckets, False, (), (), not ddp_runs(layout))


def _fsdp_gathers_per_step(layout: Layout) -> list[tuple[str, int]]:
    m = layout.num_microbatches
    if layout.zero == 3:
        return [("forward", m), ("backward", m)]
    return [("forward", m if layout.pp == 1 else 1)]


def _bucket_time(run, layout, chunk, nbytes, comm) -> float:
    """One DDP bucket's reduction, with its compression (``layout.compression``)."""
    return sum(comm("all_reduce", part, "dp") for part in _bucket_messages(run, layout, chunk,
                                                                           nbytes)) + \
        _compression_s(run, layout, chunk, nbytes)


def _bucket_messages(run, layout, chunk, nbytes) -> list[float]:
    """The all-reduce messages of one DDP bucket of ``nbytes`` gradient bytes: the bucket,
    or its 16-bit cast, or PowerSGD's uncompressed part, P and Q."""
    e = mem.bytes_per_param(run.dtype, run.optimizer)[1]
    if layout.compression in ("fp16", "bf16"):
        return [nbytes * 2.0 / e] if e > 2 else [nbytes]
    if layout.compression == "powersgd":
        share = nbytes / max(sum(chunk.grad_bytes_rev), 1.0)
        mats = _chunk_matrices(run, layout, chunk)
        packed, raw, _ = dp_cost.powersgd_split(mats, layout.powersgd_rank)
        matrix_numel = sum(r * c for r, c in mats) * share
        plain = max(0.0, nbytes / e - matrix_numel + raw * share) * e
        return [x for x in (plain, packed * share * e / 2, packed * share * e / 2) if x > 0]
    return [nbytes]


def _compression_s(run, layout, chunk, nbytes) -> float:
    """Compute added by compression: a cast pass over the bucket at memory bandwidth
    (read the gradient, write the 16-bit copy, and back); PowerSGD's matmuls at the rate of
    ``_flop_rate``."""
    e = mem.bytes_per_param(run.dtype, run.optimizer)[1]
    if layout.compression in ("fp16", "bf16"):
        if e <= 2:
            return 0.0
        return 2.0 * (nbytes + nbytes * 2.0 / e) / run.cluster.device.memory_bandwidth_bytes_per_s
    if layout.compression == "powersgd":
        share = nbytes / max(sum(chunk.grad_bytes_rev), 1.0)
        _, _, flops = dp_cost.powersgd_split(_chunk_matrices(run, layout, chunk),
                                             layout.powersgd_rank)
        return flops * share / _flop_rate(run)
    return 0.0


def _chunk_matrices(run, layout, chunk):
    kinds = run_block_kinds(run)
    out = []
    for x in chunk.blocks:
        out += dp_cost.block_matrices(kinds[x], run.model, layout.tp)
    return out


def run_block_kinds(run: RunSpec) -> list[str]:
    n = run.model.num_blocks
    if run.model.family == "custom":
        return ["block"] * n
    return ["embedding"] + ["block"] * (n - 2) + ["head"]


def _count(counts: dict, phase: str, name: str, group: str, size: int, nbytes: float,
           k: int) -> None:
    key = (phase, name, group, size, int(nbytes))
    counts[key] = counts.get(key, 0) + k


# --------------------------------------------------------------------------------------------
# The event simulation
# --------------------------------------------------------------------------------------------
class _Rank:
    __slots__ = ("comp", "p2p", "dpc", "acc", "events", "sends", "dp_busy")

    def __init__(self):
        self.comp = self.p2p = self.dpc = 0.0
        self.acc = dict.fromkeys(BREAKDOWN_KEYS, 0.0)
        self.events = []
        self.sends = 0.0
        self.dp_busy = 0.0


def _overlap(a0, a1, b0, b1) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def simulate(run: RunSpec, layout: Layout, costs: _Costs, comm: CommTime,
             timeline: bool = True) -> tuple[float, list, list, dict]:
    """Run the events. Returns (step_time_s, per-rank _Rank, per-rank ops, dp collectives).

    List scheduling over the ranks' fixed orders: a rank advances while its next operation's
    input is there; a round over all ranks that advances none would be a deadlock (a schedule
    bug). The loop body is inlined: the search runs it for every layout it simulates.
    """
    p, v, m = layout.pp, layout.virtual_stages, layout.num_microbatches
    nch = p * v
    ops, recs, owner, last_bwd = schedule_plan(layout.schedule, p, m, v)
    chunks = costs.chunks
    dp_counts: dict = {}
    plans = [_dp_plan(run, layout, c, comm, dp_counts) for c in chunks]
    durs = ([ch.f_s for ch in chunks] + [ch.b_s for ch in chunks] + [ch.i_s for ch in chunks]
            + [ch.w_s for ch in chunks])
    links = [ch.send_s for ch in chunks]
    ranks = [_Rank() for _ in range(p)]
    # ready[slot]: when the input of an op is available; slots 0..nch*m-1 activations of
    # (chunk, mb), nch*m.. gradients; xfer[slot]: the transfer that delivered it
    ready = [None] * (2 * nch * m)
    xfer = [None] * (2 * nch * m)
    for mb in range(m):
        ready[mb] = 0.0
    gathered = [False] * nch
    ptr = [0] * p
    lens = [len(o) for o in ops]
    done, total = 0, sum(lens)
    fsdp = layout.zero >= 2 and layout.dp > 1
    # which ops need the FSDP hook: ZeRO-3 gathers before every F and B/I; ZeRO-2 before the
    # F ops (only the first of a chunk under pipelining); without pipelining every backward
    # reduce-scatters
    hook_kinds = set()
    if fsdp:
        hook_kinds = {"F", "B", "I"} if (layout.zero == 3 or layout.pp == 1) else {"F"}
    bucket_ops = [set() for _ in range(p)]    # each chunk's last backward op: DDP buckets
    for c, (r, i) in last_bwd.items():
        if plans[c].buckets and not plans[c].at_end:
            bucket_ops[r].add(i)
    once = fsdp and layout.zero == 2 and layout.pp > 1
    while done < total:
        progressed = False
        for r in range(p):
            st, rr, i, n_ops = ranks[r], recs[r], ptr[r], lens[r]
            comp, p2p, sends = st.comp, st.p2p, st.sends
            pp_exp = bub = 0.0
            events = st.events
            mine_buckets = bucket_ops[r]
            while i < n_ops:
                dep, di, out, li, kind, c, mb = rr[i]
                t = comp if dep < 0 else ready[dep]
                if t is None:
                    break
                start = comp
                if t > comp:
                    start = t
                    x = xfer[dep]
                    exposed = 0.0
                    if x is not None:
                        lo = x[0] if x[0] > comp else comp
                        exposed = x[2] - lo if x[2] > lo else 0.0
                    pp_exp += exposed
                    bub += (t - comp) - exposed
                end = start + durs[di]
                if kind in hook_kinds and not (once and gathered[c]):
                    st.comp = comp
                    blocks = chunks[c].f_block_s if kind == "F" else chunks[c].b_block_s
                    end = _fsdp_op(st, kind, chunks[c], plans[c], layout, start, end, mb, c,
                                   gathered, blocks, timeline, r)
                if i in mine_buckets:
                    st.comp = comp
                    _reduce_buckets(st, kind, chunks[c], plans[c], start, end, timeline)
                if timeline:
                    events.append(("compute", f"{kind}{mb} c{c}", start, end))
                comp = end
                if out >= 0:
                    if li < 0:
                        ready[out] = end
                    else:
                        link = links[li]
                        s0 = p2p if p2p > end else end
                        p2p = s0 + link
                        sends += link
                        ready[out] = p2p
                        xfer[out] = (end, s0, p2p)
                        if timeline:
                            events.append(("p2p", f"send {'act' if kind == 'F' else 'grad'}{mb}"
                                                  f" c{c}", s0, p2p))
                i += 1
            done += i - ptr[r]
            progressed = progressed or i > ptr[r]
            st.comp, st.p2p, st.sends = comp, p2p, sends
            st.acc["pp_comm_exposed"] += pp_exp
            st.acc["bubble"] += bub
            ptr[r] = i
        if not progressed:
            raise RuntimeError(f"schedule {layout.schedule} deadlocked at {ptr}")
    for r in range(p):
        mine = [c for c in range(nch) if owner[c] == r]
        _account(ranks[r].acc, [chunks[c] for c in mine], m, layout.schedule == "zbv")
        _finish(run, layout, ranks[r], mine, chunks, plans, comm, dp_counts, timeline)
    _unoverlapped_comm(run.cluster, layout, ranks)
    step = max(st.comp for st in ranks)
    for st in ranks:
        st.acc["bubble"] += step - st.comp
        st.acc["pp_comm_hidden"] = st.sends
        st.acc["dp_comm_hidden"] = st.dp_busy
    return step, ranks, ops, dp_counts


@functools.lru_cache(maxsize=1024)
def schedule_shape(schedule: str, p: int, m: int, v: int):
    """What memory needs of a schedule, cached: chunk owners, each rank's chunks and its
    live-activation frontier (``schedule.live_frontier``; for GPipe and 1F1B directly: m and
    min(p - r, m) micro-batches in flight on rank r, formulas.md)."""
    owner = tuple(sched.chunk_rank(c, p, schedule) for c in range(p * v))
    mine = tuple(tuple(c for c in range(p * v) if owner[c] == r) for r in range(p))
    if schedule in ("gpipe", "1f1b") and v == 1:
        frontiers = tuple(((r,), ((m if schedule == "gpipe" else min(p - r, m),),))
                          for r in range(p))
    else:
        frontiers = tuple(sched.live_frontier(o) for o in sched.expand(schedule, p, m, v))
    return owner, mine, frontiers


@functools.lru_cache(maxsize=256)
def schedule_plan(schedule: str, p: int, m: int, v: int):
    """What the event loop needs of a schedule, cached: per rank the ops and their records,
    chunk owners and each chunk's last backward op."""
    ops = sched.expand(schedule, p, m, v)
    nch = p * v
    owner = tuple(sched.chunk_rank(c, p, schedule) for c in range(nch))
    grad0 = nch * m
    kinds = {"F": 0, "B": 1, "I": 2, "W": 3}
    recs = []
    for rank_ops in ops:
        rr = []
        for kind, c, mb in rank_ops:
            di = kinds[kind] * nch + c           # index into the durations table
            li = -1                              # index into the transfer times, -1: local
            if kind == "F":
                dep = c * m + mb
                if c + 1 < nch:
                    dest = (c + 1) * m + mb
                    li = -1 if owner[c + 1] == owner[c] else c
                else:
                    dest = grad0 + c * m + mb    # the loss: this chunk's backward may go
            elif kind == "W":
                dep, dest = -1, -1
            else:
                dep = grad0 + c * m + mb
                dest = grad0 + (c - 1) * m + mb if c > 0 else -1
                if c > 0 and owner[c - 1] != owner[c]:
                    li = c - 1
            rr.append((dep, di, dest, li, kind, c, mb))
        recs.append(tuple(rr))
    last_bwd = {}
    for r in range(p):
        for i, (kind, c, mb) in enumerate(ops[r]):
            if kind in ("B", "W"):
                last_bwd[c] = (r, i)
    return ops, tuple(recs), owner, last_bwd


def _account(acc: dict, mine: list, m: int, split: bool) -> None:
    """Compute, recompute and TP time of a rank's operations: m of each kind per chunk."""
    for ch in mine:
        acc["compute"] += m * (ch.f_comp + ch.b_comp)
        acc["recompute"] += m * ch.b_rec
        acc["tp_comm_exposed"] += m * (ch.f_tp + ch.b_tp)


def _fsdp_op(st, kind, ch, plan, layout, start, end, mb, c, gathered, blocks, timeline, r):
    """FSDP2 inside one operation: all-gather block k+1 while block k computes (one-block
    prefetch), each block waiting for its own gather; reduce-scatter each block's gradient
    as soon as its backward ends (per micro-batch only without pipelining)."""
    need_gather = (layout.zero == 3 and kind in ("F", "B", "I")) or (
        kind == "F" and (layout.pp == 1 or not gathered[c]))
    rs = plan.rs_block_s if (plan.per_mb and kind in ("B", "I")) else ()
    if not need_gather and not rs:
        return end
    if kind == "F":
        gathered[c] = True
    gath = plan.gather_block_s if kind == "F" else tuple(reversed(plan.gather_block_s))
    t = start
    issue = start
    dpc = st.dpc
    for k, dur in enumerate(blocks):
        if need_gather:
            g0 = max(dpc, issue)
            dpc = g0 + gath[k]
            st.dp_busy += gath[k]
            if timeline:
                st.events.append(("comm", f"all_gather b{k} c{c}", g0, dpc))
            t_start = max(t, dpc)
        else:
            t_start = t
        issue = t_start
        t = t_start + dur
        if rs:
            s0 = max(dpc, t)
            dpc = s0 + rs[k]
            st.dp_busy += rs[k]
            if timeline:
                st.events.append(("comm", f"reduce_scatter b{k} c{c}", s0, dpc))
    st.dpc = dpc
    exposed = max(0.0, t - end)
    st.acc["dp_comm_exposed"] += exposed
    return end + exposed


def _reduce_buckets(st, kind, ch, plan, start, end, timeline) -> None:
    """DDP: each bucket's reduction starts when its last gradient is ready (inside this
    last backward op of the chunk) and the comm stream is free; index -1: at the op's end."""
    offs = ch.w_offsets if kind == "W" else ch.b_offsets
    dpc = st.dpc
    for ready_block, dur, _ in plan.buckets:
        s0 = max(dpc, end if ready_block < 0 else start + offs[ready_block])
        dpc = s0 + dur
        st.dp_busy += dur
        if timeline:
            st.events.append(("comm", "dp bucket", s0, dpc))
    st.dpc = dpc


def _finish(run, layout, st, mine, chunks, plans, comm, counts, timeline) -> None:
    """After the rank's last operation: outstanding reductions, optimizer, parameter sync."""
    acc = st.acc
    params = sum(chunks[c].params for c in mine)
    total = sum(ch.params for ch in chunks)
    if layout.dp_comm == "parameter_server" and layout.dp > 1:
        _parameter_server(run, layout, st, mine, plans, params, total, timeline)
        return
    for c in mine:   # reductions that start only after the backward pass
        if plans[c].at_end:
            for _, dur, _ in plans[c].buckets:
                s0 = max(st.dpc, st.comp)
                st.dpc = s0 + dur
                st.dp_busy += dur
                if timeline:
                    st.events.append(("comm", "dp reduce", s0, st.dpc))
    if st.dpc > st.comp:
        acc["dp_comm_exposed"] += st.dpc - st.comp
        st.comp = st.dpc
    shard = layout.dp if layout.zero >= 1 else 1
    opt = optimizer_time(run, params / shard, total) * compute_slowdown(run.cluster, layout)
    if timeline:
        st.events.append(("compute", "optimizer", st.comp, st.comp + opt))
    st.comp += opt
    acc["optimizer"] += opt
    if layout.zero == 1 and layout.dp > 1:
        # ZeroRedundancyOptimizer: each owner broadcasts its updated shard (all-gather volume)
        pbytes = params * mem.bytes_per_param(run.dtype, run.optimizer)[0]
        t = comm("all_gather", pbytes, "dp")
        _count(counts, "optimizer", "broadcast", "dp", layout.dp, pbytes / layout.dp, layout.dp)
        if timeline:
            st.events.append(("comm", "broadcast params", st.comp, st.comp + t))
        st.comp += t
        st.dpc = st.comp
        st.dp_busy += t
        acc["dp_comm_exposed"] += t


def _parameter_server(run, layout, st, mine, plans, params, total, timeline) -> None:
    """Push gradients to the k servers, the servers' optimizer step on their 1/k, pull the
    parameters back; the push/pull time is ``planner.cost.comm.parameter_server``, split
    evenly between its two halves; the worker waits throughout."""
    half = sum(dur for c in mine for _, dur, _ in plans[c].buckets) / 2.0
    opt = optimizer_time(run, params / layout.ps_shards, total) * compute_slowdown(run.cluster,
                                                                                    layout)
    t0 = max(st.comp, st.dpc)
    if timeline:
        st.events += [("comm", "ps push", t0, t0 + half),
                      ("compute", "optimizer (server shard)", t0 + half, t0 + half + opt),
                      ("comm", "ps pull", t0 + half + opt, t0 + 2 * half + opt)]
    st.acc["dp_comm_exposed"] += (t0 - st.comp) + 2 * half
    st.acc["optimizer"] += opt
    st.dp_busy += 2 * half
    st.comp = st.dpc = t0 + 2 * half + opt


# --------------------------------------------------------------------------------------------
# Memory, collectives and the Prediction
# --------------------------------------------------------------------------------------------
def rank_memory(run: RunSpec, layout: Layout, costs: _Costs) -> list[RankMemory]:
    """Peak bytes of each pipeline rank (dp and tp peers hold the same): the terms of
    ``_MemRows`` over the blocks of the rank's chunks, activations weighted by the schedule's
    in-flight micro-batches (``schedule.live_frontier``; I-to-W held share ``W_HELD_SHARE``)."""
    p = layout.pp
    _, owned, frontiers = schedule_shape(layout.schedule, p, layout.num_microbatches,
                                         layout.virtual_stages)
    rows = costs.memory
    ps, gs, os_ = rows.states
    chunks = costs.chunks
    last = len(chunks) - 1
    out = []
    for r in range(p):
        mine = owned[r]
        params = sum(chunks[c].params for c in mine)
        chunk_ids, states = frontiers[r]
        sizes = [chunks[c].act_bytes for c in chunk_ids]
        if states and len(states[0]) > len(sizes):     # split schedules: I-to-W held share
            sizes += [a * W_HELD_SHARE for a in sizes]
        held = max((sum(n * a for n, a in zip(state, sizes)) for state in states), default=0.0)
        act = held + max(chunks[c].work_bytes for c in mine)
        buf = (sum(chunks[c].linear_bytes for c in mine)
               + max(chunks[c].fsdp_bytes for c in mine)
               + sum(rows.edge[chunks[c].blocks[-1]] for c in mine if c < last)
               + rows.capped_bytes(params))
        out.append(RankMemory(rank=grid.rank_of(0, r, 0, p, layout.tp), stage=r,
                              parameters_bytes=int(params * ps), gradients_bytes=int(params * gs),
                              optimizer_bytes=int(params * os_), activations_bytes=int(act),
                              buffers_bytes=int(buf)))
    return out


def _collectives(layout: Layout, costs: _Costs, dp_counts: dict, owner, ln_bytes: int) -> tuple:
    out = []
    for (phase, name, nbytes), k in sorted(costs.tp_counts.items()):
        out.append(CollectiveCount(phase, name, "tp", layout.tp, k, int(nbytes)))
    nch = len(costs.chunks)
    for c in range(nch - 1):
        if owner[c] != owner[c + 1]:
            nb = costs.chunks[c].send_bytes
            for phase in ("forward", "backward"):
                out.append(CollectiveCount(phase, "send_recv", "pp", layout.pp,
                                           layout.num_microbatches, int(nb)))
    for (phase, name, group, size, nbytes), k in sorted(dp_counts.items()):
        out.append(CollectiveCount(phase, name, group, size, k, int(nbytes)))
    if layout.sequence_parallel:
        # One per pipeline stage and step; a few KiB per layer, so its time is not simulated.
        out.append(CollectiveCount("backward", "all_reduce", "tp", layout.tp, layout.pp,
                                   ln_bytes))
    merged: dict = {}
    for cc in out:
        key = (cc.phase, cc.collective, cc.group, cc.group_size, cc.bytes_each)
        merged[key] = merged.get(key, 0) + cc.count
    return tuple(CollectiveCount(*key[:4], count=k, bytes_each=key[4])
                 for key, k in merged.items())


def check_layout(spec: ModelSpec, layout: Layout, num_blocks: int) -> None:
    """Divisibility and combinations the executor cannot run (one-line errors)."""
    t = layout.tp
    if t > 1:
        if spec.family == "custom":
            raise PlannerError(f"tp {t} needs a zoo model (gpt or mlp); {spec.name} is custom")
        for name, size in (("num_heads", spec.num_heads if spec.family == "gpt" else t),
                           ("hidden_size", spec.hidden_size),
                           ("ffn_hidden_size", spec.ffn_hidden_size)):
            if size % t:
                raise PlannerError(f"tp({t}) must divide {name}({size}): {size} % {t} = "
                                   f"{size % t}")
        if layout.sequence_parallel and spec.seq_len % t:
            raise PlannerError(f"sequence_parallel: tp({t}) must divide seq_len({spec.seq_len})")
    k = layout.pp * layout.virtual_stages
    if k > num_blocks:
        raise PlannerError(f"pp({layout.pp}) * virtual_stages({layout.virtual_stages}) = {k} "
                           f"chunks > {num_blocks} blocks")
    problem = executor_refuses(layout)
    if problem:
        raise PlannerError(problem)


def ddp_runs(layout: Layout) -> bool:
    """Whether the executor can use DDP (hooks that reduce during backward): it needs plain
    parameters (tp 1) and gradients accumulated by autograd (not zbv's split weight pass);
    otherwise it all-reduces after the backward pass (``executor/parallel/dp.py``)."""
    return layout.tp == 1 and not (layout.pp > 1 and layout.schedule == "zbv")


def executor_refuses(layout: Layout) -> str:
    """Why the executor would refuse this layout ("" if it runs it): the combinations
    ``executor/parallel/dp.py`` rejects, so that the search never proposes one."""
    dp = layout.dp > 1
    if layout.dp_comm == "parameter_server" and (layout.zero or layout.compression != "none"):
        return (f"parameter_server keeps whole gradients and the optimizer on its servers: needs "
                f"zero 0 and compression none, got zero {layout.zero}, compression "
                f"{layout.compression}")
    if layout.compression != "none" and layout.zero >= 2:
        return (f"compression {layout.compression} is a DDP hook: needs zero 0 or 1, got zero "
                f"{layout.zero}")
    if layout.compression != "none" and dp and not ddp_runs(layout):
        return (f"compression {layout.compression} is a DDP hook, and DDP cannot run with tp > 1 "
                f"or under zbv (tp {layout.tp}, schedule {layout.schedule})")
    if layout.zero >= 2 and dp and layout.pp > 1 and layout.schedule == "zbv":
        return (f"zero {layout.zero} (FSDP2) under schedule zbv trains wrong parameters in torch "
                f"2.13 (the executor refuses it): use zero 0 or 1 with zbv")
    if layout.zero == 1 and layout.tp > 1 and dp:
        return ("zero 1 (ZeroRedundancyOptimizer) cannot hold tensor-parallel parameters: use "
                "zero 2 or 3 with tp > 1")
    return ""


def prepare(run: RunSpec, blocks: Sequence[BlockCost], layout: Layout,
            comm: CommTime | None = None) -> tuple[Layout, _Costs, CommTime]:
    """Check the layout, fill its stage boundaries and cost its chunks (no events yet)."""
    check_layout(run.model, layout, len(blocks))
    comm = comm or default_comm_time(run.cluster, layout)
    layout, costs = layout_costs(run, blocks, layout, comm)
    return layout, costs, comm


def evaluate(run: RunSpec, blocks: Sequence[BlockCost], layout: Layout,
             comm: CommTime | None = None, timeline: bool = True) -> tuple[Layout, Prediction]:
    """Simulate ``layout`` for one step. ``blocks`` are the model's per-block costs at the
    layout's micro-batch size on one unsplit device. Returns the layout with its stage
    boundaries filled in and the Prediction."""
    layout, costs, comm = prepare(run, blocks, layout, comm)
    step, ranks, ops, dp_counts = simulate(run, layout, costs, comm, timeline)
    return layout, _prediction(run, layout, costs, blocks, step, ranks, ops, dp_counts, timeline)


def _prediction(run, layout, costs, blocks, step, ranks, ops, dp_counts, timeline) -> Prediction:
    p = layout.pp
    breakdown = {k: sum(st.acc[k] for st in ranks) / p for k in BREAKDOWN_KEYS}
    breakdown["pp_comm_hidden"] = max(0.0, breakdown["pp_comm_hidden"]
                                      - breakdown["pp_comm_exposed"])
    breakdown["dp_comm_hidden"] = max(0.0, breakdown["dp_comm_hidden"]
                                      - breakdown["dp_comm_exposed"])
    memory = rank_memory(run, layout, costs)
    peak = max(r.total_bytes for r in memory)
    cap = run.cluster.device.usable_memory_bytes
    n = layout.world_size
    m = layout.num_microbatches
    model_flops = 3.0 * costs.model_flops_mb * m * layout.dp
    hw_flops = model_flops + costs.recompute_flops_mb * m * layout.dp
    peak_rate = peak_flops(run.cluster.device, run.dtype)
    owner = [sched.chunk_rank(c, p, layout.schedule) for c in range(len(costs.chunks))]
    events = ()
    if timeline:
        events = tuple(TimelineEvent(grid.rank_of(0, r, 0, p, layout.tp), s, name, t0, t1)
                       for r, st in enumerate(ranks) for s, name, t0, t1 in st.events)
    return Prediction(
        step_time_s=step, breakdown_s=breakdown, memory=tuple(memory), peak_memory_bytes=peak,
        device_memory_bytes=cap, fits=peak <= cap,
        tflops_per_device=hw_flops / (step * n) / 1e12 if step > 0 else 0.0,
        mfu=model_flops / (step * n * peak_rate) if step > 0 and peak_rate else 0.0,
        bubble_fraction=breakdown["bubble"] / step if step > 0 else 0.0,
        collectives=_collectives(layout, costs, dp_counts, owner, tp_cost.layer_norm_grad_bytes(
            -(-run.model.num_layers // layout.pp), run.model.hidden_size,
            mem.ELEMENT_BYTES[run.dtype])),
        compute_source=run.compute_source, timeline=events)
