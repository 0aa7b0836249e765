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
                   optimizer_step_s=opt, flop_rate=rate, implementation=inp.implementation,
                   partition=inp.partition, straggler_cv=inp.straggler_cv,
                   moe_load_factor=inp.moe_load_factor)


def default_out(inp, devices: str = "", suffix: str = "") -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-._" else "_" for ch in inp.model.name)
    return os.path.join("plans", f"{safe}-{inp.cluster.name}-g{devices or inp.num_devices}-"
                                 f"b{inp.global_batch_size}{suffix}.json")


def make_plan(inp, layout, prediction, candidates=(), explanation: str = "",
              search_counts: dict | None = None) -> Plan:
    band, band_source = inp.band
    return Plan(model=inp.model, model_fingerprint=inp.model.fingerprint(), cluster=inp.cluster,
                world_size=inp.num_devices, global_batch_size=inp.global_batch_size,
                dtype=inp.dtype, optimizer=inp.optimizer, learning_rate=inp.learning_rate,
                layout=layout, prediction=prediction, profile_path=inp.profile_path,
                seed=inp.seed, candidates=tuple(candidates), explanation=explanation,
                created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"), implementation=inp.implementation,
                partition=inp.partition,
                search_counts=dict(search_counts or {}), uncertainty=band,
                uncertainty_source=band_source,
                other_profile_paths=tuple(inp.other_profile_paths))


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
            "implementation": plan.implementation, "partition": plan.partition,
            "collectives": [c.to_dict() for c in p.collectives]}


def throughput(plan: Plan) -> tuple[float, str]:
    """(items per second, unit) of the predicted step: tokens for models with a sequence,
    samples otherwise (``Family.has_sequence``)."""
    from planner import families
    step = plan.prediction.step_time_s
    if families.of(plan.model).has_sequence:
        items, unit = plan.global_batch_size * plan.model.seq_len, "tokens/s"
    else:
        items, unit = plan.global_batch_size, "samples/s"
    return (items / step if step > 0 else 0.0), unit


def memory_table(plan: Plan, max_rows: int = 16) -> list[str]:
    """Per-rank memory by kind (GiB), one row per rank of the simulated pipeline, like
    ``accelerate estimate-memory``'s table: what each rank holds at its peak."""
    p, gib = plan.prediction, 2**30
    if not p.memory:
        return []
    peak_rank = max(p.memory, key=lambda r: r.total_bytes).rank
    lines = [f"{'rank':>6} {'stage':>5} {'parameters':>10} {'gradients':>9} {'optimizer':>9} "
             f"{'activations':>11} {'buffers':>8} {'total':>8}  (GiB)"]
    rows = sorted(p.memory, key=lambda r: r.rank)
    for r in rows[:max_rows]:
        mark = "  <- peak" if r.rank == peak_rank else ""
        lines.append(f"{r.rank:>6} {r.stage:>5} {r.parameters_bytes / gib:>10.2f} "
                     f"{r.gradients_bytes / gib:>9.2f} {r.optimizer_bytes / gib:>9.2f} "
                     f"{r.activations_bytes / gib:>11.2f} {r.buffers_bytes / gib:>8.2f} "
                     f"{r.total_bytes / gib:>8.2f}{mark}")
    if len(rows) > max_rows:
        lines.append(f"{'':>6} ... {len(rows) - max_rows} more ranks (--format json lists all)")
    return lines


def print_text(plan: Plan, path: str, out=None) -> None:
    out = out or sys.stdout   # looked up per call: stdout may be replaced
    p = plan.prediction
    gib = 2**30
    costed = "" if plan.implementation == "executor" else f", costed for {plan.implementation}"
    print(f"model {plan.model.name} on {plan.cluster.name} x{plan.world_size}, global batch "
          f"{plan.global_batch_size}, {plan.dtype}, {plan.optimizer} "
          f"(compute from {p.compute_source}{costed})", file=out)
    print(f"parameters  {format_params(param_counts(plan))}; {plan.model.family}, "
          f"{plan.model.num_layers} layers, seq_len {plan.model.seq_len}", file=out)
    print(f"layout      {plan.layout.describe()}", file=out)
    band = (f" (+-{plan.uncertainty:.1%}: {plan.uncertainty_source})"
            if plan.uncertainty else "")
    print(f"step time   {format_duration(p.step_time_s)}{band}", file=out)
    print("            " + ", ".join(f"{k} {format_duration(v)}"
                                     for k, v in p.breakdown_s.items() if v >= 5e-5), file=out)
    print(f"memory      {p.peak_memory_bytes / gib:.2f} GiB peak per rank of "
          f"{p.device_memory_bytes / gib:.1f} GiB usable: {'fits' if p.fits else 'DOES NOT FIT'}",
          file=out)
    for line in memory_table(plan):
        print("            " + line, file=out)
    rate, unit = throughput(plan)
    print(f"throughput  {rate:,.0f} {unit}, {p.tflops_per_device:.3f} TFLOP/s per device"
          + (f", MFU {p.mfu:.1%}" if p.mfu else " (no peak FLOP/s known for this device: no "
                                                 "MFU)"), file=out)
    print(f"plan        {path}", file=out)
