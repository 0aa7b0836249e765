"""Lower bounds on what the simulator would say, for the search's branch and bound.

Each bound follows from the simulator's own rules (the data-parallel behaviour of
``planner.sim.dp``, the memory of ``planner.sim.memory``, the schedules' in-flight counts), so
the search never re-derives them: a layout whose bound is worse than the K-th best simulated
step provably cannot enter the top K.
"""
from __future__ import annotations

from planner import rules
from planner.cost import dp as dp_cost, pp as pp_cost
from planner.sim.compress import wire_share
from planner.sim.memory import buffer_bytes_per_param, state_bytes_per_param
from planner.sim.run import optimizer_shards, step_optimizer_s


def memory_floor(run, dims, data, schedule, m: int, v: int, params: float, acts: float) -> float:
    """A lower bound on the fullest rank's bytes, before any partition is known.

    S = model states of all ranks of one pipeline, A = one micro-batch's activations over all
    blocks. Rank r holds S_r + n_r*A_r at some moment, n_r micro-batches of each of its chunks
    (``Schedule.in_flight_floor``); the fullest rank holds at least any weighted mean of these.
    Weights (1/n_r)/H, H = sum 1/n_r, give A/H + S/(max n * H); equal weights give
    (S + min n * A)/p. S includes the gradient-sized buffers that scale with the rank's
    parameters (``buffer_bytes_per_param``); the other buffers only add.
    """
    pp = dims.pp
    states = params * (sum(state_bytes_per_param(run, dims, data, pp > 1))
                       + buffer_bytes_per_param(run, dims, data))
    flight = schedule.in_flight_floor(pp, m, v)
    if min(flight) == 0:
        return states / pp
    h = sum(1.0 / n for n in flight)
    return max((states + min(flight) * acts) / pp, acts / h + states / (max(flight) * h))


def step_floor(run, dims, data, schedule, m: int, total_s: float, slowest_s: float,
               params: float, comm, expert_params: float = 0.0) -> float:
    """A lower bound on the simulated step from per-micro-batch totals alone.

    Compute: the average rank does m * total/pp of block time, followed by what must come after
    its last backward: the optimizer step on its parameters and the collectives the executor
    runs only after the backward pass (all reductions where the executor cannot hook the
    backward pass; ZeRO-1's parameter all-gathers; the parameter server). The rank holding the
    slowest block does at least m times that block; flushing schedules with one chunk per rank obey the bubble bound of
    ``planner.cost.pp.balanced_lower_bound``. ZeRO-3 (and ZeRO-2 without pipelining) also puts
    m gathers of the rank's parameters on the comm stream, a bound of its own. Collective times
    are affine in bytes, so the average rank's bytes give the average rank's time. Data
    parallelism reduces over the dp * cp replicas; expert shards (``expert_params`` of
    ``params``) are left out of its collectives (they are reduced over edp, which only adds
    time); offload only adds time too (host copies, the host's optimizer step).
    """
    dp, pp, zero = dims.replicas, dims.pp, data.zero
    group = dims.reduce_dim
    per_rank = params / pp
    dense = (params - expert_params) / pp
    p_e, g_e, _ = run.bytes_per_param
    g_wire = g_e * wire_share(run, data.compression)
    flush = 0.0
    if schedule.flushing_single_chunk and pp > 1:
        flush = pp_cost.balanced_lower_bound(total_s, pp, m)
    tail = step_optimizer_s(run, data, per_rank / optimizer_shards(dims, data), params)
    busy = 0.0
    # Exchanges after backward, stale servers and local SGD may send less than a full
    # reduction, or overlap it: their tail stays 0 (the bound stays a bound).
    if dp > 1 and not _unsynchronised(data):
        if data.parameter_server:
            tail += comm("parameter_server", per_rank * g_e, group)
        elif zero <= 1 and not rules.reduction_overlaps(dims, schedule, zero):
            # the executor reduces after the backward pass
            tail += comm("reduce_scatter" if zero == 1 else "all_reduce", dense * g_wire,
                         group)
        if zero == 1:
            # all-gathers after the step: one per bucket, at least one call of all the bytes
            # (times are affine in bytes with a non-negative intercept)
            tail += comm("all_gather", per_rank * p_e, group)
        if zero == 3:
            busy = 2 * m * comm("all_gather", dense * p_e, group) + (
                m if pp == 1 else 1) * comm("reduce_scatter", dense * g_e, group)
        elif zero == 2 and pp == 1:
            busy = m * (comm("all_gather", dense * p_e, group)
                        + comm("reduce_scatter", dense * g_e, group))
    # step >= max_r(work_r + tail_r) >= their mean; >= the bubble bound; >= the rank holding
    # the slowest block; >= the comm stream's busy time
    return max(m * total_s / pp + tail, flush, m * slowest_s, busy)


def chain_bound(run, layout, costs, comm) -> float:
    """A lower bound from the real chunks: pipeline rank r cannot start before micro-batch 0
    has gone forward through chunks 0..r-1 (compute and sends), does m times the work of its
    chunks, and after its last backward the last micro-batch's gradient must still go back
    through chunks r-1..0 while r finishes its step: the data-parallel reduction of at least
    the chunk it ran last (``_after_backward``), the optimizer step, ZeRO-1's all-gathers. Under
    a split backward the W operations may overlap that return trip, so it follows only F and
    I work."""
    m, p = layout.num_microbatches, layout.pp
    chunks = costs.chunks
    kind = layout.pipeline.kind
    split = kind.split_backward
    g_e = run.bytes_per_param[1]
    work, f_i, params, dense = [0.0] * p, [0.0] * p, [0.0] * p, [0.0] * p
    smallest = [float("inf")] * p      # the least gradient bytes of one of the rank's chunks
    last = [float("inf")] * p          # ... and the least last DDP bucket of one
    for c, ch in enumerate(chunks):
        r = kind.chunk_rank(c, p)
        work[r] += (ch.f_s + ch.i_s + ch.w_s) if split else (ch.f_s + ch.b_s)
        f_i[r] += ch.f_s + ch.i_s
        params[r] += ch.params
        dense[r] += ch.params - ch.expert_params
        grads = (ch.params - ch.expert_params) * g_e
        smallest[r] = min(smallest[r], grads)
        last[r] = min(last[r], dp_cost.last_bucket_bytes(grads))
    shard = optimizer_shards(layout.dims, layout.data)
    total = sum(params)
    best = before = after = 0.0
    for r in range(p):
        tail = step_optimizer_s(run, layout.data, params[r] / shard, total) + _after_backward(
            run, layout, smallest[r], last[r], params[r], dense[r], comm)
        if split:
            best = max(best, before + m * work[r] + tail, before + m * f_i[r] + after)
        else:
            best = max(best, before + m * work[r] + max(after, tail))
        ch = chunks[r]
        before += ch.f_s + ch.send_s
        after += (ch.i_s if split else ch.b_s) + ch.send_s
    return best


def _after_backward(run, layout, smallest: float, last: float, params: float, dense: float,
                    comm) -> float:
    """Data-parallel work a rank must still do after its last compute op, at least: all of it
    where the executor reduces only after the backward pass (it cannot hook the backward pass,
    the parameter server), the reduce-scatter of whichever chunk ran last (ZeRO-2/3 under
    pipelining: at least the rank's smallest chunk's ``smallest`` gradient bytes; collective
    times grow with bytes), or that chunk's last bucket (at least ``last`` bytes; all-reduced
    by DDP, reduce-scattered by ZeRO-1); then ZeRO-1's parameter all-gathers. Over the dp * cp
    replicas; ``dense``: the rank's parameters without expert shards (which are reduced over
    edp, after these). Compressed exchanges, stale servers and local SGD leave no full
    reduction on the tail: 0."""
    d, group = layout.data, layout.dims.reduce_dim
    if layout.dims.replicas == 1 or _unsynchronised(d):
        return 0.0
    p_e, g_e, _ = run.bytes_per_param
    g_wire = g_e * wire_share(run, d.compression)
    if d.parameter_server:
        return comm("parameter_server", params * g_e, group)
    extra = comm("all_gather", params * p_e, group) if d.zero == 1 else 0.0
    if d.zero >= 2:
        if layout.pp == 1:
            return extra
        return extra + comm("reduce_scatter", smallest, group)
    reduction = "reduce_scatter" if d.zero == 1 else "all_reduce"
    if not rules.reduction_overlaps_backward(layout):
        return extra + comm(reduction, dense * g_wire, group)
    if g_wire == 0:
        return extra
    return extra + comm(reduction, last * g_wire / g_e, group)


def _unsynchronised(data) -> bool:
    """Compressed exchanges, stale servers and local SGD: no full reduction on the tail."""
    return data.exchange or data.local_sgd or bool(data.staleness)
