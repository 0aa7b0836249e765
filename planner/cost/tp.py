"""Tensor parallelism: per-block compute split and the collectives it adds.

Which collectives a block issues is its family's (``Family.tp_collectives``; for GPT Megatron's
two all-reduces per pass, Shoeybi et al. 2019 sec. 3, or their all-gather/reduce-scatter form
under sequence parallelism, Korthikanti et al. 2022 sec. 4.2.2); this module times them and
splits compute. All times are for one micro-batch on one rank. TP collectives sit on the
compute stream's critical path (each matmul waits for the collective before it), so the
simulator counts them as exposed; overlapping them with compute is not modelled.
"""
from __future__ import annotations

from collections.abc import Callable

_NONE: tuple = ((), ())


def block_collectives(family, kind: str, sequence_parallel: bool, tp: int
                      ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The tensor-parallel collectives one block issues per micro-batch: (forward, backward)."""
    if tp == 1:
        return _NONE
    return family.tp_collectives(kind, sequence_parallel)


def split_time(time_s: float, split: bool, tp: int) -> float:
    """Compute time of one block on one of ``tp`` ranks: the split matmuls take 1/t of the time
    (Shoeybi et al. sec. 3 divide the GEMMs evenly); replicated blocks take all of it."""
    return time_s / tp if split else time_s


def collective_time(names: tuple[str, ...], n_bytes: float,
                    comm_time: Callable[[str, float, str], float]) -> float:
    """Total time of ``names`` collectives of ``n_bytes`` each on the tp group, back to back."""
    return sum(comm_time(name, n_bytes, "tp") for name in names)


def activation_message_bytes(microbatch_size: int, seq_len: int, hidden: int,
                             element_bytes: int) -> int:
    """Bytes of one TP collective: the b*s*h activations (formulas.md, Megatron)."""
    return microbatch_size * seq_len * hidden * element_bytes
