"""Why the winner beats the runner-up, in one short paragraph of breakdown differences."""
from __future__ import annotations

from planner.noise import ties

from planner.specs import Layout, Prediction

LABELS = {"compute": "compute", "recompute": "recomputation",
          "tp_comm_exposed": "exposed tensor-parallel communication",
          "cp_comm_exposed": "exposed context-parallel ring transfers",
          "ep_comm_exposed": "expert-parallel all-to-alls",
          "pp_comm_exposed": "exposed pipeline transfers",
          "dp_comm_exposed": "exposed data-parallel communication",
          "bubble": "pipeline bubble", "optimizer": "optimizer step"}


def format_duration(seconds: float) -> str:
    """A duration at a readable scale: s, ms or us."""
    size = abs(seconds)
    if size >= 1:
        return f"{seconds:.2f} s"
    if size >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def layout_diff(a: Layout, b: Layout) -> str:
    """The dimensions in which two layouts differ, as "dp 16 vs 8, zero 1 vs 0"."""
    keys = ("dp", "tp", "pp", "microbatch_size", "num_microbatches", "schedule",
            "virtual_stages", "zero", "recompute", "sequence_parallel")
    fa, fb = a.flat(), b.flat()
    parts = [f"{k} {fa[k]} vs {fb[k]}" for k in keys if fa[k] != fb[k]]
    if a.replica_microbatches != b.replica_microbatches:
        parts.append(f"micro-batches per replica {a.split_text()} vs {b.split_text()}")
    for k, x, y in (("cp", a.cp, b.cp), ("ep", a.ep, b.ep),
                    ("offload", a.data.offload, b.data.offload)):
        if x != y:
            parts.append(f"{k} {x} vs {y}")
    return ", ".join(parts) or "only the stage boundaries"


def explain(ranked: list[tuple[Layout, Prediction]], top: int = 3, band: float = 0.0,
            band_source: str = "") -> str:
    """A paragraph naming the breakdown terms (means over pipeline ranks, which sum to the
    step time) that differ most between the best and the second-best layout. When the gap is
    within ``band`` (the relative uncertainty of the predictions, ``planner.noise``), the two
    are called a tie: the ranking between them is not something the model can tell."""
    if not ranked:
        return "No layout fits in device memory."
    (wl, wp) = ranked[0]
    if len(ranked) == 1:
        return f"{wl.describe()} is the only layout that fits ({format_duration(wp.step_time_s)} per step)."
    (rl, rp) = ranked[1]
    gap = rp.step_time_s - wp.step_time_s
    diffs = sorted(((rp.breakdown_s.get(k, 0.0) - wp.breakdown_s.get(k, 0.0), k)
                    for k in LABELS), key=lambda d: -abs(d[0]))
    terms = []
    for delta, key in diffs[:top]:
        if abs(delta) < 1e-9:
            continue
        word = "less" if delta > 0 else "more"
        terms.append(f"{format_duration(abs(delta))} {word} {LABELS[key]}")
    pct = 100.0 * gap / rp.step_time_s if rp.step_time_s else 0.0
    rel = gap / wp.step_time_s if wp.step_time_s > 0 else 0.0
    tie = ties([p.step_time_s for _, p in ranked], band) if band > 0 else []
    if tie and tie[1]:                      # the runner-up is within the band of the best
        tied = sum(tie)
        text = (f"{wl.describe()} ({format_duration(wp.step_time_s)} per step) and "
                f"{rl.describe()} ({format_duration(rp.step_time_s)}) are a tie: they differ "
                f"by {rel:.1%}, within the predictions' uncertainty of +-{band:.1%}"
                + (f" ({band_source})" if band_source else "")
                + (f"; {tied} of the ranked layouts are within it" if tied > 1 else "")
                + f". They differ in {layout_diff(wl, rl)}.")
    else:
        text = (f"{wl.describe()} ({format_duration(wp.step_time_s)} per step) beats "
                f"{rl.describe()} ({format_duration(rp.step_time_s)}) by "
                f"{format_duration(gap)} ({pct:.1f}%); they differ in {layout_diff(wl, rl)}.")
    if terms:
        text += " Per pipeline rank the winner spends " + "; ".join(terms) + "."
    if wp.peak_memory_bytes != rp.peak_memory_bytes:
        text += (f" Peak memory {_size(wp.peak_memory_bytes)} vs "
                 f"{_size(rp.peak_memory_bytes)} per rank.")
    return text
