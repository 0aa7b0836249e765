"""Write a rank's parameters, whole, for exactness tests (``--save-params DIR``).

Each rank writes ``DIR/params-rank{r}.npz`` (NumPy, no pickle) with the full value of every
parameter it holds, under the unsplit model's name. Sharded (DTensor) parameters are gathered
first, which is a collective: every rank of the job must call ``save_params``; so are expert
shards (expert parallelism: each rank holds E/ep experts, gathered over the ep group along
dimension 0).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


def _ep_gather(t, group):
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts)


def full_named_parameters(parts):
    for part in parts:
        sharded = {id(p): m.ep_group for m in part.modules()
                   if getattr(m, "ep_group", None) is not None for p in m.parameters()}
        for name, p in part.named_parameters():
            t = p.full_tensor() if isinstance(p, DTensor) else p
            if id(p) in sharded:
                t = _ep_gather(t.detach(), sharded[id(p)])
            yield name, t.detach().cpu()


def save_params(parts, directory: str, rank: int) -> None:
    arrays = {name: t.numpy() for name, t in full_named_parameters(parts)}
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"params-rank{rank}.npz")
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:          # a file object: savez adds no ".npz" suffix
            np.savez(fh, **arrays)
        os.replace(tmp, path)                # never half a file under the final name
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
