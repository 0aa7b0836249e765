"""A layout's chunks: the partition into pipeline chunks and each chunk's costs (no events)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from planner import rules
from planner.cost.compute import BlockCost
from planner.errors import PlannerError
from planner.partition import balanced_partition, chunk_blocks
from planner.sim.blocks import RowsBundle, rows_bundle
from planner.sim.chunk import Chunk
from planner.sim.memory import MemRows, chunk_memory
from planner.sim.pp import chunk_links
from planner.sim.run import CommTime, RunSpec, default_comm_time


@dataclass
class LayoutCosts:
    chunks: list              # Chunk per pipeline chunk, in pipeline order
    bundle: RowsBundle        # the per-block rows they were summed from
    tp_counts: dict           # (phase, collective, bytes) -> per-step count
    memory: MemRows
    xp_counts: dict = None    # (phase, collective, group, bytes) -> per-step count (cp, ep)

    @property
    def model_flops_mb(self) -> float:
        """Forward FLOPs of one micro-batch through the model (unsplit)."""
        return self.bundle.model_flops

    @property
    def recompute_flops_mb(self) -> float:
        return self.bundle.recompute_flops


def layout_costs(run: RunSpec, blocks: Sequence[BlockCost], layout, comm: CommTime):
    """Partition the blocks (unless the layout fixes ``stage_boundaries``: the balanced
    partition, or the even split with ``run.partition`` "even") and cost each chunk.
    Returns the layout with its stage boundaries filled in and its ``LayoutCosts``."""
    bundle = rows_bundle(run, blocks, layout, comm)
    param_e, grad_e = run.bytes_per_param[:2]
    k = layout.num_chunks
    if len(blocks) < k:
        raise PlannerError(f"pp({layout.pp}) * virtual_stages({layout.pipeline.virtual_stages})"
                           f" = {k} chunks > {len(blocks)} blocks of {run.model.name}")
    mem_rows = memory_rows(run, layout, bundle)
    starts = layout.pipeline.stage_boundaries
    if not starts:
        if k == 1:
            starts = (0,)
        elif run.partition == "even":
            starts = bundle.even_starts(k)
        else:
            starts = balanced_partition(bundle.block_s, k, bundle.send_s,
                                        memory=chunk_memory(layout, mem_rows),
                                        cap=run.cluster.device.usable_memory_bytes)[0]
        layout = layout.with_boundaries(starts if k > 1 else ())
    elif starts[-1] >= len(blocks):
        raise PlannerError(f"stage_boundaries {list(starts)} start a chunk at block {starts[-1]}; "
                           f"{run.model.name} has {len(blocks)} blocks")
    kind = layout.pipeline.kind
    # Chunks are shared by every layout with this partition, placement and split backward
    # (ZeRO stages, micro-batch counts): the search prepares many such layouts.
    key = (tuple(starts), kind.split_backward, kind.placement, layout.pp)
    chunks = bundle.chunks.get(key)
    if chunks is None:
        chunks = bundle.chunks[key] = [Chunk(rng, bundle, kind.split_backward, param_e, grad_e)
                                       for rng in chunk_blocks(starts, len(blocks))]
        chunk_links(chunks, layout, comm, bundle.scatter)
    m = layout.num_microbatches
    tp_counts = {key: k_mb * m for key, k_mb in bundle.tp_per_microbatch.items()}
    xp_counts = {key: k_mb * m for key, k_mb in bundle.xp_per_microbatch.items()}
    return layout, LayoutCosts(chunks, bundle, tp_counts, mem_rows, xp_counts)


def with_memory(run: RunSpec, layout, costs: LayoutCosts) -> LayoutCosts:
    """``costs`` (chunks of the same partition) with the memory terms of ``layout``: layouts
    that differ only in their data-parallel strategy share chunks, not memory."""
    return replace(costs, memory=memory_rows(run, layout, costs.bundle))


def memory_rows(run: RunSpec, layout, bundle: RowsBundle) -> MemRows:
    """``MemRows`` of a layout over a bundle's rows, shared by layouts with the same strategy."""
    key = (layout.data, layout.dims, layout.pp > 1)
    rows = bundle.memory.get(key)
    if rows is None:
        rows = bundle.memory[key] = MemRows(run, layout, bundle.rows)
    return rows


def prepare(run: RunSpec, blocks: Sequence[BlockCost], layout, comm: CommTime | None = None
            ) -> tuple:
    """Check the layout (``planner.rules``), fill its stage boundaries and cost its chunks.
    Returns (layout, LayoutCosts, comm)."""
    rules.check_layout(run.model, layout, len(blocks))
    comm = comm or default_comm_time(run.cluster, layout)
    layout, costs = layout_costs(run, blocks, layout, comm)
    return layout, costs, comm
