"""planner converge: the corpus, the loss at a budget, bytes per step, the report section, the
command's refusals, and one short end-to-end run of two schemes."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from planner import converge as conv
from planner.cli import main
from planner.specs import CollectiveCount, Layout
from planner.specs.convergence import Convergence, ConvergenceRun


def test_stdlib_corpus_is_bytes_of_python_sources(tmp_path):
    path = str(tmp_path / "c.npy")
    what, n = conv.stdlib_corpus(path, 100_000)
    tokens = np.load(path)
    assert n == 100_000 == tokens.size and tokens.dtype == np.uint8
    assert "standard library" in what
    assert b"import" in tokens.tobytes()


def test_loss_at_budget_averages_the_steps_done_by_then():
    losses = [5.0, 4.0, 3.0, 2.0]
    ends = [1.0, 2.0, 3.0, 4.0]
    assert conv.loss_at(losses, ends, 3.5, 2) == 3.5
    assert conv.loss_at(losses, ends, 10.0, 3) == 3.0
    assert math.isnan(conv.loss_at(losses, ends, 0.5, 2))


class _Pred:
    def __init__(self, collectives):
        self.collectives = collectives


def test_bytes_per_step_spread_local_sgd_and_count_what_one_rank_sends():
    pred = _Pred((CollectiveCount("backward", "all_gather", "dp", 4, 1, 4000),
                  CollectiveCount("optimizer", "all_reduce", "dp", 4, 1, 8000, every_steps=8),
                  CollectiveCount("forward", "all_reduce", "tp", 2, 10, 100)))
    msg, wire = conv.dp_bytes_per_step(pred)
    assert msg == 4000 + 1000
    assert wire == pytest.approx(3000 + 2 * 3 / 4 * 1000)


def _convergence() -> Convergence:
    runs = []
    for i, scheme in enumerate(("allreduce", "topk-1%")):
        losses = tuple(6.0 - 0.1 * t * (1 - 0.3 * i) for t in range(20))
        ends = tuple(0.1 * (t + 1) * (1 - 0.2 * i) for t in range(20))
        runs.append(ConvergenceRun(
            scheme=scheme, flags=conv.SCHEMES[scheme], world_size=2,
            layout=Layout.make(dp=2, microbatch_size=4, **(
                {"compression": "topk", "compression_ratio": 0.01} if i else {})),
            plan_path="p.json", predicted_step_time_s=0.1, measured_step_time_s=0.1 - 0.02 * i,
            bytes_per_step=1e6 / (1 + 40 * i), wire_bytes_per_step=5e5, losses=losses,
            step_end_s=ends, loss_at_budget=conv.loss_at(losses, ends, 1.6, 5)))
    runs.append(ConvergenceRun(scheme="ps", flags=conv.SCHEMES["ps"], world_size=2,
                               layout=Layout.make(dp=2, microbatch_size=4), plan_path="q.json",
                               status="executor exit 1: error: boom"))
    return Convergence(model="gpt-tiny", corpus="test", corpus_bytes=1000, global_batch_size=8,
                       steps=21, smooth_steps=5, budget_s={"2": 1.6}, runs=tuple(runs),
                       learning_rate=1e-3, optimizer="adam")


def test_report_draws_every_scheme_on_the_same_axes(tmp_path, capsys):
    path = tmp_path / "conv.json"
    c = _convergence()
    c.save(str(path))
    assert Convergence.load(str(path)) == c
    out = tmp_path / "r"
    assert main(["report", "--convergence", str(path), "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert "Convergence under each data-parallel scheme" in page
    assert page.count("data:image/png;base64,") == 2
    # top-k: faster steps, less learned per step; all-reduce is lower at the budget
    assert "allreduce learned more per second" in page
    assert "not measured" not in page and "executor exit 1: error: boom" in page
    assert os.path.exists(out / "converge-w2.png") and os.path.exists(out / "converge-w2.svg")
    from planner.report.converge import verdict
    assert verdict(c, "2").startswith("Fastest step: topk-1%")


def test_report_needs_a_plan_or_a_convergence(capsys):
    assert main(["report"]) == 2
    assert "give --plan" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["--world-sizes", "3"], "dividing --global-batch 8"),
    (["--steps", "2"], "--steps must be >= 4"),
    (["--schemes", "nope"], "invalid choice"),
    (["--corpus", "/nonexistent.npy"], "no such file"),
])
def test_converge_refuses_bad_arguments(argv, words, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "planner.cli", "converge", *argv,
                           "--workdir", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr


@pytest.mark.slow
def test_converge_runs_two_schemes_end_to_end(tmp_path):
    """Short: 6 steps of two schemes at world 2 on 256 KiB of the standard library."""
    out = tmp_path / "conv.json"
    proc = subprocess.run(
        [sys.executable, "-m", "planner.cli", "converge", "--world-sizes", "2", "--steps", "6",
         "--schemes", "allreduce", "sign-1bit", "--corpus-bytes", str(256 * 1024),
         "--workdir", str(tmp_path), "--out", str(out)],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert [r["status"] for r in data["runs"]] == ["ok", "ok"]
    c = Convergence.load(str(out))
    for r in c.runs:
        assert len(r.losses) == len(r.step_end_s) == 5        # the counted last step left out
        assert r.predicted_step_time_s > 0 and r.measured_step_time_s > 0
        assert r.losses[0] == pytest.approx(math.log(512), rel=0.05)   # untrained: uniform
        assert r.measured_last_step_bytes == pytest.approx(r.bytes_per_step)
    # 1 bit + a 4-byte scale per 512 values, from each of 2 ranks, against 4 bytes a value
    assert c.runs[1].bytes_per_step == pytest.approx(c.runs[0].bytes_per_step * 2 * (1 / 32 + 1 / 512), rel=0.01)
    assert "world 2" in proc.stdout and "sign-1bit" in proc.stdout
