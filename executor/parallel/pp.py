"""Pipeline parallelism with ``torch.distributed.pipelining``: stages cut by hand at block indices.

The model's blocks are cut into ``pp * virtual_stages`` chunks (``planner.rules.chunk_starts``:
the layout's stage boundaries, else an even split). Placement and the torch schedule class come
from the schedule's registry entry (``planner.schedules``): one chunk per rank for gpipe/1f1b;
looped for interleaved-1f1b (rank r holds chunks r, r+pp, r+2pp, ...; Narayanan et al. SC'21,
sec. 2.2); V-shaped for zbv (rank r holds chunks r and 2pp-1-r; Qi et al. 2024). The last chunk
computes the loss; with ``scale_grads`` the schedule divides gradients by the number of
micro-batches. It does so after the backward pass, when DDP has already averaged them over the
replicas, so where replicas' shares differ (``Layout.replica_microbatches``) it must not:
the loss itself is then multiplied by ``Layout.replica_weight / m`` = dp / M, this replica's
weight over its own m micro-batches (``executor.step``).

Stages get their boundary shapes up front (``input_args``/``output_args``, PipelineStage's static
mode) from one no-grad forward of a micro-batch through the unsplit model: the runtime shape
inference would instead run the DDP-wrapped chunk forward once more with gradients enabled,
which leaves DDP expecting a backward and breaks its bucket rebuild on the first stage
("rebuilt parameter indices size is not same as original model parameters size").
"""
from __future__ import annotations

import torch
from torch import nn
from torch.distributed import pipelining
from torch.distributed.pipelining import PipelineStage

from planner.rules import chunk_starts


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


def local_chunk_ids(layout, pp_rank: int) -> list[int]:
    """The chunk (= pipeline stage) indices rank ``pp_rank`` of the pipeline holds, in order:
    the schedule's placement (``planner.schedules``)."""
    pl = layout.pipeline
    return pl.kind.rank_chunks(pp_rank, layout.pp, pl.virtual_stages)


def boundary_metas(model, layout, device) -> list[torch.Tensor]:
    """Meta tensors shaped like each block's input for one micro-batch; entry i is block i's
    input, the last entry the model's output. Under sequence parallelism the tensors between
    transformer blocks hold the rank's 1/tp slice of the sequence; under context parallelism
    every tensor holds the rank's 1/cp of the positions."""
    gen = torch.Generator().manual_seed(0)
    x, _ = model.synthetic_batch(layout.microbatch_size, gen)
    dtype = next(model.parameters()).dtype
    x = (x.to(dtype) if x.is_floating_point() else x).to(device)
    cp = layout.cp

    def local(shape):
        return [shape[0], shape[1] // cp, *shape[2:]] if cp > 1 else shape

    metas = [torch.empty(local(list(x.shape)), dtype=x.dtype, device="meta")]
    with torch.no_grad():
        for block in model.blocks:
            x = block(x)
            shape = local(list(x.shape))
            if layout.tensor.sequence_parallel and getattr(block, "kind", "") == "block":
                shape[1] //= layout.tp
            # Activations between stages carry gradients back: the stage must know.
            metas.append(torch.empty(shape, dtype=x.dtype, device="meta", requires_grad=True))
    return metas


def apply_pp(model, layout, pp_rank: int, where: str = "plan") -> tuple[list[Chunk], list[int]]:
    """This rank's chunks of ``model.blocks`` and their stage indices."""
    num_blocks = len(model.blocks)
    starts = chunk_starts(layout, num_blocks, where) + [num_blocks]
    ids = local_chunk_ids(layout, pp_rank)
    chunks = [Chunk({i: model.blocks[i] for i in range(starts[c], starts[c + 1])}) for c in ids]
    return chunks, ids


def build_schedule(stage_modules, stage_ids, layout, pp_group, device, loss_fn, metas,
                   num_blocks: int, dp_rank: int = 0):
    """The plan's schedule over this rank's stages (modules already wrapped for dp) for the
    micro-batches of replica ``dp_rank``; ``metas`` from ``boundary_metas``."""
    n = layout.num_chunks
    starts = chunk_starts(layout, num_blocks) + [num_blocks]
    stages = [PipelineStage(m, i, n, device, input_args=metas[starts[i]],
                            output_args=metas[starts[i + 1]], group=pp_group)
              for m, i in zip(stage_modules, stage_ids)]
    kind = layout.pipeline.kind
    cls = getattr(pipelining, kind.torch_class)
    m = layout.microbatches_of(dp_rank)
    scale = loss_scale(layout, dp_rank)
    if scale != 1.0:
        loss_fn = _Weighted(loss_fn, scale)
    return cls(stages if kind.multi_stage else stages[0], m, loss_fn=loss_fn,
               scale_grads=scale == 1.0)


def loss_scale(layout, dp_rank: int) -> float:
    """What the schedule's loss is multiplied by: 1 with even shares (``scale_grads`` divides
    by m), else the replica's weight over its m micro-batches (module docstring)."""
    if not layout.replica_microbatches:
        return 1.0
    return layout.replica_weight(dp_rank) / layout.microbatches_of(dp_rank)


class _Weighted:
    """The loss times ``weight``: what the schedule differentiates and reports
    (``executor.step`` divides the report back)."""

    def __init__(self, loss_fn, weight: float):
        self.loss_fn, self.weight = loss_fn, weight

    def __call__(self, output, target):
        return self.loss_fn(output, target) * self.weight
