"""``--checkpoint-dir`` / ``--resume`` with torch.distributed.checkpoint (DCP).

Each checkpoint is ``DIR/step-{k}`` (k = steps completed): DCP shards of the model and optimizer
state as ``get_state_dict`` gives them (DTensor shards under FSDP/TP, each pipeline stage's own
blocks), plus ``executor.json`` (rank 0) naming the step and the plan fingerprint, and
``DIR/latest.json`` pointing at the newest. Resuming checks the fingerprint before DCP reads
anything: DCP's own ``.metadata`` file is a pickle, so resume only from directories you wrote.
The data of step k depends on (seed, k) only, so a resumed run continues exactly.
Not checkpointed: PowerSGD's error-feedback state (a resumed powersgd run restarts it).
"""
from __future__ import annotations

import os

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict,
                                                     set_state_dict)

from executor.parallel.pp import Chunk
from planner import serde
from planner.errors import PlannerError


# Optimizer state keyed by parameter name ("param_groups.blocks.3.attn.q.weight.lr"): pipeline
# stages hold different parameters, and the default list-shaped param_groups would collide
# between ranks under DCP's de-duplication of equal keys.
_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


def check_supported(layout, flag: str) -> None:
    if layout.data.zero == 1 and layout.dp > 1:
        raise PlannerError(f"{flag}: zero 1 (ZeroRedundancyOptimizer) keeps optimizer shards that "
                           "DCP's get_state_dict cannot read; checkpoint zero 0, 2 or 3 layouts")


def _state_module(named_parts) -> Chunk:
    """One module holding this rank's blocks under their full-model names ("blocks.3....")."""
    blocks = {}
    for part in named_parts:
        src = part.blocks
        items = src.items() if hasattr(src, "items") else enumerate(src)
        blocks.update({int(i): b for i, b in items})
    return Chunk(blocks)


def _optimizers(optimizer):
    return [optimizer] if hasattr(optimizer, "param_groups") else []


def save(directory: str, step: int, named_parts, optimizer, plan) -> str:
    path = os.path.join(directory, f"step-{step}")
    model_sd, optim_sd = get_state_dict(_state_module(named_parts), _optimizers(optimizer),
                                        options=_OPTIONS)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
    if dist.get_rank() == 0:
        info = {"step": step, "plan_fingerprint": plan.fingerprint(), "path": f"step-{step}"}
        serde.write_json(os.path.join(path, "executor.json"), info)
        serde.write_json(os.path.join(directory, "latest.json"), info)
    dist.barrier()          # no rank reads latest.json before rank 0 wrote it
    return path


def load(directory: str, named_parts, optimizer, plan) -> int:
    """Restore the newest checkpoint in ``directory``; returns the number of steps it holds."""
    latest = os.path.join(directory, "latest.json")
    info = serde.read_json(latest)
    if not isinstance(info, dict) or not isinstance(info.get("step"), int):
        raise PlannerError(f"{latest}: expected an object with an integer 'step'")
    if info.get("plan_fingerprint") != plan.fingerprint():
        raise PlannerError(f"{latest}: field 'plan_fingerprint': checkpoint is of plan "
                           f"{info.get('plan_fingerprint')}, this plan is {plan.fingerprint()}; "
                           "resume with the plan that wrote it")
    module = _state_module(named_parts)
    optimizers = _optimizers(optimizer)
    model_sd, optim_sd = get_state_dict(module, optimizers, options=_OPTIONS)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=os.path.join(directory, f"step-{info['step']}"))
    set_state_dict(module, optimizers, model_state_dict=state["model"],
                   optim_state_dict=state["optim"], options=_OPTIONS)
    return info["step"]
