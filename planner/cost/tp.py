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
from typing import NamedTuple

_NONE: tuple = ((), ())


class TokenCollective(NamedTuple):
    """A tp collective of one value per token instead of the b*s*h activations: the
    vocabulary-parallel cross entropy's reductions (the logits' maximum, the sum of their
    exponentials, the target's logit; Megatron-LM's
    megatron/core/tensor_parallel/cross_entropy.py and torch's ``loss_parallel`` issue the
    same three all-reduces). A family lists it among its ``tp_collectives`` beside plain names."""
    name: str


def message(entry, activation_bytes: int, token_bytes: int) -> tuple[str, int]:
    """(collective name, bytes) of one entry of a family's ``tp_collectives``."""
    if isinstance(entry, TokenCollective):
        return entry.name, token_bytes
    return entry, activation_bytes


def block_collectives(family, kind: str, sequence_parallel: bool, tp: int
                      ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The tensor-parallel collectives one block issues per micro-batch: (forward, backward)."""
    if tp == 1:
        return _NONE
    return family.tp_collectives(kind, sequence_parallel)


def launches(family, kind: str, sequence_parallel: bool, tp: int) -> tuple[int, int]:
    """How many tp collectives a block of ``kind`` launches per (forward, backward) pass (host
    launch time in the roofline): the family's ``block_collectives``."""
    fwd, bwd = block_collectives(family, kind, sequence_parallel, tp)
    return len(fwd), len(bwd)


def split_time(time_s: float, split: bool, tp: int) -> float:
    """Compute time of one block on one of ``tp`` ranks: the split matmuls take 1/t of the time
    (Shoeybi et al. sec. 3 divide the GEMMs evenly); replicated blocks take all of it."""
    return time_s / tp if split else time_s


def collective_time(entries: tuple, n_bytes: float, comm_time: Callable[[str, float, str], float],
                    token_bytes: float = 0) -> float:
    """Total time of a block's tp collectives back to back: plain names move ``n_bytes``
    each, ``TokenCollective`` entries ``token_bytes``."""
    return sum(comm_time(*message(x, n_bytes, token_bytes), "tp") for x in entries)


def activation_message_bytes(microbatch_size: int, seq_len: int, hidden: int,
                             element_bytes: int) -> int:
    """Bytes of one TP collective: the b*s*h activations (formulas.md, Megatron)."""
    return microbatch_size * seq_len * hidden * element_bytes


def token_message_bytes(microbatch_size: int, seq_len: int, element_bytes: int) -> int:
    """Bytes of one ``TokenCollective``: b*s values in the loss's precision, float32 unless the
    run is wider (Megatron's cross entropy casts the logits to fp32; the executor's loss,
    ``planner.families.sequential``, keeps float64 and upcasts anything narrower)."""
    return microbatch_size * seq_len * max(element_bytes, 4)
