"""Gradient compression as DDP communication hooks (``layout.data.compression``).

fp16: ``fp16_compress_hook`` (cast the bucket to float16, all-reduce, cast back). bf16: the same
through ``default_hooks._compress_hook(torch.bfloat16, ...)``, because ``bf16_compress_hook``
refuses any backend but NCCL by its name check, not by need. powersgd: ``powerSGD_hook`` (Vogels
et al., NeurIPS 2019) of rank ``layout.data.powersgd_rank`` with error feedback and warm start; it
all-reduces uncompressed until ``start_powerSGD_iter`` (PyTorch requires >= 2 so that DDP's
bucket rebuild after the first iteration is over) and skips tensors that would compress less
than 2x (PyTorch's ``min_compression_rate`` default).
"""
from __future__ import annotations

import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powersgd

POWERSGD_START_ITER = 2


def _bf16_hook(process_group, bucket):
    return default_hooks._compress_hook(torch.bfloat16, process_group, bucket)


def register(ddp_module, layout, group) -> None:
    """Install the plan's compression hook on one DDP module (nothing for "none")."""
    if layout.data.compression == "fp16":
        ddp_module.register_comm_hook(group, default_hooks.fp16_compress_hook)
    elif layout.data.compression == "bf16":
        ddp_module.register_comm_hook(group, _bf16_hook)
    elif layout.data.compression == "powersgd":
        state = powersgd.PowerSGDState(process_group=group,
                                       matrix_approximation_rank=layout.data.powersgd_rank,
                                       start_powerSGD_iter=POWERSGD_START_ITER)
        ddp_module.register_comm_hook(state, powersgd.powerSGD_hook)
