"""Pipeline parallelism: boundary transfers, bubble formulas and a step-time lower bound.

Sources: formulas.md "Pipeline"; Huang et al. 2019 (GPipe); Narayanan et al. SC'21
(arXiv 2104.04473) sec. 2.2 for the 1F1B and interleaved bubbles; Qi et al. 2023
(arXiv 2401.10241) for zero-bubble schedules. The simulator does not use the closed forms: it
times the schedule's operations as events. They serve as tests of the simulator and as the
search's cheap bounds.
"""
from __future__ import annotations

from collections.abc import Sequence


def boundary_bytes(output_bytes: int, tp: int, sequence_parallel: bool) -> int:
    """Bytes sent across a stage boundary per micro-batch, each way (activations forward,
    their gradient backward): the block's b*s*h output; a sequence-parallel stage holds and sends
    only its 1/t slice of the sequence (Korthikanti et al. 2022, sec. 4.2.2)."""
    return output_bytes // tp if sequence_parallel else output_bytes


def scatter_gather(implementation: str, tp: int, sequence_parallel: bool) -> bool:
    """Whether boundary transfers use Megatron-LM's scatter/gather (Narayanan et al. SC'21,
    sec. 4.1; megatron/p2p_communication.py with ``scatter_gather_tensors_in_pipeline``, on by
    default): with tp > 1 and no sequence parallelism, each of the t tensor-parallel ranks
    sends 1/t of the boundary activation (each over its own link) and the receiving ranks
    all-gather the pieces over their tp group. Under sequence parallelism each rank's boundary
    tensor is already its own 1/t slice. The executor (torch pipelining) sends the whole tensor
    from every tp rank."""
    return implementation == "megatron" and tp > 1 and not sequence_parallel


def send_time(comm, n_bytes: int, tp: int, scatter: bool, stage: int | None = None) -> float:
    """One boundary transfer of ``n_bytes`` (each way, per micro-batch): a send over the pp
    link, or under ``scatter_gather`` a send of n/t bytes then an all-gather of n over tp."""
    if scatter:
        return comm("send_recv", n_bytes // tp, "pp", stage) + comm("all_gather", n_bytes, "tp")
    return comm("send_recv", n_bytes, "pp", stage)


def bubble_fraction(p: int, m: int, v: int = 1) -> float:
    """Idle share of a flushing pipeline with equal stages: (p-1)/(v*m + p-1).

    GPipe and 1F1B (v = 1): bubble time (p-1)(t_f+t_b) over a step of (m+p-1)(t_f+t_b);
    interleaved with v chunks divides the bubble time by v (Narayanan et al. SC'21, sec. 2.2.2).
    """
    bubble = (p - 1) / v
    return bubble / (m + bubble)


def flush_lower_bound(stage_s: Sequence[float], m: int) -> float:
    """A lower bound on one step of any flushing schedule with one chunk per rank.

    ``stage_s[r]`` is the forward+backward compute of one micro-batch on rank r. Rank r starts
    only when micro-batch 0 has passed ranks < r and finishes only after the last micro-batch's
    backward has left them, so T >= max_r (sum_{j<r} x_j + m x_r).
    """
    p = len(stage_s)
    return max(sum(stage_s[:r]) + m * stage_s[r] for r in range(p))


def balanced_lower_bound(total_per_microbatch_s: float, p: int, m: int) -> float:
    """Lower bound on a step when only the total per-micro-batch compute is known.

    ``flush_lower_bound``'s terms averaged with weights w_r proportional to (1 - 1/m)^(p-1-r)
    give every x_j the same coefficient, 1 / (1 - (1 - 1/m)^p): T >= sum x / (1 - (1-1/m)^p),
    which lies between m * sum x / p and the balanced stages' (m + p - 1)/p * sum x."""
    if p == 1:
        return m * total_per_microbatch_s
    return total_per_microbatch_s / (1.0 - (1.0 - 1.0 / m) ** p)
