"""ZeRO-1's distributed optimizer in one process: bucket ownership, reductions started by the
backward pass, and the optimizer over views stepping exactly as the plain optimizer.
(Exactness against one process at dp 2-4 with tp/pp/sp: ``test_executor_layouts``.)"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist

from executor.parallel.zero1 import Bucket, DistributedOptimizer
from executor_helpers import MLP
from planner import rules
from planner.models.build import build_model
from planner.specs import Layout


@pytest.mark.parametrize("dp", [1, 2, 3, 4])
def test_each_element_is_owned_once(dp):
    params = [torch.nn.Parameter(torch.randn(n, dtype=torch.float64)) for n in (5, 1, 7, 3)]
    owned = {i: [] for i in range(len(params))}
    for rank in range(dp):
        bucket = Bucket(params, dp, rank)
        assert bucket.shard == -(-16 // dp)
        for x, view in zip(bucket.pieces, bucket.views):
            assert (rank * bucket.shard + x.shard_start
                    == sum(p.numel() for p in params[:x.param]) + x.start)
            assert view.data_ptr() == params[x.param].data_ptr() + x.start * 8   # a view
            owned[x.param] += range(x.start, x.end)
    for i, p in enumerate(params):
        assert sorted(owned[i]) == list(range(p.numel()))


@pytest.fixture
def world1(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()


def test_buckets_reduce_during_the_last_backward_and_step_exactly(world1):
    torch.manual_seed(0)
    model = build_model(MLP, seed=0, dtype=torch.float64)
    reference = copy.deepcopy(model)
    layout = Layout.make(dp=2, zero=1, microbatch_size=2, num_microbatches=2)
    assert rules.reduction_overlaps_backward(layout)
    strategy = DistributedOptimizer([model], world1, layout)
    optimizer = strategy.build_optimizer("adam", 1e-2)
    plain = torch.optim.Adam(reference.parameters(), lr=1e-2)
    x, y = model.synthetic_batch(4, torch.Generator().manual_seed(1))
    x = x.to(torch.float64)
    for net in (model, reference):
        for i, (xs, ys) in enumerate(zip(x.split(2), y.split(2))):
            (net.loss(net(xs), ys) / 2).backward()
            if net is model:
                launched = [b.work is not None for b in strategy.parts_buckets[0]]
                # nothing before the last micro-batch, every bucket during it
                assert launched and (all(launched) if i == 1 else not any(launched))
    strategy.after_backward()
    optimizer.step()
    strategy.after_step()
    plain.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-15, msg=name)


def test_split_backward_reduces_after_it():
    zbv = Layout.make(dp=2, pp=2, zero=1, schedule="zbv", virtual_stages=2)
    assert not rules.reduction_overlaps_backward(zbv)
    assert rules.reduction_overlaps_backward(Layout.make(dp=2, tp=2, pp=2, zero=1,
                                                         sequence_parallel=True))
    assert not rules.reduction_overlaps_backward(Layout.make(dp=2, tp=2))   # zero 0: no DDP
