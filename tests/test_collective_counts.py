"""The planner's predicted collectives match what the executor issues (issue 5, item 2).

``test_executor_layouts`` runs each layout and asserts rank 0's measured collectives per step
equal its tables; here the planner's prediction for the same layout must equal the same table,
so measured == table == predicted. Only layouts without pipelining are compared: the planner
counts a step summed over pipeline stages, the executor counts rank 0 (one stage).
Known disagreement, left out and stated in the note: full recompute under sequence parallelism
(the executor's checkpoint stops before a block's last reduce-scatter; the planner reruns all of
the block's forward collectives).
"""
from collections import Counter

import pytest

from executor_helpers import GPT, make_plan
from planner import sim
from planner.cost.compute import BlockCost
import test_executor_layouts as layouts

COMPARED = [("WORLD2", n) for n in ("zero1", "zero2+selective", "zero3+full", "ddp+full", "tp",
                                          "tp+sp")]
COMPARED += [("WORLD4", n) for n in ("fsdp x tp", "fsdp x tp+sp", "dp(allreduce) x tp",
                                     "ps x tp", "zero1 x tp", "zero1 x tp+sp")]


@pytest.fixture(scope="module")
def block_costs():
    # Counts depend on parameter bytes (DDP buckets) and structure, not on times.
    from planner.models.build import build_model
    model = build_model(GPT)
    return [BlockCost(f"b{i}", b.kind, 1e-3, 2e-3, 1e6, sum(p.numel() for p in b.parameters()),
                      1000, 1000) for i, b in enumerate(model.blocks)]


@pytest.mark.parametrize("table, name", COMPARED)
def test_predicted_collectives_equal_measured(table, name, block_costs):
    layout, measured = getattr(layouts, table)[name]
    plan = make_plan(**layout)
    run = sim.RunSpec(plan.model, plan.cluster.with_size(plan.world_size), plan.dtype,
                      plan.optimizer, compute_source="profile", optimizer_step_s=1e-3)
    _, prediction = sim.evaluate(run, block_costs, plan.layout, timeline=False)
    predicted = Counter()
    for c in prediction.collectives:
        predicted[f"{c.collective}@{c.group}"] += c.count
    assert dict(predicted) == measured
