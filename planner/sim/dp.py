"""Data parallelism in the simulator: what each rank's comm stream does, as event-loop hooks.

Built once per layout (``build``), as the executor's ``executor/parallel/dp.py`` runs it:

- ZeRO 0 (DDP) and ZeRO 1 (Megatron's distributed optimizer, ``executor.parallel.zero1``):
  buckets of DDP's sizes (``planner.cost.dp.ddp_buckets``) in reverse block order during the
  last micro-batch's backward of each chunk, each started when its last gradient is ready and
  the stream is free -- all-reduced (ZeRO 0) or reduce-scattered (ZeRO 1); where the executor
  cannot hook the backward pass (``planner.rules.reduction_overlaps_backward``) they start
  after it. ZeRO 1 then all-gathers each bucket's updated parameters after the optimizer step
  (the executor does it before the step ends, so it is exposed).
- ZeRO 2/3 (FSDP2): an all-gather of each block's parameters before its forward (ZeRO-2: only
  while resharded; ZeRO-3: also before its backward), prefetched one block ahead, and a
  reduce-scatter of each block's gradients -- per micro-batch without pipelining, once at the
  end of the step under torch pipelining (which accumulates FSDP gradients unsharded).
- parameter server (``planner.cost.comm.parameter_server``) after the backward pass: push, the
  servers' optimizer step on their 1/k, pull.
- compression (``planner.sim.compress``): fewer bytes per bucket, plus its compute; the
  exchanges after backward (topk, randk, qsgd, sign) run per chunk once the backward is done.
- a parameter server with staleness s >= 1 and local SGD with period H: no barrier every step
  (``planner.sim.stragglers`` states the model): the stale server's push/pull overlaps the
  next s steps, local SGD's parameter all-reduce (and DiLoCo's outer step) costs 1/H per step.
- ranks of different speeds (``RunSpec.straggler_cv`` > 0): the wait for the slowest, at every
  step's barrier, every H steps, or as the staleness bound allows.

The optimizer step starts once a rank's reductions are done. The hooks are the only place the
event loop (``planner.sim.engine``) meets data parallelism.

On a mixed cluster the replicas differ and are simulated one by one (``planner.sim.mixed``); a
``Sync`` then holds each reduction (DDP bucket, end-of-step reduce-scatter, reduction after the
backward pass, parameter server, ZeRO-1's all-gather) until the slowest replica is ready for it,
and ``stage_runs`` give each pipeline rank its own device for the optimizer step. FSDP's
parameter gathers are not synced (under pipelining, the only case mixed layouts run, one per
chunk at its first forward).
"""
from __future__ import annotations

from dataclasses import dataclass

from planner import rules
from planner.cost import dp as dp_cost, offload as offload_cost
from planner.sim import compress, unsync
from planner.sim.run import (compute_slowdown, optimizer_shards, optimizer_time,
                              step_optimizer_s)


@dataclass
class DpPlan:
    """How one chunk's gradients reach the other replicas."""
    buckets: list             # [(ready block (reverse index), duration_s, bytes)], last mb
    per_mb: bool              # FSDP without pipelining: per-block reduce-scatter every micro-batch
    rs_block_s: tuple         # per block (reverse order) reduce-scatter time, FSDP
    gather_block_s: tuple     # per block (forward order) all-gather time, FSDP
    at_end: bool              # reductions start only after the rank's backward pass
    gather_s: float = 0.0     # ZeRO-1: all-gathers of the updated parameters, after the step


def count(counts: dict, phase: str, name: str, group: str, size: int, nbytes: float,
          k: int, every: int = 1) -> None:
    """k collectives of ``nbytes`` per step (``every`` > 1: per that many steps)."""
    key = (phase, name, group, size, int(nbytes), every)
    counts[key] = counts.get(key, 0) + k


def chunk_plan(run, layout, chunk, comm, counts: dict) -> DpPlan:
    dims, d = layout.dims, layout.data
    n, group = dims.replicas, dims.reduce_dim
    if n == 1:
        return DpPlan([], False, (), (), False)
    grads = chunk.detail("grad_bytes_rev")
    if d.zero >= 2:
        return _fsdp_plan(run, layout, chunk, comm, counts, grads)
    if d.parameter_server:
        total = sum(grads)
        t = comm("parameter_server", total, group)
        k = d.ps_shards
        if d.staleness:     # point to point: k(p-1) pushes and k(p-1) pulls of 1/k each
            count(counts, "backward", "send_recv", "dp", n, total / k, k * (n - 1))
            count(counts, "optimizer", "send_recv", "dp", n, total / k, k * (n - 1))
        else:
            count(counts, "backward", "reduce", "dp", n, total / k, k)
            count(counts, "optimizer", "broadcast", "dp", n, total / k, k)
        return DpPlan([(len(grads) - 1, t, total)], False, (), (), True)
    if d.local_sgd:         # parameters averaged in ``finish``, every H steps
        count(counts, "optimizer", "all_reduce", "dp", n, chunk.params * run.bytes_per_param[0],
              1, d.local_sgd_period)
        return DpPlan([], False, (), (), True)
    if d.exchange:
        t = compress.exchange_time(run, layout, chunk, comm)
        for name, nbytes in compress.exchange_messages(run, layout, chunk):
            count(counts, "backward", name, "dp", n, nbytes, 1)
        return DpPlan([(len(grads) - 1, t, sum(grads))], False, (), (), True)
    # Buckets that become ready together (a block larger than the cap) run back to back on
    # the stream: one event each group, same finish time as bucket by bucket.
    reduction = "reduce_scatter" if d.zero == 1 else "all_reduce"
    buckets: list = []
    sizes: dict = {}
    seen: dict = {}
    for nbytes, ready in dp_cost.ddp_buckets(grads):
        if nbytes not in sizes:
            sizes[nbytes] = compress.bucket_time(run, layout, chunk, nbytes, comm, reduction)
        seen[nbytes] = seen.get(nbytes, 0) + 1
        if buckets and buckets[-1][0] == ready:
            r0, d0, b0 = buckets[-1]
            buckets[-1] = (ready, d0 + sizes[nbytes], b0 + nbytes)
        else:
            buckets.append((ready, sizes[nbytes], nbytes))
    gather_s = 0.0
    for nbytes, k in seen.items():
        for msg in compress.bucket_messages(run, layout, chunk, nbytes):
            count(counts, "backward", reduction, group, n, msg, k)
        if d.zero == 1:     # the updated parameters of the bucket, after the optimizer step
            pbytes = nbytes * param_per_grad(run)
            count(counts, "optimizer", "all_gather", group, n, pbytes, k)
            gather_s += k * comm("all_gather", pbytes, group)
    return DpPlan(buckets, False, (), (), not rules.reduction_overlaps_backward(layout),
                  gather_s)


def param_per_grad(run) -> float:
    """Parameter bytes per gradient byte (1: the executor keeps both in the same dtype)."""
    p_e, g_e, _ = run.bytes_per_param
    return p_e / g_e


def _fsdp_plan(run, layout, chunk, comm, counts: dict, grads) -> DpPlan:
    """FSDP2: per block one all-gather / reduce-scatter unit over the dp * cp replicas and,
    under expert parallelism with edp > 1, the block's experts as a unit of their own over
    edp (``executor.parallel.dp``); offload adds each shard's host-device copy (before the
    gather, after the reduce-scatter) at the host link's bandwidth."""
    dims, d = layout.dims, layout.data
    n, group = dims.replicas, dims.reduce_dim
    # FSDP2's own per-call cost (hooks, DTensor, copy-in/out) on top of each collective
    extra = run.cluster.fsdp_call_overhead_s
    units = [(group, group, n, grads, chunk.detail("param_bytes_blocks"))]
    if dims.ep > 1 and dims.edp > 1:
        units.append(("edp", dims.canonical("edp"), dims.edp,
                      chunk.detail("expert_grad_bytes_rev"),
                      chunk.detail("expert_param_bytes_blocks")))
    host = offload_cost.host_link(run) if d.offload else 0.0
    per_mb = layout.pp == 1
    m = layout.num_microbatches
    gathers = fsdp_gathers_per_step(layout)
    rs = [0.0] * len(grads)
    ag = [0.0] * len(grads)
    for name, label, size, gb, pb in units:
        for k, g in enumerate(gb):
            if g:
                rs[k] += comm("reduce_scatter", g, name) + extra
                if host:
                    rs[k] += g / size / host
                count(counts, "backward", "reduce_scatter", label, size, g, m if per_mb else 1)
        for k, p in enumerate(pb):
            if p:
                ag[k] += comm("all_gather", p, name) + extra
                if host:
                    ag[k] += p / size / host
                for phase, times in gathers:
                    count(counts, phase, "all_gather", label, size, p, times)
    # under pipelining: one reduce-scatter pass when the chunk's last backward op ends
    buckets = [] if per_mb else [(-1, sum(rs), sum(grads))]
    return DpPlan(buckets, per_mb, tuple(rs), tuple(ag), False)


def fsdp_gathers_per_step(layout) -> list[tuple[str, int]]:
    m = layout.num_microbatches
    if layout.data.zero == 3:
        return [("forward", m), ("backward", m)]
    return [("forward", m if layout.pp == 1 else 1)]


class FsdpOp:
    """FSDP2 inside one operation: all-gather block k+1 while block k computes (one-block
    prefetch), each block waiting for its own gather; reduce-scatter each block's gradient
    as soon as its backward ends (per micro-batch only without pipelining)."""
    __slots__ = ("name", "gather", "reduce", "blocks", "timeline")

    def __init__(self, name: str, gather: tuple, reduce: tuple, blocks: tuple, timeline: bool):
        self.name, self.gather, self.reduce = name, gather, reduce
        self.blocks, self.timeline = blocks, timeline

    def __call__(self, st, start: float, end: float) -> float:
        t = issue = start
        dpc = st.comm_free
        gath, rs = self.gather, self.reduce
        for k, dur in enumerate(self.blocks):
            t_start = t
            if gath:
                g0 = dpc if dpc > issue else issue
                dpc = g0 + gath[k]
                st.comm_busy += gath[k]
                if self.timeline:
                    st.events.append(("comm", f"all_gather b{k} {self.name}", g0, dpc))
                t_start = t if t > dpc else dpc
            issue = t_start
            t = t_start + dur
            if rs:
                s0 = dpc if dpc > t else t
                dpc = s0 + rs[k]
                st.comm_busy += rs[k]
                if self.timeline:
                    st.events.append(("comm", f"reduce_scatter b{k} {self.name}", s0, dpc))
        st.comm_free = dpc
        exposed = t - end if t > end else 0.0
        st.acc["dp_comm_exposed"] += exposed
        return end + exposed


class Sync:
    """Collectives of the dp group start together on every replica. Pass 1 (``floor`` None)
    records, per collective, the latest time any replica was ready for it; after ``freeze`` the
    second pass starts each no earlier than that."""

    def __init__(self):
        self.latest: dict = {}
        self.floor: dict | None = None

    def __call__(self, key, t: float) -> float:
        if self.floor is None:
            if t > self.latest.get(key, float("-inf")):
                self.latest[key] = t
            return t
        f = self.floor.get(key, t)
        return f if f > t else t

    def freeze(self) -> None:
        self.floor = dict(self.latest)


class BucketOp:
    """DDP: each bucket's reduction starts when its last gradient is ready (inside this last
    backward op of the chunk) and the comm stream is free; index -1: at the op's end. With a
    ``sync``, no earlier than the slowest replica's same bucket (key: rank, chunk, bucket)."""
    __slots__ = ("buckets", "offsets", "timeline", "sync", "key")

    def __init__(self, buckets: list, offsets: tuple, timeline: bool, sync=None, key=()):
        self.buckets, self.offsets, self.timeline = buckets, offsets, timeline
        self.sync, self.key = sync, key

    def __call__(self, st, start: float, end: float) -> float:
        dpc = st.comm_free
        for j, (ready_block, dur, _) in enumerate(self.buckets):
            ready = end if ready_block < 0 else start + self.offsets[ready_block]
            if self.sync is not None:
                ready = self.sync(self.key + (j,), ready)
            s0 = dpc if dpc > ready else ready
            dpc = s0 + dur
            st.comm_busy += dur
            if self.timeline:
                st.events.append(("comm", "dp bucket", s0, dpc))
        st.comm_free = dpc
        return end


def _chain(first, second):
    def both(st, start, end):
        return second(st, start, first(st, start, end))
    return both


class DataParallelHooks:
    """The event loop's data-parallel hooks of one layout: per rank, op index -> hook, and
    ``finish`` after a rank's last operation. ``counts`` collects the collectives per step."""

    def __init__(self, run, layout, costs, comm, sched_plan, timeline: bool, sync=None,
                 stage_runs=None):
        self.run, self.layout, self.comm, self.timeline = run, layout, comm, timeline
        self.sync, self.owner = sync, sched_plan.owner
        self.stage_runs = stage_runs        # per pipeline rank (mixed clusters); None: run
        self.chunks = costs.chunks
        self.counts: dict = {}
        self.plans = [chunk_plan(run, layout, c, comm, self.counts) for c in costs.chunks]
        self.per_op = [dict() for _ in range(layout.pp)]
        if rules.fsdp_runs(layout):
            self._fsdp_hooks(sched_plan)
        for c, (r, i) in sched_plan.last_backward.items():
            plan = self.plans[c]
            if plan.buckets and not plan.at_end:
                kind = sched_plan.ops[r][i][0]
                offsets = self.chunks[c].detail("w_offsets" if kind == "W" else "b_offsets")
                self._add(r, i, BucketOp(plan.buckets, offsets, timeline, sync, (r, c)))

    def _add(self, r: int, i: int, hook) -> None:
        prev = self.per_op[r].get(i)
        self.per_op[r][i] = hook if prev is None else _chain(prev, hook)

    def _fsdp_hooks(self, sched_plan) -> None:
        """Which operations gather (ZeRO-3: every F and B/I; ZeRO-2: every F without
        pipelining, else only a chunk's first F) and which reduce-scatter (every B/I without
        pipelining)."""
        layout = self.layout
        zero3, pipelined = layout.data.zero == 3, layout.pp > 1
        made: dict = {}     # one hook per (chunk, kind): hooks keep no state of their own
        for r, ops in enumerate(sched_plan.ops):
            seen_f: set = set()
            for i, (kind, c, _) in enumerate(ops):
                if kind == "W" or (not zero3 and pipelined and (kind != "F" or c in seen_f)):
                    continue    # ZeRO-2 under pipelining: only a chunk's first F gathers
                seen_f.add(c)
                hook = made.get((c, kind))
                if hook is None:
                    hook = made[(c, kind)] = self._fsdp_op(c, kind, zero3 or kind == "F")
                if hook is not False:
                    self._add(r, i, hook)

    def _fsdp_op(self, c: int, kind: str, gather: bool):
        plan, ch = self.plans[c], self.chunks[c]
        rs = plan.rs_block_s if (plan.per_mb and kind in ("B", "I")) else ()
        if not gather and not rs:
            return False
        fwd = kind == "F"
        gath = (plan.gather_block_s if fwd else tuple(reversed(plan.gather_block_s))
                ) if gather else ()
        blocks = ch.detail("f_block_s" if fwd else "b_block_s")
        return FsdpOp(f"c{c}", gath, rs, blocks, self.timeline)

    def _synced(self, key, t: float) -> float:
        return t if self.sync is None else self.sync(key, t)

    def finish(self, st, mine: list[int]) -> None:
        """After the rank's last operation: outstanding reductions, optimizer, parameter sync."""
        layout, chunks = self.layout, self.chunks
        r = self.owner[mine[0]]
        run = self.run if self.stage_runs is None else self.stage_runs[r]
        params = sum(chunks[c].params for c in mine)
        total = sum(ch.params for ch in chunks)
        slow = compute_slowdown(run.cluster, layout.world_size)
        d = layout.data
        if layout.dp > 1 and d.staleness:
            unsync.stale_server(self, st, mine, params, total, slow)
            return
        unsync.straggle(self, st, 1 if not d.local_sgd or layout.world_size > layout.dp
                        else d.local_sgd_period)
        if d.parameter_server and layout.dp > 1:
            self._parameter_server(st, mine, params, total, slow, run, r)
            return
        gate = st.comp
        if any(self.plans[c].at_end for c in mine):
            gate = self._synced((r, "end"), st.comp)
        for c in mine:   # reductions that start only after the backward pass
            if self.plans[c].at_end:
                for _, dur, _ in self.plans[c].buckets:
                    s0 = max(st.comm_free, gate)
                    st.comm_free = s0 + dur
                    st.comm_busy += dur
                    if self.timeline:
                        st.events.append(("comm", "dp reduce", s0, st.comm_free))
        self._expert_reduce(st, mine)
        if st.comm_free > st.comp:
            st.acc["dp_comm_exposed"] += st.comm_free - st.comp
            st.comp = st.comm_free
        opt = step_optimizer_s(run, layout.data, params / optimizer_shards(layout.dims,
                                                                        layout.data), total)
        if not layout.data.offload:     # on the host (FSDP2's CPUOffloadPolicy) it is not
            opt *= slow                 # slowed by the node's other ranks' compute
        if self.timeline:
            st.events.append(("compute", "optimizer", st.comp, st.comp + opt))
        st.comp += opt
        st.acc["optimizer"] += opt
        if d.local_sgd and layout.dp > 1:
            unsync.local_sgd(self, st, mine, params, total, slow)
        if layout.data.zero == 1 and layout.dims.replicas > 1:
            # the distributed optimizer: one all-gather of updated parameters per bucket,
            # which on a mixed cluster waits for the slowest replica's optimizer step
            start = self._synced((r, "gather"), st.comp)
            st.acc["dp_comm_exposed"] += start - st.comp
            st.comp = start
            t = sum(self.plans[c].gather_s for c in mine)
            if self.timeline:
                st.events.append(("comm", "all_gather params", st.comp, st.comp + t))
            st.comp += t
            st.comm_free = st.comp
            st.comm_busy += t
            st.acc["dp_comm_exposed"] += t

    def _expert_reduce(self, st, mine: list[int]) -> None:
        """Expert parallelism without FSDP on the experts: the step sums all of the rank's
        expert gradients over edp in one all-reduce after the backward pass
        (``executor.parallel.ep.reduce_expert_grads``)."""
        dims = self.layout.dims
        if dims.ep == 1 or dims.edp == 1 or self.layout.data.zero >= 2:
            return
        nbytes = sum(self.chunks[c].expert_params for c in mine) * self.run.bytes_per_param[1]
        if nbytes <= 0:
            return
        t = self.comm("all_reduce", nbytes, "edp")
        count(self.counts, "backward", "all_reduce", dims.canonical("edp"), dims.edp, nbytes, 1)
        s0 = max(st.comm_free, st.comp)
        st.comm_free = s0 + t
        st.comm_busy += t
        if self.timeline:
            st.events.append(("comm", "expert reduce", s0, st.comm_free))

    def _parameter_server(self, st, mine, params, total, slow, run, r) -> None:
        """Push gradients to the k servers, the servers' optimizer step on their 1/k, pull the
        parameters back; the push/pull time is ``planner.cost.comm.parameter_server``, split
        evenly between its two halves; the worker waits throughout."""
        half = sum(dur for c in mine for _, dur, _ in self.plans[c].buckets) / 2.0
        opt = optimizer_time(run, params / optimizer_shards(self.layout.dims, self.layout.data),
                             total) * slow
        t0 = self._synced((r, "end"), max(st.comp, st.comm_free))
        if self.timeline:
            st.events += [("comm", "ps push", t0, t0 + half),
                          ("compute", "optimizer (server shard)", t0 + half, t0 + half + opt),
                          ("comm", "ps pull", t0 + half + opt, t0 + 2 * half + opt)]
        st.acc["dp_comm_exposed"] += (t0 - st.comp) + 2 * half
        st.acc["optimizer"] += opt
        st.comm_busy += 2 * half
        st.comp = st.comm_free = t0 + 2 * half + opt
