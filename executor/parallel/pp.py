"""Pipeline parallelism with ``torch.distributed.pipelining``: stages cut by hand at block indices.

The model's blocks are cut into ``pp * virtual_stages`` chunks at ``layout.stage_boundaries``
(first block of each chunk; empty means an even split, earlier chunks taking the remainder).
Placement follows the schedule: one chunk per rank for gpipe/1f1b; looped for interleaved-1f1b
(rank r holds chunks r, r+pp, r+2pp, ...; Narayanan et al. SC'21, sec. 2.2); V-shaped for zbv
(rank r holds chunks r and 2pp-1-r; Qi et al. 2024). The last chunk computes the loss; with
``scale_grads`` the schedule divides gradients by the number of micro-batches.
"""
from __future__ import annotations

from torch import nn
from torch.distributed.pipelining import (PipelineStage, Schedule1F1B, ScheduleGPipe,
                                          ScheduleInterleaved1F1B, ScheduleZBVZeroBubble)

from planner.errors import PlannerError

_SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B,
              "interleaved-1f1b": ScheduleInterleaved1F1B, "zbv": ScheduleZBVZeroBubble}


class Chunk(nn.Module):
    """Consecutive blocks of the model, keyed by their index in the full model so that parameter
    names ("blocks.3.attn.q.weight") are those of the unsplit model."""

    def __init__(self, blocks: dict[int, nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleDict({str(i): b for i, b in blocks.items()})

    def forward(self, x):
        for block in self.blocks.values():
            x = block(x)
        return x


def chunk_starts(layout, num_blocks: int, where: str = "plan") -> list[int]:
    """First block index of each of the ``pp * virtual_stages`` chunks."""
    n = layout.pp * layout.virtual_stages
    if n > num_blocks:
        raise PlannerError(f"{where}: field 'layout': pp({layout.pp}) * virtual_stages("
                           f"{layout.virtual_stages}) = {n} chunks > {num_blocks} blocks")
    if layout.stage_boundaries:
        starts = list(layout.stage_boundaries)
        if starts[-1] >= num_blocks:
            raise PlannerError(f"{where}: field 'layout.stage_boundaries': {starts} starts a "
                               f"chunk at block {starts[-1]}, the model has {num_blocks} blocks "
                               f"(0..{num_blocks - 1})")
        return starts
    base, extra = divmod(num_blocks, n)
    sizes = [base + (i < extra) for i in range(n)]
    return [sum(sizes[:i]) for i in range(n)]


def local_chunk_ids(layout, pp_rank: int) -> list[int]:
    """The chunk (= pipeline stage) indices rank ``pp_rank`` of the pipeline holds, in order."""
    if layout.schedule == "zbv":
        return [pp_rank, 2 * layout.pp - 1 - pp_rank]
    return [pp_rank + v * layout.pp for v in range(layout.virtual_stages)]


def apply_pp(model, layout, pp_rank: int, where: str = "plan") -> tuple[list[Chunk], list[int]]:
    """This rank's chunks of ``model.blocks`` and their stage indices."""
    num_blocks = len(model.blocks)
    starts = chunk_starts(layout, num_blocks, where) + [num_blocks]
    ids = local_chunk_ids(layout, pp_rank)
    chunks = [Chunk({i: model.blocks[i] for i in range(starts[c], starts[c + 1])}) for c in ids]
    return chunks, ids


def build_schedule(stage_modules, stage_ids, layout, pp_group, device, loss_fn):
    """The plan's schedule over this rank's stages (modules already wrapped for dp)."""
    n = layout.pp * layout.virtual_stages
    stages = [PipelineStage(m, i, n, device, group=pp_group)
              for m, i in zip(stage_modules, stage_ids)]
    cls = _SCHEDULES[layout.schedule]
    if cls in (ScheduleGPipe, Schedule1F1B):
        return cls(stages[0], layout.num_microbatches, loss_fn=loss_fn, scale_grads=True)
    return cls(stages, layout.num_microbatches, loss_fn=loss_fn, scale_grads=True)
