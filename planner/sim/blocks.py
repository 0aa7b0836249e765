"""Per-block and per-chunk costs of a layout: what one micro-batch costs on one rank.

``block_rows`` turns the model's per-block costs (one unsplit device) into ``BlockRow``s after
the tensor-parallel split (the block's ``tp_split`` from the roofline, else ``split_time``),
the TP collectives inside the block (which block the compute: ``planner.cost.tp``),
recomputation (full: the forward again, collectives included; selective: the family's
recomputed share) and sequence parallelism; context parallelism divides a block's tokens (its
ring's transfers: ``planner.sim.cp``), expert parallelism its experts (and adds their
all-to-alls: ``planner.sim.ep``). ``RowsBundle`` adds what follows from the rows
alone (prefix sums, TP collective counts, FLOPs) and is memoised: the search costs many layouts
that share it. ``Chunk`` (``planner.sim.chunk``) is one model chunk's sums, O(1) from the
prefix sums.
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from typing import NamedTuple

from planner import families
from planner.cost import pp as pp_cost, tp as tp_cost
from planner.cost.compute import BlockCost
from planner.cost.precision import ELEMENT_BYTES
from planner.partition import even_partition
from planner.sim import cp as sim_cp, ep as sim_ep
from planner.sim.run import CommTime, RunSpec, compute_slowdown

# Share of a block's backward that computes weight gradients (the "W" of zero-bubble
# schedules): for a matmul, dX = dY W^T and dW = X^T dY cost the same (Qi et al. 2023, sec. 2);
# an embedding has no input gradient to compute.
WEIGHT_GRAD_SHARE = {"block": 0.5, "head": 0.5, "embedding": 1.0}


class BlockRow:
    """One block, one micro-batch, one rank, after the layout's split."""
    __slots__ = ("forward_s", "forward_tp_s", "backward_s", "recompute_s", "backward_tp_s",
                 "weight_share", "params", "activation_bytes", "working_bytes", "send_bytes",
                 "forward_collectives", "backward_collectives", "cp_s", "ep_s",
                 "expert_params", "xp_collectives")

    def __init__(self, forward_s, forward_tp_s, backward_s, recompute_s, backward_tp_s,
                 weight_share, params, activation_bytes, working_bytes, send_bytes,
                 forward_collectives, backward_collectives, cp_s=0.0, ep_s=0.0,
                 expert_params=0.0, xp_collectives=()):
        self.forward_s = forward_s                  # compute only
        # collectives inside the forward that block it: tp's, and the exposed part of cp's
        # ring and ep's all-to-alls (``cp_s``/``ep_s``: those two, forward + backward)
        self.forward_tp_s = forward_tp_s
        self.backward_s = backward_s
        self.recompute_s = recompute_s              # forward run again during the backward
        self.backward_tp_s = backward_tp_s
        self.weight_share = weight_share            # of backward_s: the weight gradient (W)
        self.params = params                        # on this rank
        self.activation_bytes = activation_bytes    # kept per micro-batch in flight
        self.working_bytes = working_bytes          # transient while recomputed
        self.send_bytes = send_bytes                # the boundary transfer if cut after it
        self.forward_collectives = forward_collectives
        self.backward_collectives = backward_collectives
        self.cp_s, self.ep_s = cp_s, ep_s
        self.expert_params = expert_params          # of ``params``: experts (ep-sharded)
        self.xp_collectives = xp_collectives        # ((phase, name, group, bytes, count), ...)

    @property
    def total_s(self) -> float:
        """Everything one micro-batch costs this block (partitioning weighs blocks by it)."""
        return (self.forward_s + self.forward_tp_s + self.backward_s + self.recompute_s
                + self.backward_tp_s)


class Split(NamedTuple):
    """What a block's costs depend on beyond the model: how a layout splits one micro-batch."""
    tp: int
    sequence_parallel: bool
    recompute: str
    microbatch_size: int
    world_size: int               # co-located ranks slow each other (compute_slowdown)
    cp: int = 1
    ep: int = 1

    @classmethod
    def of(cls, layout) -> "Split":
        return cls(layout.tp, layout.tensor.sequence_parallel, layout.recompute,
                   layout.microbatch_size, layout.world_size, layout.cp, layout.ep)


_PATTERNS: dict = {}


def _pattern(blocks: Sequence[BlockCost]) -> tuple[tuple, tuple[int, ...]]:
    """The distinct blocks of a model (decoder layers are usually identical) and, per block,
    the index of its distinct one; cached per blocks object (held, so its id stays its own)."""
    hit = _cached(blocks)
    return hit[1], hit[2]


def _first_indices(blocks: Sequence[BlockCost]) -> tuple[int, ...]:
    """Per distinct block, the index of its first occurrence (the family may treat layers
    differently: a MoE model's dense layers, which differ in parameter count too)."""
    return _cached(blocks)[3]


def _cached(blocks):
    hit = _PATTERNS.get(id(blocks))
    if hit is not None and hit[0] is blocks:
        return hit
    index: dict = {}
    unique, pattern, first = [], [], []
    for x, blk in enumerate(blocks):
        same = blk[1:]
        k = index.get(same)
        if k is None:
            k = index[same] = len(unique)
            unique.append(blk)
            first.append(x)
        pattern.append(k)
    if len(_PATTERNS) > 256:
        _PATTERNS.clear()
    hit = _PATTERNS[id(blocks)] = (blocks, tuple(unique), tuple(pattern), tuple(first))
    return hit


def block_rows(run: RunSpec, blocks: Sequence[BlockCost], split: Split, comm: CommTime
               ) -> tuple[list[BlockRow], int]:
    """The rows of ``blocks`` under ``split`` and the bytes of one TP collective: (the
    activations', a ``TokenCollective``'s)."""
    rows, _, msg = _unique_rows(run, blocks, split, comm)
    _, pattern = _pattern(blocks)
    return [rows[k] for k in pattern], msg


def _unique_rows(run, blocks, split: Split, comm) -> tuple[list[BlockRow], tuple, int]:
    spec = run.model
    family = families.of(spec)
    slow = compute_slowdown(run.cluster, split.world_size)
    e = ELEMENT_BYTES[run.dtype]
    # under context parallelism a rank's activations hold s / cp of each sequence
    tokens = spec.seq_len // split.cp
    msg = (tp_cost.activation_message_bytes(split.microbatch_size, tokens, spec.hidden_size, e),
           tp_cost.token_message_bytes(split.microbatch_size, tokens, e))
    unique, pattern = _pattern(blocks)
    kinds = family.block_kinds(spec)
    rows = [_row(run, family, blk, split, comm, msg, slow, x,
                 kinds[:x].count("block") if blk.kind == "block" else None)
            for blk, x in zip(unique, _first_indices(blocks))]
    return rows, pattern, msg


def _row(run, family, blk: BlockCost, split: Split, comm, msg, slow, x: int,
         layer: int | None) -> BlockRow:
    """Block ``x`` (decoder layer ``layer``, None for the embedding and head) on one rank."""
    spec, t, sp, rc, cp = run.model, split.tp, split.sequence_parallel, split.recompute, split.cp
    fwd_names, bwd_names = tp_cost.block_collectives(family, blk.kind, sp, t)
    f_tp = tp_cost.collective_time(fwd_names, msg[0], comm, msg[1])
    b_tp = tp_cost.collective_time(bwd_names, msg[0], comm, msg[1])
    load = sim_ep.load(run, split.ep)
    core = None
    divided = family.tp_splits(blk.kind)
    if blk.tp_split is not None:   # analytic per-rank costs (planner.cost.roofline)
        if cp == 1 and load == 1.0:
            f, b, core = blk.tp_split(t, sp, f_tp, b_tp)
        else:
            f, b, core = blk.tp_split(t, sp, f_tp, b_tp, cp=cp, load=load)
    else:   # a profile: every block's work is per token, cp splits the tokens
        f = tp_cost.split_time(blk.forward_s, divided, t) / cp
        b = tp_cost.split_time(blk.backward_s, divided, t) / cp
    f, b = f * slow, b * slow
    xf, xb, cp_s, ep_s, xp = 0.0, 0.0, 0.0, 0.0, ()
    if layer is not None and (cp > 1 or split.ep > 1):
        xf, xb, cp_s, ep_s, xp = _xp_collectives(run, family, split, comm, core, slow, layer,
                                                 load)
    f_in, b_in = f_tp + xf, b_tp + xb
    rec = 0.0
    if blk.kind == "block" and rc == "full":
        rec = f + f_in   # the forward runs again, collectives included (Megatron)
    elif blk.kind == "block" and rc == "selective" and family.selective_recompute:
        rec = core * slow if core is not None else f * family.selective_share(
            blk.forward_flops, spec, split.microbatch_size)
    params = family.tp_params(blk.kind, spec, blk.param_count, t)
    experts = 0.0
    if layer is not None and split.ep > 1:     # this rank keeps 1/ep of the (tp-split) experts
        experts = family.expert_params(spec, layer) / t / split.ep
        params -= experts * (split.ep - 1)
    act = family.activation_bytes(blk.saved_activation_bytes, blk.output_bytes, blk.kind,
                                  spec, t, sp, rc, x) / cp
    work = family.recompute_working_bytes(blk.saved_activation_bytes, blk.output_bytes,
                                          blk.kind, spec, t, sp, rc, x) / cp
    return BlockRow(f, f_in, b, rec, b_in, WEIGHT_GRAD_SHARE.get(blk.kind, 0.5), params, act,
                    work, pp_cost.boundary_bytes(blk.output_bytes, t, sp) / cp, fwd_names,
                    bwd_names, cp_s, ep_s, experts, xp)


def _xp_collectives(run, family, split: Split, comm, core, slow, layer: int, load: float):
    """A decoder layer's cp and ep collectives: (forward exposed s, backward exposed s, cp
    share of both, ep share of both, ((phase, name, group, bytes, count), ...) per
    micro-batch)."""
    fc = bc = fe = be = 0.0
    xp: tuple = ()
    if split.cp > 1:
        core_s = core * slow if core is not None else 0.0
        fc, bc, xp = sim_cp.layer_collectives(run, family, split, comm, core_s, layer)
    if split.ep > 1:
        fe, be, more = sim_ep.layer_collectives(run, family, split, comm, layer, load)
        xp += more
    return fc + fe, bc + be, fc + bc, fe + be, xp


class RowsBundle:
    """The rows of one (run, blocks, split) and what follows from them alone: totals for the
    search's bounds (from the distinct rows, O(1) in the layer count), TP collectives per
    micro-batch, model and recomputed FLOPs; and, built on first use, per-block partition
    weights, send times and the prefix sums chunks are summed from."""

    def __init__(self, run: RunSpec, blocks: Sequence[BlockCost], split: Split, comm: CommTime):
        unique, pattern, msg = _unique_rows(run, blocks, split, comm)
        self._unique, self._pattern, self._comm = unique, pattern, comm
        self.message_bytes = msg[0]
        self.tp = split.tp
        self.scatter = pp_cost.scatter_gather(run.implementation, split.tp,
                                              split.sequence_parallel)
        counts = [0] * len(unique)
        for k in pattern:
            counts[k] += 1
        self.total_s = sum(n * r.total_s for n, r in zip(counts, unique))
        self.slowest_s = max(r.total_s for r in unique)
        self.params = sum(n * r.params for n, r in zip(counts, unique))
        self.expert_params = sum(n * r.expert_params for n, r in zip(counts, unique))
        self.activation_bytes = sum(n * r.activation_bytes for n, r in zip(counts, unique))
        self.tp_per_microbatch = _tp_counts(unique, counts, msg, split.recompute)
        self.xp_per_microbatch = _xp_counts(unique, counts, split.recompute)
        distinct = _pattern(blocks)[0]
        self._kinds = tuple(blk.kind for blk in distinct)
        self.model_flops = sum(n * blk.forward_flops for n, blk in zip(counts, distinct))
        self.recompute_flops = sum(n * f for n, f in zip(
            counts, _recompute_flops(run, distinct, split)))
        self._rows = self._send_s = self._prefix = self._block_s = None
        # what layouts over these rows share, filled by planner.sim.costs
        self.chunks: dict = {}      # (starts, split backward, placement, pp) -> [Chunk]
        self.memory: dict = {}      # (data strategy, dims, pipelined) -> MemRows
        self._even: dict = {}       # chunk count -> Megatron's even split

    @property
    def rows(self) -> list[BlockRow]:
        if self._rows is None:
            self._rows = [self._unique[k] for k in self._pattern]
        return self._rows

    @property
    def block_s(self) -> list[float]:
        """Per block, its whole micro-batch cost (what the partition balances)."""
        if self._block_s is None:
            per = [r.total_s for r in self._unique]
            self._block_s = [per[k] for k in self._pattern]
        return self._block_s

    @property
    def send_s(self) -> list[float]:
        """Per block, the boundary transfer if the pipeline is cut after it."""
        if self._send_s is None:
            comm = self._comm
            per = [pp_cost.send_time(comm, r.send_bytes, self.tp, self.scatter)
                   for r in self._unique]
            self._send_s = [per[k] for k in self._pattern]
        return self._send_s

    def even_starts(self, k: int) -> tuple[int, ...]:
        """``planner.partition.even_partition`` of these blocks into ``k`` chunks (memoised)."""
        hit = self._even.get(k)
        if hit is None:
            kinds = tuple(self._kinds[x] for x in self._pattern)
            hit = self._even[k] = even_partition(kinds, k)
        return hit

    def prefixes(self) -> tuple[list[float], ...]:
        """Prefix sums over blocks of forward_s, forward_tp_s, backward_s, recompute_s,
        backward_tp_s, the weight-gradient share of backward_s, params, activation_bytes,
        and of cp_s + ep_s, ep_s, expert_params (None when no block has any)."""
        if self._prefix is None:
            rows = self.rows

            def pre(values):
                return [0.0, *accumulate(values)]
            xp = None
            if any(r.cp_s or r.ep_s or r.expert_params for r in self._unique):
                xp = (pre(r.cp_s for r in rows), pre(r.ep_s for r in rows),
                      pre(r.expert_params for r in rows))
            self._prefix = (pre(r.forward_s for r in rows), pre(r.forward_tp_s for r in rows),
                            pre(r.backward_s for r in rows), pre(r.recompute_s for r in rows),
                            pre(r.backward_tp_s for r in rows),
                            pre(r.backward_s * r.weight_share for r in rows),
                            pre(r.params for r in rows), pre(r.activation_bytes for r in rows),
                            xp)
        return self._prefix


def _tp_counts(unique, counts, msg, recompute) -> dict:
    """(phase, collective, bytes) -> TP collectives per micro-batch."""
    out: dict = {}

    def add(phase, entry, n):
        key = (phase, *tp_cost.message(entry, *msg))
        out[key] = out.get(key, 0) + n
    for r, n in zip(unique, counts):
        for phase, names in (("forward", r.forward_collectives),
                             ("backward", r.backward_collectives)):
            for entry in names:
                add(phase, entry, n)
        if r.recompute_s and recompute == "full":
            for entry in r.forward_collectives:   # the recomputed forward issues them again
                add("backward", entry, n)
    return out


def _xp_counts(unique, counts, recompute) -> dict:
    """(phase, collective, group, bytes) -> cp and ep collectives per micro-batch (the
    forward ones again in the backward under full recomputation)."""
    out: dict = {}
    for r, n in zip(unique, counts):
        for phase, name, group, nbytes, k in r.xp_collectives:
            phases = (phase, "backward") if phase == "forward" and recompute == "full" \
                else (phase,)
            for ph in phases:
                key = (ph, name, group, nbytes)
                out[key] = out.get(key, 0) + n * k
    return out


def _recompute_flops(run, blocks, split: Split) -> list[float]:
    """Per block, the forward FLOPs recomputation runs again."""
    rc = split.recompute
    family = families.of(run.model)
    if rc == "none" or (rc == "selective" and not family.selective_recompute):
        return [0.0] * len(blocks)
    return [blk.forward_flops * (1.0 if rc == "full" else family.selective_share(
        blk.forward_flops, run.model, split.microbatch_size)) if blk.kind == "block" else 0.0
        for blk in blocks]


_BUNDLES: dict = {}


def rows_bundle(run: RunSpec, blocks: Sequence[BlockCost], split, comm: CommTime
                ) -> RowsBundle:
    """``RowsBundle`` memoised on (run, blocks, comm, split); ``split`` is a ``Split`` or a
    layout. The cache holds the objects it was keyed on, so an id is never reused for another
    object while its entry lives."""
    if not isinstance(split, Split):
        split = Split.of(split)
    key = (id(run), id(blocks), id(comm), split.tp, split.sequence_parallel, split.recompute,
           split.microbatch_size, compute_slowdown(run.cluster, split.world_size), split.cp,
           split.ep)
    hit = _BUNDLES.get(key)
    if hit is not None and hit[0] is run and hit[1] is blocks and hit[2] is comm:
        return hit[3]
    bundle = RowsBundle(run, blocks, split, comm)
    if len(_BUNDLES) > 2048:
        _BUNDLES.clear()
    _BUNDLES[key] = (run, blocks, comm, bundle)
    return bundle

