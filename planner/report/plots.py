"""The report's figures, drawn with matplotlib's Agg backend (no display needed).

Each ``*_figure`` function takes specs objects (or plain rows) and returns a Figure; ``save``
writes it as PNG (embedded in the HTML) and SVG (beside it, for print). Every number drawn comes
from the plan's prediction, its candidates or the executor's metrics: nothing is made up here.
Imported only by ``planner report`` / ``planner validate``, never at CLI start-up.
"""
from __future__ import annotations

import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.patches import Patch  # noqa: E402

from planner.report.format import mem_unit, time_unit  # noqa: E402
from planner.report.trace import op_kind, streams_of  # noqa: E402
from planner.specs import Candidate, Prediction  # noqa: E402

MIB = 2**20
GIB = 2**30
MAX_TIMELINE_RANKS = 16
MAX_MEMORY_RANKS = 64

KIND_COLOURS = {
    "forward": "#4C78A8", "backward": "#F58518", "weight grad": "#E4A341",
    "recompute": "#B279A2", "optimizer": "#54A24B", "dp comm": "#E45756",
    "tp comm": "#72B7B2", "pp comm": "#9D755D", "comm": "#BAB0AC", "other": "#7F7F7F",
}
MEMORY_KINDS = (("parameters", "parameters_bytes", "#4C78A8"),
                ("gradients", "gradients_bytes", "#F58518"),
                ("optimizer", "optimizer_bytes", "#54A24B"),
                ("activations", "activations_bytes", "#E45756"),
                ("buffers", "buffers_bytes", "#B279A2"))
_BREAKDOWN_PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2",
                      "#9D755D", "#EECA3B", "#FF9DA6", "#BAB0AC", "#7F7F7F", "#1F77B4")


# A reference line (device capacity) further than this factor above the largest value drawn
# would squash the data into the bottom of the chart: it is then named, not drawn.
OFF_SCALE = 3.0


def timeline_figure(prediction: Prediction, title: str = "Simulated step"):
    """One row per (rank, stream), a bar per event coloured by op kind (``trace.op_kind``)."""
    events = prediction.timeline
    ranks = sorted({e.rank for e in events})
    shown = ranks[:MAX_TIMELINE_RANKS]
    streams = streams_of(events)
    rows = [(r, s) for r in shown for s in streams]
    row_of = {key: i for i, key in enumerate(rows)}
    spans: dict[tuple[int, str], list] = {}
    unit, scale = time_unit(max([prediction.step_time_s] + [e.end_s for e in events]))
    end = max([prediction.step_time_s] + [e.end_s for e in events]) * scale
    # Events shorter than a pixel (a small send) are drawn one pixel wide so they stay visible.
    min_ms = end / 1000
    for e in events:
        if (e.rank, e.stream) in row_of:
            spans.setdefault((row_of[(e.rank, e.stream)], op_kind(e)), []).append(
                (e.start_s * scale, max((e.end_s - e.start_s) * scale, min_ms)))
    fig, ax = plt.subplots(figsize=(11, max(2.2, 0.9 + 0.32 * len(rows))), dpi=100)
    for (row, kind), bars in sorted(spans.items()):
        ax.broken_barh(bars, (row - 0.4, 0.8), facecolors=KIND_COLOURS.get(kind, "#7F7F7F"),
                       edgecolor="white", linewidth=0.3)
    stage = {m.rank: m.stage for m in prediction.memory}
    ax.set_yticks(range(len(rows)), [f"rank {r}" + (f" s{stage[r]}" if r in stage else "")
                                     + f" {s}" for r, s in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"time since step start ({unit})")
    ax.set_xlim(0, end * 1.01 if end > 0 else 1)
    ax.axvline(prediction.step_time_s * scale, color="black", linestyle="--", linewidth=0.8)
    kinds = sorted({k for _, k in spans}, key=list(KIND_COLOURS).index)
    ax.legend(handles=[Patch(color=KIND_COLOURS[k], label=k) for k in kinds],
              loc="upper left", bbox_to_anchor=(1.005, 1), fontsize=8, frameon=False)
    more = f" (ranks {shown[0]}-{shown[-1]} of {len(ranks)} simulated)" if len(ranks) > len(shown) else ""
    if len(prediction.memory) > len(ranks):
        # The simulator runs one pipeline; data- and tensor-parallel peers run in lock-step.
        more += f"; one pipeline of {len(prediction.memory)} ranks"
    ax.set_title(f"{title}: {prediction.step_time_s * scale:.2f} {unit}{more}", fontsize=10)
    if not events:
        ax.text(0.5, 0.5, "this prediction has no timeline", ha="center", va="center",
                transform=ax.transAxes)
    fig.tight_layout()
    return fig


def memory_figure(prediction: Prediction):
    """Peak memory per rank stacked by kind, against the device's capacity (named instead of
    drawn when it is far above the bars: a small model on a large device)."""
    ranks = sorted(prediction.memory, key=lambda m: m.rank)[:MAX_MEMORY_RANKS]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(ranks) + 2), 3.6), dpi=100)
    xs = range(len(ranks))
    bottom = [0.0] * len(ranks)
    largest = max([m.total_bytes for m in ranks] + [1])
    capacity = prediction.device_memory_bytes
    cap_drawn = capacity <= OFF_SCALE * largest
    unit, scale = mem_unit(max(largest, capacity) if cap_drawn else largest)
    for label, attr, colour in MEMORY_KINDS:
        vals = [getattr(m, attr) / scale for m in ranks]
        ax.bar(xs, vals, bottom=bottom, color=colour, label=label, width=0.7)
        bottom = [b + v for b, v in zip(bottom, vals)]
    cap = capacity / scale
    if cap_drawn:
        ax.axhline(cap, color="black", linestyle="--", linewidth=1,
                   label=f"device capacity {cap:.2f} {unit}")
    ax.set_xticks(list(xs), [f"{m.rank}\ns{m.stage}" for m in ranks], fontsize=7)
    ax.set_xlabel("rank / pipeline stage")
    ax.set_ylabel(unit)
    ax.set_ylim(0, max(([cap] if cap_drawn else []) + bottom) * 1.12)
    more = f" (first {len(ranks)} of {len(prediction.memory)} ranks)" \
        if len(prediction.memory) > len(ranks) else ""
    off = "" if cap_drawn else (f"\ndevice capacity {capacity / GIB:.1f} GiB is off this scale: "
                                f"the peak rank uses {largest / capacity:.1%} of it")
    ax.set_title(f"Predicted peak memory per rank{more}{off}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.tight_layout()
    return fig


def candidates_figure(candidates: tuple[Candidate, ...], capacity_bytes: int):
    """Every candidate sized exactly, as step time against peak memory; the ones that fit were
    simulated (a layout over memory is drawn at its memory, on the time axis' floor)."""
    simulated = [c for c in candidates if c.step_time_s > 0]
    over = [c for c in candidates if c.step_time_s <= 0 and c.peak_memory_bytes > 0]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    largest = max([c.peak_memory_bytes for c in simulated + over] + [1])
    cap_drawn = capacity_bytes <= OFF_SCALE * largest
    unit, scale = mem_unit(max(largest, capacity_bytes) if cap_drawn else largest)
    tunit, tscale = time_unit(max([c.step_time_s for c in simulated] + [1e-3]))
    floor = min([c.step_time_s for c in simulated] + [1.0]) * tscale
    groups = (("fits", [c for c in simulated if c.fits and c.rank != 1], "#4C78A8", "o"),
              ("does not fit", [c for c in simulated if not c.fits], "#E45756", "x"),
              ("chosen", [c for c in simulated if c.rank == 1], "#F2B701", "*"))
    for label, group, colour, marker in groups:
        if group:
            edge = {"edgecolors": "black"} if marker == "*" else {}
            ax.scatter([c.peak_memory_bytes / scale for c in group],
                       [c.step_time_s * tscale for c in group], c=colour, marker=marker,
                       s=160 if marker == "*" else 18, label=f"{label} ({len(group)})",
                       zorder=3, **edge)
    if over and simulated:
        ax.scatter([c.peak_memory_bytes / scale for c in over], [floor] * len(over),
                   c="#E45756", marker="|", s=40, zorder=2,
                   label=f"over memory, not simulated ({len(over)})")
    if cap_drawn:
        ax.axvline(capacity_bytes / scale, color="black", linestyle="--", linewidth=1,
                   label=f"device capacity {capacity_bytes / scale:.2f} {unit}")
    if simulated and max(c.step_time_s for c in simulated) > 20 * min(c.step_time_s for c in simulated):
        ax.set_yscale("log")
    ax.set_xlabel(f"predicted peak memory per rank ({unit})")
    ax.set_ylabel(f"predicted step time ({tunit})")
    off = "" if cap_drawn else (f"; device capacity {capacity_bytes / GIB:.1f} GiB is off this "
                                "scale")
    ax.set_title(f"{len(candidates)} layouts sized exactly{off}", fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def breakdown_figure(rows: list[tuple[str, dict[str, float]]]):
    """Stacked bars of each layout's predicted time breakdown (``rows``: label, breakdown_s)."""
    keys: list[str] = []
    for _, bd in rows:
        keys += [k for k in bd if k not in keys]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 3), 4.2), dpi=100)
    bottom = [0.0] * len(rows)
    unit, scale = time_unit(max([sum(bd.values()) for _, bd in rows] + [0.0]))
    for i, key in enumerate(keys):
        vals = [bd.get(key, 0.0) * scale for _, bd in rows]
        # Hidden communication overlaps compute: drawn hatched so the stack reads as work done,
        # not as the critical path.
        hidden = "hidden" in key
        ax.bar(range(len(rows)), vals, bottom=bottom, label=key, width=0.65,
               color=_BREAKDOWN_PALETTE[i % len(_BREAKDOWN_PALETTE)],
               hatch="//" if hidden else None, alpha=0.55 if hidden else 1.0)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(range(len(rows)), [label for label, _ in rows], fontsize=7, rotation=20,
                  ha="right")
    ax.set_ylabel(unit)
    ax.set_title("Predicted time breakdown of the top layouts (hatched: overlapped, off the "
                 "critical path)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.tight_layout()
    return fig


def predicted_measured_figure(rows: list[dict]):
    """Predicted against measured step time and peak memory, one point per layout run, with
    its intervals where the rows carry them: the measured inter-quartile range (horizontal)
    and the prediction's uncertainty band (vertical).

    ``rows`` carry ``label``, ``predicted_step_time_s``, ``measured_step_time_s``,
    ``predicted_peak_memory_bytes`` and ``measured_peak_memory_bytes``; optionally
    ``measured_q1_s``/``measured_q3_s`` and ``predicted_low_s``/``predicted_high_s``.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=100)
    tunit, tscale = time_unit(max(max(r["predicted_step_time_s"], r["measured_step_time_s"])
                                  for r in rows))
    munit, mscale = mem_unit(max(max(r["predicted_peak_memory_bytes"],
                                     r["measured_peak_memory_bytes"]) for r in rows))
    for ax, (key, unit, scale) in zip(axes, (("step_time_s", tunit, tscale),
                                             ("peak_memory_bytes", munit, 1 / mscale))):
        pred = [r[f"predicted_{key}"] * scale for r in rows]
        meas = [r[f"measured_{key}"] * scale for r in rows]
        hi = max(meas + pred + [1e-9]) * 1.1
        if key == "step_time_s" and all("measured_q1_s" in r for r in rows):
            xerr = [[m - r["measured_q1_s"] * scale for r, m in zip(rows, meas)],
                    [r["measured_q3_s"] * scale - m for r, m in zip(rows, meas)]]
            yerr = [[p - r["predicted_low_s"] * scale for r, p in zip(rows, pred)],
                    [r["predicted_high_s"] * scale - p for r, p in zip(rows, pred)]]
            ax.errorbar(meas, pred, xerr=xerr, yerr=yerr, fmt="none", ecolor="#4C78A8",
                        elinewidth=1, capsize=3, zorder=2,
                        label="measured IQR / predicted band")
            hi = max([hi] + [r["measured_q3_s"] * scale * 1.1 for r in rows]
                     + [r["predicted_high_s"] * scale * 1.1 for r in rows])
        ax.scatter(meas, pred, c="#4C78A8", zorder=3)
        for r, x, y in zip(rows, meas, pred):
            ax.annotate(r["label"], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.plot([0, hi], [0, hi], color="black", linewidth=0.8, label="predicted = measured")
        ax.set_xlim(0, hi)
        ax.set_ylim(0, hi)
        ax.set_xlabel(f"measured ({unit})")
        ax.set_ylabel(f"predicted ({unit})")
        ax.set_title(("step time" if key == "step_time_s" else "peak memory per rank"),
                     fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False, loc="upper left")
    fig.tight_layout()
    return fig


def save(fig, path_stem: str) -> tuple[str, bytes]:
    """Write ``<stem>.png`` and ``<stem>.svg``; return the PNG path and bytes (for embedding)."""
    os.makedirs(os.path.dirname(os.path.abspath(path_stem)), exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    png = buf.getvalue()
    with open(path_stem + ".png", "wb") as fh:
        fh.write(png)
    fig.savefig(path_stem + ".svg", format="svg", bbox_inches="tight")
    plt.close(fig)
    return path_stem + ".png", png
