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

``executor.json`` also holds the run's history: the mean loss of every step so far and the world
size it ran at (signed like every file, and checked before it is read). Elastic runs: a plan of
an elastic set (``planner.specs.elastic``) resumes a checkpoint written by any plan of the same
set, at another world size: DCP reshards the state (DTensor shards under FSDP/TP, pipeline
stages' blocks by their full-model names) into the new layout. ``--auto-resume`` starts fresh
when the directory holds no checkpoint yet, which is what a job restarted by torchrun's elastic
agent needs (every restart runs the same command).
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
from planner import outputs, rules, serde
from planner.errors import PlannerError

# Optimizer state keyed by parameter name ("param_groups.blocks.3.attn.q.weight.lr"): pipeline
# stages hold different parameters, and the default list-shaped param_groups would collide
# between ranks under DCP's de-duplication of equal keys.
_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)
_STEP_DIR = re.compile(r"^step-(\d+)$")
_PARTIAL_DIR = re.compile(r"^\.step-\d+\.partial$")


_INFO = "executor.json"


@dataclass
class Checkpoints:
    """A run's checkpoint directory, its key and (with --resume) the verified manifest and the
    history it holds: per step, the mean loss and the world size it ran at."""
    directory: str
    key: bytes
    key_file: str
    resume_step: int = 0
    manifest: dict = field(default_factory=dict)
    losses: list = field(default_factory=list)
    world_sizes: list = field(default_factory=list)


def check_supported(layout, flag: str) -> None:
    problem = rules.checkpoint_refuses(layout)
    if problem:
        raise PlannerError(f"{flag}: {problem}")


def prepare(directory: str, key_flag: str, resume: bool, plan, elastic=None,
            auto: bool = False) -> Checkpoints:
    """Every rank, before the process group: the key, and what --resume would load.

    ``auto`` (--auto-resume): resume when ``directory`` holds a checkpoint, else start fresh;
    ``elastic``: the plan's elastic set, whose other plans' checkpoints it may resume."""
    if auto and not resume:
        resume = _has_checkpoint(directory)
    key_file = sign.key_path(key_flag)
    sign.check_key_outside(key_file, directory)
    ckpt = Checkpoints(directory, sign.load_key(key_file, create=not resume), key_file)
    if resume:
        ckpt.resume_step, ckpt.manifest = _check_resume(ckpt, plan, elastic)
        ckpt.losses, ckpt.world_sizes = _history(ckpt)
    return ckpt


def _has_checkpoint(directory: str) -> bool:
    """Whether --auto-resume must resume: ``latest.json`` or any complete ``step-K`` (a directory
    with steps but no ``latest.json`` is then refused by ``_check_resume``, never overwritten)."""
    if not os.path.isdir(directory):
        return False
    return (os.path.exists(os.path.join(directory, "latest.json"))
            or bool(complete_steps(directory)))


def complete_steps(directory: str) -> list[int]:
    found = [int(m.group(1)) for name in os.listdir(directory)
             if (m := _STEP_DIR.match(name))
             and os.path.isfile(os.path.join(directory, name, sign.MANIFEST))]
    return sorted(found)


def _accepted(plan, elastic) -> tuple[set, str]:
    """Plan fingerprints whose checkpoints this run may resume, and how to say so."""
    if elastic is None:
        return {plan.fingerprint()}, f"this plan is {plan.fingerprint()}"
    sizes = ", ".join(map(str, elastic.world_sizes))
    return ({p.fingerprint() for p in elastic.plans},
            f"this elastic set's plans (world sizes {sizes}) are "
            + ", ".join(p.fingerprint() for p in elastic.plans))


def _check_resume(ckpt: Checkpoints, plan, elastic=None) -> tuple[int, dict]:
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
    accepted, ours = _accepted(plan, elastic)
    if info.get("plan_fingerprint") not in accepted:
        raise PlannerError(f"{latest}: field 'plan_fingerprint': checkpoint is of plan "
                           f"{info.get('plan_fingerprint')}, {ours}; resume with the plan (or "
                           "an elastic set holding the plan) that wrote it")
    path = os.path.join(directory, f"step-{step}")
    if not os.path.isdir(path):
        have = ", ".join(f"step-{k}" for k in complete_steps(directory)) or "none"
        raise PlannerError(f"{latest}: field 'step': {step}, but {path} does not exist "
                           f"(complete checkpoints in {directory}: {have})")
    manifest = sign.read_manifest(ckpt.key, ckpt.key_file, path)
    if (manifest.get("step") != step
            or manifest.get("plan_fingerprint") != info.get("plan_fingerprint")):
        raise PlannerError(f"{os.path.join(path, sign.MANIFEST)}: is step "
                           f"{manifest.get('step')} of plan {manifest.get('plan_fingerprint')}; "
                           f"{latest} says step {step} of plan {info.get('plan_fingerprint')}")
    sign.check_listing(path, manifest)
    return step, manifest


def _history(ckpt: Checkpoints) -> tuple[list, list]:
    """The losses and world sizes ``executor.json`` records, once its MAC checks out (older
    checkpoints hold none: empty lists)."""
    path = os.path.join(ckpt.directory, f"step-{ckpt.resume_step}")
    entries = [e for e in ckpt.manifest["files"] if e["path"] == _INFO]
    if not entries or sign.verify_files(ckpt.key, path, entries) is not None:
        raise PlannerError(f"{os.path.join(path, _INFO)}: content does not match its HMAC in "
                           f"{sign.MANIFEST} (changed or corrupted since it was written); "
                           "refusing to load the checkpoint")
    history = serde.read_json(os.path.join(path, _INFO)).get("history", {})
    losses, sizes = history.get("losses", []), history.get("world_sizes", [])
    if len(losses) != ckpt.resume_step or len(sizes) != ckpt.resume_step:
        return [], []               # written before histories were kept
    return [float(x) for x in losses], [int(n) for n in sizes]


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
    """``planner.outputs.replace_dir`` (the whole old or the whole new step at every moment),
    then the rename itself made durable."""
    outputs.replace_dir(src, dst)
    fd = os.open(os.path.dirname(dst) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(ckpt: Checkpoints, step: int, named_parts, optimizer, plan,
         history: dict | None = None) -> str:
    """Write, sign and publish ``step-{step}`` (a collective: every rank calls it); ``history``
    ({"losses", "world_sizes"} of steps 0..step-1) goes into ``executor.json``."""
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
        info = {"step": step, "plan_fingerprint": plan.fingerprint(), "path": f"step-{step}",
                "world_size": dist.get_world_size()}
        try:
            serde.write_json(os.path.join(staging, _INFO), {**info, "history": history or {}})
            sign.write_manifest(ckpt.key, staging, info)
            _replace_dir(staging, final)
            serde.write_json(os.path.join(directory, "latest.json"), info)
        except (OSError, PlannerError) as err:   # serde.write_json raises PlannerError
            shutil.rmtree(staging, ignore_errors=True)
            raise PlannerError(f"--checkpoint-dir {directory}: saving step {step} failed "
                               f"({getattr(err, 'strerror', None) or err}); earlier checkpoints "
                               "are kept") from None
    dist.barrier()          # no rank reads latest.json before rank 0 wrote it
    return final


def _verify_contents(ckpt: Checkpoints, path: str, device) -> None:
    """Each rank hashes its share of the files, and every rank the metadata DCP unpickles
    first; any mismatch stops every rank. The split assumes what the checkpoint directory must
    be anyway: one directory every rank sees (a shared filesystem), not per-node copies."""
    entries = ckpt.manifest["files"]
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = sorted(set(range(rank, len(entries), world)) | {
        i for i, e in enumerate(entries) if os.path.basename(e["path"]) == ".metadata"})
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
