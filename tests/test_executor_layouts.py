"""Every kind of layout trains exactly like one process on the same global batch.

Each test runs 5 steps with torchrun on gloo and compares the per-step losses and the final
parameters (every rank's copy, gathered whole) with ``executor.reference.train_reference``.
Tolerances (see ``executor_helpers.RTOL``/``ATOL``): float64 rtol 1e-10, atol 1e-12 for exact
layouts (observed differences ~1e-14); compression tolerances are stated per test.
"""
from __future__ import annotations

import numpy as np
import pytest

from executor_helpers import GPT, MLP, check_exact, load_params, make_plan, run_plan

pytestmark = pytest.mark.slow

MB = dict(microbatch_size=2, num_microbatches=2)

# Expected collectives of rank 0 in one step (M = 2 micro-batches, L = 4 transformer blocks, 6
# blocks in all, one DDP bucket: the test model's ~0.45 MB of gradients fit the first 1 MiB):
# DDP 1 all-reduce; ZeRO-1 (the distributed optimizer) 1 reduce-scatter and 1 all-gather per
# bucket, the layer norms' Partial gradients (under SP) summed over tp once; FSDP per block and
# micro-batch 1 reduce-scatter and 1 all-gather (ZeRO-2) or 2 (ZeRO-3, regathered for backward),
# under pipelining gathered once and reduce-scattered once per step; TP 4 all-reduces per block
# and micro-batch (2 forward, 2 backward); SP 4 all-gathers + 4 reduce-scatters instead, plus the
# head's input gather and the first block's gradient gather per micro-batch, and one all-reduce
# of the layer norms' gradients (Partial over the sequence slices) per step. Vocabulary
# parallel, per micro-batch: the embedding's forward all-reduce, the head's backward all-reduce
# of its input gradient (under SP a reduce-scatter) and the loss's 3 all-reduces (max, sum of
# exponentials, target logit; torch's loss_parallel, Megatron's cross entropy); full recompute
# reruns a block's forward collectives except the last reduce-scatter (the checkpoint stops once
# every saved tensor is recomputed); under FSDP the layer norms' partial gradients are summed by
# FSDP itself, one all-reduce per parameter (4 per block, 2 for the head's norm) and
# micro-batch; PP on rank 0 sends M activations per outgoing boundary and receives M gradients
# back (and the reverse for boundaries coming in).
WORLD2 = {
    "zero1": (dict(dp=2, zero=1, **MB), {"reduce_scatter@dp": 1, "all_gather@dp": 1}),
    "zero2+selective": (dict(dp=2, zero=2, recompute="selective", **MB),
                        {"all_gather@dp": 12, "reduce_scatter@dp": 12}),
    "zero3+full": (dict(dp=2, zero=3, recompute="full", **MB),
                   {"all_gather@dp": 24, "reduce_scatter@dp": 12}),
    "ddp+full": (dict(dp=2, recompute="full", **MB), {"all_reduce@dp": 1}),
    "tp": (dict(tp=2, **MB), {"all_reduce@tp": 42}),
    "tp+sp": (dict(tp=2, sequence_parallel=True, **MB),
              {"all_gather@tp": 36, "reduce_scatter@tp": 34, "all_reduce@tp": 9}),
    "pp-gpipe": (dict(pp=2, schedule="gpipe", microbatch_size=2, num_microbatches=4),
                 {"send@pp": 4, "recv@pp": 4}),
    "pp-1f1b-cut": (dict(pp=2, schedule="1f1b", stage_boundaries=(0, 4), **MB),
                    {"send@pp": 2, "recv@pp": 2}),
    "pp-interleaved": (dict(pp=2, schedule="interleaved-1f1b", virtual_stages=2,
                            stage_boundaries=(0, 1, 3, 5), **MB), {"send@pp": 6, "recv@pp": 6}),
    "pp-zbv": (dict(pp=2, schedule="zbv", virtual_stages=2, **MB), {"send@pp": 4, "recv@pp": 4}),
    "pp-looped-bfs": (dict(pp=2, schedule="looped-bfs", virtual_stages=2, **MB),
                      {"send@pp": 6, "recv@pp": 6}),
}

WORLD4 = {
    "fsdp x tp": (dict(dp=2, tp=2, zero=3, **MB),
                  {"all_gather@dp": 24, "reduce_scatter@dp": 12, "all_reduce@tp": 42}),
    "fsdp x tp+sp": (dict(dp=2, tp=2, zero=2, sequence_parallel=True, **MB),
                     {"all_gather@dp": 12, "reduce_scatter@dp": 12, "all_gather@tp": 36,
                      "reduce_scatter@tp": 34, "all_reduce@tp": 44}),
    "dp(allreduce) x tp": (dict(dp=2, tp=2, **MB), {"all_reduce@dp": 1, "all_reduce@tp": 42}),
    "ps x tp": (dict(dp=2, tp=2, dp_comm="parameter_server", ps_shards=2, **MB),
                {"reduce@dp": 2, "broadcast@dp": 2, "all_reduce@tp": 42}),
    "dp(allreduce) x pp-zbv": (dict(dp=2, pp=2, schedule="zbv", virtual_stages=2, **MB),
                               {"all_reduce@dp": 1, "send@pp": 4, "recv@pp": 4}),
    "ddp x pp": (dict(dp=2, pp=2, schedule="1f1b", **MB),
                 {"all_reduce@dp": 1, "send@pp": 2, "recv@pp": 2}),
    "fsdp x pp": (dict(dp=2, pp=2, zero=2, schedule="interleaved-1f1b", virtual_stages=2, **MB),
                  {"all_gather@dp": 3, "reduce_scatter@dp": 3, "send@pp": 6, "recv@pp": 6}),
    # one bucket per chunk; under zbv's split weight-gradient pass they go after the backward
    "zero1 x pp-zbv": (dict(dp=2, pp=2, zero=1, schedule="zbv", virtual_stages=2, **MB),
                       {"reduce_scatter@dp": 2, "all_gather@dp": 2, "send@pp": 4, "recv@pp": 4}),
    "zero1 x pp": (dict(dp=2, pp=2, zero=1, schedule="1f1b", **MB),
                   {"reduce_scatter@dp": 1, "all_gather@dp": 1, "send@pp": 2, "recv@pp": 2}),
    "zero1 x tp": (dict(dp=2, tp=2, zero=1, **MB),
                   {"reduce_scatter@dp": 1, "all_gather@dp": 1, "all_reduce@tp": 42}),
    "zero1 x tp+sp": (dict(dp=2, tp=2, zero=1, sequence_parallel=True, **MB),
                      {"reduce_scatter@dp": 1, "all_gather@dp": 1, "all_gather@tp": 36,
                       "reduce_scatter@tp": 34, "all_reduce@tp": 9}),
    "pp x tp+sp+full": (dict(pp=2, tp=2, sequence_parallel=True, recompute="full",
                             schedule="1f1b", **MB),
                        {"all_gather@tp": 26, "reduce_scatter@tp": 20, "all_reduce@tp": 3,
                         "send@pp": 2, "recv@pp": 2}),
}


@pytest.mark.parametrize("name", WORLD2)
def test_world2_layout_is_exact(name, tmp_path):
    layout, collectives = WORLD2[name]
    check_exact(make_plan(**layout), tmp_path, collectives=collectives)


@pytest.mark.parametrize("name", WORLD4)
def test_world4_layout_is_exact(name, tmp_path):
    layout, collectives = WORLD4[name]
    check_exact(make_plan(**layout), tmp_path, collectives=collectives)


# More combinations, other models, dtypes and optimizers: (model, dtype, optimizer, layout,
# rank 0's collectives). float32 runs use SGD: Adam's first updates are ~lr * sign(grad), which
# turns float32 rounding of near-zero gradients into lr-sized differences.
MIXED = {
    "ps x pp": (GPT, "float64", "adam",
                dict(dp=2, pp=2, dp_comm="parameter_server", ps_shards=1, schedule="1f1b", **MB),
                {"reduce@dp": 1, "broadcast@dp": 1, "send@pp": 2, "recv@pp": 2}),
    "zero1 x pp adamw": (GPT, "float64", "adamw", dict(dp=2, pp=2, zero=1, schedule="gpipe", **MB),
                         {"reduce_scatter@dp": 1, "all_gather@dp": 1, "send@pp": 2, "recv@pp": 2}),
    # one bucket per chunk, each reduce-scattered during its chunk's last backward
    "zero1 x pp-interleaved": (GPT, "float64", "adam",
                               dict(dp=2, pp=2, zero=1, schedule="interleaved-1f1b",
                                    virtual_stages=2, **MB),
                               {"reduce_scatter@dp": 2, "all_gather@dp": 2, "send@pp": 6,
                                "recv@pp": 6}),
    # 4 replicas: each bucket padded to a multiple of 4, pieces cut inside parameters
    "mlp zero1 dp4": (MLP, "float64", "adamw", dict(dp=4, zero=1, microbatch_size=1,
                                                    num_microbatches=2),
                      {"reduce_scatter@dp": 1, "all_gather@dp": 1}),
    # 4 units, one bucket: the model's ~2 KiB of gradients
    "mlp zero1 x tp sgd-momentum": (MLP, "float64", "sgd-momentum", dict(dp=2, tp=2, zero=1, **MB),
                                    {"reduce_scatter@dp": 1, "all_gather@dp": 1,
                                     "all_reduce@tp": 8}),
    "float32 zero1 x tp+sp": (GPT, "float32", "sgd", dict(dp=2, tp=2, zero=1,
                                                          sequence_parallel=True, **MB),
                              {"reduce_scatter@dp": 1, "all_gather@dp": 1, "all_gather@tp": 36,
                               "reduce_scatter@tp": 34, "all_reduce@tp": 9}),
    # ZeRO-3 under pipelining: each of rank 0's 3 units gathered per forward micro-batch and
    # once for all backward ones, reduce-scattered once per step
    "zero3 x pp+full": (GPT, "float64", "adam",
                        dict(dp=2, pp=2, zero=3, schedule="1f1b", recompute="full", **MB),
                        {"all_gather@dp": 9, "reduce_scatter@dp": 3, "send@pp": 2,
                         "recv@pp": 2}),
    # one DDP module (so one bucket) per chunk
    "ddp x pp-interleaved": (GPT, "float64", "adam",
                             dict(dp=2, pp=2, schedule="interleaved-1f1b", virtual_stages=2,
                                  **MB),
                             {"all_reduce@dp": 2, "send@pp": 6, "recv@pp": 6}),
    "pp-interleaved x tp+sp": (GPT, "float64", "adam",
                               dict(pp=2, tp=2, schedule="interleaved-1f1b", virtual_stages=2,
                                    sequence_parallel=True, **MB),
                               {"all_gather@tp": 18, "reduce_scatter@tp": 16,
                                "all_reduce@tp": 3, "send@pp": 6, "recv@pp": 6}),
    "mlp pp-zbv": (MLP, "float64", "sgd", dict(pp=2, schedule="zbv", virtual_stages=2, **MB),
                   {"send@pp": 4, "recv@pp": 4}),
    # 4 units (input projection, 2 residual blocks, head); 2 tp all-reduces per block and mb
    "mlp fsdp x tp": (MLP, "float64", "adam", dict(dp=2, tp=2, zero=2, **MB),
                      {"all_gather@dp": 8, "reduce_scatter@dp": 8, "all_reduce@tp": 8}),
    "float32 fsdp x tp": (GPT, "float32", "sgd-momentum", dict(dp=2, tp=2, zero=3, **MB),
                          {"all_gather@dp": 24, "reduce_scatter@dp": 12, "all_reduce@tp": 42}),
}


@pytest.mark.parametrize("name", MIXED)
def test_more_combinations_are_exact(name, tmp_path):
    model, dtype, optimizer, layout, collectives = MIXED[name]
    lr = 0.05 if optimizer.startswith("sgd") else 1e-2
    check_exact(make_plan(model, dtype=dtype, optimizer=optimizer, lr=lr, **layout), tmp_path,
                collectives=collectives)


def test_world8_dp_pp_tp_is_exact(tmp_path):
    """Rank 0 holds 3 FSDP units (embedding + 2 transformer blocks) of stage 0. Under the
    pipeline, ZeRO-3 gathers each unit for every forward micro-batch and once for all backward
    ones (kept until the last), and reduce-scatters once per step; FSDP resolves the layer
    norms' Partial gradients over tp one parameter at a time (2 blocks x 2 norms x 2); the
    vocabulary-parallel embedding all-reduces its output once per micro-batch."""
    check_exact(make_plan(dp=2, pp=2, tp=2, zero=3, sequence_parallel=True, schedule="1f1b",
                          **MB), tmp_path,
                collectives={"all_gather@dp": 9, "reduce_scatter@dp": 3, "all_gather@tp": 18,
                             "reduce_scatter@tp": 16, "all_reduce@tp": 10, "send@pp": 2,
                             "recv@pp": 2})


def test_world8_zero1_dp_pp_tp_is_exact(tmp_path):
    """ZeRO-1 composed with everything: each pipeline stage reduce-scatters its one bucket
    (embedding + 2 blocks on rank 0) during the last backward, all-gathers it after the step,
    and sums its layer norms' Partial gradient pieces over tp once; the vocabulary-parallel
    embedding all-reduces its output once per micro-batch."""
    check_exact(make_plan(dp=2, pp=2, tp=2, zero=1, sequence_parallel=True, schedule="1f1b",
                          **MB), tmp_path,
                collectives={"reduce_scatter@dp": 1, "all_gather@dp": 1, "all_gather@tp": 18,
                             "reduce_scatter@tp": 16, "all_reduce@tp": 3, "send@pp": 2,
                             "recv@pp": 2})


def test_mlp_tensor_parallel_is_exact(tmp_path):
    """2 residual MLP blocks, 1 micro-batch: 1 all-reduce forward, 1 backward per block."""
    check_exact(make_plan(MLP, tp=2, microbatch_size=4), tmp_path,
                collectives={"all_reduce@tp": 4})


@pytest.mark.parametrize("shards", [1, 2])
def test_parameter_server_is_exact(shards, tmp_path):
    """One server (rank 0) and a pure worker, or both ranks serving part of the parameters: one
    reduce and one broadcast per server per step."""
    check_exact(make_plan(MLP, dp=2, dp_comm="parameter_server", ps_shards=shards, **MB),
                tmp_path, collectives={"reduce@dp": shards, "broadcast@dp": shards})


# fp16 keeps 11 significant bits, bf16 8: with SGD (lr 0.5) the parameters drift from the
# exact ones by about lr * |grad| * 2^-11 (resp. 2^-8) per step. Observed: fp16 losses 1.2e-6
# relative, parameters 4e-5 absolute; bf16 3.7e-6 and 4e-4.
# ZeRO-1 casts its buckets before the reduce-scatter as DDP's hook does before the all-reduce.
@pytest.mark.parametrize("compression,loss_rtol,param_atol,zero",
                         [("fp16", 1e-5, 2e-4, 0), ("bf16", 3e-5, 2e-3, 0),
                          ("fp16", 1e-5, 2e-4, 1)])
def test_compression_is_close_and_not_exact(compression, loss_rtol, param_atol, zero, tmp_path):
    plan = make_plan(optimizer="sgd", lr=0.5, dp=2, zero=zero, compression=compression, **MB)
    from executor.reference import train_reference
    proc, metrics, params_dir = run_plan(plan, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref_losses, ref_state = train_reference(plan, 5)
    np.testing.assert_allclose(metrics.losses, ref_losses, rtol=loss_rtol)
    params = load_params(params_dir)
    worst = max(float(np.abs(params[k] - ref_state[k].numpy()).max()) for k in params)
    assert 1e-9 < worst < param_atol, worst      # the hook did compress, and only that


def test_powersgd_is_exact_until_it_starts_then_close(tmp_path):
    """PowerSGD all-reduces uncompressed for its first 2 iterations (``POWERSGD_START_ITER``):
    losses of steps 0-2 (which see only those updates) are exact, later ones are not."""
    plan = make_plan(optimizer="sgd", lr=0.5, dp=2, compression="powersgd", powersgd_rank=1, **MB)
    from executor.reference import train_reference
    proc, metrics, _ = run_plan(plan, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref_losses, _ = train_reference(plan, 5)
    np.testing.assert_allclose(metrics.losses[:3], ref_losses[:3], rtol=1e-10)
    np.testing.assert_allclose(metrics.losses[3:], ref_losses[3:], rtol=1e-2)
    assert abs(metrics.losses[3] - ref_losses[3]) > 1e-8      # compression is on from step 2
