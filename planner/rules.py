"""What a layout may be and what the executor runs: one copy of every rule, torch-free.

The planner (``planner.sim``, ``planner.search``) and the executor (``executor.parallel``) both
import this module, so the search never proposes what the executor refuses and the simulator
models what the executor does:

- ``check_layout``: divisibility (the model family's tensor-parallel rules), chunks against
  blocks, and the combinations the executor refuses (``executor_refuses``);
- ``ddp_runs``: whether gradients are reduced by DDP during backward, or all-reduced after it;
- ``reduction_overlaps_backward``: whether zero 0/1 gradient reductions run during backward;
- ``chunk_starts``: where each pipeline chunk starts when the layout does not say;
- ``checkpoint_refuses`` / ``resume_inexact``: what ``--checkpoint-dir`` cannot save, and what a
  resumed run would not continue exactly (elastic plan sets need neither);
- DDP's bucket caps, which both the simulator and the executor's manual all-reduce use.
"""
from __future__ import annotations

from planner import families
from planner.errors import PlannerError
from planner.specs.layout import HOOK_COMPRESSION

# DDP's bucket caps (Li et al., VLDB 2020, sec. 3.2): the first bucket 1 MiB
# (``dist._DEFAULT_FIRST_BUCKET_BYTES``), the rest ``bucket_cap_mb`` = 25 MiB.
FIRST_BUCKET_BYTES = 1 * 2**20
BUCKET_CAP_BYTES = 25 * 2**20


def ddp_possible(dims, schedule) -> bool:
    """Whether the executor can use DDP (hooks that reduce during backward): it needs plain
    parameters (tp 1: DDP's constructor rejects DTensors) and gradients accumulated by autograd
    (not a split weight-gradient pass, which DDP's hooks never see); otherwise it all-reduces
    after the backward pass in DDP-sized buckets."""
    return dims.tp == 1 and not (dims.pp > 1 and schedule.split_backward)


def ddp_runs(layout) -> bool:
    """``ddp_possible`` for a layout."""
    return ddp_possible(layout.dims, layout.pipeline.kind)


def fsdp_runs(layout) -> bool:
    """Whether the executor shards with FSDP2 (``executor.parallel.dp``): ZeRO 2/3 over
    dp * cp > 1 replicas. FSDP then sums tp-partial gradients itself (``partial_grads_by``)."""
    return layout.dims.replicas > 1 and layout.data.zero >= 2


def partial_grads_by(layout) -> str:
    """Who sums the gradients that are partial over tp (``Family.partial_grad_params``):
    "fsdp" (``fsdp_runs``: one parameter at a time at each reduce-scatter), "zero1" (the
    distributed optimizer, after its reduce-scatter: the pieces each dp rank owns, one
    all-reduce per step, about 1/dp of the bytes; ``executor.parallel.zero1``) or "step" (one
    all-reduce of all of them before the data-parallel reduction)."""
    if fsdp_runs(layout):
        return "fsdp"
    if layout.dims.replicas > 1 and layout.data.zero == 1:
        return "zero1"
    return "step"


def reduction_overlaps(dims, schedule, zero: int) -> bool:
    """Whether the data-parallel gradient reductions of zero 0/1 start during the backward
    pass, each bucket when its last gradient is ready: DDP's hooks for zero 0
    (``ddp_possible``); for zero 1 the distributed optimizer's post-accumulate-grad hooks, which
    hold DTensors (any tp) but, like DDP's, never see the gradients of a split weight-gradient
    pass. Otherwise the executor reduces after the backward pass."""
    if zero == 1:
        return not (dims.pp > 1 and schedule.split_backward)
    return ddp_possible(dims, schedule)


def reduction_overlaps_backward(layout) -> bool:
    """``reduction_overlaps`` for a layout."""
    return reduction_overlaps(layout.dims, layout.pipeline.kind, layout.data.zero)


def too_few_microbatches(schedule, pp: int, m: int) -> str:
    """Why the executor cannot run ``m`` micro-batches (a replica's) through ``pp`` stages of
    ``schedule`` ("" if it can): torch's Schedule1F1B refuses fewer micro-batches than stages.
    Not a rule of the layout: the simulator runs them, as Megatron-LM's 1F1B does (the
    calibration simulates such measured runs); the search never proposes them
    (``planner.search.space``) and the executor refuses them (``microbatch_problem``)."""
    if schedule.microbatches_at_least_pp and pp > 1 and m < pp:
        return (f"{schedule.name} with {m} micro-batch(es) on a replica and pp {pp}: torch's "
                f"{schedule.torch_class} needs at least pp micro-batches")
    return ""


def microbatch_problem(layout) -> str:
    """``too_few_microbatches`` for the replica with the fewest micro-batches."""
    least = min(layout.replica_microbatches or (layout.num_microbatches,))
    return too_few_microbatches(layout.pipeline.kind, layout.pp, least)


def executor_refuses(layout) -> str:
    """Why the executor would refuse this layout ("" if it runs it)."""
    d, pl = layout.data, layout.pipeline
    dp = layout.dims.replicas > 1
    problem = _cp_ep_refusal(layout)
    if problem:
        return problem
    if d.parameter_server and (d.zero or d.compression != "none"):
        return (f"parameter_server keeps whole gradients and the optimizer on its servers: needs "
                f"zero 0 and compression none, got zero {d.zero}, compression {d.compression}")
    if d.compression in HOOK_COMPRESSION and d.zero >= 2:
        return (f"compression {d.compression} is a DDP hook; FSDP (zero {d.zero}) has none: "
                f"needs zero 0 or 1")
    if d.compression == "powersgd" and d.zero == 1:
        return ("compression powersgd is a DDP all-reduce hook; zero 1 (the distributed "
                "optimizer) reduce-scatters: use fp16/bf16 with zero 1, or powersgd with zero 0")
    if d.compression in HOOK_COMPRESSION and d.zero == 0 and dp and not ddp_runs(layout):
        return (f"compression {d.compression} is a DDP hook, and DDP cannot run with tp > 1 "
                f"(DTensor parameters) or under {pl.schedule}'s split weight-gradient pass "
                f"(tp {layout.tp}, schedule {pl.schedule})")
    problem = _refuses_new_dp(layout) if dp else ""
    if problem:
        return problem
    if d.zero >= 2 and dp and layout.pp > 1 and pl.kind.split_backward:
        return (f"zero {d.zero} (FSDP2) under schedule {pl.schedule} trains wrong parameters in "
                f"torch 2.13 (FSDP reduce-scatters before the weight-gradient pass has run): use "
                f"zero 0 or 1 with {pl.schedule}, or another schedule")
    if layout.replica_microbatches and dp and (d.zero == 3 or (d.zero == 2 and layout.pp == 1)):
        return (f"uneven replica_microbatches with zero {d.zero}"
                f"{'' if layout.pp > 1 else ' without pipelining'}: FSDP gathers (and without "
                "pipelining reduce-scatters) once per micro-batch, so replicas running "
                "different numbers of micro-batches would issue different collectives: use "
                "zero 0 or 1, or zero 2 with pp > 1")
    if layout.replica_microbatches and dp and (d.exchange or d.staleness or d.local_sgd):
        return (f"uneven replica_microbatches with {' '.join(d.describe_comm())}: these "
                "schemes are defined (and tested) for replicas of equal shares; use even "
                "shares or a synchronous exchange")
    return ""


def checkpoint_refuses(layout) -> str:
    """Why the executor's ``--checkpoint-dir`` cannot save this layout ("" if it can)."""
    d = layout.data
    if layout.dp > 1 and (d.exchange or d.staleness or d.local_sgd):
        return (f"{' '.join(d.describe_comm())} keeps state a checkpoint does not hold "
                "(error-feedback residuals, parameter versions in flight, replicas between "
                "synchronisations): checkpoint a synchronous, uncompressed or hook-compressed "
                "layout")
    if layout.ep > 1:
        return (f"ep({layout.ep}) keeps expert shards as plain tensors under the unsplit model's "
                "names on every rank, which DCP would take for replicas: checkpoint layouts "
                "with ep 1")
    if layout.data.zero == 1 and layout.dims.replicas > 1:
        return ("zero 1 (the distributed optimizer) keeps optimizer state for views of "
                "parameter shards, which DCP's get_state_dict cannot name; checkpoint zero 0, 2 "
                "or 3 layouts")
    return ""


def resume_inexact(layout) -> str:
    """Why a run of this layout resumed from a checkpoint would not continue exactly ("")."""
    d = layout.data
    if layout.dp > 1 and d.compression == "powersgd":
        return ("PowerSGD's error-feedback state is not checkpointed: a resumed run would not "
                "continue exactly; use compression none, fp16 or bf16")
    return ""


def _cp_ep_refusal(layout) -> str:
    """What context and expert parallelism do not compose with in the executor."""
    d, cp, ep = layout.data, layout.cp, layout.ep
    if cp == 1 and ep == 1:
        return ""
    name = f"cp({cp})" if cp > 1 else f"ep({ep})"
    if d.parameter_server or d.compression != "none":
        return (f"{name}: gradients are reduced over dp * cp ranks (experts over edp) by DDP or "
                f"FSDP; the parameter server and compression hooks are not wired for that: use "
                f"dp_comm all_reduce and compression none")
    if d.local_sgd:
        return (f"{name} with local_sgd_period {d.local_sgd_period}: local SGD averages whole "
                f"replicas over the dp group, not wired for dp * cp ranks or for expert shards "
                f"(edp): use local_sgd_period 0")
    if ep > 1 and d.zero == 1:
        return (f"ep({ep}) with zero 1: the distributed optimizer shards every parameter over "
                f"the dp * cp ranks, while expert shards are reduced over the edp ranks holding "
                f"the same experts: use zero 0, 2 or 3")
    if layout.replica_microbatches:
        return (f"{name} with uneven replica_microbatches: "
                + ("ep's all-to-alls pair ranks of different replicas, which would run different "
                   "numbers of micro-batches" if ep > 1 else
                   "the mixed-cluster simulation prices replicas over dp only")
                + "; use even shares (replica_microbatches empty)")
    if cp > 1 and layout.recompute == "selective":
        return (f"cp({cp}) with selective recompute: the attention core it reruns is the ring "
                f"of K/V transfers; use recompute none or full")
    if cp > 1 and layout.tensor.sequence_parallel:
        return f"cp({cp}) with sequence_parallel is not supported by the executor: use one"
    return ""


def model_refuses(spec, layout) -> str:
    """Why the executor would refuse this layout for this model ("" if it runs it): the layout
    alone (``executor_refuses``), then the family (e.g. a tied head across pipeline stages)."""
    return executor_refuses(layout) or families.of(spec).layout_problem(spec, layout)


def _refuses_new_dp(layout) -> str:
    """The exchanges after backward (topk, randk, qsgd, sign), the stale parameter server and
    local SGD, with dp > 1."""
    d = layout.data
    if d.exchange and d.zero:
        return (f"compression {d.compression} exchanges whole gradients after the backward pass "
                f"and the optimizer then updates whole parameters: needs zero 0, got zero "
                f"{d.zero}")
    if d.exchange and layout.tp > 1:
        return (f"compression {d.compression} with tp {layout.tp}: tp peers compress different "
                f"flattened gradients, so the parameters they replicate (layer norms) would get "
                f"different updates: needs tp 1")
    if d.staleness and (layout.tp > 1 or layout.pp > 1):
        return (f"staleness {d.staleness} (an asynchronous parameter server) runs whole "
                f"replicas: needs tp 1 and pp 1, got tp {layout.tp}, pp {layout.pp}")
    if d.local_sgd and (d.zero or d.compression != "none" or d.parameter_server):
        return (f"local_sgd_period {d.local_sgd_period} trains each replica with its own whole "
                f"optimizer and averages parameters by all-reduce: needs zero 0, compression "
                f"none and dp_comm all_reduce, got zero {d.zero}, compression {d.compression}, "
                f"dp_comm {d.comm}")
    if d.local_sgd and layout.tp > 1:
        return (f"local_sgd_period {d.local_sgd_period} with tp {layout.tp}: not run (tested "
                f"with dp and pp only): needs tp 1")
    return ""


def layout_problem(spec, layout, num_blocks: int | None = None) -> str:
    """Why ``layout`` cannot run ``spec`` ("" if it can)."""
    family = families.of(spec)
    problem = (family.tp_problem(spec, layout.tp, layout.tensor.sequence_parallel)
               or family.cp_problem(spec, layout.cp) or family.ep_problem(spec, layout.ep))
    if problem:
        return problem
    blocks = spec.num_blocks if num_blocks is None else num_blocks
    k = layout.num_chunks
    if k > blocks:
        return (f"pp({layout.pp}) * virtual_stages({layout.pipeline.virtual_stages}) = {k} "
                f"chunks > {blocks} blocks of {spec.name}")
    return model_refuses(spec, layout)


def check_layout(spec, layout, num_blocks: int | None = None, where: str = "") -> None:
    """One-line PlannerError (prefixed ``where: field 'layout': ``) unless the layout runs."""
    problem = layout_problem(spec, layout, num_blocks)
    if problem:
        raise PlannerError(f"{where}: field 'layout': {problem}" if where else problem)


def chunk_starts(layout, num_blocks: int, where: str = "") -> list[int]:
    """First block of each of the ``pp * virtual_stages`` chunks: the layout's
    ``stage_boundaries``, else an even split (earlier chunks taking the remainder)."""
    n = layout.num_chunks
    prefix = f"{where}: " if where else ""
    if n > num_blocks:
        raise PlannerError(f"{prefix}field 'layout': pp({layout.pp}) * virtual_stages("
                           f"{layout.pipeline.virtual_stages}) = {n} chunks > {num_blocks} blocks")
    starts = list(layout.pipeline.stage_boundaries)
    if starts:
        if starts[-1] >= num_blocks:
            raise PlannerError(f"{prefix}field 'layout.pipeline.stage_boundaries': {starts} "
                               f"starts a chunk at block {starts[-1]}, the model has "
                               f"{num_blocks} blocks (0..{num_blocks - 1})")
        return starts
    base, extra = divmod(num_blocks, n)
    sizes = [base + (i < extra) for i in range(n)]
    return [sum(sizes[:i]) for i in range(n)]
