"""Megatron-LM's tensor-parallel collectives of a pre-norm decoder, shared by the decoder
families (gpt, llama, moe) whose torch plans split attention and MLP the same way.

Per block (Shoeybi et al. 2019, sec. 3): an all-reduce after attention and after the MLP in
forward, the conjugate ones in backward; with sequence parallelism (Korthikanti et al. 2022,
sec. 4.2.2) each becomes an all-gather before and a reduce-scatter after the split region, the
same volume. A MoE layer whose experts are split the same way (every expert's matmuls by
columns, then rows) issues the same collectives as a dense MLP.
"""
from __future__ import annotations

_BLOCK = (("all_reduce", "all_reduce"), ("all_reduce", "all_reduce"))
_BLOCK_SP = (("all_gather", "reduce_scatter", "all_gather", "reduce_scatter"),
             ("all_gather", "reduce_scatter", "all_gather", "reduce_scatter"))


def block_collectives(kind: str, sequence_parallel: bool
                      ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(forward, backward) tp collectives of one block of ``kind`` per micro-batch, tp > 1."""
    if kind == "block":
        return _BLOCK_SP if sequence_parallel else _BLOCK
    if sequence_parallel and kind == "head":
        # The head all-gathers its sequence-sharded input; the backward of that gather is a
        # local slice (no collective), as counted on the executor.
        return ("all_gather",), ()
    if sequence_parallel and kind == "embedding":
        # The replicated embedding output is sliced into the first block's sequence shard;
        # the backward of the slice all-gathers the gradient (counted here, at the boundary).
        return (), ("all_gather",)
    return (), ()
