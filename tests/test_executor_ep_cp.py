"""Expert and context parallelism (and offload) train exactly like one process (float64), alone
and paired with dp, fsdp, tp and pp, and the planner predicts the collectives rank 0 issues.

Tables as ``test_executor_llama_moe`` (M = 2 micro-batches of 2 sequences of 16 tokens, 4
layers; the MoE test model's 3 MoE layers have capacity and the balance loss). Per MoE layer and
micro-batch, ep issues 3 all-to-alls forward (counts, dispatch, combine) and 2 backward; the ep
group is named as ``ParallelDims.canonical`` names it (the dp group when ep = dp * cp, the cp
group when ep = cp), expert gradients are all-reduced over edp once per step (DDP) or by FSDP's
own unit over edp. Per layer and micro-batch, cp = 2 sends (and receives) 1 K/V block forward
and 3 backward (2cp - 1); MoE layers gather the sequence's expert choices over cp once forward.
Gradients are reduced over dp * cp ("dp_cp"; the cp group when dp = 1), by ZeRO-1's distributed
optimizer too (one reduce-scatter and one all-gather per bucket).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from executor_helpers import GPT, LLAMA, MOE, check_exact, make_plan
from planner import sim
from planner.cost.compute import BlockCost

MB = dict(microbatch_size=2, num_microbatches=2)

LAYOUTS = {
    # world 2
    "llama cp": (LLAMA, dict(cp=2, **MB), {"all_reduce@cp": 1, "send@cp": 32, "recv@cp": 32}),
    "gpt cp": (GPT, dict(cp=2, **MB), {"all_reduce@cp": 1, "send@cp": 32, "recv@cp": 32}),
    "moe ep": (MOE, dict(dp=2, ep=2, **MB), {"all_reduce@dp": 1, "all_to_all@dp": 30}),
    "moe cp x ep": (MOE, dict(cp=2, ep=2, **MB),
                    {"all_reduce@cp": 1, "all_to_all@cp": 30, "all_gather@cp": 6,
                     "send@cp": 32, "recv@cp": 32}),
    "llama fsdp+offload": (LLAMA, dict(dp=2, zero=3, offload=True, **MB),
                           {"all_gather@dp": 24, "reduce_scatter@dp": 12}),
    "llama cp x zero1": (LLAMA, dict(cp=2, zero=1, **MB),
                         {"reduce_scatter@cp": 1, "all_gather@cp": 1, "send@cp": 32,
                          "recv@cp": 32}),
    "moe cp x zero1": (MOE, dict(cp=2, zero=1, **MB),
                       {"reduce_scatter@cp": 1, "all_gather@cp": 7, "send@cp": 32,
                        "recv@cp": 32}),
    # world 4
    "moe ep x dp": (MOE, dict(dp=4, ep=2, **MB),
                    {"all_reduce@dp": 1, "all_reduce@edp": 1, "all_to_all@ep": 30}),
    "moe ep x fsdp": (MOE, dict(dp=4, ep=2, zero=3, **MB),
                      {"all_gather@dp": 24, "reduce_scatter@dp": 12, "all_gather@edp": 12,
                       "reduce_scatter@edp": 6, "all_to_all@ep": 30}),
    "moe ep x tp": (MOE, dict(dp=2, ep=2, tp=2, **MB),
                    {"all_reduce@dp": 1, "all_reduce@tp": 33, "all_to_all@dp": 30}),
    "moe ep x pp": (MOE, dict(dp=2, ep=2, pp=2, schedule="1f1b", **MB),
                    {"all_reduce@dp": 1, "all_to_all@dp": 10, "send@pp": 2, "recv@pp": 2}),
    "llama cp x dp": (LLAMA, dict(dp=2, cp=2, **MB),
                      {"all_reduce@dp_cp": 1, "send@cp": 32, "recv@cp": 32}),
    "moe cp x fsdp": (MOE, dict(dp=2, cp=2, zero=3, **MB),
                      {"all_gather@dp_cp": 24, "reduce_scatter@dp_cp": 12, "all_gather@cp": 6,
                       "send@cp": 32, "recv@cp": 32}),
    "llama cp x dp x zero1": (LLAMA, dict(dp=2, cp=2, zero=1, **MB),
                              {"reduce_scatter@dp_cp": 1, "all_gather@dp_cp": 1, "send@cp": 32,
                               "recv@cp": 32}),
    "llama cp x tp x zero1": (LLAMA, dict(cp=2, tp=2, zero=1, **MB),
                              {"reduce_scatter@cp": 1, "all_gather@cp": 1, "all_reduce@tp": 32,
                               "send@cp": 32, "recv@cp": 32}),
    "llama cp x tp": (LLAMA, dict(cp=2, tp=2, **MB),
                      {"all_reduce@cp": 1, "all_reduce@tp": 32, "send@cp": 32, "recv@cp": 32}),
    "moe cp x tp": (MOE, dict(cp=2, tp=2, **MB),
                    {"all_reduce@cp": 1, "all_reduce@tp": 33, "all_gather@cp": 6, "send@cp": 32,
                     "recv@cp": 32}),
    "llama cp x pp": (LLAMA, dict(cp=2, pp=2, schedule="1f1b", **MB),
                      {"all_reduce@cp": 1, "send@cp": 16, "recv@cp": 16, "send@pp": 2,
                       "recv@pp": 2}),
}


def _world(layout) -> int:
    return layout.get("dp", 1) * layout.get("tp", 1) * layout.get("pp", 1) * layout.get("cp", 1)


WORLD2 = [n for n, (_, lay, _) in LAYOUTS.items() if _world(lay) == 2]
WORLD4 = [n for n, (_, lay, _) in LAYOUTS.items() if _world(lay) == 4]


@pytest.mark.slow
@pytest.mark.parametrize("name", WORLD2)
def test_world2_ep_cp_exact(name, tmp_path):
    model, layout, collectives = LAYOUTS[name]
    check_exact(make_plan(model, **layout), tmp_path, steps=3, collectives=collectives)


@pytest.mark.slow
@pytest.mark.parametrize("name", WORLD4)
def test_world4_ep_cp_exact(name, tmp_path):
    model, layout, collectives = LAYOUTS[name]
    check_exact(make_plan(model, **layout), tmp_path, steps=3, collectives=collectives)


def _block_costs(model):
    """Counts depend on parameter bytes (DDP buckets, FSDP units) and structure, not times."""
    from planner.models.build import build_model
    built = build_model(model)
    return [BlockCost(f"b{i}", b.kind, 1e-3, 2e-3, 1e6, sum(p.numel() for p in b.parameters()),
                      1000, 1000) for i, b in enumerate(built.blocks)]


def predicted_counts(model, layout) -> dict:
    """The planner's collectives of one step as the executor counts them: a ring transfer
    (``send_recv``) is a send on one rank and a receive on the other."""
    plan = make_plan(model, **layout)
    cluster = plan.cluster.with_size(plan.world_size)
    if plan.layout.data.offload:
        # localhost-cpu has no host memory apart from its device's, so the planner does not
        # cost offload there; counts do not depend on the host figures: give it some
        cluster = replace(cluster, device=replace(cluster.device, host_memory_bytes=2**30))
    run = sim.RunSpec(plan.model, cluster, plan.dtype, plan.optimizer,
                      compute_source="profile", optimizer_step_s=1e-3)
    _, prediction = sim.evaluate(run, _block_costs(model), plan.layout, timeline=False)
    out = Counter()
    for c in prediction.collectives:
        if c.collective == "send_recv":
            out[f"send@{c.group}"] += c.count
            out[f"recv@{c.group}"] += c.count
        else:
            out[f"{c.collective}@{c.group}"] += c.count
    return dict(out)


@pytest.mark.parametrize("name", [n for n, (_, lay, _) in LAYOUTS.items()
                                  if lay.get("pp", 1) == 1])
def test_predicted_collectives_equal_measured(name):
    """Layouts without pipelining (the planner counts a step summed over stages, the executor
    rank 0's stage)."""
    model, layout, measured = LAYOUTS[name]
    assert predicted_counts(model, layout) == measured
