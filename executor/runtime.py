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
    if name == "fp8":
        raise PlannerError(f"{where}: field 'dtype': fp8 is a planning-only precision (FP8 "
                           "GEMMs need Transformer Engine, which this executor does not use); "
                           f"valid: {', '.join(_PARAM_DTYPES)}")
    if name not in _PARAM_DTYPES:
        raise PlannerError(f"{where}: field 'dtype': {name!r} needs loss scaling, which the "
                           f"executor does not implement; valid: {', '.join(_PARAM_DTYPES)}")
    return _PARAM_DTYPES[name]


def autocast_dtype(name: str):
    return torch.bfloat16 if name == "bf16-mixed" else None


class Meshes:
    """The device meshes of one layout, by the planner's group names (``planner.dims``):
    the grid axes "dp", "cp", "pp", "tp"; "dp_cp" (dp * cp flattened: the gradient
    reduction when cp > 1); "ep" and "edp" (expert parallel groups and the replicas of each
    expert shard, when ep > 1). All are views of one world mesh (``_unflatten``), so FSDP and
    DTensor see one root mesh."""

    def __init__(self, layout, device: torch.device):
        from torch.distributed.device_mesh import init_device_mesh
        d = layout.dims
        world = init_device_mesh(device.type, (d.world_size,), mesh_dim_names=("world",))
        sizes = tuple(d.degrees().values())
        self.dense = world._unflatten(0, sizes, grid.DIMS)
        self._extra = {}
        if d.cp > 1:
            self._extra["dp_cp"] = self.dense["dp", "cp"]._flatten("dp_cp")
        if d.ep > 1:
            sparse = world._unflatten(0, (d.edp, d.ep, d.pp, d.tp), ("edp", "ep", "pp", "tp"))
            self._extra["ep"], self._extra["edp"] = sparse["ep"], sparse["edp"]

    def __getitem__(self, name: str):
        if name == "dp_cp" and "dp_cp" not in self._extra:
            return self.dense["dp"]             # cp 1: the reduction is over dp
        return self._extra[name] if name in self._extra else self.dense[name]

    def reduce(self, layout):
        """The mesh gradients of non-expert parameters are reduced over (dp * cp ranks)."""
        return self[layout.dims.reduce_dim]

    def groups(self, layout) -> dict[str, str]:
        """Process-group name -> planner group name, for groups of more than one rank."""
        d, out = layout.dims, {}
        names = grid.DIMS + (("dp_cp",) if d.cp > 1 else ()) + (("ep", "edp") if d.ep > 1 else ())
        for name in names:
            if d.degree(name) > 1:
                out[self[name].get_group().group_name] = d.canonical(name)
        return out


def build_mesh(layout, device: torch.device) -> Meshes:
    """The meshes over the planner's named grid axes, laid out as ``planner.grid.RankGrid``
    places ranks (row-major, tp fastest): the planner's rank grid decides which ranks form each
    group, nothing here does."""
    return Meshes(layout, device)
