"""Gradient compression in the simulator: bytes sent and compute added.

DDP hooks, per bucket: fp16/bf16 halve 4-byte gradients (a cast pass at memory bandwidth,
torch's ``fp16_compress_hook``); PowerSGD (Vogels et al., NeurIPS 2019; torch's
``powerSGD_hook``) sends P and Q of each matrix that compresses
(``planner.cost.dp.powersgd_split``) and computes its matmuls at the achieved FLOP rate.

Exchanges after the backward pass, per chunk (topk, randk, qsgd, sign): the collective and
message of ``planner.cost.gradcomp.exchange`` and its encode/select/decode compute
(``planner.cost.gradcomp.codec_s``: measured on this CPU for gloo clusters, a memory roofline on
GPUs), all on the critical path after the rank's backward pass.
"""
from __future__ import annotations

from planner import families
from planner.cost import dp as dp_cost
from planner.cost import gradcomp
from planner.sim.run import compute_slowdown, flop_rate


def chunk_values(run, chunk) -> int:
    """n, the gradient values of one chunk on one rank (what the executor flattens)."""
    return int(round(chunk.params))


def exchange_messages(run, layout, chunk) -> list[tuple[str, float]]:
    """(collective, message bytes) of one chunk's compressed exchange."""
    ex = gradcomp.exchange(layout.data, chunk_values(run, chunk), int(run.bytes_per_param[1]),
                           layout.dp)
    return [(ex.collective, float(ex.message_bytes))]


def exchange_time(run, layout, chunk, comm) -> float:
    """Encode + collective + decode of one chunk, on one rank."""
    n, e = chunk_values(run, chunk), int(run.bytes_per_param[1])
    bandwidth = (None if run.cluster.backend == "gloo"
                 else run.cluster.device.memory_bandwidth_bytes_per_s)
    enc, dec = gradcomp.codec_s(layout.data, n, e, layout.dp, bandwidth)
    slow = compute_slowdown(run.cluster, layout.world_size)
    return (enc + dec) * slow + sum(comm(name, nbytes, "dp")
                           for name, nbytes in exchange_messages(run, layout, chunk))


def bucket_time(run, layout, chunk, nbytes: float, comm, reduction: str = "all_reduce"
                ) -> float:
    """One bucket's reduction (DDP's all-reduce, or the distributed optimizer's
    reduce-scatter) over the dp * cp replicas, with its compression
    (``layout.data.compression``)."""
    return sum(comm(reduction, part, layout.dims.reduce_dim)
               for part in bucket_messages(run, layout, chunk, nbytes)) + \
        compression_s(run, layout, chunk, nbytes)


def bucket_messages(run, layout, chunk, nbytes: float) -> list[float]:
    """The all-reduce messages of one DDP bucket of ``nbytes`` gradient bytes: the bucket,
    or its 16-bit cast, or PowerSGD's uncompressed part, P and Q."""
    e = run.bytes_per_param[1]
    kind = layout.data.compression
    if kind in ("fp16", "bf16"):
        return [nbytes * wire_share(run, kind)]
    if kind == "powersgd":
        share = nbytes / max(sum(chunk.detail("grad_bytes_rev")), 1.0)
        mats = _chunk_matrices(run, layout, chunk)
        packed, raw, _ = dp_cost.powersgd_split(mats, layout.data.powersgd_rank)
        matrix_numel = sum(r * c for r, c in mats) * share
        plain = max(0.0, nbytes / e - matrix_numel + raw * share) * e
        return [x for x in (plain, packed * share * e / 2, packed * share * e / 2) if x > 0]
    return [nbytes]


def wire_share(run, compression: str) -> float:
    """Bytes sent per gradient byte, at most (the search's lower bounds scale by it): 1
    uncompressed; a 16-bit cast 2/e of e-byte gradients; PowerSGD 0 (how much it sends
    depends on the bucket's matrices, ``bucket_messages``)."""
    e = run.bytes_per_param[1]
    if compression in ("fp16", "bf16"):
        return 2.0 / e if e > 2 else 1.0
    return 0.0 if compression == "powersgd" else 1.0


def compression_s(run, layout, chunk, nbytes: float) -> float:
    """Compute added by compression: a cast pass over the bucket at memory bandwidth
    (read the gradient, write the 16-bit copy, and back); PowerSGD's matmuls at
    ``planner.sim.run.flop_rate``."""
    e = run.bytes_per_param[1]
    kind = layout.data.compression
    if kind in ("fp16", "bf16"):
        if e <= 2:
            return 0.0
        return 2.0 * (nbytes + nbytes * 2.0 / e) / run.cluster.device.memory_bandwidth_bytes_per_s
    if kind == "powersgd":
        share = nbytes / max(sum(chunk.detail("grad_bytes_rev")), 1.0)
        _, _, flops = dp_cost.powersgd_split(_chunk_matrices(run, layout, chunk),
                                             layout.data.powersgd_rank)
        return flops * share / flop_rate(run)
    return 0.0


def _chunk_matrices(run, layout, chunk) -> list[tuple[int, int]]:
    family = families.of(run.model)
    kinds = family.block_kinds(run.model)
    out = []
    for x in chunk.blocks:
        out += family.block_matrices(kinds[x], run.model, layout.tp, x)
    return out
