"""Extrapolating measured profiles (pure arithmetic on hand-built profiles; no torch)."""
import subprocess
import sys
from dataclasses import replace

import pytest

from planner.errors import PlannerError
from planner.models import resolve_model
from planner.profile.extrapolate import (block_work, extrapolate_block, extrapolate_profile,
                                         fit_time, scale_block_size)
from planner.specs import BlockProfile, ModelProfile

OVERHEAD, SEC_PER_FLOP = 2e-4, 1e-11     # a made-up device: 100 GFLOP/s after 0.2 ms per call


def block(index, kind, flops, mb, saved_per_sample=17_000, out_per_sample=1_000, params=1_200):
    fwd = OVERHEAD + flops * mb * SEC_PER_FLOP
    bwd = 2 * fwd
    return BlockProfile(index=index, name=kind, kind=kind, forward_time_s=fwd,
                        backward_time_s=bwd, forward_time_spread_s=0.1 * fwd,
                        backward_time_spread_s=0.1 * bwd, forward_flops=flops * mb,
                        param_count=params, param_bytes=4 * params,
                        saved_activation_bytes=saved_per_sample * mb,
                        output_bytes=out_per_sample * mb)


def profile(mb, model="gpt-tiny"):
    spec = resolve_model(model)
    blocks = (block(0, "embedding", 0, mb), block(1, "block", 1e8, mb),
              block(2, "head", 3e7, mb))
    fwd_bwd = sum(b.forward_time_s + b.backward_time_s for b in blocks)
    return ModelProfile(model=spec, model_fingerprint=spec.fingerprint(), device="cpu",
                        device_name="test", dtype="float32", num_threads=1, microbatch_size=mb,
                        seq_len=spec.seq_len, optimizer="adam", blocks=blocks,
                        step_time_s=fwd_bwd + 1e-3, step_time_spread_s=1e-4,
                        optimizer_step_time_s=1e-3, repeats=5, warmup=1, torch_version="x",
                        created_utc="2024-01-01T00:00:00+00:00")


def test_fit_time_two_points_gives_overhead_and_throughput():
    fit = fit_time([(1e9, 0.011), (2e9, 0.021)])
    assert fit.method == "line"
    assert fit.overhead_s == pytest.approx(0.001) and fit.seconds_per_work == pytest.approx(1e-11)
    assert fit.time_s(8e9) == pytest.approx(0.081)


def test_fit_time_falls_back_on_noise():
    # Time grows faster than work (negative intercept): fit through the origin.
    fit = fit_time([(1.0, 1.0), (2.0, 3.0)])
    assert (fit.method, fit.overhead_s) == ("through-origin", 0.0)
    assert fit.seconds_per_work == pytest.approx((1 * 1 + 2 * 3) / (1 + 4))
    # Time does not grow with work (slope <= 0): all overhead, the constant mean.
    assert fit_time([(1.0, 2.0), (2.0, 1.0)]) == (1.5, 0.0, "constant")
    # One point: proportional.
    assert fit_time([(4.0, 2.0)]) == (0.0, 0.5, "proportional")
    with pytest.raises(PlannerError):
        fit_time([(0.0, 1.0)])


def test_block_work_uses_bytes_without_flops():
    emb = block(0, "embedding", 0, 2)
    assert block_work(emb) == emb.output_bytes + emb.saved_activation_bytes
    assert block_work(block(1, "block", 1e8, 2)) == 2e8


def test_scale_block_size_batch_and_tensor_parallel():
    b = block(1, "block", 1e8, 2)
    s = scale_block_size(b, 4.0, tp=2)
    assert s.forward_flops == 1e8 * 8 / 2
    assert s.param_count == 600 and s.param_bytes == 2400
    assert s.output_bytes == 8_000                          # whole again after the all-reduce
    assert s.saved_activation_bytes == 4 * 8_000 + (17_000 * 8 - 4 * 8_000) // 2
    head = scale_block_size(block(2, "head", 3e7, 2), 1.0, tp=4)   # replicated under TP
    assert head.forward_flops == 6e7 and head.param_count == 1_200
    assert s.forward_time_s == b.forward_time_s                    # times are not touched here
    with pytest.raises(PlannerError):
        scale_block_size(b, 1.0, tp=0)


def test_extrapolate_block_recovers_an_exact_line():
    measured = [(1, block(1, "block", 1e8, 1)), (2, block(1, "block", 1e8, 2))]
    at8 = extrapolate_block(measured, 8)
    assert at8.forward_time_s == pytest.approx(OVERHEAD + 8e8 * SEC_PER_FLOP)
    assert at8.backward_time_s == pytest.approx(2 * (OVERHEAD + 8e8 * SEC_PER_FLOP))
    assert at8.forward_time_spread_s == pytest.approx(0.1 * at8.forward_time_s)
    assert at8.saved_activation_bytes == 8 * 17_000
    tp4 = extrapolate_block(measured, 8, tp=4)
    assert tp4.forward_time_s == pytest.approx(OVERHEAD + 2e8 * SEC_PER_FLOP)  # overhead stays
    # Proportional from one measurement drops the overhead: over-predicts at larger batch.
    prop = extrapolate_block(measured[1:], 8)
    assert prop.forward_time_s == pytest.approx(4 * measured[1][1].forward_time_s)


def test_extrapolate_profile_sums_blocks_and_scales_optimizer():
    pred = extrapolate_profile([profile(1), profile(2)], 8, tp=2)
    assert pred.microbatch_size == 8 and pred.source.startswith("extrapolated from micro-batch")
    params = [b.param_count for b in pred.blocks]
    assert params == [1_200, 600, 1_200]
    assert pred.optimizer_step_time_s == pytest.approx(1e-3 * 3_000 / 3_600)
    assert pred.step_time_s == pytest.approx(
        sum(b.forward_time_s + b.backward_time_s for b in pred.blocks) + pred.optimizer_step_time_s)
    same = extrapolate_profile([profile(1), profile(2)], 2)
    assert [b.forward_time_s for b in same.blocks] == pytest.approx(
        [b.forward_time_s for b in profile(2).blocks])


def test_identical_blocks_share_one_fit():
    # Two identical layers, one measured 10% slow and one 10% fast at every size: both are
    # predicted on the line through all four points, i.e. the exact (noise-free) line.
    def noisy(mb):
        p = profile(mb)
        b = p.blocks[1]
        slow = replace(b, forward_time_s=1.1 * b.forward_time_s)
        fast = replace(b, index=2, forward_time_s=0.9 * b.forward_time_s)
        blocks = (p.blocks[0], slow, fast, replace(p.blocks[2], index=3))
        return replace(p, blocks=blocks)
    pred = extrapolate_profile([noisy(1), noisy(2)], 8)
    exact = OVERHEAD + 8e8 * SEC_PER_FLOP
    assert [b.index for b in pred.blocks] == [0, 1, 2, 3]
    assert pred.blocks[1].forward_time_s == pytest.approx(exact)
    assert pred.blocks[2].forward_time_s == pytest.approx(exact)


def test_extrapolate_profile_rejects_mixed_or_bad_input():
    with pytest.raises(PlannerError, match="extrapolate one model"):
        extrapolate_profile([profile(1), profile(2, "gpt2-small")], 4)
    with pytest.raises(PlannerError, match="repeat a micro-batch"):
        extrapolate_profile([profile(2), profile(2)], 4)
    with pytest.raises(PlannerError, match=r"tp\(3\) must divide num_heads\(4\)"):
        extrapolate_profile([profile(1)], 4, tp=3)
    with pytest.raises(PlannerError):
        extrapolate_profile([], 4)


def test_extrapolate_does_not_import_torch():
    code = "import sys, planner.profile.extrapolate; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
