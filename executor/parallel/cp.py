"""Context parallelism: each rank of a cp group takes its share of every sequence and runs
attention as a ring (``planner.families.ring_attention``; why not torch's
``context_parallel`` is said there).

The split is load-balanced for causal attention: a sequence is cut into 2*cp chunks and cp rank
i takes chunks i and 2cp-1-i (``chunk_positions``), so every rank does the same attention work.
The inputs and targets of a rank are those positions of its data-parallel rows
(``shard_batch``); the family's ``apply_cp`` gives its attention the ring and the tokens' global
positions (rotary angles, learned positions), and its MoE layers the whole sequence's routing.
Each rank's loss is the mean over its own tokens; the cp ranks' gradients are averaged with the
data-parallel ones over the dp * cp group (``executor.parallel.dp``), which makes the mean of
the equal-sized shares' losses the sequence's mean.
"""
from __future__ import annotations

import torch.distributed as dist

from planner import families
from planner.families.ring_attention import CpContext, chunk_positions


def context(layout, cp_mesh, cp_index: int, seq_len: int) -> CpContext:
    """The ring of this rank's cp group."""
    group = cp_mesh.get_group()
    ranks = dist.get_process_group_ranks(group)
    cp = layout.cp
    return CpContext(group=group, rank=cp_index, size=cp,
                     next_rank=ranks[(cp_index + 1) % cp], prev_rank=ranks[(cp_index - 1) % cp],
                     positions=chunk_positions(cp_index, cp, seq_len),
                     all_positions=[chunk_positions(j, cp, seq_len) for j in range(cp)],
                     seq_len=seq_len)


def apply_cp(model, ctx: CpContext) -> None:
    """Give the model's attention (and routing) the ring, by its family's plan."""
    families.of(model.spec).model_module().apply_cp(model, ctx)


def shard_batch(inputs, targets, ctx: CpContext | None):
    """This rank's positions of every row (inputs and targets alike)."""
    if ctx is None:
        return inputs, targets
    pos = ctx.positions
    return (inputs[:, pos.to(inputs.device)],
            None if targets is None else targets[:, pos.to(targets.device)])
