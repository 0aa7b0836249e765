"""Compressed gradient exchange after the backward pass: topk, randk, qsgd, sign.

The wire format, k, buckets, levels and seeds are ``planner.cost.gradcomp``'s (one copy, which
the simulator counts); this module encodes and decodes them with torch. Per model chunk, after
the last micro-batch's backward, the chunk's gradients are flattened into one vector, encoded
(with error feedback for topk, randk and sign), exchanged over the dp group -- one all-gather
of every rank's payload (a flat uint8 buffer), or for randk one all-reduce of the k values at
shared indices -- decoded, averaged over the p ranks and written back into ``.grad``; the
optimizer then steps as usual. Error-feedback residuals live here, one per chunk.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from executor.parallel.dp import NoDataParallel, local
from planner.cost import gradcomp as fmt


# --------------------------------------------------------------------------------------------
# Bit packing: b-bit codes (b in 1, 2, 4, 8), 8 / b per byte, the first in the lowest bits
# --------------------------------------------------------------------------------------------
def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes < 2^bits -> ceil(n * bits / 8) bytes."""
    if bits == 8:
        return codes.to(torch.uint8)
    per = 8 // bits
    pad = (-codes.numel()) % per
    c = torch.nn.functional.pad(codes.to(torch.int32), (0, pad)).view(-1, per)
    shifts = torch.arange(per, dtype=torch.int32) * bits
    return (c << shifts).sum(dim=1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The first n b-bit codes of ``packed`` (int64)."""
    if bits == 8:
        return packed[:n].to(torch.int64)
    per = 8 // bits
    shifts = torch.arange(per, dtype=torch.int32) * bits
    codes = (packed.to(torch.int32).unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1)[:n].to(torch.int64)


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


def _from_bytes(b: torch.Tensor, dtype) -> torch.Tensor:
    """Bytes read back as ``dtype`` (copied: a slice of a payload may sit at an offset the
    wider type cannot be viewed at)."""
    return b.clone().view(dtype)


def _bucketed(v: torch.Tensor) -> torch.Tensor:
    """v zero-padded to whole buckets, one bucket per row."""
    pad = (-v.numel()) % fmt.QSGD_BUCKET
    return torch.nn.functional.pad(v, (0, pad)).view(-1, fmt.QSGD_BUCKET)


def _per_value(per_bucket: torch.Tensor, n: int) -> torch.Tensor:
    return per_bucket.repeat_interleave(fmt.QSGD_BUCKET)[:n]


# --------------------------------------------------------------------------------------------
# Codecs: encode one rank's vector into its payload; decode a payload into a dense vector
# --------------------------------------------------------------------------------------------
def topk_encode(a: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(payload: k int32 indices then k values, as bytes; residual a - kept)."""
    idx = torch.topk(a.abs(), k, sorted=False).indices
    vals = a[idx]
    residual = a.clone()
    residual[idx] = 0
    return torch.cat([_as_bytes(idx.to(torch.int32)), _as_bytes(vals)]), residual


def topk_decode_into(out: torch.Tensor, payload: torch.Tensor, k: int) -> None:
    idx = _from_bytes(payload[:k * fmt.INDEX_BYTES], torch.int32).to(torch.int64)
    vals = _from_bytes(payload[k * fmt.INDEX_BYTES:], out.dtype)
    out.index_add_(0, idx, vals)


def qsgd_quantize(v: torch.Tensor, bits: int, gen: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(signed levels in -s..s (int64), per-bucket L2 norms): Alistarh et al.'s Q_s with the
    uniforms drawn as ``torch.rand(n, generator=gen, dtype=v.dtype)``, in order."""
    s = fmt.qsgd_levels(bits)
    n = v.numel()
    norms = _bucketed(v).norm(dim=1)
    norm = _per_value(norms, n)
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))
    scaled = v.abs() / safe * s
    low = scaled.floor()
    u = torch.rand(n, generator=gen, dtype=v.dtype)
    level = (low + (u < scaled - low).to(v.dtype)).clamp(max=s)
    level = torch.where(norm > 0, level, torch.zeros_like(level))
    return (torch.sign(v) * level).to(torch.int64), norms


def qsgd_encode(v: torch.Tensor, bits: int, gen: torch.Generator) -> torch.Tensor:
    if bits >= 32:
        return _as_bytes(v)
    levels, norms = qsgd_quantize(v, bits, gen)
    codes = levels + fmt.qsgd_levels(bits)
    return torch.cat([pack(codes, bits), _as_bytes(norms)])


def qsgd_decode(payload: torch.Tensor, bits: int, n: int, dtype) -> torch.Tensor:
    if bits >= 32:
        return _from_bytes(payload, dtype)
    s = fmt.qsgd_levels(bits)
    nbytes = -(-n * bits // 8)
    levels = unpack(payload[:nbytes], bits, n) - s
    norms = _from_bytes(payload[nbytes:], dtype)
    return levels.to(dtype) * _per_value(norms, n) / s


def sign_encode(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(payload: sign bits then per-bucket scales ||a||_1 / count; residual a - decoded)."""
    n = a.numel()
    counts = torch.full((fmt.buckets(n),), float(fmt.QSGD_BUCKET), dtype=a.dtype)
    counts[-1] = n - (fmt.buckets(n) - 1) * fmt.QSGD_BUCKET
    scales = _bucketed(a).abs().sum(dim=1) / counts
    positive = a >= 0
    sent = torch.where(positive, 1.0, -1.0).to(a.dtype) * _per_value(scales, n)
    return torch.cat([pack(positive.to(torch.uint8), 1), _as_bytes(scales)]), a - sent


def sign_decode(payload: torch.Tensor, n: int, dtype) -> torch.Tensor:
    nbytes = -(-n // 8)
    bits = unpack(payload[:nbytes], 1, n)
    scales = _from_bytes(payload[nbytes:], dtype)
    return (2 * bits - 1).to(dtype) * _per_value(scales, n)


# --------------------------------------------------------------------------------------------
# The data-parallel strategy
# --------------------------------------------------------------------------------------------
class CompressedExchange(NoDataParallel):
    """``layout.data.compression`` in topk/randk/qsgd/sign: encode, exchange, decode, average,
    per chunk, after the backward pass (``planner.cost.gradcomp``)."""

    name = "compressed-exchange"

    def __init__(self, parts, group, layout, seed: int):
        super().__init__(parts, group)
        self.data, self.seed = layout.data, seed
        self.p = dist.get_world_size(group)
        self.me = dist.get_rank(group)
        self.step = 0
        self.residuals: list = [None] * len(parts)

    def before_step(self, step: int) -> None:
        self.step = step

    def after_backward(self) -> None:
        for c, part in enumerate(self.parts):
            params = [p for p in part.parameters()]
            grads = [local(p.grad) if p.grad is not None else torch.zeros_like(local(p))
                     for p in params]
            if not grads:
                continue
            flat = _flatten_dense_tensors(grads)
            mean = self._exchange(c, flat)
            for p, g, new in zip(params, grads, _unflatten_dense_tensors(mean, grads)):
                if p.grad is None:
                    p.grad = new.clone()
                else:
                    g.copy_(new)

    def _exchange(self, c: int, g: torch.Tensor) -> torch.Tensor:
        d, n = self.data, g.numel()
        ex = fmt.exchange(d, n, g.element_size(), self.p)
        if ex.error_feedback:
            if self.residuals[c] is None:
                self.residuals[c] = torch.zeros_like(g)
            g = g + self.residuals[c]
        if d.compression == "randk":
            gen = torch.Generator().manual_seed(fmt.stream_seed(self.seed, self.step, c, None))
            idx = torch.randperm(n, generator=gen)[:ex.kept]
            vals = g[idx].clone()
            residual = g.clone()
            residual[idx] = 0
            self.residuals[c] = residual
            dist.all_reduce(vals, group=self.group)
            out = torch.zeros_like(g)
            out[idx] = vals
            return out.div_(self.p)
        payload = self._encode(c, g, ex)
        gathered = torch.empty(self.p * ex.payload_bytes, dtype=torch.uint8)
        dist.all_gather_single(gathered, payload, group=self.group)
        out = torch.zeros_like(g)
        for r in range(self.p):
            self._decode_into(out, gathered[r * ex.payload_bytes:(r + 1) * ex.payload_bytes],
                              ex)
        return out.div_(self.p)

    def _encode(self, c: int, g: torch.Tensor, ex) -> torch.Tensor:
        kind = self.data.compression
        if kind == "topk":
            payload, self.residuals[c] = topk_encode(g, ex.kept)
        elif kind == "sign":
            payload, self.residuals[c] = sign_encode(g)
        else:
            gen = torch.Generator().manual_seed(fmt.stream_seed(self.seed, self.step, c,
                                                                self.me))
            payload = qsgd_encode(g, self.data.bits, gen)
        assert payload.numel() == ex.payload_bytes, (payload.numel(), ex.payload_bytes)
        return payload

    def _decode_into(self, out: torch.Tensor, payload: torch.Tensor, ex) -> None:
        kind, n = self.data.compression, out.numel()
        if kind == "topk":
            topk_decode_into(out, payload, ex.kept)
        elif kind == "sign":
            out.add_(sign_decode(payload, n, out.dtype))
        else:
            out.add_(qsgd_decode(payload, self.data.bits, n, out.dtype))
