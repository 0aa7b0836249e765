"""The data-parallel schemes without a full synchronous reduction at the end of each step,
as the simulator's data-parallel hooks (``planner.sim.dp.DataParallelHooks``) finish a rank's step with
them: the wait for stragglers at a barrier, local SGD's periodic parameter average (DiLoCo's
outer step), and the stale parameter server's clock period (formulas in
``planner.sim.stragglers``). ``hooks`` is the rank's ``DataParallelHooks`` (layout, run, chunks, plans,
comm, timeline).
"""
from __future__ import annotations

from planner.sim import stragglers
from planner.sim.run import optimizer_shards, optimizer_time


def straggle(hooks, st, period: int) -> None:
    """The wait for the slowest rank (``planner.sim.stragglers``) at a barrier every
    ``period`` steps, before this rank's exchange (the layout's ranks all synchronise;
    local SGD's period helps only when the replicas are single ranks)."""
    wait = stragglers.barrier_wait_s(hooks.layout.world_size, st.comp,
                                     hooks.run.straggler_cv, period)
    if wait > 0:
        if hooks.timeline:
            st.events.append(("compute", "wait for the slowest rank", st.comp,
                              st.comp + wait))
        st.comp += wait
        st.comm_free = max(st.comm_free + wait, st.comp)   # collectives wait for it too
        st.acc["bubble"] += wait


def local_sgd(hooks, st, mine, params, total, slow) -> None:
    """1/H of the parameter all-reduce of each chunk, and of DiLoCo's outer Nesterov step
    (an SGD-momentum step over the rank's parameters, priced as ``optimizer_time`` scaled
    by the bytes it touches against the inner optimizer's)."""
    run, layout = hooks.run, hooks.layout
    h = layout.data.local_sgd_period
    sync = sum(hooks.comm("all_reduce", hooks.chunks[c].params * run.bytes_per_param[0], "dp")
               for c in mine) / h
    outer = 0.0
    if layout.data.outer_optimizer == "nesterov":
        from planner.cost.precision import optimizer_bytes_touched
        share = (optimizer_bytes_touched(run.dtype, "sgd-momentum")
                 / optimizer_bytes_touched(run.dtype, run.optimizer))
        outer = optimizer_time(run, params, total) * slow * share / h
    if hooks.timeline:
        st.events.append(("comm", f"parameter all-reduce / {h}", st.comp, st.comp + sync))
    st.comp += sync + outer
    st.comm_free = st.comp
    st.comm_busy += sync
    st.acc["dp_comm_exposed"] += sync
    st.acc["optimizer"] += outer


def stale_server(hooks, st, mine, params, total, slow) -> None:
    """Staleness s >= 1: the clock period of ``planner.sim.stragglers.stale_period_s`` with
    a rank's work D = its compute + the server optimizer on its 1/k (servers are workers
    too), L = push + optimizer + pull; the link, busy push + pull per clock, bounds it
    too. Whatever the period adds beyond D is dp communication not hidden."""
    layout = hooks.layout
    push_pull = sum(dur for c in mine for _, dur, _ in hooks.plans[c].buckets)
    opt = optimizer_time(hooks.run, params / optimizer_shards(layout.dims, layout.data),
                         total) * slow
    work = st.comp + opt
    period = max(push_pull, stragglers.stale_period_s(
        layout.dp, work, push_pull + opt, layout.data.staleness, hooks.run.straggler_cv))
    if hooks.timeline:
        st.events += [("compute", "optimizer (server shard)", st.comp, work),
                      ("comm", f"ps push/pull of clock t-{layout.data.staleness}",
                       st.comp - push_pull if st.comp > push_pull else 0.0, st.comp)]
    st.acc["optimizer"] += opt
    st.acc["dp_comm_exposed"] += period - work
    st.comm_busy += push_pull
    st.comp = st.comm_free = period
