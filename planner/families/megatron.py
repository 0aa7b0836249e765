"""Megatron-LM's tensor-parallel collectives of a pre-norm decoder, shared by the decoder
families (gpt, llama, moe) whose torch plans split attention and MLP the same way.

Per block (Shoeybi et al. 2019, sec. 3): an all-reduce after attention and after the MLP in
forward, the conjugate ones in backward; with sequence parallelism (Korthikanti et al. 2022,
sec. 4.2.2) each becomes an all-gather before and a reduce-scatter after the split region, the
same volume. A MoE layer whose experts are split the same way (every expert's matmuls by
columns, then rows) issues the same collectives as a dense MLP.
"""
from __future__ import annotations

from planner.cost.tp import TokenCollective

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


# Vocabulary-parallel embedding (Megatron's VocabParallelEmbedding; torch's RowwiseParallel on
# nn.Embedding): each rank looks up the tokens of its vocabulary rows, zeros elsewhere, and the
# partial sums are all-reduced in forward (the backward of that all-reduce is the identity).
# With sequence parallelism the embedding output (tokens + learned positions) is then cut to
# the rank's sequence slice, whose backward all-gathers the gradient (Megatron with learned
# positions does the same: all-reduce, add positions, scatter_to_sequence_parallel_region).
# Loss-parallel head (Megatron's ColumnParallelLinear with gather_output=False and its
# vocab-parallel cross entropy, megatron/core/tensor_parallel/cross_entropy.py; torch's
# ColwiseParallel + loss_parallel): the logits stay split by vocabulary; the input's gradient
# is all-reduced in backward (under sp: the input is all-gathered in forward and its gradient
# reduce-scattered); the cross entropy all-reduces three values per token in forward (max, sum
# of exponentials, the target's logit).
_LOSS = (TokenCollective("all_reduce"),) * 3
_VOCAB = {("embedding", False): (("all_reduce",), ()),
          ("embedding", True): (("all_reduce",), ("all_gather",)),
          ("head", False): (_LOSS, ("all_reduce",)),
          ("head", True): (("all_gather",) + _LOSS, ("reduce_scatter",))}


def vocab_parallel_collectives(kind: str, sequence_parallel: bool) -> tuple[tuple, tuple]:
    """(forward, backward) tp collectives of a vocabulary-parallel embedding or loss-parallel
    head per micro-batch, tp > 1 (comment above); other kinds issue none."""
    return _VOCAB.get((kind, sequence_parallel), ((), ()))


def tp_divisibility_problem(spec, tp: int, sequence_parallel: bool, divisors) -> str:
    """Why Megatron's split of a decoder over ``tp`` ranks does not fit ``spec`` ("" if it
    does): every size in ``divisors`` ((name, size) pairs: heads, FFN columns) must split into
    whole pieces, and under sequence parallelism so must the sequence."""
    if tp == 1:
        return ""
    for name, size in divisors:
        if size % tp:
            return f"tp({tp}) must divide {name}({size}): {size} % {tp} = {size % tp}"
    if sequence_parallel and spec.seq_len % tp:
        return (f"sequence_parallel: tp({tp}) must divide seq_len({spec.seq_len}): "
                f"{spec.seq_len} % {tp} = {spec.seq_len % tp}")
    return ""
