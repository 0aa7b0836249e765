"""Compressed gradient exchanges after the backward pass: their wire format, one copy.

The executor (``executor.parallel.gradcomp``) encodes exactly what this module says is sent,
and the simulator (``planner.sim.compress``) counts and prices the same messages. Each scheme
works on one model chunk's gradients flattened into one vector of n values (``e`` bytes each)
and runs over the dp group of p ranks:

- ``topk`` (Aji & Heafield 2017; Stich et al., "Sparsified SGD with memory", NeurIPS 2018; Lin
  et al., DGC, ICLR 2018): error feedback ``a = g + r``; keep the k = ceil(ratio * n) entries of
  largest |a|; the residual ``r = a - kept`` is added next step. Each rank's k (int32 index,
  value) pairs go out by one all-gather (they differ per rank, so nothing can be summed on the
  way): every rank receives p * k pairs, scatter-adds them and divides by p. The all-gather grows
  with p; a dense ring all-reduce sends 2 (p-1)/p * n * e per rank, the sparse all-gather
  (p-1) * k * (4 + e), so top-k sends less only while k/n < 2 e / (p (4 + e)).
- ``randk``: k entries drawn uniformly, the same on every rank (seeded by ``stream_seed`` with
  rank None), with error feedback: only the k values travel, by an all-reduce (the shared-seed
  random-k of Vogels et al., PowerSGD, NeurIPS 2019, sec. 5).
- ``qsgd`` (Alistarh et al., "QSGD", NeurIPS 2017, sec. 3.1 with bucketing, sec. 3.2 / 5):
  per bucket of ``QSGD_BUCKET`` values, the L2 norm; each value becomes
  ``norm * sgn(v) * xi / s`` with ``xi`` = floor(|v| s / norm) + 1 with probability
  |v| s / norm - floor(...), else the floor: unbiased. s = 2^(b-1) - 1 levels, the signed level
  stored as the b-bit code ``level + s``. Per rank: ceil(n b / 8) bytes of codes plus one norm
  (e bytes) per bucket, all-gathered. ``bits`` 32 sends the values unquantized (e bytes each):
  the exchange's own exactness check. Uniforms come from ``stream_seed`` with the rank: each
  rank's rounding noise is its own, so it averages down over ranks.
- ``sign`` (EF-SignSGD: Karimireddy et al., "Error feedback fixes SignSGD", ICML 2019, Alg. 1;
  Seide et al. 2014, 1-bit SGD with error feedback): ``a = g + r``; per bucket the scale
  ||a||_1 / (values in the bucket) times sign(a) (bit 1 for a >= 0), ``r = a - that``. Per rank:
  ceil(n / 8) bytes of bits plus one scale (e bytes) per bucket, all-gathered. Karimireddy et
  al. scale per tensor; a bucket of ``QSGD_BUCKET`` values is the finer, column-like grain of
  Seide et al. (one reconstruction value per column).

Message sizes follow ``planner.cost.comm``: an all-gather's n is its whole output (p payloads),
an all-reduce's its one buffer. Encode, select and decode compute: ``codec_s``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

QSGD_BUCKET = 512           # values per norm (QSGD) or per scale (sign); Alistarh et al. use 512
INDEX_BYTES = 4             # int32 indices: chunks hold fewer than 2^31 values
_SEED_STRIDE = 1_000_003    # keeps (seed, step, chunk, rank) streams apart


def sparse_k(n: int, ratio: float) -> int:
    """Values kept by topk/randk of an n-value chunk: ceil(ratio * n), at least 1, at most n."""
    return max(1, min(n, math.ceil(ratio * n - 1e-9)))


def qsgd_levels(bits: int) -> int:
    """s, the magnitude levels of a b-bit signed code: levels -s..s fit in b bits."""
    return 2 ** (bits - 1) - 1


def buckets(n: int) -> int:
    return -(-n // QSGD_BUCKET)


def stream_seed(seed: int, step: int, chunk: int, rank: int | None) -> int:
    """The generator seed of one draw: random-k indices (``rank`` None: equal on every rank)
    and QSGD's uniforms (``rank`` = the dp rank: independent noise per rank)."""
    r = 0 if rank is None else rank + 1
    return ((seed * _SEED_STRIDE + step) * _SEED_STRIDE + chunk) * 4099 + r


@dataclass(frozen=True)
class Exchange:
    """One chunk's compressed exchange: the collective and its message bytes (the planner's
    convention), the per-rank payload, and the values selection and decoding touch."""
    collective: str          # "all_gather" | "all_reduce"
    message_bytes: int       # all-gather: whole output (p payloads); all-reduce: the buffer
    payload_bytes: int       # what one rank puts in
    kept: int                # values each rank sends (k, or n)
    error_feedback: bool


def payload_bytes(data, n: int, e: int) -> int:
    """Bytes one rank contributes for an n-value chunk of e-byte gradients."""
    kind = data.compression
    if kind == "topk":
        return sparse_k(n, data.compression_ratio) * (INDEX_BYTES + e)
    if kind == "randk":
        return sparse_k(n, data.compression_ratio) * e
    if kind == "qsgd":
        if data.bits >= 32:
            return n * e
        return -(-n * data.bits // 8) + buckets(n) * e
    if kind == "sign":
        return -(-n // 8) + buckets(n) * e
    raise ValueError(f"no exchange for compression {kind!r}")


def exchange(data, n: int, e: int, p: int) -> Exchange:
    """The exchange of an n-value chunk over p ranks (``data``: the layout's DataParallel)."""
    kind = data.compression
    payload = payload_bytes(data, n, e)
    kept = sparse_k(n, data.compression_ratio) if kind in ("topk", "randk") else n
    if kind == "randk":
        return Exchange("all_reduce", payload, payload, kept, True)
    return Exchange("all_gather", p * payload, payload, kept, kind in ("topk", "sign"))


def wire_bytes_per_rank(collective: str, message_bytes: float, p: int) -> float:
    """Bytes one rank sends for one collective under the ring algorithms of
    ``planner.cost.comm`` (all-reduce 2 (p-1)/p n, all-gather and reduce-scatter (p-1)/p n);
    a point-to-point transfer of the group sends n once, 1/p of it per rank on average;
    broadcast and reduce n (the root's view)."""
    if p <= 1:
        return 0.0
    f = (p - 1) / p
    return {"all_reduce": 2 * f, "all_gather": f, "reduce_scatter": f,
            "send_recv": 1.0 / p}.get(collective, 1.0) * message_bytes


# --------------------------------------------------------------------------------------------
# Compute: selection, encoding, decoding
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CodecSpeed:
    """Seconds per value of each codec stage on one kind of device."""
    copy_s: float             # flatten the chunk's gradients and write the result back, per n
    ef_s: float               # error feedback: add the residual, |a|, residual update, per n
    partial_sort_scan_s: float  # torch.topk, k * 64 <= n: compare each value with the heap top
    partial_sort_heap_s: float  # ... per k log2(k) (1 + ln(n/k)): values entering the heap
    nth_element_s: float      # torch.topk otherwise: std::nth_element, per n
    randk_s: float            # randperm(n) of the shared indices, per n
    qsgd_encode_s: float      # norms, uniforms, rounding, packing, per n
    sign_encode_s: float      # scales, bits, residual, packing, per n
    unpack_s: float           # decode one received payload and add it, per n (qsgd, sign)
    scatter_s: float          # scatter-add one received (index, value) pair
    source: str


# Measured by ``python benchmarks/gradcomp_cpu.py`` (the executor's own codec functions, one
# thread, float32, n = 2^16..2^20, process CPU time, medians of 7, torch 2.13 CPU build) on this
# project's 2-core development machine under load average 8-12 from other work, 2026-12-01:
# the means of its runs, which spread by +-40% (scatter-add, a random access, by 2x). torch's
# CPU top-k copies the n (value, index) pairs and runs std::partial_sort when k * 64 <= n, else
# std::nth_element, O(n) (aten/src/ATen/native/TopKImpl.h). The partial sort scans all n
# against the heap's top; in random order value i > k enters the heap with probability k/i,
# k ln(n/k) of them in expectation, each at log2 k: a n + b k log2(k) (1 + ln(n/k)) fits the
# measured grid (k/n from 1/2000 to 1/64) within 30-40%, where a n log2 k fit is off by 67%.
CPU_SPEED = CodecSpeed(copy_s=3.4e-10, ef_s=6.0e-10, partial_sort_scan_s=1.6e-9,
                       partial_sort_heap_s=1.0e-8, nth_element_s=9.9e-9, randk_s=6.4e-9,
                       qsgd_encode_s=1.75e-8, sign_encode_s=9.4e-9, unpack_s=3.0e-9,
                       scatter_s=5.0e-9,
                       source="benchmarks/gradcomp_cpu.py on the 2-core development machine")


def topk_select_s(n: int, k: int, speed: CodecSpeed) -> float:
    """torch.topk of k among n on the CPU, in the regime its implementation picks."""
    if k * 64 <= n:
        k = max(k, 2)
        return (n * speed.partial_sort_scan_s
                + k * math.log2(k) * (1 + math.log(n / k)) * speed.partial_sort_heap_s)
    return n * speed.nth_element_s


def gpu_select_bytes(n: int, e: int) -> float:
    """Bytes a GPU top-k touches: torch's CUDA top-k finds the k-th largest key by radix
    select (aten/src/ATen/native/cuda/TensorTopK.cu; its multi-block version for large slices
    takes 8-bit digits), one pass over the n keys per digit -- e passes of n * e bytes -- then
    one more to gather the k selected: O(n), independent of k (against O(n log k) for the
    CPU's partial sort)."""
    return (e + 1) * n * e


def codec_s(data, n: int, e: int, p: int, memory_bandwidth: float | None
            ) -> tuple[float, float]:
    """(encode and select, decode) seconds of one rank for an n-value chunk over p ranks.

    ``memory_bandwidth`` None: this CPU's measured ``CPU_SPEED``. Otherwise (a GPU) a roofline of
    memory-bound kernels, bytes touched / bandwidth (Williams et al., CACM 2009): flatten and
    write back 4 n e; error feedback 5 n e; top-k ``gpu_select_bytes``; QSGD's norms, uniforms,
    rounding and codes ~6 n e; sign's scales and bits ~4 n e; decoding reads each of the p
    payloads and adds into the n-value sum (payload + 2 n e each; top-k: 2 (4 + e) per pair).
    The GPU figures are this model's, not measured here.
    """
    kind = data.compression
    ex = exchange(data, n, e, p)
    k = ex.kept
    if memory_bandwidth is None:
        sp = CPU_SPEED
        enc = n * sp.copy_s + (n * sp.ef_s if ex.error_feedback else 0.0)
        if kind == "topk":
            enc += topk_select_s(n, k, sp)
            dec = p * k * sp.scatter_s
        elif kind == "randk":
            enc += n * sp.randk_s
            dec = n * sp.copy_s
        elif kind == "qsgd":
            enc += 0.0 if data.bits >= 32 else n * sp.qsgd_encode_s
            dec = p * n * (sp.copy_s if data.bits >= 32 else sp.unpack_s)
        else:
            enc += n * sp.sign_encode_s
            dec = p * n * sp.unpack_s
        return enc, dec
    touched = 4.0 * n * e + (5.0 * n * e if ex.error_feedback else 0.0)
    if kind == "topk":
        touched += gpu_select_bytes(n, e)
        back = p * k * 2.0 * (INDEX_BYTES + e)
    elif kind == "randk":
        back = 2.0 * n * e
    else:
        touched += 6.0 * n * e if kind == "qsgd" and data.bits < 32 else (
            4.0 * n * e if kind == "sign" else 0.0)
        back = p * (ex.payload_bytes + 2.0 * n * e)
    return touched / memory_bandwidth, back / memory_bandwidth
