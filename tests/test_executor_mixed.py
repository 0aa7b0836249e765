"""Layouts a mixed cluster needs train exactly like one process on the same global batch.

Uneven pipeline stages (``stage_boundaries`` cutting the blocks unequally, as the planner does
when stages sit on devices of different speeds) and uneven per-replica batch shares
(``replica_microbatches``: faster replicas take more micro-batches). Each replica's loss is
weighted by its share (``Layout.replica_weight``), so the update equals one process's on the
global batch: float64 losses and final parameters within rtol 1e-10 of
``executor.reference.train_reference``. On this CPU machine the "device kinds" are simulated by
running the uneven layout itself; exactness is what is tested.
"""
from __future__ import annotations

import pytest

from executor_helpers import GPT, MLP, MOE, check_exact, make_plan

pytestmark = pytest.mark.slow

# (model, layout, rank 0's collectives in the last step)
UNEVEN = {
    # replica 0 runs 3 micro-batches of 2 rows, replica 1 one: rows 0-5 and 6-7; DDP still
    # all-reduces one bucket after each replica's last micro-batch
    "ddp 3/1": (GPT, dict(dp=2, microbatch_size=2, num_microbatches=3,
                          replica_microbatches=(3, 1)), {"all_reduce@dp": 1}),
    "zero1 1/2": (MLP, dict(dp=2, zero=1, microbatch_size=2, num_microbatches=2,
                            replica_microbatches=(1, 2)),
                  {"reduce_scatter@dp": 1, "all_gather@dp": 1}),
    # a MoE router's auxiliary loss is weighted like the loss it joins
    "moe ddp 3/1": (MOE, dict(dp=2, microbatch_size=2, num_microbatches=3,
                              replica_microbatches=(3, 1)), {"all_reduce@dp": 1}),
    "ps 2/3": (MLP, dict(dp=2, dp_comm="parameter_server", ps_shards=1, microbatch_size=1,
                         num_microbatches=3, replica_microbatches=(2, 3)),
               {"reduce@dp": 1, "broadcast@dp": 1}),
}

UNEVEN4 = {
    # the distributed optimizer counts this replica's micro-batches before reduce-scattering
    "zero1 x pp uneven": (GPT, dict(dp=2, pp=2, zero=1, schedule="gpipe", microbatch_size=1,
                                    num_microbatches=3, replica_microbatches=(3, 1)),
                          {"reduce_scatter@dp": 1, "all_gather@dp": 1, "send@pp": 3,
                           "recv@pp": 3}),
    # a pipeline whose first stage holds 1 of 6 blocks and the second 5, replicas 4 and 2
    # micro-batches: rank 0 sends 4 activations and receives 4 gradients
    "ddp x pp uneven": (GPT, dict(dp=2, pp=2, schedule="1f1b", stage_boundaries=(0, 1),
                                  microbatch_size=1, num_microbatches=4,
                                  replica_microbatches=(4, 2)),
                        {"all_reduce@dp": 1, "send@pp": 4, "recv@pp": 4}),
    # FSDP (ZeRO-2) under pipelining gathers once and reduce-scatters once per step whatever
    # the micro-batch count, so uneven shares keep the replicas' collectives equal
    "zero2 x pp-interleaved uneven": (GPT, dict(dp=2, pp=2, zero=2, schedule="interleaved-1f1b",
                                                virtual_stages=2, stage_boundaries=(0, 1, 2, 5),
                                                microbatch_size=1, num_microbatches=4,
                                                replica_microbatches=(2, 4)),
                                      {"all_gather@dp": 4, "reduce_scatter@dp": 4,
                                       "send@pp": 6, "recv@pp": 6}),
    # (1F1B needs at least pp micro-batches per replica: torch's Schedule1F1B)
    "moe ddp x pp uneven": (MOE, dict(dp=2, pp=2, schedule="1f1b", stage_boundaries=(0, 2),
                                      microbatch_size=1, num_microbatches=4,
                                      replica_microbatches=(4, 2)),
                            {"all_reduce@dp": 1, "send@pp": 4, "recv@pp": 4}),
    # tensor-parallel replicas all-reduce after the backward pass (no DDP): weighted too
    "tp x dp uneven": (GPT, dict(dp=2, tp=2, microbatch_size=2, num_microbatches=2,
                                 replica_microbatches=(2, 1)),
                       {"all_reduce@dp": 1, "all_reduce@tp": 42}),
}


@pytest.mark.parametrize("name", UNEVEN)
def test_uneven_replica_shares_are_exact(name, tmp_path):
    model, layout, collectives = UNEVEN[name]
    check_exact(make_plan(model, **layout), tmp_path, collectives=collectives)


@pytest.mark.parametrize("name", UNEVEN4)
def test_uneven_stages_and_shares_are_exact(name, tmp_path):
    model, layout, collectives = UNEVEN4[name]
    check_exact(make_plan(model, **layout), tmp_path, collectives=collectives)


def test_three_replicas_with_three_shares_are_exact(tmp_path):
    """dp 3 (an odd world), shares 1, 3 and 2: weights 0.5, 1.5 and 1."""
    check_exact(make_plan(MLP, dp=3, microbatch_size=1, num_microbatches=3,
                          replica_microbatches=(1, 3, 2)), tmp_path,
                collectives={"all_reduce@dp": 1})
