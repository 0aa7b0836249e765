"""Ring attention over context-parallel ranks (torch): causal attention of this rank's queries
against every rank's keys and values, the K/V blocks passed around the ring.

Why our own: ``torch.distributed.tensor.experimental.context_parallel`` (torch 2.13) replaces
only the CUDA SDPA kernels (flash, efficient, cuDNN); on CPU, SDPA dispatches to
``aten._scaled_dot_product_flash_attention_for_cpu``, which it does not handle ("does not have
a sharding strategy registered"), so the gloo/CPU runs this project's exactness tests use would
fail. One implementation serves every device.

The sequence is split load-balanced (Megatron-LM's and torchtitan's causal split): cut into
2*cp chunks, rank i holds chunks i and 2cp-1-i, so every rank does the same causal work
(``positions``). Forward (Liu et al. 2023, "Ring Attention with Blockwise Transformers",
arXiv 2310.01889; the online softmax of Milakov & Gimelshein 2018): cp steps; at step j the rank
holds the K/V block of rank (i - j) mod cp, starts sending it to rank i+1 and receiving the next
one from rank i-1, computes its queries against the held block (mask from global positions),
and merges the block's result into the running output by log-sum-exp; the transfer overlaps the
block's attention. Backward recomputes each block's probabilities from the saved log-sum-exp
(FlashAttention's backward, Dao et al. 2022, alg. 2): K/V go around the ring again (sent early,
overlapped), and the K/V gradient accumulated for each block travels with it, arriving at its
owner after the last step. Per layer and micro-batch: cp-1 sends (and receives) forward, 2cp-1
backward; each carries K and V (or their gradients) of the rank's tokens.

Grouped-query attention: query head h reads K/V head h // (heads / kv_heads), as
``scaled_dot_product_attention(enable_gqa=True)``; K/V gradients are summed over each group.
The softmax scale is 1/sqrt(head_dim), SDPA's default.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class CpContext:
    """What one rank's attention needs to run its part of the ring."""
    group: object                 # the cp process group
    rank: int                     # this rank's index in the ring
    size: int                     # cp
    next_rank: int                # global rank of ring neighbour i+1 (sent to)
    prev_rank: int                # global rank of ring neighbour i-1 (received from)
    positions: torch.Tensor       # global positions of this rank's tokens (int64)
    all_positions: list           # the same for every ring index
    seq_len: int                  # the whole sequence


def chunk_positions(index: int, cp: int, seq_len: int) -> torch.Tensor:
    """Global positions rank ``index`` of ``cp`` holds: chunks index and 2cp-1-index of 2cp."""
    c = seq_len // (2 * cp)
    return torch.cat((torch.arange(index * c, (index + 1) * c),
                      torch.arange((2 * cp - 1 - index) * c, (2 * cp - index) * c)))


def _exchange(send: torch.Tensor, ctx: CpContext):
    """Start sending ``send`` to the next rank and receiving a tensor like it from the
    previous one; returns (received buffer, works)."""
    recv = torch.empty_like(send)
    works = [dist.isend(send, ctx.next_rank, group=ctx.group),
             dist.irecv(recv, ctx.prev_rank, group=ctx.group)]
    return recv, works


def _wait(works) -> None:
    for w in works:
        w.wait()


def _scores(q, k, qpos, kpos, scale):
    """Masked scores of q [b, a, n, d] against k [b, a, m, d] (-inf where key after query)."""
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    return s.masked_fill(qpos[:, None] < kpos[None, :], float("-inf"))


def _expand(t, groups: int):
    return t.repeat_interleave(groups, dim=1) if groups > 1 else t


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(fctx, q, k, v, ctx: CpContext):
        kv, groups = k.shape[1], q.shape[1] // k.shape[1]
        scale = q.shape[-1] ** -0.5
        qpos = ctx.positions.to(q.device)
        block = torch.cat((k, v), dim=1).contiguous()
        out = lse = None
        for step in range(ctx.size):
            src = (ctx.rank - step) % ctx.size
            if step < ctx.size - 1:
                nxt, works = _exchange(block, ctx)
            kk, vv = (_expand(t, groups) for t in block.split(kv, dim=1))
            s = _scores(q, kk, qpos, ctx.all_positions[src].to(q.device), scale)
            blk_lse = torch.logsumexp(s, dim=-1)
            safe = torch.where(torch.isfinite(blk_lse), blk_lse, torch.zeros_like(blk_lse))
            blk_out = torch.matmul(torch.exp(s - safe[..., None]), vv)
            if out is None:      # step 0: the rank's own block, every query sees itself
                out, lse = blk_out, blk_lse
            else:
                new = torch.logaddexp(lse, blk_lse)
                out = out * torch.exp(lse - new)[..., None] + \
                    blk_out * torch.exp(blk_lse - new)[..., None]
                lse = new
            if step < ctx.size - 1:
                _wait(works)
                block = nxt
        fctx.save_for_backward(q, k, v, out, lse)
        fctx.ctx = ctx
        return out

    @staticmethod
    def backward(fctx, dout):
        q, k, v, out, lse = fctx.saved_tensors
        ctx = fctx.ctx
        kv, groups = k.shape[1], q.shape[1] // k.shape[1]
        scale = q.shape[-1] ** -0.5
        qpos = ctx.positions.to(q.device)
        dout = dout.contiguous()
        delta = (dout * out).sum(dim=-1, keepdim=True)
        dq = torch.zeros_like(q)
        block = torch.cat((k, v), dim=1).contiguous()
        grad = torch.zeros_like(block)          # the K/V gradient of the block held
        b, _, n, d = k.shape
        for step in range(ctx.size):
            src = (ctx.rank - step) % ctx.size
            if step < ctx.size - 1:
                nxt, works = _exchange(block, ctx)
            kk, vv = (_expand(t, groups) for t in block.split(kv, dim=1))
            s = _scores(q, kk, qpos, ctx.all_positions[src].to(q.device), scale)
            p = torch.exp(s - lse[..., None])
            dv = torch.matmul(p.transpose(-1, -2), dout)
            ds = p * (torch.matmul(dout, vv.transpose(-1, -2)) - delta)
            dq += torch.matmul(ds, kk) * scale
            dk = torch.matmul(ds.transpose(-1, -2), q) * scale
            if groups > 1:
                dk = dk.view(b, kv, groups, n, d).sum(dim=2)
                dv = dv.view(b, kv, groups, n, d).sum(dim=2)
            grad = grad + torch.cat((dk, dv), dim=1)
            grad, gworks = _exchange(grad.contiguous(), ctx)   # on to the block's next rank
            _wait(gworks)
            if step < ctx.size - 1:
                _wait(works)
                block = nxt
        # after the last step the accumulated gradient of this rank's own block has arrived
        dk, dv = grad.split(kv, dim=1)
        return dq, dk, dv, None


def ring_attention(q, k, v, ctx: CpContext):
    """Causal attention of q [b, a, n, d] (this rank's tokens) against the K/V [b, kv, n, d]
    of every rank of ``ctx``'s ring (module docstring)."""
    return _RingAttention.apply(q, k, v, ctx)
