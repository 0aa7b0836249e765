"""Fit a device model's efficiency figures to measured training-step times.

The data (``../shared/data/a100-single-node/megatron_deepspeed_iteration_times.csv``) are
Megatron-DeepSpeed iteration times of GPT models on 2-8 A100s with their layouts. Each row's
prediction comes from a ``predict(row, device_model) -> seconds`` function -- in
``benchmarks/calibrate_a100.py`` the project's simulator on that layout -- so the figures fitted
here are the ones the planner uses. The fit:

1. splits the rows at random into halves (fixed seed): fit on one, report on the other;
2. minimises the mean squared log ratio of predicted to measured time over the fitted figures,
   each mapped to an unbounded coordinate (log for positive figures, logit for efficiencies), by
   Nelder-Mead (Nelder & Mead, Computer Journal 1965; ``scipy.optimize.minimize`` with the
   standard non-adaptive coefficients 1, 2, 0.5, 0.5) restarted from its best point until it
   stops improving;
3. reports median and maximum absolute percentage error on the held-out half.
"""
from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from planner.devices import FITTED as FITTED_NAMES, DeviceModel
from planner.errors import PlannerError


class Row(NamedTuple):
    """One measured run (units in names; the CSV has ms)."""
    gpus: int
    global_batch: int
    microbatch_size: int
    hidden_size: int
    num_heads: int
    num_layers: int
    seq_len: int
    tp: int
    dp: int
    pp: int
    time_s: float

    @property
    def num_microbatches(self) -> int:
        return self.global_batch // (self.dp * self.microbatch_size)


CSV_COLUMNS = ("# GPUs", "global batch", "micro batch", "hidden size", "attention heads",
               "# layers", "sequence length", "tensor parallelism", "data parallelism",
               "pipeline parallelism", "iteration time (ms)")


def load_rows(path: str) -> list[Row]:
    """Read the iteration-time CSV; every row must be a consistent layout."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = [c.strip() for c in next(reader)]
            if tuple(header) != CSV_COLUMNS:
                raise PlannerError(f"{path}: header {header} is not {list(CSV_COLUMNS)}")
            rows = []
            for i, rec in enumerate(reader, start=2):
                try:
                    *ints, ms = rec
                    row = Row(*(int(x) for x in ints), float(ms) / 1e3)
                except ValueError:
                    raise PlannerError(f"{path}: line {i}: expected 10 integers and a time in "
                                       f"ms, got {rec}") from None
                if row.tp * row.dp * row.pp != row.gpus or row.num_microbatches < 1 or \
                        row.global_batch % (row.dp * row.microbatch_size):
                    raise PlannerError(f"{path}: line {i}: tp*dp*pp != GPUs or the global "
                                       f"batch does not split into micro-batches: {rec}")
                rows.append(row)
    except FileNotFoundError:
        raise PlannerError(f"{path}: no such file") from None
    return rows


def split(rows: Sequence, seed: int = 0) -> tuple[list, list]:
    """A random half to fit on and the other half to report on (``random.Random(seed)``)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    half = len(rows) // 2
    return [rows[i] for i in sorted(order[:half])], [rows[i] for i in sorted(order[half:])]


def abs_pct_errors(predicted: Sequence[float], measured: Sequence[float]) -> np.ndarray:
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    return 100.0 * np.abs(p - m) / m


def nelder_mead(f: Callable[[np.ndarray], float], x0: Sequence[float], step: float = 0.3,
                max_iter: int = 1000, tol: float = 1e-7) -> tuple[np.ndarray, float]:
    """Minimise ``f`` from ``x0`` with scipy's Nelder-Mead (standard coefficients: reflection 1,
    expansion 2, contraction 0.5, shrink 0.5). The first simplex is ``x0`` plus ``step`` along
    each axis (the coordinates are logs and logits, so an absolute step suits them better than
    scipy's 5% of each value); it stops when the simplex's values differ by at most ``tol``
    (``xatol`` is infinite: only the loss spread decides) or after ``max_iter`` iterations."""
    from scipy.optimize import minimize   # ~0.3 s to import: only when fitting

    x0 = np.asarray(x0, float)
    simplex = np.vstack([x0, x0 + step * np.eye(len(x0))])
    res = minimize(f, x0, method="Nelder-Mead",
                   options={"initial_simplex": simplex, "maxiter": max_iter,
                            "xatol": np.inf, "fatol": tol})
    return res.x, float(res.fun)


# Figures a fit may vary, and how each maps to an unbounded coordinate.
UNIT = ("matmul_efficiency_max", "memory_efficiency")


def to_coord(name: str, value: float) -> float:
    if name in UNIT:
        return math.log(value / (1 - value))
    return math.log(value)


def from_coord(name: str, x: float) -> float:
    if name in UNIT:
        return 1 / (1 + math.exp(-x))
    return math.exp(min(x, 700.0))


def fit(rows: Sequence[Row], predict: Callable[[Row, DeviceModel], float], start: DeviceModel,
        names: Sequence[str], restarts: int = 3) -> tuple[DeviceModel, float]:
    """Fit figures ``names`` of ``start`` to ``rows``; returns the fitted model and the training
    mean squared log error. Nelder-Mead is local: ``fit_multistart`` tries several starts."""
    measured = np.array([r.time_s for r in rows])

    def model_at(x):
        return start.with_values(**{n: from_coord(n, v) for n, v in zip(names, x)})

    def loss(x):
        dm = model_at(x)
        pred = np.array([predict(r, dm) for r in rows])
        if not np.all(np.isfinite(pred)) or np.any(pred <= 0):
            return 1e9
        return float(np.mean(np.log(pred / measured) ** 2))

    x = np.array([to_coord(n, getattr(start, n).value) for n in names])
    best = loss(x)
    for _ in range(restarts):
        x_new, val = nelder_mead(loss, x)
        improved = val < best - 1e-9
        x, best = (x_new, val) if val <= best else (x, best)
        if not improved:
            break
    return model_at(x), best


def fit_multistart(rows: Sequence[Row], predict, starts: Sequence[DeviceModel],
                   names: Sequence[str]) -> tuple[DeviceModel, float]:
    """The best (lowest training loss) of ``fit`` from each of ``starts``."""
    return min((fit(rows, predict, s, names) for s in starts), key=lambda pair: pair[1])


class Result(NamedTuple):
    model: DeviceModel
    train_rows: int
    heldout_rows: int
    train_errors: np.ndarray
    heldout_errors: np.ndarray

    @property
    def heldout_median(self) -> float:
        return float(np.median(self.heldout_errors))

    @property
    def heldout_max(self) -> float:
        return float(np.max(self.heldout_errors))


def evaluate(rows: Sequence[Row], predict, dm: DeviceModel) -> np.ndarray:
    return abs_pct_errors([predict(r, dm) for r in rows], [r.time_s for r in rows])


def calibrate(rows: Sequence[Row], predict, start: DeviceModel, names: Sequence[str],
              seed: int = 0) -> Result:
    """Fit on a random half (``seed``), evaluate on the other half."""
    train, heldout = split(rows, seed)
    dm, _ = fit(train, predict, start, names)
    return Result(dm, len(train), len(heldout), evaluate(train, predict, dm),
                  evaluate(heldout, predict, dm))


# --------------------------------------------------------------------------------------------
# Predicting a measured Megatron-DeepSpeed run through the command line's own costing path
# --------------------------------------------------------------------------------------------
GPT2_VOCAB = 50257      # the GPT-2 BPE vocabulary Megatron's GPT examples train with


class SimulatorPredictor:
    """``predict(row, device_model) -> seconds`` exactly as ``planner simulate`` costs the row.

    A row becomes the ``planner.inputs.PlanInputs`` that ``planner simulate`` builds from
    ``cli_args(row, model_path)`` (``--implementation megatron --partition even``, the row's
    layout, 1F1B, dgx-a100-80gb), with the device model being fitted in place of the one the
    cluster names; its block costs (``PlanInputs.block_costs``) and ``RunSpec``
    (``planner.planfile.run_spec``) go to ``planner.sim.evaluate``. So what the calibration
    predicts is what a user gets from the command line (tests/test_calibrate.py checks it).
    ``recompute`` is the assumption about the runs ("none", "selective", "full"): DeepSpeed's
    pipeline engine runs 1F1B; without pipelining the micro-batches are gradient accumulation.
    """

    def __init__(self, recompute: str = "none", implementation: str = "megatron",
                 partition: str = "even", cluster: str = "dgx-a100-80gb",
                 dtype: str = "bf16-mixed", optimizer: str = "adam"):
        from planner.clusters import resolve_cluster
        self.recompute, self.implementation, self.partition = recompute, implementation, partition
        self.cluster_name, self.dtype, self.optimizer = cluster, dtype, optimizer
        self.cluster = resolve_cluster(cluster)
        self._comm: dict = {}
        self._blocks_for, self._blocks = None, {}

    def settings(self) -> dict[str, str]:
        """What reproduces this predictor (``Calibration.predictor``)."""
        return {"recompute": self.recompute, "implementation": self.implementation,
                "partition": self.partition, "cluster": self.cluster_name, "dtype": self.dtype,
                "optimizer": self.optimizer}

    def spec(self, row: Row):
        from planner.specs import ModelSpec
        return ModelSpec(f"megatron-gpt-l{row.num_layers}-h{row.hidden_size}", "gpt",
                         num_layers=row.num_layers, hidden_size=row.hidden_size,
                         num_heads=row.num_heads, seq_len=row.seq_len, vocab_size=GPT2_VOCAB)

    def architecture(self, row: Row) -> dict:
        """The ``--model`` architecture file of the row (``planner.models.load_architecture``)."""
        spec = self.spec(row)
        return {"name": spec.name, "family": "gpt", "num_layers": spec.num_layers,
                "hidden_size": spec.hidden_size, "num_heads": spec.num_heads,
                "seq_len": spec.seq_len, "vocab_size": spec.vocab_size}

    def cli_args(self, row: Row, model_path: str) -> list[str]:
        """The ``planner simulate`` flags that predict ``row`` (the model in ``model_path``)."""
        return ["--model", model_path, "--cluster", self.cluster_name, "--gpus", str(row.gpus),
                "--global-batch", str(row.global_batch), "--dp", str(row.dp), "--tp",
                str(row.tp), "--pp", str(row.pp), "--microbatch-size",
                str(row.microbatch_size), "--schedule", "1f1b", "--recompute", self.recompute,
                "--implementation", self.implementation, "--partition", self.partition,
                "--dtype", self.dtype, "--optimizer", self.optimizer]

    def inputs(self, row: Row, dm: DeviceModel | None = None):
        from planner.inputs import PlanInputs
        return PlanInputs(self.spec(row), self.cluster.with_size(row.gpus), row.gpus,
                          row.global_batch, self.dtype, self.optimizer, 1e-3, 0, None, "",
                          implementation=self.implementation, partition=self.partition,
                          device_model=dm)

    def layout(self, row: Row):
        from planner.specs import Layout
        return Layout.make(dp=row.dp, tp=row.tp, pp=row.pp, microbatch_size=row.microbatch_size,
                           num_microbatches=row.num_microbatches, schedule="1f1b",
                           recompute=self.recompute)

    def __call__(self, row: Row, dm: DeviceModel) -> float:
        from planner import sim
        from planner.planfile import run_spec
        inp = self.inputs(row, dm)
        layout = self.layout(row)
        key = (row.gpus, row.dp, row.tp, row.pp)
        if key not in self._comm:
            self._comm[key] = sim.default_comm_time(inp.cluster, layout)
        if self._blocks_for is not dm:      # one fit step: rows share block costs
            self._blocks_for, self._blocks = dm, {}
        bkey = (inp.model, row.microbatch_size)
        blocks = self._blocks.get(bkey)
        if blocks is None:
            blocks = self._blocks[bkey] = inp.block_costs(row.microbatch_size)
        _, pred = sim.evaluate(run_spec(inp), blocks, layout, self._comm[key], timeline=False)
        return pred.step_time_s


def sensitivity(rows: Sequence[Row], predict, dm: DeviceModel, names: Sequence[str],
                rel: float = 0.1) -> dict[str, dict[str, float]]:
    """How much the median absolute % error on ``rows`` (the held-out half) moves when one
    figure moves by -``rel`` and +``rel`` of its value, the others as they are: for each name,
    {"-10%": change, "+10%": change} in percentage points. A figure whose moves change nothing
    is one the data does not identify."""
    base = float(np.median(evaluate(rows, predict, dm)))
    out = {}
    for name in names:
        value = getattr(dm, name).value
        moved = {}
        for sign in (-1, 1):
            v = value * (1 + sign * rel)
            if name in UNIT:
                v = min(v, 1.0)
            err = float(np.median(evaluate(rows, predict, dm.with_values(**{name: v}))))
            moved[f"{sign * rel:+.0%}"] = round(err - base, 3)
        out[name] = moved
    return out


def fitted_profile(result: Result, data: str, date: str, seed: int, assumptions: dict,
                   predictor: dict, alternatives: dict[str, "Result"] | None = None,
                   train_losses: dict[str, float] | None = None,
                   sensitivities: dict[str, dict[str, float]] | None = None) -> DeviceModel:
    """The fitted model with each fitted figure's source and the calibration record."""
    from dataclasses import replace

    from planner.devices import Calibration
    dm = result.model
    source = f"fitted on {data}, {date} (planner.calibrate, benchmarks/calibrate_a100.py)"
    dm = replace(dm, **{n: replace(getattr(dm, n), source=source) for n in FITTED_NAMES})
    alts = alternatives or {}
    cal = Calibration(
        data=data, date=date,
        method="Nelder-Mead on the mean squared log(predicted/measured) of a random half of the "
               "rows; errors on the other half; predictions through planner simulate's costing "
               "(planner.inputs.PlanInputs, planner.planfile.run_spec, planner.sim) with the "
               "predictor's flags; the matmul ceiling is not fitted (the data cannot identify "
               "it: see its source)",
        split_seed=seed, train_rows=result.train_rows, heldout_rows=result.heldout_rows,
        train_median_abs_pct_error=round(float(np.median(result.train_errors)), 3),
        heldout_median_abs_pct_error=round(result.heldout_median, 3),
        heldout_max_abs_pct_error=round(result.heldout_max, 3),
        assumptions=dict(assumptions), predictor={k: str(v) for k, v in predictor.items()},
        alternatives_heldout_median_abs_pct_error={
            k: round(r.heldout_median, 3) for k, r in alts.items()} or None,
        alternatives_heldout_max_abs_pct_error={
            k: round(r.heldout_max, 3) for k, r in alts.items()} or None,
        alternatives_train_loss={k: round(v, 6) for k, v in (train_losses or {}).items()} or None,
        sensitivity_heldout_median_abs_pct_error=sensitivities or None)
    return replace(dm, calibration=cal)


def carried_over(target: DeviceModel, fitted: DeviceModel, note: str) -> DeviceModel:
    """``target`` (another device, datasheet peaks) with ``fitted``'s efficiency figures, marked
    as carried over: what we can say about a device we have no measurements of."""
    from dataclasses import replace
    return replace(target, calibration=None, **{
        n: replace(getattr(fitted, n), source=f"assumed: {note} ({getattr(fitted, n).source})")
        for n in FITTED_NAMES})
