"""What a newcomer expects to see (issue 13): preset lists, parameter counts and per-rank memory
in every plan and report, honest noise (load, spreads, intervals, ties), charts scaled to what
they show, and writes that never leave half a result behind (a full disk included)."""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
from dataclasses import replace

import pytest

from planner import noise, outputs, serde
from planner.cli import main
from planner.errors import PlannerError
from planner.explain import explain, format_duration
from planner.specs import Layout, Metrics, Plan

GPU = ["--cluster", "dgx-a100-80gb"]


def run(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


# -- presets ----------------------------------------------------------------------------------
def test_models_and_clusters_list_presets_with_figures():
    from planner.clusters import PRESETS as CLUSTERS
    from planner.models import PRESETS as MODELS

    rc, out, _ = run(["models"])
    assert rc == 0
    for name in MODELS:
        assert name in out
    assert "175.24B" in out and "12.88B" in out            # gpt3-175b; mixtral's active
    rc, out, _ = run(["models", "--format", "json"])
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["llama3-8b"]["parameters"] == 8_030_261_248   # Meta's published 8.03B
    rc, out, _ = run(["clusters", "--format", "json"])
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows) == set(CLUSTERS)
    assert rows["dgx-a100-80gb"]["peak_flops_per_s"]["bfloat16"] == 312e12
    rc, out, _ = run(["clusters"])
    assert "A100-SXM4-80GB" in out and "312 bfloat16" in out


def test_help_lists_presets_and_simulate_defaults():
    from planner.cli import build_parser

    text = build_parser(["--help"]).format_help()
    assert "gpt3-175b" in text and "dgx-h100-80gb" in text
    parser = build_parser(["simulate"])
    sub = parser._subparsers._group_actions[0].choices["simulate"].format_help()
    for default in ("(default 1)", "(default 1f1b)", "(default 0)", "(default none)"):
        assert default in " ".join(sub.split()), default


# -- plans: parameters, memory table, throughput units, ties ----------------------------------
def test_plan_text_states_parameters_memory_table_and_ties(tmp_path):
    rc, out, _ = run(["plan", "--model", "gpt2-small", *GPU, "--gpus", "8", "--global-batch",
                      "64", "--out", str(tmp_path / "p.json")])
    assert rc == 0
    assert "parameters  163.04M (163,037,184)" in out
    header = next(line for line in out.splitlines() if "activations" in line).split()
    assert header[:8] == ["rank", "stage", "parameters", "gradients", "optimizer",
                          "activations", "buffers", "total"]
    assert "<- peak" in out and "tokens/s" in out
    assert "(+-3.2%: held-out median error of the A100-SXM4-80GB device model)" in out
    plan = Plan.load(str(tmp_path / "p.json"))
    from planner import devices
    a100 = devices.load(noise.A100_PROFILE).calibration
    assert plan.uncertainty == pytest.approx(a100.heldout_median_abs_pct_error / 100)
    assert plan.search_counts["enumerated"] > 0


def test_non_token_models_report_samples_per_second(tmp_path):
    from planner.models import resolve_model
    from planner.planfile import throughput

    plan = Plan.load(_simulated_plan(tmp_path))
    assert throughput(plan)[1] == "tokens/s"
    mlp = resolve_model("mlp-tiny")
    plan = replace(plan, model=mlp, model_fingerprint=mlp.fingerprint())
    rate, unit = throughput(plan)
    assert unit == "samples/s"
    assert rate == pytest.approx(plan.global_batch_size / plan.prediction.step_time_s)


def test_ties_within_the_band():
    assert noise.ties([1.0, 1.02, 1.05], 0.03) == [False, True, False]
    assert noise.ties([], 0.1) == []


def test_explain_calls_a_tie_and_names_the_band():
    from planner.specs import Prediction

    def pred(t):
        return Prediction(t, {"compute": t}, (), 1, 2, True, 1.0, 0.5, 0.0, (), "analytic")
    ranked = [(Layout.make(dp=8), pred(1.00)), (Layout.make(dp=4, tp=2), pred(1.01))]
    text = explain(ranked, band=0.03, band_source="a test band")
    assert "are a tie" in text and "+-3.0%" in text and "a test band" in text
    assert "beats" in explain(ranked, band=0.005)


def test_durations_are_written_in_seconds():
    assert format_duration(21.25) == "21.25 s" and format_duration(2.5) == "2.50 s"
    assert format_duration(0.0123) == "12.3 ms"


# -- honest noise -----------------------------------------------------------------------------
def test_load_note(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert "load average 9.0 on 2 cores" in noise.load_note()
    monkeypatch.setattr(os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    assert noise.load_note() == ""


def test_spread_note_and_quartiles():
    assert noise.spread_note("x", 0.01, 1.0) == ""
    assert "IQR 20% of the median" in noise.spread_note("x", 0.2, 1.0)
    assert noise.quartiles([3.0]) == (3.0, 3.0, 3.0)


def _simulated_plan(tmp_path) -> str:
    path = str(tmp_path / "plan.json")
    assert run(["simulate", "--model", "gpt2-small", *GPU, "--gpus", "8", "--global-batch",
                "16", "--dp", "8", "--out", path])[0] == 0
    return path


def _metrics(plan: Plan, times, load=0.0, cores=0) -> Metrics:
    return Metrics(plan.fingerprint(), plan.model_fingerprint, plan.world_size, plan.layout,
                   "nccl", "cuda", len(times) + 1, 1, (1.0,) * (len(times) + 1), tuple(times),
                   sorted(times)[len(times) // 2], (2**30,) * plan.world_size, "test", 1.0,
                   "test", "", load_average=load, cpu_count=cores)


def test_compare_shows_intervals_and_says_when_noisy(tmp_path):
    path = _simulated_plan(tmp_path)
    plan = Plan.load(path)
    t = plan.prediction.step_time_s
    _metrics(plan, [t * 0.99, t * 1.0, t * 1.01, t * 1.02]).save(str(tmp_path / "m.json"))
    rc, out, err = run(["compare", "--plan", path, "--metrics", str(tmp_path / "m.json")])
    assert rc == 0 and "IQR" in out and "within the noise" in out and err == ""
    _metrics(plan, [t * 2.0, t * 2.5, t * 3.0, t * 3.5], load=8.0, cores=2).save(
        str(tmp_path / "m.json"))
    rc, out, err = run(["compare", "--plan", path, "--metrics", str(tmp_path / "m.json")])
    assert "outside both intervals" in out
    assert "spread widely" in err and "load average 8.0 on 2 cores" in err


def tiny_profile(spread: float):
    from planner.models import resolve_model
    from planner.specs import BlockProfile, ModelProfile
    spec = resolve_model("gpt-tiny")
    blocks = tuple(BlockProfile(i, f"b{i}", k, 1e-3, 2e-3, spread * 1e-3, spread * 2e-3, 1e9,
                                10, 40, 1024, 512)
                   for i, k in enumerate(["embedding"] + ["block"] * 4 + ["head"]))
    return ModelProfile(spec, spec.fingerprint(), "cpu", "test", "float32", 1, 1, spec.seq_len,
                        "adam", blocks, 0.02, spread * 0.02, 1e-3, 5, 1, "test", "")


def test_profile_noise_notes(monkeypatch):
    from planner.commands.profile import noise_notes

    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    quiet = tiny_profile(spread=0.0)
    assert noise_notes(quiet) == []
    loud = tiny_profile(spread=0.5)
    notes = noise_notes(loud)
    assert any("whole step's timings spread widely" in n for n in notes)
    assert any("blocks' timings spread" in n for n in notes)


# -- the report -------------------------------------------------------------------------------
def test_report_states_parameters_counts_profiles_and_no_mfu(tmp_path):
    from test_report import make_plan as report_plan

    plan = replace(report_plan(), search_counts={"enumerated": 123, "refused": 4,
                                                 "simulated": 7, "memory_pruned": 1,
                                                 "not_fitting": 2, "dominated": 3,
                                                 "bounded_out": 106},
                   profile_path="profiles/a-b4.json", other_profile_paths=("profiles/a-b1.json",),
                   uncertainty=0.05, uncertainty_source="relative IQR of the profiled step")
    from planner.report.html import build_report
    files = build_report(plan, str(tmp_path / "rep"))
    page = open(files.html, encoding="utf-8").read()
    from planner.planfile import param_counts
    total, _ = param_counts(plan)
    assert f"{total / 1e6:.2f}M ({total:,})" in page                 # parameter count
    assert "123 layouts enumerated" in page and "106 cut by the step-time bound" in page
    assert "profiles/a-b4.json, profiles/a-b1.json" in page
    assert "n/a (no peak FLOP/s known for this device)" in page
    assert "+-5.0%" in page


def test_memory_chart_names_a_capacity_far_above_the_bars():
    import matplotlib.pyplot as plt
    from test_report import make_plan as report_plan

    from planner.report import plots

    plan = report_plan()
    big = replace(plan.prediction, device_memory_bytes=12 * 2**30)
    fig = plots.memory_figure(big)
    title = fig.axes[0].get_title()
    assert "off this scale" in title
    assert fig.axes[0].get_ylim()[1] < 100          # MiB: scaled to the bars, not 12 GiB
    plt.close(fig)
    fig = plots.memory_figure(plan.prediction)      # 64 MiB device, bars near it: drawn
    assert "off this scale" not in fig.axes[0].get_title()
    plt.close(fig)


def test_report_replaces_an_old_one_whole(tmp_path):
    from test_report import make_plan as report_plan

    from planner.report.html import build_report
    plan = report_plan()
    first = build_report(plan, str(tmp_path / "rep"))
    old = open(first.html, encoding="utf-8").read()
    second = build_report(replace(plan, explanation="a different explanation"),
                          str(tmp_path / "rep"))
    assert "a different explanation" in open(second.html, encoding="utf-8").read()
    assert old != open(second.html, encoding="utf-8").read()
    assert sorted(os.listdir(tmp_path)) == ["rep"]          # nothing left beside it


def test_report_failing_midway_leaves_the_old_report(tmp_path, monkeypatch):
    """A full disk while the figures are written: the earlier report stays as it was."""
    from test_report import make_plan as report_plan

    from planner.report import plots
    from planner.report.html import build_report
    plan = report_plan()
    build_report(plan, str(tmp_path / "rep"))
    before = {f: open(tmp_path / "rep" / f, "rb").read() for f in os.listdir(tmp_path / "rep")}

    def full(fig, stem):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(plots, "save", full)
    with pytest.raises(OSError):
        build_report(replace(plan, explanation="new"), str(tmp_path / "rep"))
    after = {f: open(tmp_path / "rep" / f, "rb").read() for f in os.listdir(tmp_path / "rep")}
    assert after == before and sorted(os.listdir(tmp_path)) == ["rep"]


def test_report_cli_turns_a_full_disk_into_one_line(tmp_path, monkeypatch):
    from planner.report import plots
    path = _simulated_plan(tmp_path)

    def full(fig, stem):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(plots, "save", full)
    rc, _, err = run(["report", "--plan", path, "--out", str(tmp_path / "rep")])
    assert rc == 2 and err.count("\n") == 1
    assert "No space left on device" in err and "nothing was written" in err
    assert not (tmp_path / "rep").exists()


# -- writes -----------------------------------------------------------------------------------
def test_write_json_disk_full_keeps_the_earlier_file(tmp_path, monkeypatch):
    path = tmp_path / "plan.json"
    serde.write_json(str(path), {"a": 1})

    real_fdopen = os.fdopen

    class Full(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fdopen(fd, *a, **k):
        os.close(fd)
        return Full()
    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(PlannerError, match="plan.json: cannot write \\(No space left on device"):
        serde.write_json(str(path), {"a": 2})
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["plan.json"]           # no temporary file left


def test_plan_disk_full_at_the_end_is_one_line(tmp_path, monkeypatch):
    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(serde, "write_text_atomic", full)
    rc, _, err = run(["plan", "--model", "gpt2-small", *GPU, "--gpus", "8", "--global-batch",
                      "16", "--out", str(tmp_path / "p.json")])
    assert rc == 2 and err.strip().endswith("cannot write (No space left on device)")
    assert os.listdir(tmp_path) == []


def test_replace_dir_swaps_whole_directories(tmp_path):
    old, new = tmp_path / "r", tmp_path / "new"
    old.mkdir()
    (old / "a").write_text("old")
    new.mkdir()
    (new / "b").write_text("new")
    outputs.replace_dir(str(new), str(old))
    assert os.listdir(old) == ["b"] and not new.exists()
    assert sorted(os.listdir(tmp_path)) == ["r"]


def test_report_counts_what_the_cli_printed(tmp_path):
    import re
    path = str(tmp_path / "p.json")
    rc, out, _ = run(["plan", "--model", "gpt2-small", *GPU, "--gpus", "8", "--global-batch",
                      "32", "--out", path])
    assert rc == 0
    cli = re.search(r"search\s+(\d+) layouts enumerated \((\d+) more left out.*?(\d+) simulated",
                    out)
    rc, _, _ = run(["report", "--plan", path, "--out", str(tmp_path / "rep")])
    page = (tmp_path / "rep" / "index.html").read_text()
    assert f"{int(cli.group(1)):,} layouts enumerated" in page
    assert f"{int(cli.group(2)):,} more left out" in page
    assert f"{int(cli.group(3)):,} simulated," in page
