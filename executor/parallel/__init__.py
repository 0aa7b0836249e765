"""Turn a plan's layout into the modules, data-parallel strategy and schedule of one rank.

``parallelize`` is the one place the parallel dimensions are composed. The order is fixed:

1. tensor parallel (``tp.apply_tp``) on the whole model: it turns Linear weights into DTensor
   shards, which every later wrapper must see (FSDP2 then shards those DTensors along dp).
1b. expert parallel (``ep.apply_ep``): each MoE layer keeps its E/ep experts (tp shards of
   them under tp); context parallel (``cp.apply_cp``): attention becomes a ring over the cp
   group. Both before the pipeline split, so every block is prepared whichever stage holds it.
2. pipeline split (``pp.apply_pp``): keep only this rank's chunks of blocks; the tp hooks on the
   blocks travel with them, so stage boundaries carry plain (sequence-sliced, under sp) tensors.
3. recompute (``recompute.apply_recompute``) inside each block's forward, so that DP's hooks
   (FSDP's all-gather before forward, DDP's gradient hooks) stay outside the checkpointed region.
4. data parallel (``dp.apply_dp``): DDP/FSDP wrap the chunks, which must already be final,
   reducing over dp * cp ranks (experts over edp).
5. schedule (``pp.build_schedule``): pipeline stages over the dp-wrapped chunks, so that the
   stage's backward can use DDP's ``no_sync`` / FSDP's gradient-sync switch across micro-batches.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
from torch import nn

from executor.parallel import cp as cp_mod
from executor.parallel import dp as dp_mod
from executor.parallel import ep as ep_mod
from executor.parallel import pp as pp_mod
from executor.parallel import tp as tp_mod
from executor.parallel.recompute import apply_recompute
from planner import grid, rules
from planner.errors import PlannerError


@dataclass
class Parallelized:
    parts: list[nn.Module]         # what this rank runs forward (wrapped for dp)
    named_parts: list[nn.Module]   # the same before dp wrapping: parameter names of the full model
    dp: dp_mod.NoDataParallel      # gradient combination and the optimizer it needs
    schedule: object | None        # pipeline schedule, None when pp == 1
    first: bool                    # holds the first pipeline chunk (feeds the inputs)
    last: bool                     # holds the last pipeline chunk (computes the loss)
    counts_loss: bool              # adds its losses to the reported global mean (tp rank 0 only)
    dp_rank: int = 0               # its data-parallel replica (whose share of the batch it runs)
    loss_context: object = None    # factory of the context forward and backward run under
    cp: object = None              # the ring (ring_attention.CpContext) when cp > 1
    expert_sync: object = None     # sums expert gradients after the backward pass (ep > 1)


def check_layout(spec, layout, where: str = "plan", num_blocks: int | None = None) -> None:
    """Refuse, before any work, a layout this executor cannot run as planned for ``spec``
    (``planner.rules``, the same rules the planner searches under)."""
    blocks = spec.num_blocks if num_blocks is None else num_blocks
    rules.check_layout(spec, layout, blocks, where)
    if layout.pp > 1:
        rules.chunk_starts(layout, blocks, where)
        few = rules.microbatch_problem(layout)
        if few:
            raise PlannerError(f"{where}: field 'layout': {few}")


def parallelize(model, layout, mesh, device, where: str = "plan", seed: int = 0
                ) -> Parallelized:
    rank_grid = grid.RankGrid(layout.dims)
    coords = rank_grid.coords_of(dist.get_rank())
    pp_i, tp_i, dp_i = coords["pp"], coords["tp"], coords["dp"]
    check_layout(model.spec, layout, where, len(model.blocks))
    # 0. pipeline boundary shapes, measured on the unsplit model while it is still plain
    metas = pp_mod.boundary_metas(model, layout, device) if layout.pp > 1 else None
    # 1. tensor parallel, then expert and context parallel
    if layout.tp > 1:
        tp_mod.apply_tp(model, layout, mesh["tp"])
    sync, ctx = None, None
    if layout.ep > 1:
        ep_mod.apply_ep(model, layout, mesh, rank_grid.coord(dist.get_rank(), "ep"))
    if layout.cp > 1:
        ctx = cp_mod.context(layout, mesh["cp"], coords["cp"], model.spec.seq_len)
        cp_mod.apply_cp(model, ctx)
    # 2. pipeline split
    if layout.pp > 1:
        parts, stage_ids = pp_mod.apply_pp(model, layout, pp_i, where)
        num_stages = layout.pp * layout.pipeline.virtual_stages
        first, last = 0 in stage_ids, num_stages - 1 in stage_ids
    else:
        parts, stage_ids, first, last = [model], [0], True, True
    # 3. recompute
    for part in parts:
        apply_recompute(dp_mod.blocks_of(part), layout.recompute)
    # 4. data parallel
    strategy = dp_mod.apply_dp(parts, layout, mesh, device, seed, dp_i)
    # 5. schedule
    schedule = None
    if layout.pp > 1:
        schedule = pp_mod.build_schedule(strategy.parts, stage_ids, layout,
                                         mesh["pp"].get_group(), device, model.loss, metas,
                                         len(model.blocks), dp_i)
    if layout.ep > 1 and not strategy.shards_experts:
        edp = mesh["edp"].get_group() if layout.dims.edp > 1 else None

        def sync():
            ep_mod.reduce_expert_grads(strategy.parts, layout, edp)
    return Parallelized(strategy.parts, parts, strategy, schedule, first, last,
                        counts_loss=last and tp_i == 0, dp_rank=dp_i,
                        loss_context=tp_mod.loss_context(model.spec, layout), cp=ctx,
                        expert_sync=sync)
