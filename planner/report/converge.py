"""The report's convergence section: what `planner converge` measured, drawn.

Per world size: loss against step and loss against wall-clock time, every scheme on the same
axes (a moving mean over the run's ``smooth_steps``, the raw losses faint), the budget marked;
then bytes per step and predicted against measured step time, side by side, and a table. The
sentence under it names the fastest step and the lowest loss at the budget: where faster steps
stop paying for what they give up per step. Everything is read from the Convergence file.
"""
from __future__ import annotations

import math

import pandas as pd

from planner.report import plots
from planner.report.plots import plt

KIB = 1024.0


def _smoothed(values, window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _styles(schemes) -> dict:
    """Ten distinct colours, then the same colours dashed."""
    cmap = plt.get_cmap("tab10")
    out = {}
    for i, s in enumerate(dict.fromkeys(schemes)):
        out[s] = {"color": cmap(i % 10), "ls": "-" if i < 10 else "--"}
    return out


def loss_figure(conv, world: str):
    """Loss against step and against wall-clock seconds, one line per scheme."""
    runs = [r for r in conv.runs if str(r.world_size) == world and r.status == "ok"]
    styles = _styles([r.scheme for r in conv.runs])
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.6), dpi=100, sharey=True)
    for r in runs:
        smooth = _smoothed(list(r.losses), conv.smooth_steps)
        steps = list(range(1, len(r.losses) + 1))
        st = styles[r.scheme]
        by_step.plot(steps, r.losses, color=st["color"], alpha=0.12, lw=0.7)
        by_step.plot(steps, smooth, lw=1.6, label=r.scheme, **st)
        by_time.plot(r.step_end_s, r.losses, color=st["color"], alpha=0.12, lw=0.7)
        by_time.plot(r.step_end_s, smooth, lw=1.6, label=r.scheme, **st)
    budget = conv.budget_s.get(world)
    if budget:
        by_time.axvline(budget, color="#444", ls="--", lw=1)
        by_time.annotate(f"budget {budget:.0f} s", (budget, 1), xycoords=("data", "axes fraction"),
                         xytext=(-4, -12), textcoords="offset points", ha="right", fontsize=8)
    by_step.set_xlabel("step")
    by_time.set_xlabel("wall-clock time (s, when the last rank finished the step)")
    by_step.set_ylabel(f"training loss (mean of {conv.smooth_steps} steps; raw faint)")
    by_step.set_title(f"world {world}: loss against step")
    by_time.set_title(f"world {world}: loss against time")
    by_time.legend(fontsize=8, ncol=2)
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def cost_figure(conv, world: str):
    """Bytes per step (log) and predicted against measured step time, per scheme."""
    runs = [r for r in conv.runs if str(r.world_size) == world and r.status == "ok"]
    names = [r.scheme for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), dpi=100)
    x = range(len(runs))
    left.bar(x, [max(r.bytes_per_step, 1.0) / KIB for r in runs], color="#4C78A8",
             label="message bytes")
    left.bar(x, [max(r.wire_bytes_per_step, 1.0) / KIB for r in runs], color="#F58518",
             width=0.4, label="sent per rank (ring)")
    left.set_yscale("log")
    left.set_ylabel("KiB per step")
    left.set_title(f"world {world}: data-parallel bytes per step")
    left.legend(fontsize=8)
    w = 0.4
    right.bar([i - w / 2 for i in x], [r.predicted_step_time_s * 1e3 for r in runs], w,
              color="#54A24B", label="predicted")
    right.bar([i + w / 2 for i in x], [r.measured_step_time_s * 1e3 for r in runs], w,
              color="#E45756", label="measured (median)")
    right.set_ylabel("ms per step")
    right.set_title(f"world {world}: step time")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def frame(conv, world: str) -> pd.DataFrame:
    rows = []
    for r in conv.runs:
        if str(r.world_size) != world:
            continue
        ok = r.status == "ok"
        rows.append({
            "scheme": r.scheme, "flags": " ".join(r.flags) or "(none)",
            "layout": r.layout.describe(),
            "predicted (ms)": r.predicted_step_time_s * 1e3 if ok else math.nan,
            "measured (ms)": r.measured_step_time_s * 1e3 if ok else math.nan,
            "error %": 100 * (r.predicted_step_time_s - r.measured_step_time_s)
            / r.measured_step_time_s if ok and r.measured_step_time_s else math.nan,
            "KiB/step": r.bytes_per_step / KIB if ok else math.nan,
            "sent/rank KiB": r.wire_bytes_per_step / KIB if ok else math.nan,
            "loss at budget": r.loss_at_budget if ok else math.nan,
            "status": r.status})
    return pd.DataFrame(rows)


def verdict(conv, world: str) -> str:
    """Fastest measured step against lowest loss at the budget, in one sentence."""
    runs = [r for r in conv.runs if str(r.world_size) == world and r.status == "ok"
            and not math.isnan(r.loss_at_budget)]
    if not runs:
        return "No run of this world size was measured."
    fast = min(runs, key=lambda r: r.measured_step_time_s)
    best = min(runs, key=lambda r: r.loss_at_budget)
    text = (f"Fastest step: {fast.scheme} ({fast.measured_step_time_s * 1e3:.0f} ms, loss "
            f"{fast.loss_at_budget:.3f} at the budget). Lowest loss at the budget: {best.scheme} "
            f"({best.loss_at_budget:.3f}, {best.measured_step_time_s * 1e3:.0f} ms per step).")
    if fast is not best:
        text += (f" The fastest steps did not reach the lowest loss within "
                 f"{conv.budget_s[world]:.0f} s: {best.scheme} learned more per second.")
    return text


def add_section(doc, conv, esc, table) -> None:
    """Append the convergence section to a report document (``planner.report.html._Doc``)."""
    doc.add("<h2>Convergence under each data-parallel scheme</h2>")
    facts = {"model": conv.model, "corpus": f"{conv.corpus} ({conv.corpus_bytes / 2**20:.1f} MiB)",
             "global batch": conv.global_batch_size, "steps per run": conv.steps,
             "optimizer": f"{conv.optimizer}, lr {conv.learning_rate:g}",
             "load average while measured": f"{conv.load_average:.1f}",
             "created": conv.created_utc or "-"}
    doc.add(table(pd.DataFrame({"": list(facts), "value": [str(v) for v in facts.values()]})))
    doc.add('<p class="note">Each step\'s loss is the training loss of a batch read once '
            "(the runs stay within one epoch of the corpus), before the step's update. Bytes "
            "per step are the planner's count of data-parallel messages, which the executor's "
            "count equals; \"sent per rank\" is what one rank sends of them under ring "
            "algorithms.</p>")
    for world in sorted(conv.budget_s, key=int):
        doc.add(f"<h3>World size {esc(world)}</h3>")
        doc.figure(loss_figure(conv, world), f"converge-w{world}",
                   f"loss against step and time, world {world}")
        doc.figure(cost_figure(conv, world), f"converge-cost-w{world}",
                   f"bytes per step and step time, world {world}")
        doc.add(f"<p>{esc(verdict(conv, world))}</p>" + table(frame(conv, world)))
