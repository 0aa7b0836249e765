"""A plan made from the inputs and a prediction, and how it is shown (text or JSON).

Shared by ``planner plan``, ``planner simulate`` and ``planner validate``, so that one layout
is written and printed the same way whichever command produced it.
"""
from __future__ import annotations

import datetime
import os
import sys

from planner.explain import format_duration
from planner.specs import Plan


def run_spec(inp):
    """The simulator's view of the inputs: with a profile, its measured optimizer step and its
    achieved FLOP rate (FLOPs over time of the profiled blocks) for compute we only know in
    FLOPs (compression); without, the device's peak times its efficiency."""
    from planner.sim import RunSpec
    rate, opt = 0.0, 0.0
    if inp.profile is not None:
        flops = sum(b.forward_flops for b in inp.profile.blocks)
        secs = sum(b.forward_time_s for b in inp.profile.blocks)
        rate = flops / secs if secs > 0 else 0.0
        opt = inp.profile.optimizer_step_time_s
    return RunSpec(inp.model, inp.cluster, inp.dtype, inp.optimizer,
                   compute_source="profile" if inp.profile else "analytic",
                   optimizer_step_s=opt, flop_rate=rate, straggler_cv=inp.straggler_cv)


def default_out(inp) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-._" else "_" for ch in inp.model.name)
    return os.path.join("plans", f"{safe}-{inp.cluster.name}-g{inp.num_devices}-"
                                 f"b{inp.global_batch_size}.json")


def make_plan(inp, layout, prediction, candidates=(), explanation: str = "") -> Plan:
    return Plan(model=inp.model, model_fingerprint=inp.model.fingerprint(), cluster=inp.cluster,
                world_size=inp.num_devices, global_batch_size=inp.global_batch_size,
                dtype=inp.dtype, optimizer=inp.optimizer, learning_rate=inp.learning_rate,
                layout=layout, prediction=prediction, profile_path=inp.profile_path,
                seed=inp.seed, candidates=tuple(candidates), explanation=explanation,
                created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"))


def param_counts(plan: Plan) -> tuple[int, int] | None:
    """(total, active per token) parameters of the plan's model (``Family.param_counts``), or
    from its profile's blocks when the family cannot say (a custom model)."""
    from planner import families
    counts = families.of(plan.model).param_counts(plan.model)
    if counts is None and plan.profile_path and os.path.exists(plan.profile_path):
        from planner.specs import ModelProfile
        n = ModelProfile.load(plan.profile_path).param_count
        counts = (n, n)
    return counts


def format_params(counts) -> str:
    if counts is None:
        return "unknown (a custom model: profile it)"
    total, active = counts

    def short(n):
        return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"
    text = f"{short(total)} ({total:,})"
    return text if active == total else text + f", {short(active)} active per token"


def summary(plan: Plan, path: str) -> dict:
    """What `--format json` prints for one plan (plan and simulate alike)."""
    p = plan.prediction
    counts = param_counts(plan)
    return {"plan_path": path, "parameters": counts[0] if counts else None,
            "active_parameters": counts[1] if counts else None,
            "seq_len": plan.model.seq_len, "step_time_s": p.step_time_s,
            "tflops_per_device": p.tflops_per_device, "mfu": p.mfu,
            "peak_memory_bytes": p.peak_memory_bytes,
            "memory_per_rank_bytes": [r.total_bytes for r in p.memory],
            "memory": [r.to_dict() for r in p.memory], "fits": p.fits,
            "device_memory_bytes": p.device_memory_bytes,
            "bubble_fraction": p.bubble_fraction, "compute_source": p.compute_source,
            "layout": plan.layout.to_dict(), "breakdown_s": p.breakdown_s,
            "collectives": [c.to_dict() for c in p.collectives]}


def print_text(plan: Plan, path: str, out=sys.stdout) -> None:
    p = plan.prediction
    gib = 2**30
    print(f"model {plan.model.name} on {plan.cluster.name} x{plan.world_size}, global batch "
          f"{plan.global_batch_size}, {plan.dtype}, {plan.optimizer} "
          f"(compute from {p.compute_source})", file=out)
    print(f"parameters  {format_params(param_counts(plan))}; {plan.model.family}, "
          f"{plan.model.num_layers} layers, seq_len {plan.model.seq_len}", file=out)
    print(f"layout      {plan.layout.describe()}", file=out)
    print(f"step time   {format_duration(p.step_time_s)}   ("
          + ", ".join(f"{k} {format_duration(v)}" for k, v in p.breakdown_s.items() if v >= 5e-5) + ")",
          file=out)
    print(f"memory      {p.peak_memory_bytes / gib:.2f} GiB peak per rank of "
          f"{p.device_memory_bytes / gib:.1f} GiB: {'fits' if p.fits else 'DOES NOT FIT'}",
          file=out)
    if p.memory:
        top = max(p.memory, key=lambda r: r.total_bytes)
        per_stage = ", ".join(f"{r.total_bytes / gib:.1f}" for r in p.memory)
        print(f"            peak rank: parameters {top.parameters_bytes / gib:.2f}, gradients "
              f"{top.gradients_bytes / gib:.2f}, optimizer {top.optimizer_bytes / gib:.2f}, "
              f"activations {top.activations_bytes / gib:.2f}, buffers "
              f"{top.buffers_bytes / gib:.2f} GiB"
              + (f"; per pipeline stage {per_stage} GiB" if len(p.memory) > 1 else ""),
              file=out)
    print(f"throughput  {p.tflops_per_device:.3f} TFLOP/s per device"
          + (f", MFU {p.mfu:.1%}" if p.mfu else " (no peak known for this device: no MFU)"),
          file=out)
    print(f"plan        {path}", file=out)
