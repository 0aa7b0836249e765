"""One self-contained HTML report of a plan: tables (pandas), figures (matplotlib), links.

Self-contained: images are embedded as base64 PNG data URIs and the style sheet is inline, so
the file opens with no network; the same figures are also written beside it as PNG and SVG,
with the simulated step as a Chrome trace (``trace.py``). Every figure is drawn from the plan
file, its candidates, executor metrics or a ``planner validate`` result: nothing is invented.
"""
from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field

import pandas as pd

from planner.compare import compare
from planner.errors import PlannerError
from planner.report import plots, trace
from planner.specs import Candidate, Metrics, Plan, Validation

MIB = 2**20
GIB = 2**30
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1100px;
color:#222;line-height:1.45}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto;display:block;margin:.6em 0}
.note{color:#555;font-size:.9em}.bad{color:#b00020;font-weight:600}.good{color:#1b7f3b}
code{background:#f5f5f5;padding:0 .2em}
"""


@dataclass
class ReportFiles:
    """What ``build_report`` wrote: the HTML, the figures (PNG + SVG) and the trace."""
    html: str
    figures: list[str] = field(default_factory=list)
    trace: str = ""


def _esc(text) -> str:
    return html.escape(str(text))


def _table(df: pd.DataFrame, index: bool = False) -> str:
    return df.to_html(index=index, border=0, escape=True, na_rep="-",
                      float_format=lambda v: f"{v:,.4g}")


def _rel(path: str, start: str) -> str:
    return os.path.relpath(os.path.abspath(path), os.path.abspath(start)).replace(os.sep, "/")


class _Doc:
    """Accumulates sections and figures; figures go beside the HTML and inline as PNG."""

    def __init__(self, out_path: str):
        self.out_path = out_path
        self.out_dir = os.path.dirname(os.path.abspath(out_path))
        self.stem = os.path.splitext(out_path)[0]
        self.parts: list[str] = []
        self.figures: list[str] = []

    def add(self, markup: str) -> None:
        self.parts.append(markup)

    def figure(self, fig, name: str, alt: str) -> None:
        png_path, png = plots.save(fig, f"{self.stem}-{name}")
        self.figures += [png_path, png_path[:-4] + ".svg"]
        data = base64.b64encode(png).decode("ascii")
        self.add(f'<img src="data:image/png;base64,{data}" alt="{_esc(alt)}">'
                 f'<p class="note">Also as <a href="{_esc(_rel(png_path, self.out_dir))}">PNG</a>'
                 f' and <a href="{_esc(_rel(png_path[:-4] + ".svg", self.out_dir))}">SVG</a>.</p>')


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------
def _header(doc: _Doc, plan: Plan, plan_path: str) -> None:
    p = plan.prediction
    doc.add(f"<h1>Plan: {_esc(plan.model.name)} on {_esc(plan.cluster.name)} "
            f"x{plan.world_size}</h1>")
    facts = {"plan file": plan_path or "-", "plan fingerprint": plan.fingerprint(),
             "model": f"{plan.model.name} ({plan.model.family}, {plan.model.num_layers} layers, "
                      f"hidden {plan.model.hidden_size}, seq {plan.model.seq_len})",
             "cluster": f"{plan.cluster.name}: {plan.cluster.num_nodes} node(s) x "
                        f"{plan.cluster.devices_per_node} {plan.cluster.device.name}, "
                        f"{plan.cluster.backend}",
             "global batch": plan.global_batch_size, "precision": plan.dtype,
             "optimizer": f"{plan.optimizer}, lr {plan.learning_rate:g}",
             "compute costs from": p.compute_source + (f" ({plan.profile_path})"
                                                      if plan.profile_path else ""),
             "created": plan.created_utc or "-"}
    doc.add(_table(pd.DataFrame({"": list(facts), "value": [str(v) for v in facts.values()]})))


def _layout_and_prediction(doc: _Doc, plan: Plan) -> None:
    p = plan.prediction
    doc.add("<h2>Layout and prediction</h2>")
    doc.add(f"<p><b>{_esc(plan.layout.describe())}</b></p>")
    layout = plan.layout.to_dict()
    layout.pop("schema_version")
    layout["stage_boundaries"] = ", ".join(map(str, plan.layout.pipeline.stage_boundaries)) or "(one stage)"
    doc.add(_table(pd.DataFrame({"field": list(layout), "value": [str(v) for v in layout.values()]})))
    fits = '<span class="good">fits</span>' if p.fits else '<span class="bad">DOES NOT FIT</span>'
    summary = pd.DataFrame({
        "predicted": ["step time (ms)", "peak memory per rank (GiB)", "device memory (GiB)",
                      "TFLOP/s per device", "MFU", "bubble fraction"],
        "value": [p.step_time_s * 1e3, p.peak_memory_bytes / GIB, p.device_memory_bytes / GIB,
                  p.tflops_per_device, p.mfu, p.bubble_fraction]})
    doc.add(_table(summary) + f"<p>Memory: {fits}.</p>")
    bd = pd.DataFrame({"term": list(p.breakdown_s),
                       "ms": [v * 1e3 for v in p.breakdown_s.values()],
                       "share of step": [v / p.step_time_s if p.step_time_s else 0.0
                                         for v in p.breakdown_s.values()]})
    doc.add("<p>Time breakdown of the step (hidden communication overlaps compute and is not "
            "on the critical path):</p>" + _table(bd))


def runner_up_comparison(plan: Plan) -> tuple[Candidate | None, pd.DataFrame | None]:
    """The runner-up (rank 2) and the per-term difference of its breakdown from the plan's."""
    ranked = sorted((c for c in plan.candidates if c.rank >= 1 and c.fits), key=lambda c: c.rank)
    second = next((c for c in ranked if c.rank == 2), None)
    if second is None:
        return None, None
    mine = plan.prediction.breakdown_s
    keys = list(dict.fromkeys([*mine, *second.breakdown_s]))
    diff = pd.DataFrame({"term": keys,
                         "chosen (ms)": [mine.get(k, 0.0) * 1e3 for k in keys],
                         "runner-up (ms)": [second.breakdown_s.get(k, 0.0) * 1e3 for k in keys]})
    diff["runner-up loses (ms)"] = diff["runner-up (ms)"] - diff["chosen (ms)"]
    diff = diff[(diff["chosen (ms)"] != 0) | (diff["runner-up (ms)"] != 0)]  # terms neither has
    diff = diff.reindex(diff["runner-up loses (ms)"].abs().sort_values(ascending=False).index)
    return second, diff


def _why(doc: _Doc, plan: Plan) -> None:
    doc.add("<h2>Why this layout</h2>")
    if plan.explanation:
        doc.add(f"<p>{_esc(plan.explanation)}</p>")
    second, diff = runner_up_comparison(plan)
    if second is None:
        doc.add('<p class="note">The plan file lists no runner-up (no candidates were recorded, '
                'e.g. a layout given whole to <code>planner simulate</code>).</p>')
        return
    gap = second.step_time_s - plan.prediction.step_time_s
    doc.add(f"<p>Runner-up: <b>{_esc(second.layout.describe())}</b>, "
            f"{second.step_time_s * 1e3:.2f} ms per step, {gap * 1e3:+.2f} ms "
            f"({gap / plan.prediction.step_time_s:+.1%}) against the chosen layout. Terms sorted "
            f"by how much they differ:</p>" + _table(diff))


def _timeline(doc: _Doc, plan: Plan, trace_path: str, trace_dir: str | None) -> None:
    doc.add("<h2>Simulated timeline of one step</h2>")
    if plan.prediction.timeline:
        doc.figure(plots.timeline_figure(plan.prediction), "timeline",
                   "per-rank timeline of the simulated step")
        doc.add(f'<p>As a Chrome trace (open in Perfetto or chrome://tracing): '
                f'<a href="{_esc(_rel(trace_path, doc.out_dir))}">'
                f'{_esc(os.path.basename(trace_path))}</a>.</p>')
    else:
        doc.add('<p class="note">This prediction carries no timeline.</p>')
    if trace_dir:
        found = sorted(os.path.join(root, f) for root, _, files in os.walk(trace_dir)
                       for f in files if f.endswith((".json", ".json.gz")))
        if not found:
            raise PlannerError(f"--trace-dir {trace_dir}: no trace files (*.json, *.json.gz) "
                               "found; pass the executor's --trace-dir")
        links = "".join(f'<li><a href="{_esc(_rel(p, doc.out_dir))}">{_esc(_rel(p, trace_dir))}'
                        f"</a></li>" for p in found)
        doc.add(f"<p>The executor's torch.profiler traces of this plan (one per rank):</p>"
                f"<ul>{links}</ul>")


def _memory(doc: _Doc, plan: Plan) -> None:
    p = plan.prediction
    doc.add("<h2>Memory per rank</h2>")
    if not p.memory:
        doc.add('<p class="note">This prediction carries no per-rank memory.</p>')
        return
    doc.figure(plots.memory_figure(p), "memory", "predicted peak memory per rank by kind")
    rows = sorted(p.memory, key=lambda m: m.rank)[:plots.MAX_MEMORY_RANKS]
    df = pd.DataFrame([{"rank": m.rank, "stage": m.stage,
                        **{label: getattr(m, attr) / MIB for label, attr, _ in plots.MEMORY_KINDS},
                        "total (MiB)": m.total_bytes / MIB} for m in rows])
    doc.add("<p>MiB per rank:</p>" + _table(df))


def _candidates(doc: _Doc, plan: Plan, top_k: int) -> None:
    doc.add("<h2>Candidates</h2>")
    cands = plan.candidates
    if cands:
        doc.figure(plots.candidates_figure(cands, plan.prediction.device_memory_bytes),
                   "candidates", "every candidate layout: step time against memory")
        ranked = sorted((c for c in cands if c.rank >= 1), key=lambda c: c.rank)[:top_k]
        df = pd.DataFrame([{"rank": c.rank, "layout": c.layout.describe(),
                            "step time (ms)": c.step_time_s * 1e3,
                            "peak memory (GiB)": c.peak_memory_bytes / GIB,
                            "fits": "yes" if c.fits else "no"} for c in ranked])
        doc.add(f"<p>{len(cands)} layouts considered, "
                f"{sum(c.fits and c.step_time_s > 0 for c in cands)} simulated and fitting. "
                f"Top {len(ranked)}:</p>" + _table(df))
        rows = [(f"#{c.rank} {c.layout.describe()}", c.breakdown_s) for c in ranked]
    else:
        doc.add('<p class="note">The plan file records no other candidates; the breakdown below '
                "is the plan's own.</p>")
        rows = [(plan.layout.describe(), plan.prediction.breakdown_s)]
    doc.figure(plots.breakdown_figure(rows), "breakdown", "time breakdown of the top layouts")


def _collectives(doc: _Doc, plan: Plan) -> None:
    cs = plan.prediction.collectives
    if not cs:
        return
    doc.add("<h2>Collectives per step</h2>")
    df = pd.DataFrame([{"phase": c.phase, "collective": c.collective, "group": c.group,
                        "group size": c.group_size, "count": c.count,
                        "MiB each": c.bytes_each / MIB,
                        "MiB total": c.count * c.bytes_each / MIB} for c in cs])
    doc.add(_table(df))


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
                   "step_time_error_pct": 100 * (c.step_time_s - m.step_time_s) / m.step_time_s,
                   "predicted_peak_memory_bytes": c.peak_memory_bytes,
                   "measured_peak_memory_bytes": meas_mem, "memory_measure": m.memory_measure,
                   "memory_error_pct": 100 * (c.peak_memory_bytes - meas_mem) / meas_mem
                   if meas_mem else float("nan")}
        else:
            raise PlannerError(f"{path}: metrics of plan {m.plan_fingerprint} (layout "
                               f"{m.layout.describe()}) match neither this plan "
                               f"({plan.fingerprint()}) nor any of its candidates")
        row["label"] = os.path.basename(path)
        rows.append(row)
    return rows


def _measured(doc: _Doc, plan: Plan, metrics, validation: Validation | None) -> None:
    if not metrics and validation is None:
        return
    doc.add("<h2>Predicted against measured</h2>")
    if metrics:
        rows = metrics_rows(plan, metrics)
        doc.figure(plots.predicted_measured_figure(rows), "measured",
                   "predicted against measured step time and memory")
        doc.add(_table(_measured_frame(rows)) + _measures_note(rows))
    if validation is not None:
        _validation(doc, validation)


def _measured_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{
        "run": r["label"], "layout": r["layout"],
        "predicted (ms)": r["predicted_step_time_s"] * 1e3,
        "measured (ms)": r["measured_step_time_s"] * 1e3,
        "time error %": r["step_time_error_pct"],
        "predicted mem (MiB)": r["predicted_peak_memory_bytes"] / MIB,
        "measured mem (MiB)": r["measured_peak_memory_bytes"] / MIB,
        "memory error %": r["memory_error_pct"]} for r in rows])


def _measures_note(rows: list[dict]) -> str:
    """How the executor measured memory (one sentence instead of a repeated column)."""
    measures = sorted({r["memory_measure"] for r in rows if r.get("memory_measure")})
    return (f'<p class="note">Measured memory: {_esc("; ".join(measures))}.</p>'
            if measures else "")


def _fmt(value, pct=True) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}%" if pct else f"{value:.3f}"


def _validation(doc: _Doc, v: Validation) -> None:
    doc.add(f"<h3>planner validate: {_esc(v.model)} on {_esc(v.cluster)} x{v.world_size}, "
            f"{v.steps} steps ({v.warmup_steps} warm-up)</h3>")
    stats = pd.DataFrame({"statistic": [
        "median |error| step time", "max |error| step time", "Spearman rank correlation",
        "regret of the pick", "median |error| memory", "max |error| memory"],
        "value": [_fmt(v.median_abs_pct_error), _fmt(v.max_abs_pct_error),
                  _fmt(v.rank_correlation, pct=False),
                  "n/a" if v.regret is None else f"{v.regret:.1%}",
                  _fmt(v.memory_median_abs_pct_error), _fmt(v.memory_max_abs_pct_error)]})
    doc.add(_table(stats))
    ok = [r for r in v.rows if r.status == "ok"]
    rows = [{"label": f"#{r.predicted_rank} {r.role}", "layout": r.layout.describe(),
             "predicted_step_time_s": r.predicted_step_time_s,
             "measured_step_time_s": r.measured_step_time_s,
             "step_time_error_pct": r.step_time_error_pct,
             "predicted_peak_memory_bytes": r.predicted_peak_memory_bytes,
             "measured_peak_memory_bytes": r.measured_peak_memory_bytes,
             "memory_error_pct": r.memory_error_pct, "memory_measure": r.memory_measure}
            for r in ok]
    if rows:
        doc.figure(plots.predicted_measured_figure(rows), "validation",
                   "validation: predicted against measured")
        frame = _measured_frame(rows)
        frame.insert(4, "IQR (ms)", [r.measured_step_time_iqr_s * 1e3 for r in ok])
        doc.add(_table(frame) + _measures_note(rows))
    failed = [r for r in v.rows if r.status != "ok"]
    if failed:
        doc.add("<p>Not measured:</p>" + _table(pd.DataFrame(
            [{"layout": r.layout.describe(), "why": r.status} for r in failed])))


# --------------------------------------------------------------------------------------------
def build_report(plan: Plan | None, out_path: str, plan_path: str = "",
                 metrics: list[tuple[str, Metrics]] = (), validation: Validation | None = None,
                 trace_dir: str | None = None, top_k: int = 5, convergence=None) -> ReportFiles:
    """Write ``out_path`` (HTML), its figures and the simulated trace beside it: the plan's
    sections, then ``convergence``'s (``planner converge``); either may be left out."""
    doc = _Doc(out_path)
    os.makedirs(doc.out_dir, exist_ok=True)
    trace_path = f"{doc.stem}-trace.json"
    has_trace = plan is not None and bool(plan.prediction.timeline)
    if plan is not None:
        if has_trace:
            trace.write_trace(trace_path, plan.prediction,
                              title=f"{plan.model.name} {plan.layout.describe()}")
        _header(doc, plan, plan_path)
        _layout_and_prediction(doc, plan)
        _why(doc, plan)
        _timeline(doc, plan, trace_path, trace_dir)
        _memory(doc, plan)
        _candidates(doc, plan, top_k)
        _collectives(doc, plan)
        _measured(doc, plan, list(metrics), validation)
        title = f"planner report: {plan.model.name} {plan.layout.describe()}"
    else:
        doc.add(f"<h1>Convergence: {_esc(convergence.model)}</h1>")
        title = f"planner report: convergence of {convergence.model}"
    if convergence is not None:
        from planner.report.converge import add_section
        add_section(doc, convergence, _esc, _table)
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_esc(title)}</title>"
            # An empty icon: otherwise a browser asks for /favicon.ico, a request we never need.
            f'<link rel="icon" href="data:,"><style>{STYLE}</style></head><body>'
            + "\n".join(doc.parts) + "</body></html>\n")
    with open(out_path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return ReportFiles(html=out_path, figures=doc.figures, trace=trace_path if has_trace else "")
