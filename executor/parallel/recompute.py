"""Activation recomputation (Chen et al. 2016; Korthikanti et al. 2022) with torch.utils.checkpoint.

"full": each transformer/residual block (kind "block") keeps only its input and recomputes its
forward during backward (``use_reentrant=False``, which composes with DDP, FSDP2, DTensor and
pipeline stages). Embedding and head are not recomputed, as in Megatron-LM. "selective": only the
attention core (softmax(QK^T)V) is recomputed, via ``Attention.recompute_core``; an MLP-family
model has no attention, so "selective" changes nothing there (and saves nothing in the plan).
The block's ``forward`` is replaced on the instance, so parameter names do not change.
"""
from __future__ import annotations

from torch.utils.checkpoint import checkpoint


def _checkpointed(forward):
    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return run


def apply_recompute(blocks, mode: str) -> None:
    for block in blocks:
        if getattr(block, "kind", "") != "block":
            continue
        if mode == "full":
            block.forward = _checkpointed(block.forward)
        elif mode == "selective":
            for module in block.modules():
                if hasattr(module, "recompute_core"):
                    module.recompute_core = True
