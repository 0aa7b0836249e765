"""The event engine: one step of one pipeline, list-scheduled over fixed per-rank orders.

One pipeline is simulated: a single data-parallel replica and a single tensor-parallel rank per
stage stand for all of them (replicas and TP peers run in lock-step), so a 1024-GPU layout costs
O(pp * m * v) events. Each pipeline rank has three streams:

- ``compute``: the schedule's operations in order; an operation starts when the stream is free
  and its input has arrived (activations for F, the gradient for B/I);
- ``p2p``: boundary sends to the next/previous stage, FIFO, started when the producing
  operation ends; the receiver waits for the transfer's end (torch pipelining issues them on the
  pp process group, a stream of its own);
- ``comm``: whatever the per-operation hooks put there (data parallelism: ``planner.sim.dp``).

The engine knows nothing of ZeRO or DDP: it calls ``hooks.per_op[rank][op index](state, start,
end) -> end`` on the operations a hook was built for, and ``hooks.finish(state, chunks)`` after
each rank's last operation.

Breakdown (``Rank.acc``): each pipeline rank's wall time split into compute, recompute,
tensor-parallel communication (all exposed), context- and expert-parallel communication (the
ring's and the all-to-alls' exposed part), time waiting for a pipeline transfer
(pp_comm_exposed) or for a data-parallel collective (dp_comm_exposed), optimizer, and bubble
(idle with nothing in flight); ``*_hidden`` is a stream's busy time that did not stall compute.

Co-located ranks (``planner.profile.interference``; defaults leave GPU/NCCL clusters unchanged):
the share 1 - ``cluster.comm_overlap`` of the data-parallel and pipeline transfer time the
streams hid stalls compute instead (gloo's communication thread needs a core).
"""
from __future__ import annotations

BREAKDOWN_KEYS = ("compute", "recompute", "tp_comm_exposed", "tp_comm_hidden", "pp_comm_exposed",
                  "pp_comm_hidden", "dp_comm_exposed", "dp_comm_hidden", "bubble", "optimizer",
                  "cp_comm_exposed", "ep_comm_exposed")
# kept in a prediction's breakdown only when the layout has that dimension
OPTIONAL_KEYS = {"cp_comm_exposed": "cp", "ep_comm_exposed": "ep"}


class Rank:
    """One pipeline rank's streams and accounts."""
    __slots__ = ("comp", "p2p", "comm_free", "acc", "events", "sends", "comm_busy")

    def __init__(self):
        self.comp = self.p2p = self.comm_free = 0.0
        self.acc = dict.fromkeys(BREAKDOWN_KEYS, 0.0)
        self.events = []          # (stream, name, start_s, end_s) when a timeline is kept
        self.sends = 0.0          # p2p stream busy time
        self.comm_busy = 0.0      # comm stream busy time


class _Step:
    """The shared state of one step's events: op durations, links, slots, transfers, and which
    rank waits on which slot (so only a rank whose input arrived is run again)."""
    __slots__ = ("durs", "links", "ready", "xfer", "timeline", "waiter", "runnable")

    def __init__(self, chunks, m: int, timeline: bool):
        self.durs = ([ch.f_s for ch in chunks] + [ch.b_s for ch in chunks]
                     + [ch.i_s for ch in chunks] + [ch.w_s for ch in chunks])
        self.links = [ch.send_s for ch in chunks]
        # ready[slot]: when the input of an op is available; xfer[slot]: the transfer that
        # delivered it (producer end, send start, send end)
        n = 2 * len(chunks) * m
        self.ready = [None] * n
        self.xfer = [None] * n
        self.waiter = [-1] * n
        self.runnable: list[int] = []
        for mb in range(m):
            self.ready[mb] = 0.0
        self.timeline = timeline


def run(plan, chunks, m: int, hooks, overlap: float, timeline: bool) -> tuple[float, list]:
    """Run the events of ``plan`` (``planner.sim.pp.SchedulePlan``) over ``chunks``.

    List scheduling over the ranks' fixed orders: a rank runs as far as its inputs allow
    (``_advance``), then waits until the operation filling its missing input has run; which
    rank runs first does not change any time (each rank's streams follow its own order). Ranks
    that cannot run while operations remain would be a deadlock (a schedule bug). Returns
    (step_time_s, per-rank ``Rank``).
    """
    recs, owner = plan.records, plan.owner
    p, nch = len(recs), len(chunks)
    step = _Step(chunks, m, timeline)
    ranks = [Rank() for _ in range(p)]
    ptr = [0] * p
    lens = [len(o) for o in recs]
    done, total = 0, sum(lens)
    # per rank, the hook of each operation (None: none), as a list: read once per operation
    per_op = [[mine.get(i) for i in range(n)] if mine else None
              for mine, n in zip(hooks.per_op, lens)]
    step.runnable = list(range(p - 1, -1, -1))
    while step.runnable:
        r = step.runnable.pop()
        i = _advance(step, r, ranks[r], recs[r], ptr[r], per_op[r])
        done += i - ptr[r]
        ptr[r] = i
    if done < total:
        raise RuntimeError(f"schedule deadlocked at {ptr}")
    for r in range(p):
        mine = [c for c in range(nch) if owner[c] == r]
        _account(ranks[r].acc, [chunks[c] for c in mine], m)
        hooks.finish(ranks[r], mine)
    _unoverlapped_comm(overlap, ranks)
    end = max(st.comp for st in ranks)
    for st in ranks:
        st.acc["bubble"] += end - st.comp
        st.acc["pp_comm_hidden"] = st.sends
        st.acc["dp_comm_hidden"] = st.comm_busy
    return end, ranks


def _advance(step: _Step, r: int, st: Rank, rr, i: int, hooks) -> int:
    """Run rank ``r``'s operations from index ``i`` while their inputs are there; returns the
    index of the first that must wait (and records that it waits, and on what). The body is
    the simulator's hot loop (every simulated layout runs it for every operation): locals, no
    calls unless a hook is due."""
    ready, xfer, durs, links, timeline = (step.ready, step.xfer, step.durs, step.links,
                                          step.timeline)
    waiter, runnable = step.waiter, step.runnable
    comp, p2p, sends = st.comp, st.p2p, st.sends
    pp_exp = bub = 0.0
    events = st.events
    n_ops = len(rr)
    while i < n_ops:
        dep, di, out, li, kind, c, mb = rr[i]
        t = comp if dep < 0 else ready[dep]
        if t is None:
            waiter[dep] = r
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
        hook = hooks[i] if hooks else None
        if hook is not None:
            st.comp = comp
            end = hook(st, start, end)
        if timeline:
            events.append(("compute", f"{kind}{mb} c{c}", start, end))
        comp = end
        if out >= 0:
            w = waiter[out]
            if w >= 0:
                runnable.append(w)
                waiter[out] = -1
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
                    events.append(("p2p", f"send {'act' if kind == 'F' else 'grad'}{mb} c{c}",
                                   s0, p2p))
        i += 1
    st.comp, st.p2p, st.sends = comp, p2p, sends
    st.acc["pp_comm_exposed"] += pp_exp
    st.acc["bubble"] += bub
    return i


def _account(acc: dict, mine: list, m: int) -> None:
    """Compute, recompute and TP time of a rank's operations: m of each kind per chunk."""
    for ch in mine:
        acc["compute"] += m * (ch.f_comp + ch.b_comp)
        acc["recompute"] += m * ch.b_rec
        acc["tp_comm_exposed"] += m * (ch.f_tp + ch.b_tp - ch.cp_s - ch.ep_s)
        acc["cp_comm_exposed"] += m * ch.cp_s
        acc["ep_comm_exposed"] += m * ch.ep_s


def _unoverlapped_comm(overlap: float, ranks: list) -> None:
    """Where communication does not run beside compute (overlap < 1), the share 1 - overlap of
    each rank's hidden data-parallel and pipeline transfer time stalls its compute instead:
    added to the rank's end and to the exposed terms (``planner.profile.interference``)."""
    lost = 1.0 - overlap
    if lost <= 0:
        return
    for st in ranks:
        dp = lost * max(0.0, st.comm_busy - st.acc["dp_comm_exposed"])
        pp = lost * max(0.0, st.sends - st.acc["pp_comm_exposed"])
        st.acc["dp_comm_exposed"] += dp
        st.acc["pp_comm_exposed"] += pp
        st.comp += dp + pp
