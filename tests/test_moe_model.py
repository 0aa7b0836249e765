"""The torch side of the llama and moe families in one process: parameters as the planner counts
them, routing by capacity, the load-balancing loss in the gradient, sequences routed
independently of their batch, and what a SwiGLU MLP keeps for its backward."""
from __future__ import annotations

import pytest
import torch

from executor_helpers import LLAMA, MOE
from planner import families
from planner.families.llama.model import SwiGLU
from planner.families.moe.model import MoE
from planner.families.sequential import AuxLoss, set_aux_loss_scale
from planner.models import PRESETS
from planner.models.build import build_model
from planner.specs import ModelSpec


@pytest.mark.parametrize("spec", [LLAMA, MOE, PRESETS["llama-tiny"], PRESETS["moe-tiny"],
                                  ModelSpec(**{**LLAMA.to_dict(), "tie_embeddings": True,
                                               "qkv_bias": True, "qk_norm": True,
                                               "head_dim": 16})],
                         ids=lambda s: s.name + ("-tied" if s.tie_embeddings else ""))
def test_built_parameters_are_the_planned_ones(spec):
    model = build_model(spec, dtype=torch.float64)
    assert sum(p.numel() for p in model.parameters()) == families.of(spec).param_counts(spec)[0]
    for block, kind in zip(model.blocks, families.of(spec).block_kinds(spec)):
        assert block.kind == kind


def test_capacity_keeps_first_choices_then_earlier_tokens():
    spec = ModelSpec(**{**MOE.to_dict(), "moe_capacity_factor": 0.5})   # ceil(.5*16*2/4) = 4
    moe = MoE(spec)
    assert moe.capacity == 4
    probs = torch.full((1, 16, 4), 0.01, dtype=torch.float64)
    probs[0, :, 0] = 0.6                 # every token's first choice: expert 0
    probs[0, :6, 1] = 0.3                # six second choices on expert 1, the rest on 2
    probs[0, 6:, 2] = 0.3
    expert, weight, keep, _ = moe.route(probs)
    assert keep[0, :4, 0].all() and not keep[0, 4:, 0].any()     # expert 0: tokens 0..3
    assert keep[0, :4, 1].all() and not keep[0, 4:6, 1].any()    # expert 1 full after 4
    assert keep[0, 6:10, 1].all() and not keep[0, 10:, 1].any()  # expert 2: tokens 6..9
    assert (weight[~keep] == 0).all()


def test_load_balancing_loss_joins_the_gradient():
    """The gradient with the auxiliary loss carried by the activations equals autograd's
    gradient of LM loss + the sum of the layers' coeff * balance loss."""
    model = build_model(MOE, dtype=torch.float64)
    x, y = model.synthetic_batch(3, torch.Generator().manual_seed(1))
    set_aux_loss_scale(1.0)
    model.loss(model(x), y).backward()
    carried = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    collected = []
    original = AuxLoss.apply
    AuxLoss.apply = lambda out, aux: (collected.append(aux), out)[1]
    try:
        total = model.loss(model(x), y)
    finally:
        AuxLoss.apply = original
    assert len(collected) == 3                    # three MoE layers, the first is dense
    (total + sum(collected)).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(carried[name], p.grad, rtol=1e-12, atol=1e-15, msg=name)
    router = model.blocks[2].mlp.router.weight.grad
    model.zero_grad()
    for module in model.modules():                # without it the router learns otherwise
        if isinstance(module, MoE):
            module.aux_coeff = 0.0
    model.loss(model(x), y).backward()
    assert not torch.allclose(router, model.blocks[2].mlp.router.weight.grad)


def test_a_sequence_trains_the_same_in_any_batch():
    """Routing, capacity and the balance loss are per sequence: sequence 0's output and its
    gradient contribution do not depend on what else is in its micro-batch."""
    model = build_model(MOE, dtype=torch.float64)
    x, _ = model.synthetic_batch(4, torch.Generator().manual_seed(2))
    alone, batched = model(x[:1]), model(x)[:1]
    torch.testing.assert_close(alone, batched, rtol=1e-12, atol=1e-14)


def test_swiglu_keeps_its_input_and_four_ffn_tensors():
    """The family's activation count for the MLP half: h (input, shared by gate and up) + 4f
    (gate out, SiLU out, up out, product) per token, as eager PyTorch saves them."""
    h, f, tokens = 32, 64, 10
    mlp = SwiGLU(h, f).double()
    sizes = {}

    def pack(t):
        if t.requires_grad or t.grad_fn is not None or not isinstance(t, torch.nn.Parameter):
            sizes[t.untyped_storage().data_ptr()] = t.numel()
        return t
    x = torch.randn(tokens, h, dtype=torch.float64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mlp(x).sum()
    weights = {p.untyped_storage().data_ptr() for p in mlp.parameters()}
    saved = sum(n for ptr, n in sizes.items() if ptr not in weights)
    assert saved == tokens * (h + 4 * f)
