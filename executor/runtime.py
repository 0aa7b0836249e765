"""Process group, device, dtype and the device mesh of one executor process."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from planner import grid
from planner.errors import PlannerError

# Plain dtypes build the model in that dtype; "*-mixed" keeps float32 parameters and autocasts.
_PARAM_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
                 "bf16-mixed": torch.float32}


@dataclass
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it; 1 for a plain ``python -m executor`` process."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """RANK as torchrun sets it; 0 for a plain ``python -m executor`` process."""
    return int(os.environ.get("RANK", "0"))


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise PlannerError("--device cuda: torch.cuda.is_available() is False on this machine")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def init(device: torch.device, timeout_s: float) -> Runtime:
    """Join the process group: NCCL on CUDA, gloo on CPU, with a short timeout so a hung peer
    fails the job in ``timeout_s`` instead of PyTorch's default 30 minutes (10 for NCCL)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = timedelta(seconds=timeout_s)
    if "RANK" in os.environ:
        dist.init_process_group(backend, timeout=timeout,
                                device_id=device if device.type == "cuda" else None)
    else:   # one process without torchrun: an in-memory store keeps the code path uniform
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                timeout=timeout)
    return Runtime(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                   device, backend)


def shutdown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def param_dtype(name: str, device: torch.device, where: str = "plan") -> torch.dtype:
    """The parameter dtype for the plan's ``dtype``; bf16-mixed also needs ``autocast_dtype``."""
    if name == "bf16-mixed" and device.type != "cuda":
        raise PlannerError(f"{where}: field 'dtype': bf16-mixed needs a CUDA device (autocast to "
                           "bfloat16 on CPU is not what a GPU plan measures); use float32 or "
                           "float64 on CPU")
    if name not in _PARAM_DTYPES:
        raise PlannerError(f"{where}: field 'dtype': {name!r} needs loss scaling, which the "
                           f"executor does not implement; valid: {', '.join(_PARAM_DTYPES)}")
    return _PARAM_DTYPES[name]


def autocast_dtype(name: str):
    return torch.bfloat16 if name == "bf16-mixed" else None


def build_mesh(layout, device: torch.device):
    """A DeviceMesh over the planner's named grid axes whose entry at a coordinate is
    ``planner.grid.RankGrid.rank_of`` of it: the planner's rank grid decides which ranks form
    each group, nothing here does."""
    from torch.distributed.device_mesh import DeviceMesh
    ranks = torch.tensor(grid.RankGrid(layout.dims).mesh_ranks(), dtype=torch.int64)
    return DeviceMesh(device.type, ranks, mesh_dim_names=grid.DIMS)
