"""A plan as a DeepSpeed JSON configuration (``deepspeed.initialize(config=plan.json)``).

Keys are those of DeepSpeed's configuration reference (deepspeed.ai/docs/config-json):
``train_batch_size`` = ``train_micro_batch_size_per_gpu`` x ``gradient_accumulation_steps`` x
data-parallel ranks; ``zero_optimization.stage`` (ZeRO 0-3, Rajbhandari et al. 2020, the
stages the executor runs); ``bf16``/``fp16`` mixed precision; ``communication_data_type`` for
gradients exchanged in fp16/bf16 (the executor's fp16/bf16 compression hook); the optimizer with
the executor's hyper-parameters (``planner.optimizers``; a name DeepSpeed does not implement is
looked up in ``torch.optim``, as for SGD), no scheduler (a constant learning rate) and
``gradient_clipping`` 0 (none), as the executor trains.

A DeepSpeed JSON file sets neither tensor nor pipeline parallelism (Megatron-DeepSpeed takes
them as arguments: ``--to megatron``; pipeline stages are built in code with
``deepspeed.pipe.PipelineModule``) nor recomputation (the model's code calls
``deepspeed.checkpointing``): plans with them are refused.
"""
from __future__ import annotations

import json

from planner.export import common_refusals, refuse
from planner.optimizers import ADAM_BETAS, ADAM_EPS, ADAMW_WEIGHT_DECAY, SGD_MOMENTUM

SUFFIX = ".json"
ENGINE = "deepspeed"


def _optimizer(plan) -> dict:
    opt, lr = plan.optimizer, plan.learning_rate
    if opt in ("adam", "adamw"):
        return {"type": "AdamW" if opt == "adamw" else "Adam",
                "params": {"lr": lr, "betas": list(ADAM_BETAS), "eps": ADAM_EPS,
                           "weight_decay": ADAMW_WEIGHT_DECAY if opt == "adamw" else 0.0}}
    return {"type": "SGD", "params": {"lr": lr, "momentum":
                                      SGD_MOMENTUM if opt == "sgd-momentum" else 0.0}}


def config(plan) -> dict:
    """The DeepSpeed configuration (refusing what it cannot express)."""
    common_refusals(ENGINE, plan)
    layout = plan.layout
    if layout.tp > 1:
        raise refuse(ENGINE, f"tp {layout.tp}: a DeepSpeed config does not set tensor "
                             "parallelism (Megatron-DeepSpeed's arguments do: --to megatron)")
    if layout.pp > 1:
        raise refuse(ENGINE, f"pp {layout.pp}: DeepSpeed pipeline stages are built in code "
                             "(deepspeed.pipe.PipelineModule), not in its config")
    if layout.recompute != "none":
        raise refuse(ENGINE, f"recompute {layout.recompute}: DeepSpeed recomputes where the "
                             "model's code calls deepspeed.checkpointing, not by config")
    precision = {"float32": {}, "bf16-mixed": {"bf16": {"enabled": True}},
                 "fp16-mixed": {"fp16": {"enabled": True}}}
    if plan.dtype not in precision:
        raise refuse(ENGINE, f"dtype {plan.dtype}: DeepSpeed trains in float32 or bf16/fp16 "
                             "mixed precision")
    out = {"train_batch_size": plan.global_batch_size,
           "train_micro_batch_size_per_gpu": layout.microbatch_size,
           "gradient_accumulation_steps": layout.num_microbatches,
           "zero_optimization": {"stage": layout.data.zero if layout.dp > 1 else 0},
           **precision[plan.dtype], "optimizer": _optimizer(plan), "gradient_clipping": 0.0}
    if layout.data.compression in ("fp16", "bf16"):
        out["communication_data_type"] = layout.data.compression
    return out


def render(plan) -> str:
    """JSON has no comments, and DeepSpeed reads every key: the file is the config alone."""
    return json.dumps(config(plan), indent=2) + "\n"
