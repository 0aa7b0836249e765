"""Tensor parallelism (Megatron-LM): per-block compute split and the collectives it adds.

Source: Shoeybi et al. 2019 (arXiv 1909.08053), sec. 3: a decoder block splits q, k, v and the
first MLP matmul by columns and the two output projections by rows, so its forward pass ends
each of attention and MLP with an all-reduce of the b*s*h activations over the t ranks (2 per
block) and its backward pass needs the conjugate all-reduce of the input gradients (2 per
block). With sequence parallelism (Korthikanti et al. 2022, arXiv 2205.05198, sec. 4.2.2) each
all-reduce becomes an all-gather before and a reduce-scatter after the split region, the same
volume. This is what ``executor/parallel/tp.py`` runs; the embedding, layer norms and the LM
head stay replicated there (no split, no collective), except that under sequence parallelism the
head all-gathers its sequence-sharded input, the gradient entering the first block is
all-gathered in backward, and the layer norms' gradients (partial sums over sequence shards) are
all-reduced once per step (``layer_norm_grad_bytes``).

All times are for one micro-batch on one rank. TP collectives sit on the compute stream's
critical path (each matmul waits for the collective before it), so the simulator counts them as
exposed; overlapping them with compute is not modelled.
"""
from __future__ import annotations

from collections.abc import Callable

# (forward collectives, backward collectives) per block and layout, in issue order.
_GPT_BLOCK = (("all_reduce", "all_reduce"), ("all_reduce", "all_reduce"))
_GPT_BLOCK_SP = (("all_gather", "reduce_scatter", "all_gather", "reduce_scatter"),
                 ("all_gather", "reduce_scatter", "all_gather", "reduce_scatter"))
_MLP_BLOCK = (("all_reduce",), ("all_reduce",))
_NONE: tuple = ((), ())


def block_collectives(kind: str, family: str, sequence_parallel: bool, tp: int
                      ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The tensor-parallel collectives one block issues per micro-batch: (forward, backward)."""
    if tp == 1:
        return _NONE
    if kind == "block":
        if family == "gpt":
            return _GPT_BLOCK_SP if sequence_parallel else _GPT_BLOCK
        return _MLP_BLOCK
    if sequence_parallel and kind == "head":
        # The head all-gathers its sequence-sharded input; the backward of that gather is a
        # local slice (no collective), as counted on the executor.
        return (("all_gather",), ())
    if sequence_parallel and kind == "embedding":
        # The replicated embedding output is sliced into the first block's sequence shard; the
        # backward of the slice all-gathers the gradient (counted here, at the boundary).
        return ((), ("all_gather",))
    return _NONE


def is_split(kind: str) -> bool:
    """Whether a block's weights and matmuls are divided over the tp ranks (decoder/MLP blocks
    only; embedding and head are replicated, as the executor runs them)."""
    return kind == "block"


def split_time(time_s: float, kind: str, tp: int) -> float:
    """Compute time of one block on one of ``tp`` ranks: the split matmuls take 1/t of the time
    (Shoeybi et al. sec. 3 divide the GEMMs evenly); replicated blocks take all of it."""
    return time_s / tp if is_split(kind) else time_s


def collective_time(names: tuple[str, ...], n_bytes: float,
                    comm_time: Callable[[str, float, str], float]) -> float:
    """Total time of ``names`` collectives of ``n_bytes`` each on the tp group, back to back."""
    return sum(comm_time(name, n_bytes, "tp") for name in names)


def activation_message_bytes(microbatch_size: int, seq_len: int, hidden: int,
                             element_bytes: int) -> int:
    """Bytes of one TP collective: the b*s*h activations (formulas.md, Megatron)."""
    return microbatch_size * seq_len * hidden * element_bytes


def layer_norm_grad_bytes(num_layers: int, hidden: int, element_bytes: int) -> int:
    """Bytes of the once-per-step all-reduce of the replicated layer norms' gradients under
    sequence parallelism (Korthikanti et al. 2022, sec. 4.2.2: each rank holds a partial sum over
    its sequence shard): two LayerNorms of 2h parameters per block."""
    return num_layers * 4 * hidden * element_bytes
