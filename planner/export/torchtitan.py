"""A plan as a torchtitan TOML job configuration (``torchrun ... -m torchtitan.train
--job.config_file plan.toml``).

Field names are those of torchtitan 0.2.2's ``torchtitan/config/job_config.py`` (``JobConfig``:
sections ``job``, ``model``, ``optimizer``, ``lr_scheduler``, ``training``, ``parallelism``,
``activation_checkpoint``). torchtitan 0.3 replaced TOML files by Python ``config_registry``
functions with the same section and field names as command-line overrides
(``--parallelism.tensor_parallel_degree 2``); the file's header lists those overrides.

Mapping (what torchtitan runs for each of the plan's choices):

- data parallel: ZeRO 0 is DDP (``data_parallel_replicate_degree``), which torchtitan runs only
  as the sole dimension ("DDP has not supported > 1D parallelism", ``infra/parallelize.py``);
  ZeRO 2 and 3 are FSDP2 (``data_parallel_shard_degree``) keeping parameters gathered after
  the forward (``fsdp_reshard_after_forward = "never"``: ZeRO-2) or freeing them ("always":
  ZeRO-3); ZeRO 1 (optimizer states only) has no torchtitan form;
- tensor parallel: ``tensor_parallel_degree``; torchtitan 0.2 always adds sequence parallelism
  (``SequenceParallel`` on the norms), so tp > 1 needs a plan with sequence parallelism;
- pipeline: ``pipeline_parallel_degree``, the schedule as torch's ``get_schedule_class`` names
  it (the registry's torch class), ``pipeline_parallel_microbatch_size``, and the plan's stage
  boundaries as ``module_fqns_per_model_part`` (torchtitan's Llama module names
  ``tok_embeddings``, ``layers.N``, ``norm``, ``output``), ``pp * v`` parts;
- batch: ``local_batch_size`` is one data-parallel replica's share per optimizer step with a
  pipeline (split into micro-batches), else one micro-batch (``global_batch_size`` then sets
  the gradient accumulation, ``train.py``);
- recompute: ``activation_checkpoint.mode`` none/full, and selective as torchtitan's op-level
  selective checkpointing (``selective_ac_option = "op"``: it saves matmul outputs and
  recomputes the rest, close to Korthikanti et al.'s selective recomputation but not equal);
- precision: bf16-mixed is FSDP's ``mixed_precision_param = "bfloat16"`` (fp32 reduction),
  float32 keeps parameters in float32; others are refused;
- optimizer: Adam/AdamW with the executor's hyper-parameters (``planner.optimizers``), constant
  learning rate (no warm-up, no decay) and no gradient clipping (``max_norm = inf``), as the
  executor trains.
"""
from __future__ import annotations

import json

from planner import schedules
from planner.export import chunks, common_refusals, header, refuse
from planner.models import PRESETS
from planner.optimizers import ADAM_BETAS, ADAM_EPS, ADAMW_WEIGHT_DECAY

SUFFIX = ".toml"
ENGINE = "torchtitan"
# Presets that are torchtitan's own model flavors (torchtitan/models/llama3/__init__.py).
FLAVORS = {"llama3-8b": ("llama3", "8B"), "llama3-70b": ("llama3", "70B"),
           "llama3-405b": ("llama3", "405B")}


def _model(plan) -> tuple[str, str, str]:
    """(name, flavor, note) of torchtitan's model for the plan's."""
    for preset, (name, flavor) in FLAVORS.items():
        if plan.model.fingerprint() == PRESETS[preset].fingerprint():
            return name, flavor, ""
    return (plan.model.family, plan.model.name,
            f"# torchtitan has no flavor of {plan.model.name}: register one with this shape "
            f"({plan.model.num_layers} layers, hidden {plan.model.hidden_size}, "
            f"{plan.model.num_heads} heads) under these names")


def _data_parallel(plan) -> dict:
    layout = plan.layout
    dp, zero = layout.dp, layout.data.zero
    if dp == 1:
        return {"data_parallel_replicate_degree": 1, "data_parallel_shard_degree": 1}
    if zero == 1:
        raise refuse(ENGINE, "zero 1 (sharded optimizer states only) has no torchtitan form: "
                             "it runs DDP (zero 0) or FSDP2 (zero 2/3)")
    if zero == 0:
        if layout.tp > 1 or layout.pp > 1:
            raise refuse(ENGINE, "zero 0 with tp or pp > 1: torchtitan runs DDP only as the "
                                 "sole dimension (\"DDP has not supported > 1D parallelism\")")
        return {"data_parallel_replicate_degree": dp, "data_parallel_shard_degree": 1}
    return {"data_parallel_replicate_degree": 1, "data_parallel_shard_degree": dp,
            "fsdp_reshard_after_forward": "never" if zero == 2 else "always"}


def _precision(plan) -> dict:
    if plan.dtype == "bf16-mixed":
        return {"mixed_precision_param": "bfloat16", "mixed_precision_reduce": "float32"}
    if plan.dtype == "float32":
        return {"mixed_precision_param": "float32", "mixed_precision_reduce": "float32"}
    raise refuse(ENGINE, f"dtype {plan.dtype}: torchtitan trains in float32 or bf16 mixed "
                         "precision (training.mixed_precision_param)")


def _fqns(plan) -> list[list[str]]:
    parts = []
    for c in chunks(plan):
        names = (["tok_embeddings"] if c.embedding else []) + [f"layers.{i}" for i in c.layers]
        parts.append(names + (["norm", "output"] if c.head else []))
    return parts


def sections(plan) -> dict[str, dict]:
    """The job configuration as {section: {field: value}} (refusing what torchtitan cannot
    express)."""
    common_refusals(ENGINE, plan)
    layout = plan.layout
    if layout.data.compression != "none":
        raise refuse(ENGINE, f"compression {layout.data.compression}: torchtitan has no "
                             "gradient-compression hook")
    if layout.tp > 1 and not layout.tensor.sequence_parallel:
        raise refuse(ENGINE, "tp > 1 without sequence parallelism: torchtitan 0.2 always "
                             "shards the norms' activations (plan with --sequence-parallel)")
    if plan.optimizer not in ("adam", "adamw"):
        raise refuse(ENGINE, f"optimizer {plan.optimizer}: torchtitan builds Adam or AdamW "
                             "(components/optimizer.py)")
    name, flavor, _ = _model(plan)
    per_replica = layout.microbatch_size * layout.num_microbatches
    par = {**_data_parallel(plan), "tensor_parallel_degree": layout.tp,
           "pipeline_parallel_degree": layout.pp}
    if layout.pp > 1:
        kind = schedules.get(layout.pipeline.schedule)
        par.update({"pipeline_parallel_schedule": kind.torch_class.removeprefix("Schedule"),
                    "pipeline_parallel_microbatch_size": layout.microbatch_size,
                    "module_fqns_per_model_part": _fqns(plan)})
    optimizer = {"name": "AdamW" if plan.optimizer == "adamw" else "Adam",
                 "lr": plan.learning_rate, "beta1": ADAM_BETAS[0], "beta2": ADAM_BETAS[1],
                 "eps": ADAM_EPS,
                 "weight_decay": ADAMW_WEIGHT_DECAY if plan.optimizer == "adamw" else 0.0}
    ac = {"mode": layout.recompute}
    if layout.recompute == "selective":
        ac["selective_ac_option"] = "op"
    return {
        "job": {"description": f"planner plan {plan.fingerprint()}: {layout.describe()}"},
        "model": {"name": name, "flavor": flavor},
        "optimizer": optimizer,
        "lr_scheduler": {"warmup_steps": 0, "decay_ratio": 0.0},
        "training": {"local_batch_size": per_replica if layout.pp > 1
                     else layout.microbatch_size,
                     "global_batch_size": plan.global_batch_size,
                     "seq_len": plan.model.seq_len, "max_norm": float("inf"),
                     **_precision(plan)},
        "parallelism": par,
        "activation_checkpoint": ac,
        "debug": {"seed": plan.seed},
    }


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "inf" if value == float("inf") else repr(value)
    if isinstance(value, (int, str, list)):
        return json.dumps(value)       # TOML strings, integers and arrays are JSON-compatible
    raise TypeError(type(value))


def render(plan) -> str:
    secs = sections(plan)
    note = _model(plan)[2]
    overrides = " ".join(f"--{s}.{k} {_toml_value(v)}" for s in ("training", "parallelism")
                         for k, v in secs[s].items() if k != "module_fqns_per_model_part")
    lines = header(plan, ENGINE) + [
        "# run: torchrun --nproc-per-node N -m torchtitan.train --job.config_file THIS.toml",
        "# torchtitan 0.3 (config_registry): pass the same fields as overrides, e.g.",
        f"#   {overrides}", ""]
    for name, fields in secs.items():
        lines.append(f"[{name}]")
        if name == "model" and note:
            lines.append(note)
        lines += [f"{k} = {_toml_value(v)}" for k, v in fields.items()]
        lines.append("")
    return "\n".join(lines)
