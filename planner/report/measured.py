"""The report's "predicted against measured" section: executor metrics and `planner validate`.

Every row carries its intervals: the prediction's uncertainty band (``Plan.uncertainty``) and
the measured inter-quartile range, so a reader sees whether an error is larger than the noise
(``planner.compare``). ``metrics_rows`` is called before anything is written: metrics of
another plan are refused while the report directory is still untouched.
"""
from __future__ import annotations

import os

import pandas as pd

from planner.compare import compare, intervals, pct_error
from planner.errors import PlannerError
from planner.report import plots
from planner.report.format import esc, table, time_unit
from planner.specs import Metrics, Plan, Validation

MIB = 2**20


def metrics_rows(plan: Plan, metrics: list[tuple[str, Metrics]]) -> list[dict]:
    """Predicted against measured for each metrics file: the plan's own run, or a candidate's
    (matched by layout) whose summary prediction is then the reference."""
    rows = []
    by_layout = {c.layout: c for c in plan.candidates}
    for path, m in metrics:
        if m.plan_fingerprint == plan.fingerprint():
            row = compare(plan, m, "", path)
        elif m.layout in by_layout and m.model_fingerprint == plan.model_fingerprint:
            c = by_layout[m.layout]
            meas_mem = max(m.peak_memory_bytes) if m.peak_memory_bytes else 0
            row = {"layout": m.layout.describe(), "predicted_step_time_s": c.step_time_s,
                   "measured_step_time_s": m.step_time_s,
                   "step_time_error_pct": pct_error(c.step_time_s, m.step_time_s),
                   "predicted_peak_memory_bytes": c.peak_memory_bytes,
                   "measured_peak_memory_bytes": meas_mem, "memory_measure": m.memory_measure,
                   "memory_error_pct": pct_error(c.peak_memory_bytes, meas_mem),
                   **intervals(c.step_time_s, plan.uncertainty, m.step_times_s,
                               m.step_time_s)}
        else:
            raise PlannerError(f"{path}: metrics of plan {m.plan_fingerprint} (layout "
                               f"{m.layout.describe()}) match neither this plan "
                               f"({plan.fingerprint()}) nor any of its candidates")
        row["label"] = os.path.basename(path)
        rows.append(row)
    return rows


def section(doc, plan: Plan, rows: list[dict], validation: Validation | None) -> None:
    if not rows and validation is None:
        return
    doc.add("<h2>Predicted against measured</h2>")
    if rows:
        doc.figure(plots.predicted_measured_figure(rows), "measured",
                   "predicted against measured step time and memory")
        band = (f"the prediction's band is +-{plan.uncertainty:.1%} ("
                f"{esc(plan.uncertainty_source)})" if plan.uncertainty else
                "the plan records no uncertainty band")
        doc.add(table(_frame(rows)) + _measures_note(rows)
                + f'<p class="note">Intervals: the measured inter-quartile range of the timed '
                  f'steps; {band}. "within noise": the two intervals overlap.</p>')
    if validation is not None:
        _validation(doc, validation)


def _frame(rows: list[dict]) -> pd.DataFrame:
    unit, scale = time_unit(max(max(r["predicted_step_time_s"], r["measured_step_time_s"])
                                for r in rows))
    out = []
    for r in rows:
        item = {"run": r["label"], "layout": r["layout"],
                f"predicted ({unit})": r["predicted_step_time_s"] * scale,
                f"measured ({unit})": r["measured_step_time_s"] * scale}
        if "measured_q1_s" in r:
            item[f"measured IQR ({unit})"] = (f"{r['measured_q1_s'] * scale:,.4g} .. "
                                             f"{r['measured_q3_s'] * scale:,.4g}")
            item["within noise"] = "yes" if r["within_noise"] else "no"
        item.update({"time error %": r["step_time_error_pct"],
                     "predicted mem (MiB)": r["predicted_peak_memory_bytes"] / MIB,
                     "measured mem (MiB)": r["measured_peak_memory_bytes"] / MIB,
                     "memory error %": r["memory_error_pct"]})
        out.append(item)
    return pd.DataFrame(out)


def _measures_note(rows: list[dict]) -> str:
    """How the executor measured memory (one sentence instead of a repeated column)."""
    measures = sorted({r["memory_measure"] for r in rows if r.get("memory_measure")})
    return (f'<p class="note">Measured memory: {esc("; ".join(measures))}.</p>'
            if measures else "")


def _fmt(value, pct=True) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}%" if pct else f"{value:.3f}"


def _validation(doc, v: Validation) -> None:
    doc.add(f"<h3>planner validate: {esc(v.model)} on {esc(v.cluster)} x{v.world_size}, "
            f"{v.steps} steps ({v.warmup_steps} warm-up)</h3>")
    stats = pd.DataFrame({"statistic": [
        "median |error| step time", "max |error| step time", "Spearman rank correlation",
        "regret of the pick", "median |error| memory", "max |error| memory"],
        "value": [_fmt(v.median_abs_pct_error), _fmt(v.max_abs_pct_error),
                  _fmt(v.rank_correlation, pct=False),
                  "n/a" if v.regret is None else f"{v.regret:.1%}",
                  _fmt(v.memory_median_abs_pct_error), _fmt(v.memory_max_abs_pct_error)]})
    doc.add(table(stats))
    ok = [r for r in v.rows if r.status == "ok"]
    rows = [{"label": f"#{r.predicted_rank} {r.role}", "layout": r.layout.describe(),
             "predicted_step_time_s": r.predicted_step_time_s,
             "measured_step_time_s": r.measured_step_time_s,
             "step_time_error_pct": r.step_time_error_pct,
             "predicted_peak_memory_bytes": r.predicted_peak_memory_bytes,
             "measured_peak_memory_bytes": r.measured_peak_memory_bytes,
             "memory_error_pct": r.memory_error_pct, "memory_measure": r.memory_measure,
             "measured_iqr_s": r.measured_step_time_iqr_s}
            for r in ok]
    if rows:
        doc.figure(plots.predicted_measured_figure(rows), "validation",
                   "validation: predicted against measured")
        frame = _frame(rows)
        unit, scale = time_unit(max(max(r["predicted_step_time_s"], r["measured_step_time_s"])
                                    for r in rows))
        frame.insert(4, f"IQR ({unit})", [r.measured_step_time_iqr_s * scale for r in ok])
        doc.add(table(frame) + _measures_note(rows))
    failed = [r for r in v.rows if r.status != "ok"]
    if failed:
        doc.add("<p>Not measured:</p>" + table(pd.DataFrame(
            [{"layout": r.layout.describe(), "why": r.status} for r in failed])))
