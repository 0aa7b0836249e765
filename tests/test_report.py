"""planner report: Chrome trace, HTML contents, CLI, and the page in a real headless Chromium.

The plan is made by hand (dp 2 x pp 2, GPipe with 4 micro-batches of 1 ms forward / 2 ms
backward per stage) so every number in it can be checked by eye.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct

import pytest

from planner.cli import main
from planner.dims import ParallelDims
from planner.grid import RankGrid
from planner.models import resolve_model
from planner.specs import (Candidate, CollectiveCount, Cluster, DeviceSpec, Layout, LinkLevel,
                           Metrics, Plan, Prediction, RankMemory, TimelineEvent, Validation,
                           ValidationRow)

MIB = 2**20
F, B, SEND, REDUCE, OPT = 1e-3, 2e-3, 0.1e-3, 0.5e-3, 0.3e-3
M, PP, DP = 4, 2, 2


def stage_of(rank: int) -> int:
    return RankGrid(ParallelDims(dp=DP, pp=PP)).coord(rank, "pp")


def gpipe_timeline() -> tuple[tuple[TimelineEvent, ...], float]:
    """GPipe by hand: stage s runs forward i at (i + s) * F; backwards in reverse after all
    forwards; a send after each forward/backward that crosses the stage boundary; the DP
    all-reduce after the last backward, then the optimizer."""
    events = []
    fwd_end = (M + PP - 1) * F
    ends = {}
    for rank in range(DP * PP):
        s = stage_of(rank)
        for i in range(M):
            t = (i + s) * F
            events.append(TimelineEvent(rank, "compute", f"F{i} stage{s}", t, t + F))
            if s < PP - 1:
                events.append(TimelineEvent(rank, "comm", f"send_recv pp F{i}", t + F,
                                            t + F + SEND))
        for j, i in enumerate(reversed(range(M))):
            t = fwd_end + (j + PP - 1 - s) * B
            events.append(TimelineEvent(rank, "compute", f"B{i} stage{s}", t, t + B))
            if s > 0:
                events.append(TimelineEvent(rank, "comm", f"send_recv pp B{i}", t + B,
                                            t + B + SEND))
        ends[rank] = fwd_end + (M + PP - 1 - s) * B
    step = max(ends.values()) + REDUCE + OPT
    for rank in range(DP * PP):
        events.append(TimelineEvent(rank, "comm", "all_reduce dp bucket0", ends[rank],
                                    ends[rank] + REDUCE))
        events.append(TimelineEvent(rank, "compute", "optimizer", step - OPT, step))
    return tuple(events), step


def make_plan(with_candidates: bool = True) -> Plan:
    model = resolve_model("gpt-tiny")
    device = DeviceSpec("cpu-core", memory_bytes=64 * MIB, peak_flops_per_s={},
                        memory_bandwidth_bytes_per_s=10e9, compute_efficiency=1.0)
    link = LinkLevel("intra_node", 1e-4, 2.7e9)
    cluster = Cluster("test-cpu", 1, DP * PP, device, link, link, backend="gloo")
    layout = Layout.make(dp=DP, pp=PP, microbatch_size=1, num_microbatches=M, schedule="gpipe",
                    stage_boundaries=(0, 3))
    timeline, step = gpipe_timeline()
    memory = tuple(RankMemory(r, stage_of(r), 4 * MIB, 4 * MIB, 8 * MIB,
                              (M - stage_of(r)) * 3 * MIB, 1 * MIB)
                   for r in range(DP * PP))
    breakdown = {"compute": M * (F + B), "pp_comm_exposed": 2 * SEND,
                 "dp_comm_exposed": REDUCE, "dp_comm_hidden": 0.0, "optimizer": OPT,
                 "bubble": (PP - 1) * (F + B)}
    prediction = Prediction(
        step_time_s=step, breakdown_s=breakdown, memory=memory,
        peak_memory_bytes=max(m.total_bytes for m in memory), device_memory_bytes=64 * MIB,
        fits=True, tflops_per_device=0.01, mfu=0.0, bubble_fraction=(PP - 1) / (M + PP - 1),
        collectives=(CollectiveCount("backward", "all_reduce", "dp", DP, 1, 8 * MIB),
                     CollectiveCount("forward", "send_recv", "pp", 2, M, 64 * 1024)),
        compute_source="profile", timeline=timeline)
    candidates = ()
    if with_candidates:
        runner = Layout.make(dp=4, microbatch_size=1, num_microbatches=2)
        candidates = (
            Candidate(layout, step, prediction.peak_memory_bytes, True, breakdown, rank=1),
            Candidate(runner, step * 1.3, 40 * MIB, True,
                      {"compute": 2 * (F + B) * 2, "dp_comm_exposed": 8 * REDUCE,
                       "optimizer": 2 * OPT}, rank=2),
            Candidate(Layout.make(dp=1, pp=4, microbatch_size=2, num_microbatches=4,
                             schedule="gpipe"), step * 1.8, 30 * MIB, True, {}, rank=3),
            Candidate(Layout.make(dp=4, microbatch_size=2, num_microbatches=1), step * 0.9, 90 * MIB,
                      False, {}, note="activations exceed memory"),
            Candidate(Layout.make(tp=4, microbatch_size=1, num_microbatches=8), 0.0, 0, False, {},
                      note="tp(4) does not divide heads(4)? pruned before simulation"),
        )
    return Plan(model=model, model_fingerprint=model.fingerprint(), cluster=cluster,
                world_size=DP * PP, global_batch_size=DP * M, dtype="float32", optimizer="adam",
                learning_rate=1e-3, layout=layout, prediction=prediction, seed=0,
                candidates=candidates,
                explanation="dp2 x pp2 wins: the runner-up's 4-way all-reduce costs more than "
                            "the pipeline bubble.")


def make_metrics(plan: Plan, step_time_s: float, mem_bytes: int, layout=None) -> Metrics:
    return Metrics(plan_fingerprint=plan.fingerprint() if layout is None else "other",
                   model_fingerprint=plan.model_fingerprint, world_size=plan.world_size,
                   layout=layout or plan.layout, backend="gloo", device="cpu", steps=5,
                   warmup_steps=1, losses=(5.0, 4.9, 4.8, 4.7, 4.6),
                   step_times_s=(step_time_s,) * 4, step_time_s=step_time_s,
                   peak_memory_bytes=(mem_bytes,) * plan.world_size,
                   memory_measure="test", tokens_per_s=1.0, torch_version="test",
                   created_utc="")


# --------------------------------------------------------------------------------------------
# Trace
# --------------------------------------------------------------------------------------------
def test_chrome_trace_has_one_process_per_rank_and_one_thread_per_stream():
    from planner.report.trace import chrome_trace

    plan = make_plan()
    doc = json.loads(json.dumps(chrome_trace(plan.prediction)))  # JSON-clean
    events = doc["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    assert len(complete) == len(plan.prediction.timeline)
    names = {(e["pid"], e["args"]["name"]) for e in events if e.get("name") == "process_name"}
    assert names == {(0, "rank 0 (stage 0)"), (1, "rank 1 (stage 1)"),
                     (2, "rank 2 (stage 0)"), (3, "rank 3 (stage 1)")}
    threads = {(e["pid"], e["tid"], e["args"]["name"]) for e in events
               if e.get("name") == "thread_name"}
    assert threads == {(r, t, s) for r in range(4) for t, s in enumerate(("compute", "comm"))}
    # Rank 1 (stage 1) starts its first forward one forward (1 ms = 1000 us) after rank 0.
    f0 = [e for e in complete if e["pid"] == 1 and e["name"] == "F0 stage1"][0]
    assert f0["ts"] == pytest.approx(1000.0) and f0["dur"] == pytest.approx(1000.0)
    assert f0["tid"] == 0 and f0["cat"] == "forward"
    ar = [e for e in complete if e["name"].startswith("all_reduce")]
    assert {e["tid"] for e in ar} == {1} and {e["cat"] for e in ar} == {"dp comm"}


@pytest.mark.parametrize("stream,name,kind", [
    ("compute", "F3 stage1", "forward"), ("compute", "B0 block2", "backward"),
    ("compute", "W2 stage0", "weight grad"), ("compute", "recompute F1", "recompute"),
    ("compute", "optimizer", "optimizer"), ("comm", "all_reduce dp bucket3", "dp comm"),
    ("comm", "all_reduce tp block1", "tp comm"), ("comm", "send F0", "pp comm"),
    ("comm", "all_gather b3 c0", "dp comm"), ("comm", "reduce_scatter b1 c0", "dp comm"),
    ("comm", "ps push", "dp comm"), ("p2p", "send act3 c1", "pp comm"),
    ("compute", "I2 c0", "backward"), ("compute", "all_to_all x", "comm"),
    ("compute", "loss", "other")])
def test_op_kind(stream, name, kind):
    from planner.report.trace import op_kind

    assert op_kind(TimelineEvent(0, stream, name, 0.0, 1.0)) == kind


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------
def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def render(tmp_path, plan=None, **kw):
    from planner.report.html import build_report

    return build_report(plan or make_plan(), str(tmp_path / "report"), **kw)


def test_report_is_self_contained_with_every_section(tmp_path):
    plan = make_plan()
    files = render(tmp_path, plan, metrics=[("m.json", make_metrics(plan, 0.02, 30 * MIB))])
    page = open(files.html, encoding="utf-8").read()
    # No network: every src/href is a data: URI or a relative path beside the report.
    for url in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert url.startswith("data:") or not re.match(r"^[a-z]+:", url), url
    imgs = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(imgs) == 5  # timeline, memory, candidates, breakdown, predicted-vs-measured
    for data in imgs:
        w, h = _png_size(base64.b64decode(data))
        assert w > 100 and h > 100
    for stem in ("timeline", "memory", "candidates", "breakdown", "measured"):
        for ext in ("png", "svg"):
            assert os.path.getsize(tmp_path / "report" / f"{stem}.{ext}") > 0
    assert os.path.exists(files.trace) and 'href="trace.json"' in page
    # Only the report's directory was written: no temporary directory is left beside it.
    assert sorted(os.listdir(tmp_path)) == ["report"]
    assert plan.explanation.split(":")[0] in page
    assert "Runner-up: <b>dp=4 tp=1 pp=1 mb=1x2</b>" in page
    # The runner-up's largest loss is its all-reduce: 8 * 0.5 - 0.5 = 3.5 ms more.
    assert "3.5" in page.split("Runner-up:")[1].split("</table>")[0]
    # Predicted 25 ms... measured 20 ms: the error column shows +x%.
    err = 100 * (plan.prediction.step_time_s - 0.02) / 0.02
    assert f"{err:,.4g}" in page


def test_report_without_candidates_or_timeline_still_renders(tmp_path):
    from dataclasses import replace

    plan = make_plan(with_candidates=False)
    plan = replace(plan, prediction=replace(plan.prediction, timeline=()))
    files = render(tmp_path, plan)
    page = open(files.html, encoding="utf-8").read()
    assert files.trace == "" and "carries no timeline" in page and "no runner-up" in page
    assert len(re.findall(r"<img ", page)) == 2  # memory and the plan's own breakdown


def test_report_metrics_of_a_candidate_compare_with_that_candidate(tmp_path):
    plan = make_plan()
    runner = plan.candidates[1]
    files = render(tmp_path, plan, metrics=[
        ("runner.json", make_metrics(plan, runner.step_time_s / 1.25, 50 * MIB, runner.layout))])
    page = open(files.html, encoding="utf-8").read()
    assert "runner.json" in page and f"{25.0:,.4g}" in page  # predicted 1.25x measured: +25%


def test_report_shows_validation_statistics(tmp_path):
    plan = make_plan()
    row = ValidationRow(plan.layout, "pick", 1, 0.025, 30 * MIB, {"compute": 0.02},
                        measured_step_time_s=0.02, measured_peak_memory_bytes=40 * MIB,
                        step_time_error_pct=25.0, memory_error_pct=-25.0, memory_measure="rss")
    bad = ValidationRow(plan.candidates[2].layout, "sample", 3, 0.05, 30 * MIB, {},
                        status="executor failed: exit 1")
    v = Validation("gpt-tiny", "test-cpu", 4, 8, 5, 1, (row, bad), 25.0, 25.0, None, 0.0,
                   25.0, 25.0)
    page = open(render(tmp_path, plan, validation=v).html, encoding="utf-8").read()
    assert "median |error| step time" in page and "25.0%" in page
    assert "executor failed: exit 1" in page and "n/a" in page


def test_report_cli_writes_files_and_refuses_foreign_metrics(tmp_path, capsys):
    plan = make_plan()
    plan_path, out = tmp_path / "plan.json", tmp_path / "r" / "plan"
    plan.save(str(plan_path))
    trace_dir = tmp_path / "traces"
    trace_dir.mkdir()
    (trace_dir / "rank0.json").write_text("{}")
    assert main(["report", "--plan", str(plan_path), "--out", str(out),
                 "--trace-dir", str(trace_dir)]) == 0
    page = (out / "index.html").read_text()
    assert "../../traces/rank0.json" in page
    capsys.readouterr()
    foreign = make_metrics(plan, 0.02, MIB, Layout.make(dp=2, tp=2, microbatch_size=4))
    mpath = tmp_path / "foreign.json"
    foreign.save(str(mpath))
    assert main(["report", "--plan", str(plan_path), "--metrics", str(mpath),
                 "--out", str(out)]) == 2
    assert "match neither this plan" in capsys.readouterr().err


def test_report_command_imports_no_pandas_or_matplotlib_at_cli_start():
    import subprocess
    import sys

    code = ("import sys; from planner import cli; cli.build_parser(['report']); "
            "print(sorted(m for m in ('pandas', 'matplotlib', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# The page in a real browser
# --------------------------------------------------------------------------------------------
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
# Playwright drives the system chromium: no browser download (never `playwright install`), no
# network, nothing left running.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]


def find_chromium() -> str | None:
    for path in CHROMIUM:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("chromium")


def test_report_in_headless_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed here (CI installs it: .ci/install-chromium.sh)")
    plan = make_plan()
    files = render(tmp_path, plan, metrics=[("m.json", make_metrics(plan, 0.02, 30 * MIB))])
    embedded = [_png_size(base64.b64decode(d)) for d in re.findall(
        r'<img src="data:image/png;base64,([^"]+)"', open(files.html, encoding="utf-8").read())]
    shot = tmp_path / "report-screenshot.png"
    # Console errors and asserts (Playwright also reports the browser's own log errors, e.g. a
    # refused load, as console errors), uncaught exceptions, failed loads, every request.
    errors, urls = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=binary, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1024})
            page.set_default_timeout(60_000)
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "assert") else None)
            page.on("pageerror", lambda e: errors.append(f"exception: {e}"))
            page.on("requestfailed", lambda r: errors.append(f"load failed: {r.url[:200]} "
                                                             f"{r.failure}"))
            page.on("crash", lambda _: errors.append("page crashed"))
            page.on("request", lambda r: urls.append(r.url))
            page.goto("file://" + os.path.abspath(files.html), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, "
                "i.naturalHeight])")
            title = page.title()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert len(images) == 5, images
    assert all(done and w > 0 and h > 0 for _, done, w, h in images), images
    # Each image decoded at the size of the PNG embedded for it.
    assert [(w, h) for _, _, w, h in images] == embedded, (images, embedded)
    assert title.startswith("planner report: gpt-tiny")
    # Nothing but the file itself and its data: URIs was requested (no network).
    assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls
    w, h = _png_size(shot.read_bytes())
    assert w > 500 and h > 1000  # the whole page, not an empty viewport
    keep = os.environ.get("PLANNER_KEEP_SCREENSHOT")
    if keep:
        os.makedirs(keep, exist_ok=True)
        shutil.copy(shot, os.path.join(keep, "report-screenshot.png"))
