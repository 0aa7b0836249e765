"""Extrapolate measured block profiles to another micro-batch size or a tensor-parallel shard.

Pure functions of profiles (no torch), so the planner can use them without measuring again.

Time model, per block, for forward and backward separately:

    time = overhead_s + work / throughput

``work`` is the block's forward FLOPs (backward work is proportional to it, so the same form
holds with its own throughput); a block that does no counted arithmetic (an embedding lookup)
is memory-bound and its work is the bytes it writes and keeps (output + saved activations).
From two or more measured micro-batch sizes the line through the points is fitted (least
squares; with two points, the line through both): the intercept is the fixed per-call overhead
(dispatch, kernel launches, small ops that do not grow with the batch), the slope the measured
efficiency. Noise can make the intercept negative (then overhead 0 and the slope is fitted
through the origin). A slope <= 0 says time does not measurably grow with work over the measured
range (a block that is all overhead, e.g. a small embedding): the time is then the constant mean
(this under-predicts far outside the range, where work takes over: profile nearer the target).
From one measurement the model is proportional: the measured throughput holds at every size.
In a whole model, blocks of identical shape (same kind, name, FLOPs, parameters and bytes: the
N layers of a GPT) share one fit through all their points, since their measured times differ
only by noise; with N layers that is N times the data behind each slope.

Scaling of work and bytes (exact for the zoo's blocks: every operation is per sample):

- micro-batch b -> b': FLOPs, output bytes and saved bytes times b'/b; parameters unchanged.
- tensor parallel t (Megatron, Shoeybi et al. 2019, arXiv 1909.08053): in a "block" layer q/k/v
  and fc are column-parallel and the out projections row-parallel, so FLOPs (attention heads
  too) and parameters are divided by t. The LayerNorms and the row-parallel biases, 6h of the
  12h^2 + 13h parameters, are replicated but counted as sharded (under 0.4% at h >= 128).
  Saved activations: the 4 tensors of the block's output shape kept for backward (both
  LayerNorm inputs and outputs, the latter being the inputs of the column-parallel q/k/v and fc)
  stay whole on every rank, the rest is divided by t. This is Korthikanti et al. 2022
  (arXiv 2205.05198) Table 2, "10 + 24/t" bytes per s*b*h at 2 bytes per element, without its
  dropout masks (the zoo has no dropout). The output is whole again after the row-parallel
  all-reduce, so output bytes do not change. Embedding and head are kept whole (replicated) on
  every rank; vocabulary-parallel variants are not modelled. The all-reduces themselves are
  communication: planner/cost/tp.py adds them.
- the shard's time is overhead + (work / t) / throughput: the overhead does not shrink, which is
  why thin shards run at lower efficiency.
"""
from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple, Sequence

from planner import families
from planner.errors import PlannerError
from planner.specs import BlockProfile, ModelProfile

REPLICATED_BOUNDARY_TENSORS = 4   # LayerNorm inputs and outputs kept whole under TP (see above)


class TimeFit(NamedTuple):
    overhead_s: float
    seconds_per_work: float
    method: str                    # "line", "through-origin", "constant" or "proportional"

    def time_s(self, work: float) -> float:
        return self.overhead_s + work * self.seconds_per_work


def fit_time(points: Sequence[tuple[float, float]]) -> TimeFit:
    """Fit time = overhead + work * seconds_per_work to ``(work, time_s)`` points."""
    points = [(w, t) for w, t in points if w > 0]
    if not points:
        raise PlannerError("cannot fit a block time without a measurement of positive work")
    works = {w for w, _ in points}
    if len(works) >= 2:
        n = len(points)
        mw = sum(w for w, _ in points) / n
        mt = sum(t for _, t in points) / n
        slope = (sum((w - mw) * (t - mt) for w, t in points)
                 / sum((w - mw) ** 2 for w, _ in points))
        intercept = mt - slope * mw
        if slope > 0 and intercept >= 0:
            return TimeFit(intercept, slope, "line")
        if slope > 0:
            through = sum(w * t for w, t in points) / sum(w * w for w, _ in points)
            return TimeFit(0.0, through, "through-origin")
        return TimeFit(mt, 0.0, "constant")
    total_w = sum(w for w, _ in points)
    return TimeFit(0.0, sum(t for _, t in points) / total_w, "proportional")


def block_work(block: BlockProfile) -> float:
    """FLOPs, or bytes written and kept for a block without counted arithmetic."""
    if block.forward_flops > 0:
        return block.forward_flops
    return float(block.output_bytes + block.saved_activation_bytes)


def scale_block_size(block: BlockProfile, batch_ratio: float, tp: int = 1) -> BlockProfile:
    """FLOPs and bytes of ``block`` at ``batch_ratio`` times its micro-batch, on a TP shard of
    ``tp`` ranks (see the module docstring); times are left as measured."""
    if tp < 1:
        raise PlannerError(f"tp must be >= 1, got {tp}")
    t = tp if block.kind == "block" else 1
    saved = block.saved_activation_bytes * batch_ratio
    out = block.output_bytes * batch_ratio
    if t > 1:
        whole = min(saved, REPLICATED_BOUNDARY_TENSORS * out)
        saved = whole + (saved - whole) / t
    return replace(block, forward_flops=block.forward_flops * batch_ratio / t,
                   param_count=round(block.param_count / t),
                   param_bytes=round(block.param_bytes / t),
                   saved_activation_bytes=round(saved), output_bytes=round(out))


def extrapolate_block(measured: Sequence[tuple[int, BlockProfile]], microbatch_size: int,
                      tp: int = 1) -> BlockProfile:
    """One block at ``microbatch_size`` (and TP ``tp``) from ``(micro-batch, profile)`` pairs
    of the same block (or of identical blocks) measured at different micro-batch sizes."""
    ref_mb, ref = max(measured, key=lambda m: m[0])
    target = scale_block_size(ref, microbatch_size / ref_mb, tp)
    work = block_work(target)
    times = {}
    for phase in ("forward", "backward"):
        points = [(block_work(b), getattr(b, f"{phase}_time_s")) for _, b in measured]
        time_s = fit_time(points).time_s(work)
        spread = getattr(ref, f"{phase}_time_spread_s")
        measured_s = getattr(ref, f"{phase}_time_s")
        times[f"{phase}_time_s"] = time_s
        # Keep the relative spread of the reference measurement.
        times[f"{phase}_time_spread_s"] = spread * time_s / measured_s if measured_s else 0.0
    return replace(target, **times)


def extrapolate_profile(profiles: Sequence[ModelProfile], microbatch_size: int,
                        tp: int = 1) -> ModelProfile:
    """A whole model at ``microbatch_size`` / ``tp`` from profiles of it at other micro-batch
    sizes. Step time = blocks (forward + backward) + optimizer step, the latter scaled by the
    share of parameters a rank keeps."""
    ref = _check_same_model(profiles)
    _check_tp(ref, tp)
    by_mb = sorted(profiles, key=lambda p: p.microbatch_size)
    blocks = []
    for i, b in enumerate(ref.blocks):
        twins = [j for j, c in enumerate(ref.blocks) if _shape(c) == _shape(b)]
        points = [(p.microbatch_size, p.blocks[j]) for p in by_mb for j in twins]
        blocks.append(replace(extrapolate_block(points, microbatch_size, tp), index=i))
    blocks = tuple(blocks)
    optimizer_s = ref.optimizer_step_time_s * (sum(b.param_count for b in blocks)
                                               / max(ref.param_count, 1))
    step_s = sum(b.forward_time_s + b.backward_time_s for b in blocks) + optimizer_s
    mbs = ",".join(str(p.microbatch_size) for p in by_mb)
    return replace(ref, microbatch_size=microbatch_size, blocks=blocks, step_time_s=step_s,
                   step_time_spread_s=ref.step_time_spread_s * step_s / ref.step_time_s,
                   optimizer_step_time_s=optimizer_s, step_peak_memory_bytes=0,
                   source=f"extrapolated from micro-batch {mbs} to {microbatch_size}, tp={tp}: "
                          "time = overhead + work / throughput")


def _shape(b: BlockProfile):
    return (b.kind, b.name, b.forward_flops, b.param_count, b.output_bytes,
            b.saved_activation_bytes)


def _check_same_model(profiles: Sequence[ModelProfile]) -> ModelProfile:
    if not profiles:
        raise PlannerError("extrapolation needs at least one measured profile")
    ref = max(profiles, key=lambda p: p.microbatch_size)
    for p in profiles:
        same = (p.model_fingerprint, p.device, p.device_name, p.dtype, p.num_threads,
                len(p.blocks))
        want = (ref.model_fingerprint, ref.device, ref.device_name, ref.dtype, ref.num_threads,
                len(ref.blocks))
        if same != want:
            raise PlannerError(f"profiles differ in (model, device, device_name, dtype, threads, "
                               f"blocks): {same} vs {want}; extrapolate one model on one device")
    if len({p.microbatch_size for p in profiles}) != len(profiles):
        raise PlannerError("profiles repeat a micro-batch size: give one profile per size")
    return ref


def _check_tp(profile: ModelProfile, tp: int) -> None:
    m = profile.model
    if tp < 1:
        raise PlannerError(f"tp must be >= 1, got {tp}")
    problem = families.of(m).tp_problem(m, tp, False)
    if problem:
        raise PlannerError(f"{problem} ({m.name})")
