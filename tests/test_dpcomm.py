"""Compressed exchanges, the stale parameter server and local SGD, one process: codecs against
reference implementations written here from the papers, wire sizes against the planner's
formulas, layout fields, refusals and the straggler model."""
from __future__ import annotations

import math
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from executor.parallel import gradcomp as codec
from planner import rules, sim
from planner.cost import gradcomp as fmt
from planner.cost.compute import BlockCost
from planner.errors import PlannerError
from planner.sim import stragglers
from planner.specs import DataParallel, Layout

from executor_helpers import GPT, make_plan


def qsgd_reference(v: np.ndarray, bits: int, u: np.ndarray) -> np.ndarray:
    """Alistarh et al. 2017, sec. 3.1, per bucket of 512: Q_s(v_i) = ||v|| sgn(v_i) xi_i / s,
    xi_i = l + 1 with probability |v_i| s / ||v|| - l (l its floor), else l."""
    s = 2 ** (bits - 1) - 1
    out = np.zeros_like(v)
    for b0 in range(0, len(v), 512):
        x, ub = v[b0:b0 + 512], u[b0:b0 + 512]
        norm = math.sqrt(float((x * x).sum()))
        if norm == 0:
            continue
        r = np.abs(x) / norm * s
        low = np.floor(r)
        xi = low + (ub < r - low)
        out[b0:b0 + 512] = norm * np.sign(x) * xi / s
    return out


def sign_reference(a: np.ndarray) -> np.ndarray:
    """Karimireddy et al. 2019 Alg. 1 with one scale per bucket of 512: ||a_b||_1 / |b| *
    sign(a) (bit 1 for a >= 0)."""
    out = np.empty_like(a)
    for b0 in range(0, len(a), 512):
        x = a[b0:b0 + 512]
        out[b0:b0 + 512] = np.abs(x).sum() / len(x) * np.where(x >= 0, 1.0, -1.0)
    return out


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("n", [1, 7, 1000, 1029])
def test_pack_unpack_round_trip(bits, n):
    codes = torch.randint(0, 2 ** bits, (n,), dtype=torch.int64)
    packed = codec.pack(codes, bits)
    assert packed.numel() == -(-n * bits // 8)
    assert torch.equal(codec.unpack(packed, bits, n), codes)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_qsgd_equals_the_reference_with_the_same_seed(bits):
    n, dtype = 1500, torch.float64
    v = torch.randn(n, dtype=dtype, generator=torch.Generator().manual_seed(3))
    v[512:1024] = 0.0                                 # an all-zero bucket stays zero
    seed = fmt.stream_seed(0, 5, 0, 1)
    payload = codec.qsgd_encode(v, bits, torch.Generator().manual_seed(seed))
    data = DataParallel(compression="qsgd", bits=bits)
    assert payload.numel() == fmt.payload_bytes(data, n, 8)
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=dtype).numpy()
    want = qsgd_reference(v.numpy(), bits, u)
    got = codec.qsgd_decode(payload, bits, n, dtype).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert not np.allclose(got, v.numpy())            # it did quantize


def test_qsgd_is_unbiased():
    """E[Q(v)] = v (Alistarh et al., Lemma 3.1): the mean of 4000 draws at 2 bits is within 5
    standard errors of v everywhere (the variance of one value is at most norm^2 / 4 s^2 + its
    own |v| norm / s; bounded here by norm^2)."""
    n, draws = 64, 4000
    v = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    total = torch.zeros(n, dtype=torch.float64)
    for d in range(draws):
        total += codec.qsgd_decode(codec.qsgd_encode(v, 2, torch.Generator().manual_seed(d)),
                                   2, n, torch.float64)
    se = float(v.norm()) / math.sqrt(draws)
    assert float((total / draws - v).abs().max()) < 5 * se


def test_sign_with_error_feedback_equals_the_reference():
    n = 1100
    a = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    payload, residual = codec.sign_encode(a)
    assert payload.numel() == fmt.payload_bytes(DataParallel(compression="sign", bits=1), n, 8)
    want = sign_reference(a.numpy())
    got = codec.sign_decode(payload, n, torch.float64).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-13)
    np.testing.assert_allclose(residual.numpy(), a.numpy() - want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("ratio", [0.05, 1.0])
def test_topk_keeps_the_largest_and_feeds_back_the_rest(ratio):
    n = 2000
    a = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    k = fmt.sparse_k(n, ratio)
    payload, residual = codec.topk_encode(a, k)
    assert payload.numel() == fmt.payload_bytes(
        DataParallel(compression="topk", compression_ratio=ratio), n, 8)
    out = torch.zeros(n, dtype=torch.float64)
    codec.topk_decode_into(out, payload, k)
    largest = np.argsort(-np.abs(a.numpy()), kind="stable")[:k]
    want = np.zeros(n)
    want[largest] = a.numpy()[largest]
    np.testing.assert_array_equal(out.numpy(), want)
    np.testing.assert_array_equal(residual.numpy(), a.numpy() - want)


def test_wire_sizes_and_the_dense_break_even():
    data = DataParallel(compression="topk", compression_ratio=0.01)
    assert fmt.sparse_k(1000, 0.01) == 10 and fmt.sparse_k(10, 0.01) == 1
    ex = fmt.exchange(data, 10**6, 4, 8)
    assert (ex.collective, ex.payload_bytes, ex.message_bytes) == ("all_gather", 80_000, 640_000)
    rk = fmt.exchange(DataParallel(compression="randk", compression_ratio=0.01), 10**6, 4, 8)
    assert (rk.collective, rk.message_bytes) == ("all_reduce", 40_000)
    # ring all-reduce 2(p-1)/p n e per rank against the all-gather's (p-1) k (4 + e)
    dense = fmt.wire_bytes_per_rank("all_reduce", 4 * 10**6, 8)
    sparse = fmt.wire_bytes_per_rank("all_gather", ex.message_bytes, 8)
    assert sparse == pytest.approx(7 * 10_000 * 8) and sparse < dense
    assert fmt.payload_bytes(DataParallel(compression="qsgd", bits=4), 1024, 4) == 512 + 2 * 4
    assert fmt.payload_bytes(DataParallel(compression="qsgd", bits=32), 1024, 4) == 4096


def test_cpu_topk_cost_follows_torchs_two_regimes():
    sp = fmt.CPU_SPEED
    n = 2**20
    assert fmt.topk_select_s(n, 1000, sp) == pytest.approx(
        n * sp.partial_sort_scan_s
        + 1000 * math.log2(1000) * (1 + math.log(n / 1000)) * sp.partial_sort_heap_s)
    assert fmt.topk_select_s(n, n // 10, sp) == pytest.approx(n * sp.nth_element_s)
    # GPU radix select: linear in n, independent of k
    assert fmt.gpu_select_bytes(2 * n, 4) == 2 * fmt.gpu_select_bytes(n, 4)


def test_layout_fields_are_checked_and_old_fingerprints_kept():
    old = Layout.make(dp=2, microbatch_size=2)
    assert "data.staleness" not in old.identity()
    new = Layout.make(dp=2, microbatch_size=2, compression="topk", compression_ratio=0.1)
    assert new.identity()["data.compression_ratio"] == 0.1
    assert Layout.from_dict(new.to_dict()) == new
    assert new.describe().endswith("topk(0.1)")
    for bad, words in [(dict(compression="topk"), "compression_ratio"),
                       (dict(compression="qsgd", bits=3), "bits in 2, 4, 8, 32"),
                       (dict(compression="sign"), "needs bits 1"),
                       (dict(bits=4), "qsgd and sign only"),
                       (dict(staleness=2), "parameter_server"),
                       (dict(local_sgd_period=-1), ">= 0"),
                       (dict(outer_optimizer="nesterov"), "local_sgd_period >= 1"),
                       (dict(compression="randk", compression_ratio=float("nan")), "<= 1")]:
        with pytest.raises(PlannerError, match=words):
            DataParallel(**bad)


@pytest.mark.parametrize("layout, words", [
    (dict(dp=2, zero=1, compression="topk", compression_ratio=0.1), "needs zero 0"),
    (dict(dp=2, tp=2, compression="qsgd", bits=4), "needs tp 1"),
    (dict(dp=2, pp=2, dp_comm="parameter_server", ps_shards=1, staleness=1), "pp 1"),
    (dict(dp=2, zero=1, local_sgd_period=4), "needs zero 0"),
    (dict(dp=2, compression="fp16", local_sgd_period=4), "compression none"),
])
def test_executor_refusals_are_one_line(layout, words):
    problem = rules.executor_refuses(Layout.make(**layout))
    assert words in problem and "\n" not in problem


def test_these_layouts_run():
    for layout in (dict(dp=2, pp=2, compression="topk", compression_ratio=0.1, schedule="zbv",
                        virtual_stages=2),
                   dict(dp=2, pp=2, local_sgd_period=4, outer_optimizer="nesterov"),
                   dict(dp=2, dp_comm="parameter_server", ps_shards=2, staleness=3)):
        assert rules.executor_refuses(Layout.make(**layout)) == ""


def test_straggler_model():
    assert stragglers.expected_max_normal(1) == 0.0
    assert stragglers.expected_max_normal(2) == pytest.approx(1 / math.sqrt(math.pi), rel=0.02)
    # no jitter: the staleness bound gives max(D, L / s)
    assert stragglers.stale_period_s(4, 1.0, 3.0, 2, 0.0) == 1.5
    assert stragglers.stale_period_s(4, 1.0, 0.5, 2, 0.0) == 1.0
    # s = 0 in the recurrence is the synchronous step D + c D e_p + L
    sync = stragglers._stale_period(8, 0.5, 0, 0.2, 0)
    assert sync == pytest.approx(1 + 0.2 * stragglers.expected_max_normal(8) + 0.5, rel=0.03)
    # more staleness never waits longer, and absorbs jitter
    periods = [stragglers._stale_period(8, 0.5, s, 0.2, 0) for s in (1, 2, 4, 8)]
    assert periods == sorted(periods, reverse=True) and periods[-1] < 1.1
    # local SGD's barrier every H: c D e_p / sqrt(H), against a direct Monte Carlo
    rng, p, h, c = random.Random(1), 4, 9, 0.3
    waits = [max(sum(rng.gauss(0, c) for _ in range(h)) for _ in range(p)) / h
             for _ in range(4000)]
    assert sum(waits) / len(waits) == pytest.approx(
        stragglers.barrier_wait_s(p, 1.0, c, h), rel=0.08)


@pytest.fixture(scope="module")
def gpt_blocks():
    from planner.models.build import build_model
    model = build_model(GPT)
    return [BlockCost(f"b{i}", b.kind, 1e-3, 2e-3, 1e6, sum(p.numel() for p in b.parameters()),
                      1000, 1000) for i, b in enumerate(model.blocks)]


def predicted_dp_bytes(plan, blocks) -> tuple[dict, int]:
    """The planner's dp collectives of one step of ``plan`` (a step where every collective
    runs, local SGD's synchronising steps included): kind -> count, and their bytes."""
    run = sim.RunSpec(plan.model, plan.cluster.with_size(plan.world_size), plan.dtype,
                      plan.optimizer, compute_source="profile", optimizer_step_s=1e-3)
    _, pred = sim.evaluate(run, blocks, plan.layout, timeline=False)
    counts, total = {}, 0
    for c in pred.collectives:
        if c.group == "dp":
            counts[c.collective] = counts.get(c.collective, 0) + c.count
            total += c.count * c.bytes_each
    return counts, total


def test_planner_counts_each_exchange(gpt_blocks):
    n, e = 55488, 8                       # the test GPT's values, float64
    k = fmt.sparse_k(n, 0.1)
    cases = {"topk": (dict(compression="topk", compression_ratio=0.1), 2 * k * 12),
             "randk": (dict(compression="randk", compression_ratio=0.1), k * 8),
             "qsgd": (dict(compression="qsgd", bits=2), 2 * (-(-n * 2 // 8) + 109 * 8)),
             "sign": (dict(compression="sign", bits=1), 2 * (n // 8 + 109 * 8)),
             "stale": (dict(dp_comm="parameter_server", ps_shards=1, staleness=2), 2 * n * e),
             "local": (dict(local_sgd_period=4), n * e)}
    for name, (fields, want) in cases.items():
        plan = make_plan(dp=2, microbatch_size=2, **fields)
        assert predicted_dp_bytes(plan, gpt_blocks)[1] == want, name


def test_simulate_refuses_bad_bits_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "planner.cli", "simulate", "--model",
                           "gpt2-small", "--cluster", "dgx-a100-80gb", "--gpus", "8",
                           "--global-batch", "16", "--compression", "qsgd", "--bits", "3",
                           "--out", str(tmp_path / "p.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "bits in 2, 4, 8, 32" in proc.stderr
