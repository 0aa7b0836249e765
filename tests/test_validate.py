"""planner validate: statistics by hand, layout sampling, calibration, and one real run."""
from __future__ import annotations

import json
import math
import os
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner import trials
from planner import validate as val
from planner.errors import PlannerError
from planner.specs import (Cluster, DeviceSpec, Layout, LinkLevel, Validation, ValidationRow)


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------
def test_pct_error_and_summary_by_hand():
    assert val.pct_error(12.0, 10.0) == pytest.approx(20.0)
    assert val.pct_error(8.0, 10.0) == pytest.approx(-20.0)
    errs = val.abs_pct_errors([12.0, 8.0, 10.5], [10.0, 10.0, 10.0])
    assert errs == pytest.approx([20.0, 20.0, 5.0])
    assert val.median_max(errs) == pytest.approx((20.0, 20.0))
    assert val.median_max([]) == (None, None)
    with pytest.raises(PlannerError, match="must be > 0"):
        val.pct_error(1.0, 0.0)


def test_snap_ties_joins_values_equal_up_to_rounding():
    assert val.snap_ties([30, 10, 20, 10 * (1 + 1e-12)]) == [30.0, 10.0, 20.0, 10.0]
    assert val.snap_ties([1.0, 1.0 + 1e-6]) == [1.0, 1.0 + 1e-6]


def test_spearman_by_hand():
    # Same order -> +1, reversed -> -1.
    assert val.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert val.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # No ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)). Ranks x 1..5, y 2,1,4,3,5: sum d^2 = 4.
    assert val.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(1 - 6 * 4 / (5 * 24))
    # Ties share their average rank: x ranks 1, 2.5, 2.5, 4 against 1..4 give
    # r = 4.5 / sqrt(4.5 * 5) = sqrt(0.9); a near-tie (rounding) is the same tie.
    assert val.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9**0.5)
    assert val.spearman([1, 2, 2 * (1 + 1e-12), 3], [1, 2, 3, 4]) == pytest.approx(0.9**0.5)
    # Undefined: one point, or a constant series.
    assert val.spearman([1], [2]) is None
    assert val.spearman([1, 2, 3], [5, 5, 5]) is None
    # Values equal up to float rounding are ties, not an order (0.1 + 0.2 != 0.3).
    assert val.spearman([0.1 + 0.2, 0.3, 0.3], [1, 2, 3]) is None
    with pytest.raises(ValueError, match="equal lengths"):
        val.spearman([1, 2], [1, 2, 3])


def test_spearman_undefined_cases_warn_nothing():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert val.spearman([], []) is None
        assert val.spearman([2.0, 2.0], [1.0, 3.0]) is None
        assert val.spearman([1.0, 2.0], [3.0, 3.0 * (1 + 1e-12)]) is None
        assert val.spearman([1.0, 2.0], [3.0, 4.0]) == pytest.approx(1.0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 100_000), min_size=2, max_size=12, unique=True))
def test_spearman_is_one_for_any_increasing_map(ints):
    xs = [i / 1000 for i in ints]  # distinct beyond the tie tolerance
    ys = [math.exp(x / 10) + 3 * x for x in xs]
    assert val.spearman(xs, ys) == pytest.approx(1.0)
    assert val.spearman(xs, [-y for y in ys]) == pytest.approx(-1.0)


def test_regret():
    assert val.regret(10.0, [10.0, 12.0, 11.0]) == 0.0
    assert val.regret(12.0, [10.0, 12.0, 11.0]) == pytest.approx(0.2)


def _row(rank, role, pred, meas, status="ok", pmem=100, mmem=100):
    return ValidationRow(Layout.make(dp=1, microbatch_size=rank), role, rank, pred, pmem,
                         {"compute": pred}, status=status, measured_step_time_s=meas,
                         measured_peak_memory_bytes=mmem,
                         step_time_error_pct=val.pct_error(pred, meas) if meas else 0.0,
                         memory_error_pct=val.pct_error(pmem, mmem) if mmem else 0.0)


def test_summarise_covers_ok_rows_only():
    rows = [_row(1, "pick", 1.0, 1.25), _row(2, "top-k", 1.1, 1.0, pmem=150),
            _row(3, "sample", 1.5, 2.0),
            _row(4, "sample", 9.0, 0.0, status="executor exit 1: boom", mmem=0)]
    s = val.summarise(rows)
    # |errors| 20, 10, 25 -> median 20, max 25; pick 1.25 over best 1.0 -> regret 0.25.
    assert s["median_abs_pct_error"] == pytest.approx(20.0)
    assert s["max_abs_pct_error"] == pytest.approx(25.0)
    assert s["regret"] == pytest.approx(0.25)
    # predicted order 1.0 < 1.1 < 1.5, measured 1.25, 1.0, 2.0: ranks (1,2,3) vs (2,1,3).
    assert s["rank_correlation"] == pytest.approx(0.5)
    assert s["memory_median_abs_pct_error"] == pytest.approx(0.0)
    assert s["memory_max_abs_pct_error"] == pytest.approx(50.0)
    # Pick not measured: no regret.
    assert val.summarise([_row(1, "pick", 1, 0, "timed out", mmem=0)])["regret"] is None


def test_choose_layouts_top_k_then_seeded_sample():
    ranked = list(range(10))
    picks = val.choose_layouts(ranked, top_k=3, sample=2, seed=7)
    assert picks[:3] == [(0, "pick"), (1, "top-k"), (2, "top-k")]
    assert len(picks) == 5 and all(3 <= i < 10 and r == "sample" for i, r in picks[3:])
    assert picks == val.choose_layouts(ranked, top_k=3, sample=2, seed=7)
    assert val.choose_layouts(ranked[:2], top_k=3, sample=4) == [(0, "pick"), (1, "top-k")]
    with pytest.raises(PlannerError, match="--top-k"):
        val.choose_layouts(ranked, 0, 1)


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------
def test_critical_terms_leave_hidden_comm_out_and_sum_to_the_step():
    bd = {"compute": 8.0, "bubble": 1.0, "optimizer": 1.0, "dp_comm_exposed": 2.0,
          "dp_comm_hidden": 5.0, "tp_comm": 0.0}
    t = val.critical_terms(bd, 12.0)
    assert t == pytest.approx({"compute": 10.0, "comm": 2.0})
    # A breakdown that over-counts is rescaled to the step time, keeping proportions.
    assert val.critical_terms(bd, 6.0) == pytest.approx({"compute": 5.0, "comm": 1.0})


def test_fit_scales_recovers_known_scales():
    terms = [{"compute": c, "comm": m} for c, m in ((10, 1), (8, 3), (5, 5), (12, 0.5))]
    measured = [1.3 * t["compute"] + 2.0 * t["comm"] for t in terms]
    scales, notes = val.fit_scales(terms, measured)
    assert scales == pytest.approx({"compute": 1.3, "comm": 2.0})
    assert notes == []
    assert [val.apply_scales(t, scales) for t in terms] == pytest.approx(measured)


def test_fit_scales_keeps_unidentifiable_groups_at_one():
    terms = [{"compute": 10.0, "comm": 0.0}, {"compute": 20.0, "comm": 0.0}]
    scales, notes = val.fit_scales(terms, [15.0, 30.0])
    assert scales == pytest.approx({"compute": 1.5, "comm": 1.0})
    assert any("comm: zero in every run" in n for n in notes)
    # One run, two groups: only the larger is fitted, the other keeps its share at 1.
    scales, notes = val.fit_scales([{"compute": 10.0, "comm": 2.0}], [14.0])
    assert scales == pytest.approx({"compute": 1.2, "comm": 1.0})
    assert any("fitted compute only" in n for n in notes)


def test_fit_scales_refuses_a_negative_scale_and_refits_the_rest():
    # Comm grows while measured time shrinks: its least-squares scale is negative.
    terms = [{"compute": 10.0, "comm": 0.1}, {"compute": 10.0, "comm": 2.0},
             {"compute": 20.0, "comm": 0.1}]
    scales, notes = val.fit_scales(terms, [12.0, 10.0, 24.0])
    assert scales["comm"] == 1.0 and scales["compute"] > 0
    assert any("non-positive" in n for n in notes)


def test_calibrated_cluster_scales_links_and_efficiency():
    dev = DeviceSpec("gpu", 80 * 2**30, {"bfloat16": 1e15}, 2e12, compute_efficiency=0.5)
    link = LinkLevel("intra_node", 1e-5, 1e11, call_latency_s=2e-5)
    cl = Cluster("c", 1, 8, dev, link, link)
    out = val.calibrated_cluster(cl, {"compute": 1.25, "comm": 2.0}, False, "test")
    assert out.device.compute_efficiency == pytest.approx(0.4)
    assert out.intra_node.latency_s == pytest.approx(2e-5)
    assert out.intra_node.call_latency_s == pytest.approx(4e-5)
    assert out.intra_node.bandwidth_bytes_per_s == pytest.approx(5e10)
    assert out.intra_node.source.startswith("fitted")
    # Compute from a profile: the efficiency is not the knob; the profile is.
    same = val.calibrated_cluster(cl, {"compute": 1.25, "comm": 1.0}, True, "test")
    assert same.device.compute_efficiency == 0.5
    Cluster.from_dict(json.loads(json.dumps(out.to_dict())))  # still a valid cluster file


def test_validation_round_trips_through_json(tmp_path):
    rows = (_row(1, "pick", 1.0, 1.25), _row(2, "sample", 2.0, 0.0, "timed out", mmem=0))
    v = Validation("gpt-tiny", "localhost-cpu", 2, 8, 6, 2, rows,
                   **val.summarise(rows), created_utc="now")
    v.save(str(tmp_path / "v.json"))
    assert Validation.load(str(tmp_path / "v.json")) == v


# --------------------------------------------------------------------------------------------
# Running the executor
# --------------------------------------------------------------------------------------------
def test_run_executor_reports_the_error_line_and_kills_on_timeout(tmp_path):
    log = str(tmp_path / "x.log")
    fail = [sys.executable, "-c", "import sys; print('error: bad plan', file=sys.stderr); "
                                  "sys.exit(2)"]
    assert trials.run_executor(fail, log, 30) == f"executor exit 2: error: bad plan (log {log})"
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    assert trials.run_executor(hang, log, 0.5).startswith("timed out after")
    ok = [sys.executable, "-c", "print('fine')"]
    assert trials.run_executor(ok, log, 30) == "ok"


@pytest.mark.slow
def test_validate_end_to_end_on_two_ranks(tmp_path, capsys):
    """Profile mlp-tiny, run two of its layouts under torchrun (world 2), print JSON stats."""
    from planner.cli import main

    prof = str(tmp_path / "prof.json")
    assert main(["profile", "--model", "mlp-tiny", "--microbatch-size", "2", "--repeats", "3",
                 "--out", prof]) == 0
    capsys.readouterr()
    out = str(tmp_path / "v.json")
    rc = main(["validate", "--profile", prof, "--gpus", "2", "--global-batch", "4",
               "--top-k", "1", "--sample", "1", "--steps", "3", "--warmup", "1",
               "--timeout-s", "300", "--workdir", str(tmp_path / "w"), "--out", out,
               "--format", "json", "--calibrate", "--no-measure"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0, doc
    for key in ("median_abs_pct_error", "max_abs_pct_error", "rank_correlation", "regret",
                "rows", "calibration"):
        assert key in doc
    assert [r["role"] for r in doc["rows"]] == ["pick", "sample"]
    assert all(r["status"] == "ok" for r in doc["rows"]), doc["rows"]
    for r in doc["rows"]:
        assert r["measured_step_time_s"] > 0 and r["measured_peak_memory_bytes"] > 0
        assert r["step_time_error_pct"] == pytest.approx(
            val.pct_error(r["predicted_step_time_s"], r["measured_step_time_s"]))
    assert doc["regret"] >= 0
    v = Validation.load(out)
    assert v.world_size == 2 and len(v.rows) == 2
    assert os.path.exists(doc["calibration"]["cluster_path"])
    assert os.path.exists(doc["calibration"]["profile_path"])


def test_first_error_skips_torchrun_noise(tmp_path):
    log = tmp_path / "job.log"
    log.write_text("layout dp=1\nterminate called without an active exception\n"
                   "Traceback (most recent call last):\n  File \"x\", line 1\n"
                   "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
                   "====\nexecutor FAILED\n")
    assert trials.first_error(str(log)) == "terminate called without an active exception"
    log.write_text("Traceback\nValueError: bad shape\nerror: plan refused: tp 3\n")
    assert trials.first_error(str(log)) == "error: plan refused: tp 3"


def test_validate_cli_starts_cheap_and_refuses_bad_flags(capsys):
    import subprocess

    from planner.cli import main

    code = ("import sys; from planner import cli; cli.build_parser(['validate']); "
            "print(sorted(m for m in ('pandas', 'matplotlib', 'torch', 'numpy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert main(["validate", "--model", "gpt-tiny", "--global-batch", "8", "--steps", "2",
                 "--warmup", "2"]) == 2
    assert "--steps 2 must exceed --warmup 2" in capsys.readouterr().err
