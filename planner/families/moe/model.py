"""The MoE layer's MLP in torch (the rest of the model is ``planner.families.llama.model``), and
its tensor-parallel plan.

``MoE``: a router (h -> E, no bias), ``Experts`` (E SwiGLU experts as three stacked weights
[E, f, h], [E, f, h], [E, h, f], so one tensor holds each projection of every expert: expert
parallelism will shard dimension 0), an optional shared expert with its sigmoid gate. Routing,
capacity and the load-balancing loss are per sequence (``planner.families.moe`` explains why and
cites the formulas). Tokens go to their experts in expert order and come back by ``index_add``,
so every layout sums a token's expert outputs in the same order.

The load-balancing loss enters the training objective through the gradient: the layer's output
carries it (``planner.families.sequential.AuxLoss``, Megatron-core's ``MoEAuxLossAutoScaler``).
The reported loss is the language-model loss alone.

Tensor parallelism (``MoE.apply_tp``): every expert split like a dense SwiGLU -- gate and up by
output columns (Shard(1) of [E, f, h]), down by input columns (Shard(2)) -- and the shared expert
the same way; router and shared gate replicated (Replicate DTensors read through
``partial_local``). The layer takes its input gathered (Replicate) and returns a partial sum
(Partial), reduced to Replicate (or Shard(1) under sequence parallelism) on the way out: the
dense MLP's two collectives. On each rank the gate weights' gradient is partial (only its expert
columns), so the router's gradient is summed over tp with the other partial gradients, and the
load-balancing loss, the same on every rank, is scaled by 1/tp so that sum counts it once.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, Partial

from planner.families.llama.model import (SwiGLU, apply_cp, apply_tp, build, partial_local,
                                          replicate_params)
from planner.families.moe import capacity, expert_ffn
from planner.families.sequential import AuxLoss

__all__ = ["MoE", "apply_cp", "apply_tp", "build"]


def _local(w):
    return w.to_local() if isinstance(w, DTensor) else w


class Experts(nn.Module):
    """E SwiGLU experts as stacked weights; ``forward`` runs each on its tokens. Under expert
    parallelism (``shard_experts``) this rank holds E/ep consecutive experts and tokens reach
    them by all-to-all (``_dispatched``)."""

    def __init__(self, num: int, hidden: int, ffn: int):
        super().__init__()
        self.num = num
        self.w_gate = nn.Parameter(torch.empty(num, ffn, hidden))
        self.w_up = nn.Parameter(torch.empty(num, ffn, hidden))
        self.w_down = nn.Parameter(torch.empty(num, hidden, ffn))
        self.ep_group = None        # the ep process group once sharded
        self.ep_size = 1

    def forward(self, x, expert, token, weight):
        """Sum over routed copies of weight * expert(x[token]): ``expert``, ``token`` and
        ``weight`` give each kept copy's expert, token row and gate weight."""
        if self.ep_group is not None:
            return self._dispatched(x, expert, token, weight)
        w1, w3, w2 = _local(self.w_gate), _local(self.w_up), _local(self.w_down)
        out = torch.zeros_like(x)
        for e in range(w1.shape[0]):
            idx = (expert == e).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            rows, tok = x[token[idx]], token[idx]
            y = F.linear(F.silu(F.linear(rows, w1[e])) * F.linear(rows, w3[e]), w2[e])
            out = out.index_add(0, tok, y * weight[idx, None])
        return out

    def shard_experts(self, group, index: int, size: int) -> None:
        """Keep experts [index*E/size, (index+1)*E/size) (dimension 0 of the stacked weights,
        tp shards kept as they are)."""
        per = self.num // size
        for name in ("w_gate", "w_up", "w_down"):
            p = getattr(self, name)
            if isinstance(p, DTensor):
                local = p.to_local()[index * per:(index + 1) * per].clone()
                shard = DTensor.from_local(local, p.device_mesh, p.placements, run_check=False)
            else:
                shard = p.data[index * per:(index + 1) * per].clone()
            self.register_parameter(name, nn.Parameter(shard))
        self.ep_group, self.ep_size = group, size

    def _dispatched(self, x, expert, token, weight):
        """Expert parallelism (GShard, Lepikhin et al. 2020, sec. 2.2; torchtitan's
        ``AllToAllTokenDispatcher``): sort the kept copies by expert, exchange per-expert counts
        (all-to-all), send each copy's row to the rank holding its expert (all-to-all with
        uneven split sizes), run the local experts, send the outputs back (all-to-all), and add
        weight * output to each token in expert order, as ``forward`` does without ep.
        The two data all-to-alls are differentiable: their backward is the reverse exchange."""
        from torch.distributed.nn.functional import all_to_all_single
        n, group = self.ep_size, self.ep_group
        per = self.num // n
        order = torch.argsort(expert, stable=True)
        expert, token, weight = expert[order], token[order], weight[order]
        counts = torch.bincount(expert, minlength=self.num)
        got = torch.empty_like(counts)
        dist.all_to_all_single(got, counts, group=group)      # [source rank, local expert]
        got = got.view(n, per)
        send = counts.view(n, per).sum(dim=1).tolist()
        recv = got.sum(dim=1).tolist()
        rows = all_to_all_single(x.new_empty(sum(recv), x.shape[1]), x[token], recv, send,
                                 group=group)
        w1, w3, w2 = _local(self.w_gate), _local(self.w_up), _local(self.w_down)
        starts = torch.cumsum(torch.cat((got.new_zeros(1), got.reshape(-1))), 0)[:-1].view(n, per)
        outs, where = [], []
        for e in range(per):     # every local expert runs, so each weight always has a gradient
            idx = torch.cat([torch.arange(int(starts[j, e]), int(starts[j, e] + got[j, e]),
                                          device=x.device) for j in range(n)])
            r = rows[idx]
            outs.append(F.linear(F.silu(F.linear(r, w1[e])) * F.linear(r, w3[e]), w2[e]))
            where.append(idx)
        y = torch.cat(outs).index_select(0, torch.argsort(torch.cat(where)))
        back = all_to_all_single(x.new_empty(len(token), x.shape[1]), y, send, recv,
                                 group=group)
        out = torch.zeros_like(x)
        ends = torch.cumsum(counts, 0).tolist()
        for e in range(self.num):
            lo, hi = (ends[e - 1] if e else 0), ends[e]
            if hi > lo:
                out = out.index_add(0, token[lo:hi], back[lo:hi] * weight[lo:hi, None])
        return out


class LocalSwiGLU(SwiGLU):
    """The shared expert: a SwiGLU whose weights may be tp shards (DTensors) it reads locally,
    so that it returns a partial sum like the routed experts."""

    def forward(self, x):
        g, u, d = (_local(m.weight) for m in (self.gate, self.up, self.down))
        return F.linear(F.silu(F.linear(x, g)) * F.linear(x, u), d)


class MoE(nn.Module):
    def __init__(self, spec):
        super().__init__()
        h, self.E, self.k = spec.hidden_size, spec.num_experts, spec.experts_per_token
        self.renormalize, self.capacity = spec.moe_renormalize, capacity(spec)
        self.aux_coeff, self.tp_size = spec.moe_aux_loss_coeff, 1
        self.cp = None              # a ring_attention.CpContext under context parallelism
        self.router = nn.Linear(h, self.E, bias=False)
        self.experts = Experts(self.E, h, expert_ffn(spec))
        fs = spec.shared_expert_ffn_hidden_size
        self.shared = LocalSwiGLU(h, fs) if fs else None
        self.shared_gate = nn.Linear(h, 1, bias=False) if spec.shared_expert_gate else None

    def _whole(self, expert):
        """The [b, s, k] expert choices of the whole sequence: this rank's own, or under
        context parallelism every ring rank's gathered (one all-gather over cp) and put back at
        their global positions, so capacity and balance see what one process sees."""
        ctx = self.cp
        if ctx is None:
            return expert
        parts = expert.new_empty((ctx.size * expert.shape[0],) + tuple(expert.shape[1:]))
        dist.all_gather_single(parts, expert.contiguous(), group=ctx.group)
        parts = parts.view((ctx.size,) + tuple(expert.shape))
        whole = expert.new_empty(expert.shape[0], ctx.seq_len, expert.shape[2])
        for j in range(ctx.size):
            whole[:, ctx.all_positions[j].to(expert.device)] = parts[j]
        return whole

    def route(self, probs):
        """Top-k choices, gate weights and the kept mask of [b, s, E] router probabilities
        (this rank's tokens), and the whole sequence's choices (``_whole``)."""
        weight, expert = probs.topk(self.k, dim=-1)
        if self.renormalize:
            weight = weight / weight.sum(-1, keepdim=True)
        keep = torch.ones_like(expert, dtype=torch.bool)
        whole = self._whole(expert) if (self.capacity or self.aux_coeff) else expert
        if self.capacity:
            # first choices before second ones, earlier tokens first (GShard), per sequence
            b, s = whole.shape[0], whole.shape[1]
            order = F.one_hot(whole.transpose(1, 2).reshape(b, self.k * s), self.E)
            seat = ((order.cumsum(dim=1) - 1) * order).sum(-1)
            keep = (seat < self.capacity).reshape(b, self.k, s).transpose(1, 2)
            if self.cp is not None:
                keep = keep[:, self.cp.positions.to(keep.device)]
        return expert, weight * keep, keep, whole

    def balance_loss(self, probs, whole):
        """Per sequence E * sum_i f_i * P_i (Switch eq. 4, top-k as Megatron-core), averaged.
        ``whole``: the sequence's choices (f_i); P_i sums this rank's tokens' probabilities over
        the whole sequence's length, so the ring ranks' losses add up to the sequence's."""
        with torch.no_grad():
            chosen = F.one_hot(whole, self.E).sum(dim=(1, 2)).to(probs.dtype)
            share = chosen / (whole.shape[1] * self.k)
        mean = probs.sum(dim=1) / whole.shape[1]
        return (self.E * (share * mean).sum(-1)).mean()

    def forward(self, x):
        if isinstance(x, DTensor):      # tp: every rank's expert columns feed x's gradient
            x = x.to_local(grad_placements=[Partial()] * x.device_mesh.ndim)
        b, s, h = x.shape
        probs = F.linear(x, partial_local(self.router.weight)).softmax(dim=-1)
        expert, weight, keep, whole = self.route(probs)
        flat = x.reshape(b * s, h)
        token = torch.arange(b * s, device=x.device).repeat_interleave(self.k)
        kept = keep.reshape(-1)
        out = self.experts(flat, expert.reshape(-1)[kept], token[kept], weight.reshape(-1)[kept])
        if self.shared is not None:
            shared = self.shared(flat)
            if self.shared_gate is not None:
                shared = shared * torch.sigmoid(F.linear(flat, partial_local(
                    self.shared_gate.weight)))
            out = out + shared
        out = out.reshape(b, s, h)
        if self.aux_coeff and torch.is_grad_enabled():
            # Gradients are summed over tp (1/tp each) and averaged over the cp ranks, whose
            # shares of the loss add up to the sequence's (x cp each).
            cp = self.cp.size if self.cp is not None else 1
            aux = self.balance_loss(probs, whole) * (self.aux_coeff * cp / self.tp_size)
            out = AuxLoss.apply(out, aux)
        return out

    def apply_tp(self, tp_mesh, sequence_parallel: bool) -> None:
        """The tensor-parallel split of the module docstring."""
        from torch.distributed.tensor import Replicate, Shard, distribute_tensor
        from torch.distributed.tensor.parallel import PrepareModuleInputOutput, parallelize_module

        def shard(module, name, dim):
            p = getattr(module, name)
            module.register_parameter(name, nn.Parameter(
                distribute_tensor(p.data, tp_mesh, [Shard(dim)], src_data_rank=None)))

        for name, dim in (("w_gate", 1), ("w_up", 1), ("w_down", 2)):
            shard(self.experts, name, dim)
        if self.shared is not None:
            shard(self.shared.gate, "weight", 0)
            shard(self.shared.up, "weight", 0)
            shard(self.shared.down, "weight", 1)
        replicate_params(self.router, tp_mesh)
        if self.shared_gate is not None:
            replicate_params(self.shared_gate, tp_mesh)
        self.tp_size = tp_mesh.size()
        entry = Shard(1) if sequence_parallel else Replicate()
        parallelize_module(self, tp_mesh, PrepareModuleInputOutput(
            input_layouts=(entry,), desired_input_layouts=(Replicate(),),
            use_local_input=False, output_layouts=(Partial(),),
            desired_output_layouts=(entry,), use_local_output=True))
