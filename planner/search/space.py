"""The layout space: which values each dimension may take, and the enumeration of them.

dp * cp * pp * tp = devices; tp passing the model family's divisibility rules and at most one
node's devices unless allowed; pp up to the number of blocks (the balanced partition copes with
layers that do not divide); micro-batch sizes dividing the per-replica batch; each registered
schedule with its virtual-stage rule (``planner.schedules``); ZeRO 0-3; recompute
none/selective/full; sequence parallelism (only layouts the executor can checkpoint when
``Space.checkpointed``, for elastic plan sets). The data-parallel communication (all-reduce,
compression, parameter server, staleness, local SGD) changes numerics, so it is an option the
caller fixes, never searched. Layouts the executor refuses (``planner.rules``) are never proposed.

The newer dimensions multiply the space only where they can pay:
- cp > 1 only for sequences of at least ``cp_min_seq_len`` tokens (16k). cp splits a
  sequence's compute as dp splits the batch, adding the ring's transfers; what it buys is room
  -- activations of s/cp tokens per micro-batch -- and parallelism when the batch has fewer
  sequences than the devices could take. Below 16k tokens one sequence's activations fit a
  device once tp <= 8 splits them and recomputation is allowed (Llama 3 trained at 8k without
  cp and turned it on for 128k, Dubey et al. 2024 sec. 3.3.2), so cp there is searched only
  when ``--cp`` fixes it. A heuristic, not a bound: the search is exhaustive within it.
- ep > 1 only for models with experts (the family's ``ep_problem``): the divisors of
  gcd(dp * cp, num_experts).
- offload never makes a step faster (host copies, the optimizer on the host), so an offloaded
  layout is tried only when the same layout without it does not fit (``planner.search``),
  like more recomputation.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from planner import families, rules, schedules
from planner.dims import ParallelDims
from planner.errors import PlannerError
from planner.specs import DataParallel, Layout

RECOMPUTE_ORDER = ("none", "selective", "full")


@dataclass(frozen=True)
class Space:
    """Which values each dimension may take; None searches it."""
    dp: int | None = None
    tp: int | None = None
    pp: int | None = None
    cp: int | None = None
    ep: int | None = None
    offload: bool | None = None
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
    compression_ratio: float = 0.0
    bits: int = 0
    staleness: int = 0
    local_sgd_period: int = 0
    outer_optimizer: str = "none"
    tp_across_nodes: bool = False
    max_virtual_stages: int = 8
    # Only layouts the executor can checkpoint (``rules.checkpoint_refuses``): an elastic run
    # resumes from checkpoints at every change of world size.
    checkpointed: bool = False
    cp_min_seq_len: int = 16384

    def data(self, dp: int, zero: int, offload: bool = False) -> DataParallel:
        """The data-parallel strategy of a layout with ``dp`` replicas and ZeRO ``zero``."""
        return _data(self, dp, zero, offload)


@lru_cache(maxsize=1024)
def _data(space: Space, dp: int, zero: int, offload: bool = False) -> DataParallel:
    if offload:
        return DataParallel(zero=zero, offload=True)
    if dp == 1:
        return DataParallel(zero=zero)
    ps = space.dp_comm == "parameter_server"
    return DataParallel(zero=zero, comm=space.dp_comm,
                        ps_shards=min(max(space.ps_shards, 1), dp) if ps else 0,
                        compression=space.compression,
                        powersgd_rank=space.powersgd_rank if space.compression == "powersgd"
                        else 0, compression_ratio=space.compression_ratio, bits=space.bits,
                        staleness=space.staleness, local_sgd_period=space.local_sgd_period,
                        outer_optimizer=space.outer_optimizer)


@lru_cache(maxsize=4096)
def dims_of(dp: int, tp: int, pp: int, cp: int = 1, ep: int = 1) -> ParallelDims:
    return ParallelDims(dp=dp, tp=tp, pp=pp, cp=cp, ep=ep)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def tp_sizes(spec, num_devices: int, devices_per_node: int, space: Space) -> list[int]:
    """tp values that divide the device count, pass the family's divisibility rules, and fit in
    a node unless allowed."""
    family = families.of(spec)
    out = []
    for t in divisors(num_devices):
        if space.tp is not None and t != space.tp:
            continue
        if t > 1:
            if family.tp_problem(spec, t, False):
                continue
            if t > devices_per_node and not space.tp_across_nodes and space.tp is None:
                continue
        out.append(t)
    return out


def cp_sizes(spec, rest: int, space: Space) -> list[int]:
    """cp values dividing ``rest`` (the devices left after tp) that the family can split and
    the space searches (module docstring)."""
    family = families.of(spec)
    if space.cp is not None:
        return [space.cp] if rest % space.cp == 0 and not family.cp_problem(spec, space.cp) \
            else []
    if spec.seq_len < space.cp_min_seq_len or not family.context_parallel:
        return [1]
    return [c for c in divisors(rest) if not family.cp_problem(spec, c)]


def ep_sizes(spec, replicas: int, space: Space) -> list[int]:
    """ep values: divisors of the dp * cp ``replicas`` the family can shard experts over."""
    family = families.of(spec)
    if space.ep is not None:
        return [space.ep] if replicas % space.ep == 0 and not family.ep_problem(spec, space.ep) \
            else []
    if not family.has_experts:
        return [1]
    return [e for e in divisors(replicas) if not family.ep_problem(spec, e)]


def schedule_options(pp: int, m: int, num_blocks: int, space: Space) -> list[tuple[str, int]]:
    """(schedule, virtual stages) pairs valid for pp stages and m micro-batches."""
    if pp == 1:
        # One stage: every schedule is plain gradient accumulation; 1F1B keeps one
        # micro-batch of activations alive, so it stands for all of them.
        kind = schedules.get(space.schedule or "1f1b")
        v = space.virtual_stages or kind.min_virtual_stages
        return [(kind.name, v)] if v <= num_blocks and not kind.check(pp, v, m) else []
    out = []
    for kind in schedules.SCHEDULES.values():
        if (space.schedule is not None and kind.name != space.schedule) or (
                space.schedule is None and not kind.searched):
            continue
        for v in kind.search_virtual_stages(space.max_virtual_stages):
            if space.virtual_stages is not None and v != space.virtual_stages:
                continue
            if pp * v <= num_blocks and not kind.check(pp, v, m) and \
                    not rules.too_few_microbatches(kind, pp, m):
                out.append((kind.name, v))
    return out


def leaves(spec, dp, tp, pp, b, m, name, v, space: Space, res=None, cp: int = 1, ep: int = 1):
    """The (zero, recompute, sequence parallel) choices of one (dp, tp, pp, cp, ep, b,
    schedule, v), without those the executor refuses (counted in ``res.refused``)."""
    family = families.of(spec)
    replicas = dp * cp
    zeros = [space.zero] if space.zero is not None else ([0, 1, 2, 3] if replicas > 1 else [0])
    if space.offload:       # only offloaded layouts: FSDP2's policy needs ZeRO-3
        zeros = [z for z in zeros if z == 3]
    rcs = [space.recompute] if space.recompute is not None else list(RECOMPUTE_ORDER)
    if not family.selective_recompute:
        rcs = [r for r in rcs if r != "selective" or space.recompute == "selective"]
    if space.sequence_parallel is not None:
        sps = [space.sequence_parallel] if (tp > 1 or not space.sequence_parallel) else []
    else:
        sps = [False] + ([True] if tp > 1 and not family.tp_problem(spec, tp, True) else [])
    if cp > 1:          # the executor refuses both with a ring (planner.rules)
        dropped = len(rcs) * len(sps)
        rcs = [r for r in rcs if r != "selective"]
        sps = [x for x in sps if not x]
        if res is not None:
            res.refused += len(zeros) * (dropped - len(rcs) * len(sps))
    for zero in zeros:
        if _refused(spec, space, dp, tp, pp, name, v, zero, cp, ep, bool(space.offload)):
            if res is not None:
                res.refused += len(rcs) * len(sps)
            continue
        for rc in rcs:
            for sp in sps:
                yield zero, rc, sp


@lru_cache(maxsize=4096)
def _refused(spec, space: Space, dp, tp, pp, name, v, zero, cp=1, ep=1, offload=False) -> str:
    """``rules.model_refuses`` of a layout of this shape (it does not depend on the batch
    split: m is checked by the schedule, so one valid m stands for all)."""
    try:
        probe = Layout(dims=dims_of(dp, tp, pp, cp, ep), num_microbatches=pp,
                       data=space.data(dp, zero, offload), pipeline=_pipeline(name, v))
    except PlannerError as err:     # offload without FSDP, ...
        return str(err)
    return rules.model_refuses(spec, probe) or (
        rules.checkpoint_refuses(probe) if space.checkpointed else "")


@lru_cache(maxsize=256)
def _pipeline(name: str, v: int):
    from planner.specs import Pipeline
    return Pipeline(schedule=name, virtual_stages=v)


def make_layout(key, space: Space) -> Layout:
    """The Layout of a search key (dp, tp, pp, b, m, schedule, v, zero, recompute, sp, cp, ep,
    offload)."""
    dp, tp, pp, b, m, name, v, zero, rc, sp, cp, ep, off = key
    from planner.specs import TensorParallel
    return Layout(dims=dims_of(dp, tp, pp, cp, ep), microbatch_size=b, num_microbatches=m,
                  data=space.data(dp, zero, off), pipeline=_pipeline(name, v),
                  tensor=TensorParallel(sequence_parallel=sp), recompute=rc)


def check_space(space: Space, num_devices: int, global_batch: int) -> None:
    """Fixed values that cannot work whatever the rest is: one-line errors."""
    prod = 1
    for x in (space.dp, space.tp, space.pp, space.cp):
        if x is not None:
            prod *= x
    if num_devices % prod:
        raise PlannerError(f"--dp/--tp/--pp/--cp fix {prod} devices per replica grid, which "
                           f"does not divide --gpus {num_devices}")
    if space.offload and space.zero is not None and space.zero != 3:
        raise PlannerError(f"--offload is FSDP2's CPUOffloadPolicy: needs --zero 3, got "
                           f"--zero {space.zero}")
    if space.dp is not None and global_batch % space.dp:
        raise PlannerError(f"--global-batch {global_batch} does not divide over --dp "
                           f"{space.dp} ({global_batch} % {space.dp} = {global_batch % space.dp})")
