"""One self-contained HTML report of a plan: tables (pandas), figures (matplotlib), links.

The report is a directory: ``index.html`` (self-contained: images embedded as base64 PNG data
URIs, the style sheet inline, so it opens with no network), the same figures as PNG and SVG,
and the simulated step as a Chrome trace (``trace.py``). Everything is validated first
(metrics of another plan, an empty --trace-dir), then built in a temporary directory beside
the destination and renamed into place once complete (``planner.outputs.replace_dir``): a
refused or failed report writes nothing, and an existing report is replaced whole or not at
all. Every figure is drawn from the plan file, its candidates, executor metrics or a
``planner validate`` result: nothing is invented.
"""
from __future__ import annotations

import base64
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import pandas as pd

from planner import outputs
from planner.noise import ties
from planner.errors import PlannerError
from planner.report import measured, plots, trace
from planner.report.format import GIB, MIB, esc, mem_unit, number, table, time_unit
from planner.specs import Candidate, Metrics, Plan, Validation

INDEX = "index.html"
GENERATOR = "planner report"     # <meta name="generator">: marks a directory as a report of ours
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
# Search counters as `planner plan` prints them (``Plan.search_counts``).
COUNT_WORDS = (("enumerated", "layouts enumerated"),
               ("refused", "more left out (the executor cannot run them)"),
               ("simulated", "simulated"), ("memory_pruned", "over memory by bound"),
               ("not_fitting", "over memory exactly"), ("dominated", "dominated"),
               ("bounded_out", "cut by the step-time bound"))


@dataclass
class ReportFiles:
    """What ``build_report`` wrote: the report's directory, its HTML, figures and trace."""
    html: str
    figures: list[str] = field(default_factory=list)
    trace: str = ""
    directory: str = ""


def _rel(path: str, start: str) -> str:
    return os.path.relpath(os.path.abspath(path), os.path.abspath(start)).replace(os.sep, "/")


class _Doc:
    """Accumulates sections and figures. Figures are written into ``staging`` (the report's
    directory being built) and inlined as PNG; links are relative to ``final_dir``, where the
    directory is renamed once complete."""

    def __init__(self, staging: str, final_dir: str):
        self.staging = staging
        self.out_dir = os.path.abspath(final_dir)
        self.parts: list[str] = []
        self.figures: list[str] = []

    def add(self, markup: str) -> None:
        self.parts.append(markup)

    def figure(self, fig, name: str, alt: str) -> None:
        _, png = plots.save(fig, os.path.join(self.staging, name))
        self.figures += [os.path.join(self.out_dir, f"{name}.png"),
                         os.path.join(self.out_dir, f"{name}.svg")]
        data = base64.b64encode(png).decode("ascii")
        self.add(f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'
                 f'<p class="note">Also as <a href="{esc(name)}.png">PNG</a>'
                 f' and <a href="{esc(name)}.svg">SVG</a>.</p>')


def _facts_table(facts: dict) -> str:
    return table(pd.DataFrame({"": list(facts), "value": [str(v) for v in facts.values()]}))


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------
def _header(doc: _Doc, plan: Plan, plan_path: str) -> None:
    from planner.planfile import format_params, param_counts
    p = plan.prediction
    doc.add(f"<h1>Plan: {esc(plan.model.name)} on {esc(plan.cluster.name)} "
            f"x{plan.world_size}</h1>")
    profiles = [x for x in (plan.profile_path, *plan.other_profile_paths) if x]
    facts = {"plan file": plan_path or "-", "plan fingerprint": plan.fingerprint(),
             "model": f"{plan.model.name} ({plan.model.family}, {plan.model.num_layers} layers, "
                      f"hidden {plan.model.hidden_size}, seq {plan.model.seq_len})",
             "parameters": format_params(param_counts(plan)),
             "cluster": f"{plan.cluster.name}: {plan.cluster.num_nodes} node(s) x "
                        f"{plan.cluster.devices_per_node} {plan.cluster.device.name}, "
                        f"{plan.cluster.backend}",
             "global batch": plan.global_batch_size, "precision": plan.dtype,
             "optimizer": f"{plan.optimizer}, lr {plan.learning_rate:g}",
             "compute costs from": p.compute_source + (f" ({', '.join(profiles)})"
                                                      if profiles else ""),
             "created": plan.created_utc or "-"}
    doc.add(_facts_table(facts))


def _layout_and_prediction(doc: _Doc, plan: Plan) -> None:
    from planner.planfile import throughput
    p = plan.prediction
    doc.add("<h2>Layout and prediction</h2>")
    doc.add(f"<p><b>{esc(plan.layout.describe())}</b></p>")
    layout = plan.layout.flat()
    layout["stage_boundaries"] = (", ".join(map(str, plan.layout.pipeline.stage_boundaries))
                                  or "(the partitioner's)")
    doc.add(table(pd.DataFrame({"field": list(layout),
                                "value": [str(v) for v in layout.values()]})))
    fits = '<span class="good">fits</span>' if p.fits else '<span class="bad">DOES NOT FIT</span>'
    rate, unit = throughput(plan)
    band = (f" (+-{plan.uncertainty:.1%}: {plan.uncertainty_source})"
            if plan.uncertainty else "")
    mem_name, mem_scale = mem_unit(p.device_memory_bytes)
    from planner.explain import format_duration
    facts = {"step time": format_duration(p.step_time_s) + band,
             "throughput": f"{number(rate)} {unit}",
             f"peak memory per rank ({mem_name})": number(p.peak_memory_bytes / mem_scale),
             f"usable device memory ({mem_name})": number(p.device_memory_bytes / mem_scale),
             "TFLOP/s per device": number(p.tflops_per_device),
             "MFU": f"{p.mfu:.1%}" if p.mfu else "n/a (no peak FLOP/s known for this device)",
             "bubble fraction": f"{p.bubble_fraction:.1%}"}
    doc.add(_facts_table(facts) + f"<p>Memory: {fits}.</p>")
    unit_t, scale = time_unit(p.step_time_s)
    bd = pd.DataFrame({"term": list(p.breakdown_s),
                       unit_t: [v * scale for v in p.breakdown_s.values()],
                       "share of step": [f"{v / p.step_time_s:.1%}" if p.step_time_s else "-"
                                         for v in p.breakdown_s.values()]})
    doc.add("<p>Time breakdown of the step (hidden communication overlaps compute and is not "
            "on the critical path):</p>" + table(bd))


def runner_up_comparison(plan: Plan) -> tuple[Candidate | None, pd.DataFrame | None]:
    """The runner-up (rank 2) and the per-term difference of its breakdown from the plan's."""
    ranked = sorted((c for c in plan.candidates if c.rank >= 1 and c.fits), key=lambda c: c.rank)
    second = next((c for c in ranked if c.rank == 2), None)
    if second is None:
        return None, None
    unit, scale = time_unit(max(plan.prediction.step_time_s, second.step_time_s))
    mine = plan.prediction.breakdown_s
    keys = list(dict.fromkeys([*mine, *second.breakdown_s]))
    a, b, d = f"chosen ({unit})", f"runner-up ({unit})", f"runner-up loses ({unit})"
    diff = pd.DataFrame({"term": keys, a: [mine.get(k, 0.0) * scale for k in keys],
                         b: [second.breakdown_s.get(k, 0.0) * scale for k in keys]})
    diff[d] = diff[b] - diff[a]
    diff = diff[(diff[a] != 0) | (diff[b] != 0)]  # terms neither has
    diff = diff.reindex(diff[d].abs().sort_values(ascending=False).index)
    return second, diff


def _why(doc: _Doc, plan: Plan) -> None:
    from planner.explain import format_duration
    doc.add("<h2>Why this layout</h2>")
    if plan.explanation:
        doc.add(f"<p>{esc(plan.explanation)}</p>")
    second, diff = runner_up_comparison(plan)
    if second is None:
        doc.add('<p class="note">The plan file lists no runner-up (no candidates were recorded, '
                'e.g. a layout given whole to <code>planner simulate</code>).</p>')
        return
    gap = second.step_time_s - plan.prediction.step_time_s
    rel = gap / plan.prediction.step_time_s if plan.prediction.step_time_s else 0.0
    tied = plan.uncertainty and ties([plan.prediction.step_time_s, second.step_time_s],
                                     plan.uncertainty)[1]
    tie = (f" That is within the predictions' uncertainty of +-{plan.uncertainty:.1%}: a tie."
           if tied else "")
    doc.add(f"<p>Runner-up: <b>{esc(second.layout.describe())}</b>, "
            f"{format_duration(second.step_time_s)} per step, {format_duration(gap)} "
            f"({rel:+.1%}) against the chosen layout.{tie} Terms sorted by how much they "
            f"differ:</p>" + table(diff))


def _timeline(doc: _Doc, plan: Plan, traces: list[str], trace_dir: str | None) -> None:
    doc.add("<h2>Simulated timeline of one step</h2>")
    if plan.prediction.timeline:
        doc.figure(plots.timeline_figure(plan.prediction), "timeline",
                   "per-rank timeline of the simulated step")
        doc.add('<p>As a Chrome trace (open in Perfetto or chrome://tracing): '
                '<a href="trace.json">trace.json</a>.</p>')
    else:
        doc.add('<p class="note">This prediction carries no timeline.</p>')
    if traces:
        links = "".join(f'<li><a href="{esc(_rel(p, doc.out_dir))}">{esc(_rel(p, trace_dir))}'
                        f"</a></li>" for p in traces)
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
    unit, scale = mem_unit(max(m.total_bytes for m in rows))
    df = pd.DataFrame([{"rank": m.rank, "stage": m.stage,
                        **{label: getattr(m, attr) / scale
                           for label, attr, _ in plots.MEMORY_KINDS},
                        "total": m.total_bytes / scale} for m in rows])
    doc.add(f"<p>{unit} per rank, by kind (what each rank holds at its peak):</p>" + table(df))


def _search_counts(plan: Plan) -> str:
    counts = plan.search_counts
    if not counts:
        return ""
    parts = [f"{counts[k]:,} {words}" for k, words in COUNT_WORDS if k in counts]
    return f"<p>The search: {', '.join(parts)}.</p>"


def _candidates(doc: _Doc, plan: Plan, top_k: int) -> None:
    doc.add("<h2>Candidates</h2>")
    cands = plan.candidates
    if cands:
        doc.figure(plots.candidates_figure(cands, plan.prediction.device_memory_bytes),
                   "candidates", "candidate layouts looked at closely: step time against memory")
        ranked = sorted((c for c in cands if c.rank >= 1), key=lambda c: c.rank)[:top_k]
        unit, scale = time_unit(max([c.step_time_s for c in ranked] + [0.0]))
        munit, mscale = mem_unit(max([c.peak_memory_bytes for c in ranked] + [0]))
        df = pd.DataFrame([{"rank": c.rank, "layout": c.layout.describe(),
                            f"step time ({unit})": c.step_time_s * scale,
                            f"peak memory ({munit})": c.peak_memory_bytes / mscale,
                            "fits": "yes" if c.fits else "no"} for c in ranked])
        fitting = sum(c.fits and c.step_time_s > 0 for c in cands)
        doc.add(_search_counts(plan)
                + f"<p>The plan file records the {len(cands):,} layouts it looked at closely "
                  f"(sized exactly), {fitting:,} of them simulated and fitting. "
                  f"Top {len(ranked)}:</p>" + table(df))
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
    doc.add(table(df))


# --------------------------------------------------------------------------------------------
def trace_files(trace_dir: str | None) -> list[str]:
    """The executor's trace files under ``trace_dir`` (one-line error when there are none)."""
    if not trace_dir:
        return []
    found = sorted(os.path.join(root, f) for root, _, files in os.walk(trace_dir)
                   for f in files if f.endswith((".json", ".json.gz")))
    if not found:
        raise PlannerError(f"--trace-dir {trace_dir}: no trace files (*.json, *.json.gz) "
                           "found; pass the executor's --trace-dir")
    return found


def check_destination(out_dir: str) -> None:
    """``out_dir`` may be replaced: absent, empty, or a report this command wrote (its
    index.html carries our generator tag). Anything else is the user's and is kept."""
    if not os.path.exists(out_dir):
        return
    if not os.path.isdir(out_dir):
        raise PlannerError(f"--out {out_dir}: exists and is not a directory (a report is a "
                           "directory holding index.html, figures and trace.json)")
    names = os.listdir(out_dir)
    if not names:
        return
    index = os.path.join(out_dir, INDEX)
    try:
        with open(index, encoding="utf-8", errors="replace") as fh:
            ours = f'<meta name="generator" content="{GENERATOR}">' in fh.read(4096)
    except OSError:
        ours = False
    if not ours:
        raise PlannerError(f"--out {out_dir}: a directory that is not a planner report "
                           f"({len(names)} {'entry' if len(names) == 1 else 'entries'}); give "
                           "a new or empty directory")


def build_report(plan: Plan | None, out_dir: str, plan_path: str = "",
                 metrics: list[tuple[str, Metrics]] = (), validation: Validation | None = None,
                 trace_dir: str | None = None, top_k: int = 5, convergence=None) -> ReportFiles:
    """Validate everything, build the report in a temporary directory, rename it to
    ``out_dir``: the plan's sections, then ``convergence``'s (``planner converge``); either may
    be left out. Raises PlannerError (bad input) or OSError (cannot write), writing nothing."""
    rows = measured.metrics_rows(plan, list(metrics)) if plan is not None else []
    traces = trace_files(trace_dir)
    check_destination(out_dir)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}.tmp-")
    has_trace = plan is not None and bool(plan.prediction.timeline)
    try:
        doc = _Doc(staging, out_dir)
        if plan is not None:
            if has_trace:
                trace.write_trace(os.path.join(staging, "trace.json"), plan.prediction,
                                  title=f"{plan.model.name} {plan.layout.describe()}")
            _plan_sections(doc, plan, plan_path, traces, trace_dir, top_k, rows, validation)
            title = f"planner report: {plan.model.name} {plan.layout.describe()}"
        else:
            doc.add(f"<h1>Convergence: {esc(convergence.model)}</h1>")
            title = f"planner report: convergence of {convergence.model}"
        if convergence is not None:
            from planner.report.converge import add_section
            add_section(doc, convergence, esc, table)
        _write_page(doc, title, os.path.join(staging, INDEX))
        outputs.replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    out = os.path.abspath(out_dir)
    return ReportFiles(html=os.path.join(out, INDEX), figures=doc.figures,
                       trace=os.path.join(out, "trace.json") if has_trace else "",
                       directory=out)


def _plan_sections(doc, plan, plan_path, traces, trace_dir, top_k, rows, validation) -> None:
    _header(doc, plan, plan_path)
    _layout_and_prediction(doc, plan)
    _why(doc, plan)
    _timeline(doc, plan, traces, trace_dir)
    _memory(doc, plan)
    _candidates(doc, plan, top_k)
    _collectives(doc, plan)
    measured.section(doc, plan, rows, validation)


def _write_page(doc: _Doc, title: str, path: str) -> None:
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta name="generator" content="{GENERATOR}">'
            f"<title>{esc(title)}</title>"
            # An empty icon: otherwise a browser asks for /favicon.ico, a request we never need.
            f'<link rel="icon" href="data:,"><style>{STYLE}</style></head><body>'
            + "\n".join(doc.parts) + "</body></html>\n")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
