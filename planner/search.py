"""Search the layout space: enumerate, prune, simulate the promising, rank, explain.

The space (issue 4): dp * tp * pp = devices; tp dividing heads, hidden and FFN sizes and at most
one node's devices unless allowed; pp up to the number of blocks (the balanced partition copes
with layers that do not divide); micro-batch sizes dividing the per-replica batch; schedules
gpipe/1f1b/interleaved-1f1b (v = 2..max)/zbv; ZeRO 0-3; recompute none/selective/full;
sequence parallelism; the DP communication (all-reduce, compression, parameter server) is an
option the caller fixes. Any dimension can be fixed.

Best-first branch and bound: every layout that passes divisibility gets a cheap lower bound on
its step time (``_time_bound``) and its model-state memory is checked against a lower bound
(``_memory_bound``); the survivors are taken in order of their bound, each gets its exact memory
(partition and schedule, no events) and, if it fits, a full simulation
(``planner.simulate``). The search stops when the next bound is no better than the K-th best
simulated step, so every layout it skips provably cannot enter the top K. Recompute is also
pruned by dominance: when a layout fits without recomputation (or with selective), the same
layout with more recomputation cannot be faster.

The search only calls the cost model through ``planner.simulate`` and the block costs it is
handed: it knows nothing of FLOPs, links or formulas.
"""
from __future__ import annotations

import functools
import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from planner import schedule as sched
from planner import simulate as sim
from planner.cost import dp as dp_cost, pp as pp_cost
from planner.cost.compute import BlockCost
from planner.cost import memory as mem
from planner.cost.memory import bytes_per_param
from planner.errors import PlannerError
from planner.partition import least_bottleneck
from planner.specs import SCHEDULES, Candidate, Layout, Prediction

RECOMPUTE_ORDER = ("none", "selective", "full")


@dataclass(frozen=True)
class Space:
    """Which values each dimension may take; None searches it."""
    dp: int | None = None
    tp: int | None = None
    pp: int | None = None
    microbatch_size: int | None = None
    schedule: str | None = None
    virtual_stages: int | None = None
    zero: int | None = None
    recompute: str | None = None
    sequence_parallel: bool | None = None
    dp_comm: str = "all_reduce"
    ps_shards: int = 0
    compression: str = "none"
    powersgd_rank: int = 0
    tp_across_nodes: bool = False
    max_virtual_stages: int = 8


@dataclass
class Result:
    ranked: list                     # [(Layout, Prediction)] best first, fitting only
    enumerated: int = 0              # complete layouts that pass divisibility
    refused: int = 0                 # ... of other layouts, ones the executor cannot run
    bounded_out: int = 0             # never simulated: bound no better than the K-th best
    memory_pruned: int = 0           # model states alone exceed the device (lower bound)
    not_fitting: int = 0             # exact memory over capacity (no simulation)
    dominated: int = 0               # more recompute than a fitting sibling
    simulated: int = 0
    candidates: list = field(default_factory=list)   # Candidate per layout looked at closely


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def tp_sizes(spec, num_devices: int, devices_per_node: int, space: Space) -> list[int]:
    """tp values that divide the device count, heads, hidden and FFN sizes (Megatron's split
    needs whole heads and whole FFN columns per rank) and fit in a node unless allowed."""
    out = []
    for t in divisors(num_devices):
        if space.tp is not None and t != space.tp:
            continue
        if t > 1:
            if spec.family == "custom":
                continue
            heads = spec.num_heads if spec.family == "gpt" else t
            if heads % t or spec.hidden_size % t or spec.ffn_hidden_size % t:
                continue
            if t > devices_per_node and not space.tp_across_nodes and space.tp is None:
                continue
        out.append(t)
    return out


def schedule_options(pp: int, m: int, num_blocks: int, space: Space) -> list[tuple[str, int]]:
    """(schedule, virtual stages) pairs valid for pp stages and m micro-batches."""
    if pp == 1:
        # One stage: every schedule is plain gradient accumulation; 1F1B keeps one
        # micro-batch of activations alive, so it stands for all of them.
        name = space.schedule or "1f1b"
        if name in ("interleaved-1f1b", "zbv"):
            v = space.virtual_stages or (2 if name == "zbv" else 1)
            return [(name, v)] if v <= num_blocks else []
        return [(name, 1)] if (space.virtual_stages or 1) == 1 else []
    out = []
    for name in SCHEDULES:
        if space.schedule is not None and name != space.schedule:
            continue
        if name in ("gpipe", "1f1b"):
            vs = [1]
        elif name == "zbv":
            vs = [2]
        else:
            if m % pp:
                continue
            vs = range(2, space.max_virtual_stages + 1)
        for v in vs:
            if space.virtual_stages is not None and v != space.virtual_stages:
                continue
            if pp * v <= num_blocks:
                out.append((name, v))
    return out


class _Blocks:
    """Block costs per micro-batch size, and per-layout sums of them, cached."""

    def __init__(self, run: sim.RunSpec, blocks_for: Callable[[int], Sequence[BlockCost]]):
        self.run = run
        self.blocks_for = blocks_for
        self._blocks: dict = {}
        self._sums: dict = {}

    def blocks(self, b: int):
        if b not in self._blocks:
            self._blocks[b] = tuple(self.blocks_for(b))
        return self._blocks[b]

    def sums(self, b: int, tp: int, sp: bool, rc: str, comm) -> tuple[float, float, float, float]:
        """(per-micro-batch time of all blocks on one rank, slowest block, parameters and
        activation bytes per micro-batch of one rank-set after the TP split) for this
        micro-batch size, tp, sp and recompute."""
        key = (b, tp, sp, rc)
        hit = self._sums.get(key)
        if hit is None:
            probe = Layout(tp=tp, microbatch_size=b, recompute=rc, sequence_parallel=sp)
            rows, _ = sim._block_rows(self.run, self.blocks(b), probe, comm)
            per = [r[0] + r[1] + r[2] + r[3] + r[4] for r in rows]
            hit = (sum(per), max(per), sum(r[6] for r in rows), sum(r[7] for r in rows))
            self._sums[key] = hit
        return hit


def search(run: sim.RunSpec, blocks_for: Callable[[int], Sequence[BlockCost]],
           num_devices: int, global_batch: int, space: Space = Space(), top_k: int = 5,
           comm_for: Callable | None = None) -> Result:
    """The best ``top_k`` fitting layouts of ``num_devices`` devices for ``global_batch``."""
    comm_for = comm_for or sim.default_comm_time
    spec, cluster = run.model, run.cluster
    nblocks = spec.num_blocks
    cache = _Blocks(run, blocks_for)
    comms: dict = {}
    res = Result(ranked=[])
    heap: list = []
    seq = 0
    cap = cluster.device.usable_memory_bytes
    for tp in tp_sizes(spec, num_devices, cluster.devices_per_node, space):
        for pp in divisors(num_devices // tp):
            if (space.pp is not None and pp != space.pp) or pp > nblocks:
                continue
            dp = num_devices // (tp * pp)
            if (space.dp is not None and dp != space.dp) or global_batch % dp:
                continue
            probe = Layout(dp=dp, tp=tp, pp=pp, ps_shards=space.ps_shards or 0,
                           dp_comm="all_reduce")
            comm = comms.setdefault((dp, tp, pp), comm_for(cluster, _with_ps(probe, space)))
            for b in divisors(global_batch // dp):
                if space.microbatch_size is not None and b != space.microbatch_size:
                    continue
                m = global_batch // (dp * b)
                for name, v in schedule_options(pp, m, nblocks, space):
                    for leaf in _leaves(dp, tp, pp, b, m, name, v, space, spec, res):
                        res.enumerated += 1
                        zero, rc, sp = leaf
                        total_s, slowest_s, params, acts = cache.sums(b, tp, sp, rc, comm)
                        if _memory_bound(run, params, acts, zero, dp, pp, m, name, v,
                                         space) > cap:
                            res.memory_pruned += 1
                            continue
                        bound = _time_bound(run, dp, tp, pp, m, name, v, zero, total_s,
                                            slowest_s, params, comm, space)
                        heap.append((bound, seq, (dp, tp, pp, b, m, name, v, zero, rc, sp)))
                        seq += 1
    heapq.heapify(heap)
    _best_first(run, cache, comms, heap, res, space, top_k, cap)
    return res


def _with_ps(layout: Layout, space: Space) -> Layout:
    if space.dp_comm == "parameter_server" and layout.dp > 1:
        return Layout(dp=layout.dp, tp=layout.tp, pp=layout.pp, dp_comm="parameter_server",
                      ps_shards=min(max(space.ps_shards, 1), layout.dp))
    return layout


def _leaves(dp, tp, pp, b, m, name, v, space: Space, spec, res: "Result | None" = None):
    zeros = [space.zero] if space.zero is not None else ([0, 1, 2, 3] if dp > 1 else [0])
    if space.dp_comm == "parameter_server" or space.compression != "none":
        zeros = [z for z in zeros if z == 0 or (z == 1 and space.compression != "none"
                                                and space.dp_comm == "all_reduce")]
    rcs = [space.recompute] if space.recompute is not None else list(RECOMPUTE_ORDER)
    if spec.family != "gpt":
        rcs = [r for r in rcs if r != "selective" or space.recompute == "selective"]
    if space.sequence_parallel is not None:
        sps = [space.sequence_parallel] if (tp > 1 or not space.sequence_parallel) else []
    else:
        sps = [False, True] if tp > 1 and spec.family == "gpt" and spec.seq_len % tp == 0 \
            else [False]
    for zero in zeros:
        probe = Layout(dp=dp, tp=tp, pp=pp, microbatch_size=b, num_microbatches=m,
                       schedule=name, virtual_stages=v, zero=zero,
                       dp_comm=space.dp_comm if dp > 1 else "all_reduce",
                       ps_shards=1 if space.dp_comm == "parameter_server" and dp > 1 else 0,
                       compression=space.compression if dp > 1 else "none",
                       powersgd_rank=space.powersgd_rank or 1)
        if sim.executor_refuses(probe):
            if res is not None:
                res.refused += len(rcs) * len(sps)
            continue
        for rc in rcs:
            for sp in sps:
                yield zero, rc, sp


def _memory_bound(run, params: float, acts: float, zero: int, dp: int, pp: int, m: int,
                  name: str, v: int, space: Space) -> float:
    """A lower bound on the fullest rank's bytes, before any partition is known.

    S = model states of all ranks of one pipeline (``memory.model_state_bytes``), A = one
    micro-batch's activations over all blocks. Rank r holds S_r + n_r*A_r at some moment, n_r
    micro-batches of each of its chunks (``in_flight_floor``); the fullest rank holds at least
    any weighted mean of these. Weights (1/n_r)/H, H = sum 1/n_r, give A/H + S/(max n * H);
    equal weights give (S + min n * A)/p. Buffers only add.
    """
    ps, gs, os_ = mem.model_state_bytes(1.0, run.dtype, run.optimizer, zero, dp,
                                        not (pp > 1 and zero >= 2))
    if space.dp_comm == "parameter_server" and dp > 1:
        os_ /= min(max(space.ps_shards, 1), dp)
    states = params * (ps + gs + os_)
    flight = in_flight_floor(name, pp, m, v)
    if min(flight) == 0:
        return states / pp
    h = sum(1.0 / n for n in flight)
    return max((states + min(flight) * acts) / pp, acts / h + states / (max(flight) * h))


@functools.lru_cache(maxsize=4096)
def in_flight_floor(name: str, p: int, m: int, v: int) -> tuple[int, ...]:
    """Per pipeline rank, a count n_r such that at some moment the rank holds n_r micro-batches
    of every one of its chunks (read off the schedules of ``planner.schedule``):
    GPipe m; 1F1B min(p - r, m); interleaved, the forwards of torch's warm-up,
    min((v-1)*m_round + 2(p-1-r), m*v) steps dealt in rounds of m_round to the v chunks, plus
    the first steady-state forward; zbv, before rank r's first backward of its second chunk it
    has run 2p-1-r forwards of its first chunk and r+1 of its second (both capped at m)."""
    if name == "gpipe":
        return (m,) * p
    if name == "1f1b":
        return tuple(min(p - r, m) for r in range(p))
    if name == "zbv":
        return tuple(min(2 * p - 1 - r, r + 1, m) for r in range(p))
    rounds = max(1, m // p)
    per_round = m // rounds
    out = []
    for r in range(p):
        warmup = min((v - 1) * per_round + 2 * (p - 1 - r), m * v)
        steps = min(warmup + 1, m * v)
        counts = [0] * v
        for j in range(v):   # forwards among the first `steps` that go to local chunk j
            full, rest = divmod(steps, per_round * v)
            counts[j] = full * per_round + min(per_round, max(0, rest - j * per_round))
        out.append(min(counts))
    return tuple(out)


def _time_bound(run, dp, tp, pp, m, name, v, zero, total_s, slowest_s, params, comm,
                space: Space) -> float:
    """A lower bound on the simulated step (see the module docstring).

    Compute: the average rank does m * total/pp of block time, followed by what must come after
    its last backward: the optimizer step on its parameters and the collectives the executor
    runs only after the backward pass (all of them with tp > 1 and ZeRO 0; ZeRO-1's parameter
    broadcast; the parameter server). The rank holding the slowest block does at least m times
    that block; flushing schedules with one chunk per rank obey the bubble bound of
    ``planner.cost.pp.balanced_lower_bound``. ZeRO-3 (and ZeRO-2 without
    pipelining) also puts m gathers of the rank's parameters on the comm stream, a bound of its
    own. Collective times are affine in bytes, so the average rank's bytes give the average
    rank's time.
    """
    per_rank = params / pp
    p_e, g_e, _ = bytes_per_param(run.dtype, run.optimizer)
    flush = 0.0
    if name in ("gpipe", "1f1b") and pp > 1:
        flush = pp_cost.balanced_lower_bound(total_s, pp, m)
    shard = dp if zero >= 1 else 1
    tail = sim.optimizer_time(run, per_rank / shard, params)
    busy = 0.0
    if dp > 1:
        if space.dp_comm == "parameter_server":
            tail += comm("parameter_server", per_rank * g_e, "dp")
        elif zero <= 1 and (tp > 1 or (pp > 1 and name == "zbv")):
            tail += comm("all_reduce", per_rank * g_e, "dp")   # executor: after the backward
        elif zero == 1:
            tail += comm("all_gather", per_rank * p_e, "dp")
        if zero == 3:
            busy = 2 * m * comm("all_gather", per_rank * p_e, "dp") + (
                m if pp == 1 else 1) * comm("reduce_scatter", per_rank * g_e, "dp")
        elif zero == 2 and pp == 1:
            busy = m * (comm("all_gather", per_rank * p_e, "dp")
                        + comm("reduce_scatter", per_rank * g_e, "dp"))
    # step >= max_r(work_r + tail_r) >= their mean; >= the bubble bound; >= the rank holding
    # the slowest block; >= the comm stream's busy time
    return max(m * total_s / pp + tail, flush, m * slowest_s, busy)


def _best_first(run, cache, comms, heap, res: Result, space: Space, top_k: int, cap) -> None:
    """Pop layouts by bound; cost, check memory, re-bound with the real partition, simulate."""
    fitting: set = set()      # (dp, tp, pp, b, name, v, zero, sp, rc) that fit
    prepared: dict = {}       # partition and chunk costs shared by zero stages and schedules
    refined: set = set()
    sized: set = set()
    seq = len(heap)
    while heap:
        bound, _, key = heapq.heappop(heap)
        if len(res.ranked) >= top_k and bound >= res.ranked[top_k - 1][1].step_time_s:
            res.bounded_out += 1 + len(heap)
            break
        dp, tp, pp, b, m, name, v, zero, rc, sp = key
        base = (dp, tp, pp, b, name, v, zero, sp)
        lighter = RECOMPUTE_ORDER[:RECOMPUTE_ORDER.index(rc)]
        if space.recompute is None and any(base + (r,) in fitting for r in lighter):
            res.dominated += 1
            continue
        layout = _layout(key, space)
        comm = comms[(dp, tp, pp)]
        blocks = cache.blocks(b)
        if key not in sized:
            # cheap first refinement: the slowest chunk of any partition is no faster than the
            # best bottleneck (cached per block costs and chunk count, shared by many layouts)
            sized.add(key)
            _, _, block_s, send_s, _, _ = sim._rows_bundle(run, blocks, layout, comm)
            better = max(bound, m * least_bottleneck(block_s, pp * v, send_s))
            if _defer(heap, better, seq, key, res, top_k):
                seq += 1
                continue
        # the partition depends on the schedule and ZeRO stage only through its memory
        # tie-break (one chunk per rank) and the zbv split
        pkey = (dp, tp, pp, b, sp, rc, v, name if v == 1 else name == "zbv",
                zero if v == 1 else -1)
        if pkey not in prepared:
            prepared[pkey] = sim.prepare(run, blocks, layout, comm)[:2]
        bounds, costs = prepared[pkey]
        layout = replace(layout, stage_boundaries=bounds.stage_boundaries)
        if key not in refined:
            refined.add(key)
            owner = [sched.chunk_rank(c, pp, name) for c in range(pp * v)]
            better = max(bound, chain_bound(run, layout, costs, owner, comm))
            if _defer(heap, better, seq, key, res, top_k):
                seq += 1
                continue
        memory = sim.rank_memory(run, layout, costs)
        peak = max(r.total_bytes for r in memory)
        if peak > cap:
            res.not_fitting += 1
            res.candidates.append(Candidate(layout, 0.0, peak, False,
                                            note=f"needs {peak / 2**30:.1f} GiB per rank"))
            continue
        fitting.add(base + (rc,))
        step, ranks, ops, dp_counts = sim.simulate(run, layout, costs, comm, False)
        pred = sim._prediction(run, layout, costs, blocks, step, ranks, ops, dp_counts, False)
        res.simulated += 1
        res.ranked.append((layout, pred))
        res.ranked.sort(key=lambda lp: (lp[1].step_time_s, lp[1].peak_memory_bytes))
        del res.ranked[top_k:]
        res.candidates.append(Candidate(layout, pred.step_time_s, pred.peak_memory_bytes, True,
                                        breakdown_s=pred.breakdown_s))
    ranked_layouts = {lp[0]: i + 1 for i, lp in enumerate(res.ranked)}
    res.candidates = [Candidate(c.layout, c.step_time_s, c.peak_memory_bytes, c.fits,
                                c.breakdown_s, ranked_layouts.get(c.layout, 0), c.note)
                      for c in res.candidates]


def _defer(heap, better: float, seq: int, key, res: Result, top_k: int) -> bool:
    """After a bound improved to ``better``: put the layout back if others now come first, or
    drop it if it cannot reach the top K. True if the caller should move on."""
    if len(res.ranked) >= top_k and better >= res.ranked[top_k - 1][1].step_time_s:
        res.bounded_out += 1
        return True
    if heap and better > heap[0][0]:
        heapq.heappush(heap, (better, seq, key))   # look again when its turn comes
        return True
    return False


def _layout(key, space: Space) -> Layout:
    dp, tp, pp, b, m, name, v, zero, rc, sp = key
    ps = dp > 1 and space.dp_comm == "parameter_server"
    return Layout(dp=dp, tp=tp, pp=pp, microbatch_size=b, num_microbatches=m, schedule=name,
                  virtual_stages=v, zero=zero, recompute=rc, sequence_parallel=sp,
                  dp_comm="parameter_server" if ps else "all_reduce",
                  ps_shards=min(max(space.ps_shards, 1), dp) if ps else 0,
                  compression=space.compression if dp > 1 else "none",
                  powersgd_rank=space.powersgd_rank
                  if space.compression == "powersgd" and dp > 1 else 0)


def chain_bound(run, layout: Layout, costs, owner, comm) -> float:
    """A lower bound from the real chunks: pipeline rank r cannot start before micro-batch 0
    has gone forward through chunks 0..r-1 (compute and sends), does m times the work of its
    chunks, and after its last backward the last micro-batch's gradient must still go back
    through chunks r-1..0 while r finishes its step: the data-parallel reduction of at least
    the chunk it ran last (``_after_backward``), the optimizer step, ZeRO-1's broadcast. Under
    zbv the W operations may overlap that return trip, so it follows only F and I work."""
    m = layout.num_microbatches
    chunks = costs.chunks
    p = layout.pp
    zbv = layout.schedule == "zbv"
    work = [0.0] * p
    f_i = [0.0] * p
    params = [0.0] * p
    for c, ch in enumerate(chunks):
        r = owner[c]
        work[r] += m * ((ch.f_s + ch.i_s + ch.w_s) if zbv else (ch.f_s + ch.b_s))
        f_i[r] += m * (ch.f_s + ch.i_s)
        params[r] += ch.params
    shard = layout.dp if layout.zero >= 1 else 1
    total = sum(params)
    mine: list = [[] for _ in range(p)]
    for c, ch in enumerate(chunks):
        mine[owner[c]].append(ch)
    best = before = after = 0.0
    for r in range(p):
        tail = sim.optimizer_time(run, params[r] / shard, total) + _after_backward(
            run, layout, mine[r], params[r], comm)
        if zbv:
            best = max(best, before + work[r] + tail, before + f_i[r] + after)
        else:
            best = max(best, before + work[r] + max(after, tail))
        ch = chunks[r]
        before += ch.f_s + ch.send_s
        after += (ch.i_s if zbv else ch.b_s) + ch.send_s
    return best


def _after_backward(run, layout: Layout, mine, params: float, comm) -> float:
    """Data-parallel work a rank must still do after its last compute op, at least: all of it
    where the executor reduces only after the backward pass (tp > 1 without ZeRO, the parameter
    server), the reduce-scatter of whichever chunk ran last (ZeRO-2/3 under pipelining), or
    that chunk's last DDP bucket; then ZeRO-1's parameter broadcast."""
    if layout.dp == 1:
        return 0.0
    p_e, g_e, _ = bytes_per_param(run.dtype, run.optimizer)
    if layout.dp_comm == "parameter_server":
        return comm("parameter_server", params * g_e, "dp")
    extra = comm("all_gather", params * p_e, "dp") if layout.zero == 1 else 0.0
    if layout.zero >= 2:
        if layout.pp == 1:
            return extra
        return extra + min(comm("reduce_scatter", ch.params * g_e, "dp") for ch in mine)
    if not sim.ddp_runs(layout):
        return extra + comm("all_reduce", params * g_e, "dp")
    last = min(dp_cost.ddp_buckets([ch.params * g_e])[-1][0] for ch in mine)
    return extra + comm("all_reduce", last, "dp")


def evaluate_one(run: sim.RunSpec, blocks_for: Callable[[int], Sequence[BlockCost]],
                 layout: Layout, comm_for: Callable | None = None
                 ) -> tuple[Layout, Prediction]:
    """Simulate one complete layout with its timeline (``planner simulate``, the winner)."""
    comm_for = comm_for or sim.default_comm_time
    return sim.evaluate(run, blocks_for(layout.microbatch_size), layout,
                        comm_for(run.cluster, layout), timeline=True)


def check_space(space: Space, num_devices: int, global_batch: int) -> None:
    """Fixed values that cannot work whatever the rest is: one-line errors."""
    fixed = [x for x in (space.dp, space.tp, space.pp) if x is not None]
    prod = 1
    for x in fixed:
        prod *= x
    if num_devices % prod:
        raise PlannerError(f"--dp/--tp/--pp fix {prod} devices per replica grid, which does not "
                           f"divide --gpus {num_devices}")
    if space.dp is not None and global_batch % space.dp:
        raise PlannerError(f"--global-batch {global_batch} does not divide over --dp "
                           f"{space.dp} ({global_batch} % {space.dp} = {global_batch % space.dp})")
