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
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, Partial

from planner.families.llama.model import (SwiGLU, apply_tp, build, partial_local,
                                          replicate_params)
from planner.families.moe import capacity, expert_ffn
from planner.families.sequential import AuxLoss

__all__ = ["MoE", "apply_tp", "build"]


def _local(w):
    return w.to_local() if isinstance(w, DTensor) else w


class Experts(nn.Module):
    """E SwiGLU experts as stacked weights; ``forward`` runs each on its tokens."""

    def __init__(self, num: int, hidden: int, ffn: int):
        super().__init__()
        self.w_gate = nn.Parameter(torch.empty(num, ffn, hidden))
        self.w_up = nn.Parameter(torch.empty(num, ffn, hidden))
        self.w_down = nn.Parameter(torch.empty(num, hidden, ffn))

    def forward(self, x, expert, token, weight):
        """Sum over routed copies of weight * expert(x[token]): ``expert``, ``token`` and
        ``weight`` give each kept copy's expert, token row and gate weight."""
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
        self.router = nn.Linear(h, self.E, bias=False)
        self.experts = Experts(self.E, h, expert_ffn(spec))
        fs = spec.shared_expert_ffn_hidden_size
        self.shared = LocalSwiGLU(h, fs) if fs else None
        self.shared_gate = nn.Linear(h, 1, bias=False) if spec.shared_expert_gate else None

    def route(self, probs):
        """Top-k choices, gate weights and the kept mask of [b, s, E] router probabilities."""
        b, s, _ = probs.shape
        weight, expert = probs.topk(self.k, dim=-1)
        if self.renormalize:
            weight = weight / weight.sum(-1, keepdim=True)
        keep = torch.ones_like(expert, dtype=torch.bool)
        if self.capacity:
            # first choices before second ones, earlier tokens first (GShard), per sequence
            order = F.one_hot(expert.transpose(1, 2).reshape(b, self.k * s), self.E)
            seat = ((order.cumsum(dim=1) - 1) * order).sum(-1)
            keep = (seat < self.capacity).reshape(b, self.k, s).transpose(1, 2)
        return expert, weight * keep, keep

    def balance_loss(self, probs, expert):
        """Per sequence E * sum_i f_i * P_i (Switch eq. 4, top-k as Megatron-core), averaged."""
        with torch.no_grad():
            chosen = F.one_hot(expert, self.E).sum(dim=(1, 2)).to(probs.dtype)
            share = chosen / (expert.shape[1] * self.k)
        return (self.E * (share * probs.mean(dim=1)).sum(-1)).mean()

    def forward(self, x):
        if isinstance(x, DTensor):      # tp: every rank's expert columns feed x's gradient
            x = x.to_local(grad_placements=[Partial()] * x.device_mesh.ndim)
        b, s, h = x.shape
        probs = F.linear(x, partial_local(self.router.weight)).softmax(dim=-1)
        expert, weight, keep = self.route(probs)
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
            aux = self.balance_loss(probs, expert) * (self.aux_coeff / self.tp_size)
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
