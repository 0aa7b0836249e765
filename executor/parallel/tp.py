"""Tensor parallelism (Megatron-LM, Shoeybi et al. 2019, sec. 3) with DTensor ``parallelize_module``.

Per transformer block: q, k, v and mlp.fc split by output features (``ColwiseParallel``: each rank
holds heads / tp whole heads and ffn / tp hidden units), attn.proj and mlp.proj split by input
features (``RowwiseParallel``: partial sums all-reduced). Two all-reduces per block forward and
two in backward. Embedding, layer norms and the LM head stay replicated on every tp rank (their
gradients are identical there, so they need no tp collective).

Sequence parallel (Korthikanti et al. 2022, sec. 4.2.2): the residual stream between blocks is the
rank's slice of the sequence, as a plain tensor (mixing DTensor and tensor in the residual add
fails); layer norms run on that slice (``SequenceParallel``), attention and MLP inputs are
all-gathered (``PrepareModuleInput``) and their row-parallel outputs reduce-scattered back to a
slice. The first block slices the replicated embedding output; the head all-gathers its input.
"""
from __future__ import annotations

import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput,
                                               RowwiseParallel, SequenceParallel,
                                               parallelize_module)

from planner.errors import PlannerError


def _block_plan(sequence_parallel: bool) -> dict:
    # attn and mlp take their input as one DTensor, so the gradients of q, k and v sum as a
    # Partial and are reduced once where the input entered (Megatron's "f" operator: one
    # all-reduce, or under sp one reduce-scatter, per attention and per MLP in backward);
    # plain-tensor inputs would give every column-parallel Linear its own all-reduce.
    entry = (Shard(1),) if sequence_parallel else (Replicate(),)
    gather = dict(input_layouts=entry, desired_input_layouts=(Replicate(),),
                  use_local_output=False)
    out = dict(output_layouts=Shard(1)) if sequence_parallel else {}
    plan = {"attn": PrepareModuleInput(**gather),
            "attn.q": ColwiseParallel(), "attn.k": ColwiseParallel(),
            "attn.v": ColwiseParallel(), "attn.proj": RowwiseParallel(**out),
            "mlp": PrepareModuleInput(**gather),
            "mlp.fc": ColwiseParallel(), "mlp.proj": RowwiseParallel(**out)}
    if sequence_parallel:
        plan.update({"ln1": SequenceParallel(), "ln2": SequenceParallel()})
    return plan


def check_tp(spec, layout, where: str = "plan") -> None:
    tp, field = layout.tp, f"{where}: field 'layout.tp'"
    if tp == 1:
        return
    if spec.family == "custom":
        raise PlannerError(f"{field}: tp {tp} needs a zoo model (gpt or mlp) whose Linear layers "
                           f"the executor knows how to split; {spec.callable_path} is custom")
    for name, size in (("num_heads", spec.num_heads if spec.family == "gpt" else tp),
                       ("ffn_hidden_size", spec.ffn_hidden_size)):
        if size % tp:
            raise PlannerError(f"{field}: {name}({size}) % tp({tp}) = {size % tp}, must be 0")
    if layout.sequence_parallel:
        if spec.family != "gpt":
            raise PlannerError(f"{where}: field 'layout.sequence_parallel': needs a gpt model "
                               f"(a sequence to split), got family {spec.family!r}")
        if spec.seq_len % tp:
            raise PlannerError(f"{where}: field 'layout.sequence_parallel': seq_len("
                               f"{spec.seq_len}) % tp({tp}) = {spec.seq_len % tp}, must be 0")


def apply_tp(model, layout, tp_mesh) -> None:
    """Shard the blocks of ``model`` in place over ``tp_mesh``."""
    sp = layout.sequence_parallel
    blocks = [b for b in model.blocks if getattr(b, "kind", "") == "block"]
    for block in blocks:
        plan = _block_plan(sp)
        if not hasattr(block, "attn"):       # mlp family: the MLP half of a block
            plan = {k: v for k, v in plan.items() if k.startswith("mlp")}
        parallelize_module(block, tp_mesh, plan)
    if sp:
        parallelize_module(blocks[0], tp_mesh, PrepareModuleInput(
            input_layouts=(Replicate(),), desired_input_layouts=(Shard(1),),
            use_local_output=True))
        head = model.blocks[len(model.blocks) - 1]
        parallelize_module(head, tp_mesh, PrepareModuleInput(
            input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
            use_local_output=True))


def reduce_partial_grads(parts) -> None:
    """Sum, in one all-reduce over tp, the gradients DTensor leaves Partial: those of the
    layer norms under sequence parallelism (each rank saw only its slice of the sequence).
    Left alone, the optimizer would all-reduce each of them again in every operation that
    reads the gradient (3 times per parameter for Adam). FSDP resolves them itself.
    """
    pending = [p for part in parts for p in part.parameters()
               if isinstance(p.grad, DTensor) and any(x.is_partial() for x in p.grad.placements)]
    if not pending:
        return
    mesh = pending[0].grad.device_mesh
    locals_ = [p.grad.to_local() for p in pending]
    flat = _flatten_dense_tensors(locals_)
    dist.all_reduce(flat, group=mesh.get_group())
    for p, summed in zip(pending, _unflatten_dense_tensors(flat, locals_)):
        p.grad = DTensor.from_local(summed, mesh, p.placements, run_check=False)
