"""``--checkpoint-dir`` / ``--resume`` with torch.distributed.checkpoint (DCP), signed.

Each checkpoint is ``DIR/step-{k}`` (k = steps completed): DCP shards of the model and optimizer
state as ``get_state_dict`` gives them (DTensor shards under FSDP/TP, each pipeline stage's own
blocks), ``executor.json`` (the step and the plan fingerprint) and ``manifest.json``, the HMAC
of every file (``executor.checkpoint_sign``). A save goes to ``DIR/.step-{k}.partial`` and is
renamed to ``step-{k}`` once signed; ``DIR/latest.json`` then points at it. A crash or a full
disk mid-save leaves only the ``.partial`` directory, which is never loaded (the next save
removes it).

Resuming never unpickles unverified bytes: before the process group starts, every rank checks
``latest.json``, the manifest's own MAC (with the user's key), the step and plan fingerprint,
and that every listed file is there with its size and nothing else is; after it starts, the
ranks hash the files' contents (each a share, the verdicts all-reduced) and only then does DCP
read its ``.metadata`` pickle and the shards. The data of step k depends on (seed, k) only, so
a resumed run continues exactly. Not checkpointed: PowerSGD's error-feedback state.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict,
                                                     set_state_dict)

from executor import checkpoint_sign as sign
from executor import faults
from executor.parallel.pp import Chunk
from planner import serde
from planner.errors import PlannerError

# Optimizer state keyed by parameter name ("param_groups.blocks.3.attn.q.weight.lr"): pipeline
# stages hold different parameters, and the default list-shaped param_groups would collide
# between ranks under DCP's de-duplication of equal keys.
_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)
_STEP_DIR = re.compile(r"^step-(\d+)$")
_PARTIAL_DIR = re.compile(r"^\.step-\d+\.partial$")


@dataclass
class Checkpoints:
    """A run's checkpoint directory, its key and (with --resume) the verified manifest."""
    directory: str
    key: bytes
    key_file: str
    resume_step: int = 0
    manifest: dict = field(default_factory=dict)


def check_supported(layout, flag: str) -> None:
    d = layout.data
    if layout.dp > 1 and (d.exchange or d.staleness or d.local_sgd):
        raise PlannerError(f"{flag}: {' '.join(d.describe_comm())} keeps state a checkpoint "
                           "does not hold (error-feedback residuals, parameter versions in "
                           "flight, replicas between synchronisations): checkpoint a "
                           "synchronous, uncompressed or hook-compressed layout")
    if layout.data.zero == 1 and layout.dp > 1:
        raise PlannerError(f"{flag}: zero 1 (ZeroRedundancyOptimizer) keeps optimizer shards that "
                           "DCP's get_state_dict cannot read; checkpoint zero 0, 2 or 3 layouts")


def prepare(directory: str, key_flag: str, resume: bool, plan) -> Checkpoints:
    """Every rank, before the process group: the key, and what --resume would load."""
    key_file = sign.key_path(key_flag)
    sign.check_key_outside(key_file, directory)
    ckpt = Checkpoints(directory, sign.load_key(key_file, create=not resume), key_file)
    if resume:
        ckpt.resume_step, ckpt.manifest = _check_resume(ckpt, plan)
    return ckpt


def complete_steps(directory: str) -> list[int]:
    found = [int(m.group(1)) for name in os.listdir(directory)
             if (m := _STEP_DIR.match(name))
             and os.path.isfile(os.path.join(directory, name, sign.MANIFEST))]
    return sorted(found)


def _check_resume(ckpt: Checkpoints, plan) -> tuple[int, dict]:
    directory = ckpt.directory
    if not os.path.isdir(directory):
        raise PlannerError(f"--resume: --checkpoint-dir {directory} does not exist")
    latest = os.path.join(directory, "latest.json")
    if not os.path.exists(latest):
        raise PlannerError(f"--resume: {latest}: no such file (no checkpoint was completed in "
                           f"{directory}); run without --resume first")
    info = serde.read_json(latest)
    step = info.get("step") if isinstance(info, dict) else None
    if type(step) is not int or step < 1:
        raise PlannerError(f"{latest}: field 'step': expected an integer >= 1 (steps "
                           f"completed), got {json.dumps(step)}")
    if info.get("plan_fingerprint") != plan.fingerprint():
        raise PlannerError(f"{latest}: field 'plan_fingerprint': checkpoint is of plan "
                           f"{info.get('plan_fingerprint')}, this plan is {plan.fingerprint()}; "
                           "resume with the plan that wrote it")
    path = os.path.join(directory, f"step-{step}")
    if not os.path.isdir(path):
        have = ", ".join(f"step-{k}" for k in complete_steps(directory)) or "none"
        raise PlannerError(f"{latest}: field 'step': {step}, but {path} does not exist "
                           f"(complete checkpoints in {directory}: {have})")
    manifest = sign.read_manifest(ckpt.key, ckpt.key_file, path)
    if manifest.get("step") != step or manifest.get("plan_fingerprint") != plan.fingerprint():
        raise PlannerError(f"{os.path.join(path, sign.MANIFEST)}: is step "
                           f"{manifest.get('step')} of plan {manifest.get('plan_fingerprint')}; "
                           f"{latest} says step {step} of plan {plan.fingerprint()}")
    sign.check_listing(path, manifest)
    return step, manifest


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


def _first_line(err: BaseException) -> str:
    failures = getattr(err, "failures", None)          # DCP's CheckpointException
    if isinstance(failures, dict) and failures:
        rank, exc = next(iter(failures.items()))
        exc = exc[0] if isinstance(exc, tuple) else exc
        return f"rank {rank}: {_first_line(exc)}"
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def _replace_dir(src: str, dst: str) -> None:
    old = dst + ".old"
    if os.path.exists(old):
        shutil.rmtree(old)
    if os.path.exists(dst):
        os.rename(dst, old)
    os.rename(src, dst)
    if os.path.exists(old):
        shutil.rmtree(old)
    fd = os.open(os.path.dirname(dst) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)            # the rename itself reaches the disk
    finally:
        os.close(fd)


def save(ckpt: Checkpoints, step: int, named_parts, optimizer, plan) -> str:
    """Write, sign and publish ``step-{step}`` (a collective: every rank calls it)."""
    directory, rank = ckpt.directory, dist.get_rank()
    final = os.path.join(directory, f"step-{step}")
    staging = os.path.join(directory, f".step-{step}.partial")
    if rank == 0:
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):              # earlier interrupted saves
            if _PARTIAL_DIR.match(name):
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(_state_module(named_parts), _optimizers(optimizer),
                                        options=_OPTIONS)
    try:
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=staging)
    except Exception as err:   # noqa: BLE001 - DCP gathers every rank's failure: all raise
        raise PlannerError(f"--checkpoint-dir {directory}: saving step {step} failed "
                           f"({_first_line(err)}); {staging} is never loaded and earlier "
                           "checkpoints are kept") from None
    faults.maybe_fail(rank, step, point="checkpoint")
    dist.barrier()                                      # every shard is on disk
    if rank == 0:
        info = {"step": step, "plan_fingerprint": plan.fingerprint(), "path": f"step-{step}"}
        try:
            serde.write_json(os.path.join(staging, "executor.json"), info)
            sign.write_manifest(ckpt.key, staging, info)
            _replace_dir(staging, final)
            serde.write_json(os.path.join(directory, "latest.json"), info)
        except OSError as err:
            shutil.rmtree(staging, ignore_errors=True)
            raise PlannerError(f"--checkpoint-dir {directory}: saving step {step} failed "
                               f"({err.strerror or err}); earlier checkpoints are kept") from None
    dist.barrier()          # no rank reads latest.json before rank 0 wrote it
    return final


def _verify_contents(ckpt: Checkpoints, path: str, device) -> None:
    """Each rank hashes its share of the files; any mismatch stops every rank."""
    entries = ckpt.manifest["files"]
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = list(range(rank, len(entries), world))
    bad = sign.verify_files(ckpt.key, path, [entries[i] for i in mine])
    first = torch.tensor(len(entries) if bad is None else mine[bad], device=device)
    dist.all_reduce(first, op=dist.ReduceOp.MIN)
    if int(first) < len(entries):
        raise PlannerError(f"{os.path.join(path, entries[int(first)]['path'])}: content does not "
                           f"match its HMAC in {sign.MANIFEST} (changed or corrupted since it "
                           "was written); refusing to load the checkpoint")


def load(ckpt: Checkpoints, named_parts, optimizer, device) -> int:
    """Restore the checkpoint ``prepare`` checked; returns the number of steps it holds."""
    path = os.path.join(ckpt.directory, f"step-{ckpt.resume_step}")
    _verify_contents(ckpt, path, device)
    module = _state_module(named_parts)
    optimizers = _optimizers(optimizer)
    model_sd, optim_sd = get_state_dict(module, optimizers, options=_OPTIONS)
    state = {"model": model_sd, "optim": optim_sd}
    try:
        dcp.load(state, checkpoint_id=path)
    except Exception as err:   # noqa: BLE001 - a signed checkpoint this layout cannot read
        raise PlannerError(f"{path}: cannot be loaded into this run ({_first_line(err)})") \
            from None
    set_state_dict(module, optimizers, model_state_dict=state["model"],
                   optim_state_dict=state["optim"], options=_OPTIONS)
    return ckpt.resume_step
