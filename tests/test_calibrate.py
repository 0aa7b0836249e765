"""Calibration: the fit recovers known figures; the shipped A100 profile's errors reproduce.

tests/data/a100_iteration_times.csv is an unchanged copy of
../shared/data/a100-single-node/megatron_deepspeed_iteration_times.csv (VIA-Research/vTrain,
MIT-style licence), so these tests run without ../shared; the shared file is used when present.
"""
import json
import os
import random

import numpy as np
import pytest

from planner import calibrate as cal, devices
from planner.errors import PlannerError

HERE = os.path.dirname(__file__)
SHARED = os.path.join(HERE, "..", "..", "shared", "data", "a100-single-node",
                      "megatron_deepspeed_iteration_times.csv")
LOCAL = os.path.join(HERE, "data", "a100_iteration_times.csv")
DATA = SHARED if os.path.exists(SHARED) else LOCAL


def test_local_copy_is_the_shared_file():
    if not os.path.exists(SHARED):
        pytest.skip("../shared not present")
    with open(SHARED, "rb") as a, open(LOCAL, "rb") as b:
        assert a.read() == b.read()


def test_nelder_mead_finds_the_rosenbrock_minimum():
    def rosen(x):
        return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
    x, fx = cal.nelder_mead(rosen, [-1.2, 1.0], step=0.5, max_iter=5000, tol=1e-14)
    assert np.allclose(x, [1.0, 1.0], atol=1e-3) and fx < 1e-6


def test_split_is_a_fixed_random_half():
    rows = list(range(101))
    a, b = cal.split(rows, seed=3)
    assert sorted(a + b) == rows and len(a) == 50
    assert cal.split(rows, seed=3) == (a, b) and cal.split(rows, seed=4) != (a, b)


def test_fit_recovers_known_figures_on_synthetic_runs():
    """Times made by the simulator from known figures; the fit starts 30-50% off."""
    rows = cal.load_rows(DATA)
    pick = [r for r in rows if r.num_layers == 12 and r.global_batch <= 16][::7][:24]
    predict = cal.SimulatorPredictor("full")
    truth = devices.load("profiles/a100-sxm4-80gb.json").with_values(
        matmul_efficiency_max=0.7, matmul_efficiency_scale_flops=5e9, memory_efficiency=0.8,
        kernel_overhead_s=2e-5, host_overhead_s=8e-5, microbatch_overhead_s=2e-3)
    synthetic = [r._replace(time_s=predict(r, truth)) for r in pick]
    assert len({(r.tp, r.pp, r.microbatch_size) for r in synthetic}) > 8
    start = truth.with_values(matmul_efficiency_max=0.5, host_overhead_s=6e-5,
                              microbatch_overhead_s=1e-3)
    names = ("matmul_efficiency_max", "host_overhead_s", "microbatch_overhead_s")
    fitted, loss = cal.fit(synthetic, predict, start, names)
    for n in names:
        assert getattr(fitted, n).value == pytest.approx(getattr(truth, n).value, rel=0.02), n
    assert loss < 1e-6


def test_shipped_a100_profile_heldout_errors_reproduce():
    dm = devices.load("profiles/a100-sxm4-80gb.json")
    c = dm.calibration
    assert c is not None, "profiles/a100-sxm4-80gb.json has not been calibrated"
    assert all(getattr(dm, n).source.startswith("fitted") for n in devices.FITTED)
    rows = cal.load_rows(DATA)
    train, held = cal.split(rows, c.split_seed)
    assert (len(train), len(held)) == (c.train_rows, c.heldout_rows)
    predict = cal.SimulatorPredictor(**c.predictor)
    errors = cal.evaluate(held, predict, dm)
    assert np.median(errors) == pytest.approx(c.heldout_median_abs_pct_error, abs=0.01)
    assert np.max(errors) == pytest.approx(c.heldout_max_abs_pct_error, abs=0.01)


def test_cli_reproduces_the_calibrated_predictions_exactly(tmp_path, capsys):
    """One costing path: `planner simulate` with the flags of a calibration row predicts exactly
    what the calibration predicted for it (a sample of rows of every tp, pp and micro-batch)."""
    from planner import cli
    from planner.serde import write_json
    dm = devices.load("profiles/a100-sxm4-80gb.json")
    settings = dm.calibration.predictor
    assert (settings["implementation"], settings["partition"]) == ("megatron", "even")
    predict = cal.SimulatorPredictor(**settings)
    rows = cal.load_rows(DATA)
    by_shape: dict = {}
    for r in rows:
        by_shape.setdefault((r.tp, r.pp, r.dp > 1, r.microbatch_size > 1), []).append(r)
    pick = [random.Random(0).choice(group) for _, group in sorted(by_shape.items())]
    assert len(pick) >= 12
    for row in pick:
        arch = tmp_path / f"gpt-l{row.num_layers}-h{row.hidden_size}.json"
        write_json(str(arch), predict.architecture(row))
        rc = cli.main(["simulate", *predict.cli_args(row, str(arch)), "--format", "json",
                       "--out", str(tmp_path / "plan.json")])
        assert rc == 0, capsys.readouterr().err
        got = json.loads(capsys.readouterr().out)
        assert got["step_time_s"] == predict(row, dm), row
        assert (got["implementation"], got["partition"]) == ("megatron", "even")


def test_h100_profile_carries_the_a100_efficiencies_and_says_so():
    a100, h100 = (devices.load(f"profiles/{n}.json") for n in ("a100-sxm4-80gb", "h100-sxm5-80gb"))
    for n in devices.FITTED:
        assert getattr(h100, n).value == getattr(a100, n).value
        assert "no H100 data" in getattr(h100, n).source
    assert h100.peak("bf16-mixed") == 989e12
    # the ceilings are each device's own published figure, not fitted nor carried over
    for dm, got, peak in ((a100, 271.2, 312.0), (h100, 794.5, 989.0)):
        assert dm.matmul_efficiency_max.value == pytest.approx(got / peak)
        assert dm.matmul_efficiency_max.source.startswith("published")


def test_bad_data_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "times.csv"
    bad.write_text("gpus,batch\n1,2\n")
    with pytest.raises(PlannerError, match="times.csv: header"):
        cal.load_rows(str(bad))
    with open(LOCAL, encoding="utf-8-sig") as fh:
        header = fh.readline()
    bad.write_text(header + "8,16,1,1024,16,24,1024,2,2,1,100.0\n")   # 2*2*1 != 8 GPUs
    with pytest.raises(PlannerError, match="line 2: tp\\*dp\\*pp != GPUs"):
        cal.load_rows(str(bad))
    with pytest.raises(PlannerError, match="no such file"):
        cal.load_rows(str(tmp_path / "none.csv"))
