"""The Llama and MoE families train exactly like one process (float64) under dp, fsdp, tp (with
and without sequence parallelism), pp and pairwise combinations, and the planner predicts the
collectives rank 0 issues.

Tables as ``test_executor_layouts`` (M = 2 micro-batches, 4 layers, 6 blocks): Megatron's 4 tp
collectives per layer and micro-batch (the MoE layers' as the dense ones'; under pp rank 0 holds
2 layers); under sp the head's input gather and the first layer's gradient gather per
micro-batch; DDP one all-reduce per chunk it wraps (2 chunks per rank when interleaved); FSDP
under pipelining one reduce-scatter per block and step (rank 0: 3 blocks), ZeRO-3's gathers 3
per block under 1F1B with 2 micro-batches.
Gradients partial over tp (norms under sp; the MoE test model's 3 routers and 3 shared-expert
gates always) are summed in one all-reduce per step (under ZeRO-1 after its reduce-scatter, of
the pieces a dp rank owns), or by FSDP one all-reduce per parameter and micro-batch. ZeRO-1 one
reduce-scatter and one all-gather per bucket (one bucket per chunk here).
"""
from __future__ import annotations

from collections import Counter

import pytest

from executor_helpers import LLAMA, MOE, check_exact, make_plan
from planner import sim
from planner.cost.compute import BlockCost

pytestmark = pytest.mark.slow

MB = dict(microbatch_size=2, num_microbatches=2)
TIED = LLAMA.__class__(**{**LLAMA.to_dict(), "name": "llama-tied", "tie_embeddings": True})

LAYOUTS = {
    # world 2
    "llama tp+sp": (LLAMA, dict(tp=2, sequence_parallel=True, **MB),
                    {"all_gather@tp": 36, "reduce_scatter@tp": 32, "all_reduce@tp": 1}),
    "llama zero3+full": (LLAMA, dict(dp=2, zero=3, recompute="full", **MB),
                         {"all_gather@dp": 24, "reduce_scatter@dp": 12}),
    "llama tied tp": (TIED, dict(tp=2, **MB), {"all_reduce@tp": 32}),
    "moe ddp": (MOE, dict(dp=2, **MB), {"all_reduce@dp": 1}),
    "moe tp": (MOE, dict(tp=2, **MB), {"all_reduce@tp": 33}),
    "moe pp-zbv": (MOE, dict(pp=2, schedule="zbv", virtual_stages=2, **MB),
                   {"send@pp": 4, "recv@pp": 4}),
    # world 4
    "llama fsdp x tp": (LLAMA, dict(dp=2, tp=2, zero=3, **MB),
                        {"all_gather@dp": 24, "reduce_scatter@dp": 12, "all_reduce@tp": 32}),
    "llama ddp x pp": (LLAMA, dict(dp=2, pp=2, schedule="1f1b", **MB),
                       {"all_reduce@dp": 1, "send@pp": 2, "recv@pp": 2}),
    "llama pp x tp": (LLAMA, dict(pp=2, tp=2, schedule="gpipe", **MB),
                      {"all_reduce@tp": 16, "send@pp": 2, "recv@pp": 2}),
    "moe fsdp x tp+sp": (MOE, dict(dp=2, tp=2, zero=2, sequence_parallel=True, **MB),
                         {"all_gather@dp": 12, "reduce_scatter@dp": 12, "all_gather@tp": 36,
                          "reduce_scatter@tp": 32, "all_reduce@tp": 28}),
    "moe zero1 x pp": (MOE, dict(dp=2, pp=2, zero=1, schedule="interleaved-1f1b",
                                 virtual_stages=2, stage_boundaries=(0, 1, 3, 5), **MB),
                       {"reduce_scatter@dp": 2, "all_gather@dp": 2, "send@pp": 6,
                        "recv@pp": 6}),
    # ZeRO-1 sums the pieces of the routers' and gates' partial gradients its dp rank owns
    "moe zero1 x tp": (MOE, dict(dp=2, tp=2, zero=1, **MB),
                       {"reduce_scatter@dp": 1, "all_gather@dp": 1, "all_reduce@tp": 33}),
    "llama zero1 x tp+sp": (LLAMA, dict(dp=2, tp=2, zero=1, sequence_parallel=True, **MB),
                            {"reduce_scatter@dp": 1, "all_gather@dp": 1, "all_gather@tp": 36,
                             "reduce_scatter@tp": 32, "all_reduce@tp": 1}),
    "moe dp x tp": (MOE, dict(dp=2, tp=2, **MB), {"all_reduce@dp": 1, "all_reduce@tp": 33}),
    "moe fsdp x pp": (MOE, dict(dp=2, pp=2, zero=3, schedule="1f1b", **MB),
                      {"all_gather@dp": 9, "reduce_scatter@dp": 3, "send@pp": 2, "recv@pp": 2}),
    "moe pp x tp+sp": (MOE, dict(pp=2, tp=2, sequence_parallel=True, schedule="1f1b", **MB),
                       {"all_gather@tp": 18, "reduce_scatter@tp": 16, "all_reduce@tp": 1,
                        "send@pp": 2, "recv@pp": 2}),
}
WORLD2 = [n for n, (_, lay, _) in LAYOUTS.items()
          if lay.get("dp", 1) * lay.get("tp", 1) * lay.get("pp", 1) == 2]
WORLD4 = [n for n in LAYOUTS if n not in WORLD2]


@pytest.mark.parametrize("name", WORLD2)
def test_world2_llama_moe_exact(name, tmp_path):
    model, layout, collectives = LAYOUTS[name]
    check_exact(make_plan(model, **layout), tmp_path, collectives=collectives)


@pytest.mark.parametrize("name", WORLD4)
def test_world4_llama_moe_exact(name, tmp_path):
    model, layout, collectives = LAYOUTS[name]
    check_exact(make_plan(model, **layout), tmp_path, collectives=collectives)


def _block_costs(model):
    """Counts depend on parameter bytes (DDP buckets, FSDP units) and structure, not times."""
    from planner.models.build import build_model
    built = build_model(model)
    return [BlockCost(f"b{i}", b.kind, 1e-3, 2e-3, 1e6, sum(p.numel() for p in b.parameters()),
                      1000, 1000) for i, b in enumerate(built.blocks)]


@pytest.mark.parametrize("name", [n for n, (_, lay, _) in LAYOUTS.items()
                                  if lay.get("pp", 1) == 1])
def test_predicted_collectives_equal_measured(name):
    """As ``test_collective_counts``: layouts without pipelining (the planner counts a step
    summed over stages, the executor rank 0's stage)."""
    model, layout, measured = LAYOUTS[name]
    plan = make_plan(model, **layout)
    run = sim.RunSpec(plan.model, plan.cluster.with_size(plan.world_size), plan.dtype,
                      plan.optimizer, compute_source="profile", optimizer_step_s=1e-3)
    _, prediction = sim.evaluate(run, _block_costs(model), plan.layout, timeline=False)
    predicted = Counter()
    for c in prediction.collectives:
        predicted[f"{c.collective}@{c.group}"] += c.count
    assert dict(predicted) == measured
