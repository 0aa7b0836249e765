"""Context parallelism: the ring attention's transfers and how much of them compute hides.

The executor's ring (``planner.families.ring_attention``) passes each rank's K and V -- b*s/cp
tokens of the K/V heads on this tp rank -- around the cp group. Per layer and micro-batch:

- forward: cp - 1 transfers, each started before the attention of the block in hand and
  waited for after it (Liu et al. 2023, Ring Attention, sec. 3: "overlap the communication of
  key-value blocks with the computation of blockwise attention"); exposed is what a transfer
  takes beyond one step's attention, (cp - 1) * max(0, t_kv - A_f / cp), A_f the rank's
  attention-core forward time (load-balanced: every step does 1/cp of it);
- backward: the K/V blocks again (cp - 1, overlapped the same way with steps of A_b = 2.5 A_f:
  the backward recomputes QK^T besides the two gradient GEMMs per forward GEMM,
  ``planner.cost.roofline.FLASH_BACKWARD_RATIO``) and, after each of the cp steps, the K/V gradient
  accumulated for the block in hand, which the next step needs, so it is not hidden:
  (cp - 1) * max(0, t_kv - A_b / cp) + cp * t_kv.

Every rank of the ring sends at once to its neighbour, so a transfer is one ``send_recv`` over
the cp group's slowest link (``planner.cost.collectives.CommModel``). Without a measured
attention core (profiled blocks) nothing is taken as hidden.
"""
from __future__ import annotations

from planner.cost.roofline import FLASH_BACKWARD_RATIO


def kv_bytes(family, spec, microbatch_size: int, tp: int, cp: int, element_bytes: int) -> float:
    """Bytes of one ring transfer: K and V of this rank's tokens on one tp rank."""
    tokens = microbatch_size * spec.seq_len / cp
    return tokens * family.kv_elements_per_token(spec) / tp * element_bytes


def ring_counts(cp: int) -> tuple[int, int]:
    """(forward, backward) transfers per layer and micro-batch, cp > 1."""
    return cp - 1, 2 * cp - 1


def ring_exposed(t_kv: float, core_forward_s: float, cp: int) -> tuple[float, float]:
    """(forward, backward) transfer time not hidden behind attention (module docstring)."""
    f = (cp - 1) * max(0.0, t_kv - core_forward_s / cp)
    b = (cp - 1) * max(0.0, t_kv - FLASH_BACKWARD_RATIO * core_forward_s / cp) + cp * t_kv
    return f, b
