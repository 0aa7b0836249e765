"""A plan as Megatron-LM command-line arguments (a bash array to source:
``source plan.sh; torchrun ... pretrain_gpt.py "${PLANNER_ARGS[@]}" --data-path ...``).

Argument names are Megatron-LM's documented ones (``megatron/training/arguments.py``):

- ``--tensor-model-parallel-size``, ``--sequence-parallel``, ``--pipeline-model-parallel-size``;
  data parallelism is what is left of the world size;
- the interleaved schedule is ``--num-layers-per-virtual-pipeline-stage`` (every chunk the same
  number of layers); 1F1B is Megatron's schedule without it; it has no GPipe, looped-BFS or
  zero-bubble V schedule; uneven stages are ``--decoder-first-pipeline-num-layers`` /
  ``--decoder-last-pipeline-num-layers`` (the middle stages equal);
- ``--micro-batch-size`` and ``--global-batch-size`` (Megatron derives the micro-batch count);
- ZeRO: 1 and 2 are Megatron's distributed optimizer (``--use-distributed-optimizer``:
  optimizer states sharded, gradients reduce-scattered), 3 is ``--use-torch-fsdp2``;
- recompute: selective is ``--recompute-activations`` (Korthikanti et al. 2022, the same
  selective recomputation), full is ``--recompute-granularity full --recompute-method uniform
  --recompute-num-layers 1`` (every layer);
- the architecture: sizes, and for Llama-style models SwiGLU, RMSNorm, rotary positions,
  grouped-query attention, no linear biases; MoE routing (``--num-experts``,
  ``--moe-router-topk``, ``--moe-layer-freq`` as an explicit pattern);
- precision ``--bf16``/``--fp16`` (mixed, fp32 main weights); the optimizer with the executor's
  hyper-parameters (``planner.optimizers``; Megatron's Adam decouples weight decay, so Adam is
  weight decay 0), a constant learning rate and no gradient clipping, as the executor trains.

The data and tokenizer arguments are the user's (the plan trains on synthetic data).
"""
from __future__ import annotations

import shlex

from planner import families, schedules
from planner.export import chunks, common_refusals, header, refuse
from planner.optimizers import ADAM_BETAS, ADAM_EPS, ADAMW_WEIGHT_DECAY, SGD_MOMENTUM

SUFFIX = ".sh"
ENGINE = "megatron"


def _pipeline(plan) -> list[str]:
    layout = plan.layout
    if layout.pp == 1:
        return []
    kind = layout.pipeline.schedule
    if kind not in ("1f1b", "interleaved-1f1b"):
        raise refuse(ENGINE, f"schedule {kind}: Megatron-LM runs 1F1B and interleaved 1F1B only")
    counts = [len(c.layers) for c in chunks(plan)]
    if min(counts) == 0:
        raise refuse(ENGINE, f"layers per pipeline chunk {counts}: a Megatron-LM stage holds at "
                             "least one decoder layer")
    args = ["--pipeline-model-parallel-size", str(layout.pp)]
    if kind == "interleaved-1f1b":
        if len(set(counts)) > 1:
            raise refuse(ENGINE, f"layers per chunk {counts}: Megatron-LM's interleaved "
                                 "schedule needs the same number in every chunk"
                                 + _even_hint(plan))
        return args + ["--num-layers-per-virtual-pipeline-stage", str(counts[0])]
    if len(set(counts)) == 1:
        return args
    if len(set(counts[1:-1])) > 1:
        raise refuse(ENGINE, f"layers per stage {counts}: Megatron-LM sets only the first and "
                             "last stage apart from an even split of the rest"
                             + _even_hint(plan))
    return args + ["--decoder-first-pipeline-num-layers", str(counts[0]),
                   "--decoder-last-pipeline-num-layers", str(counts[-1])]


def _even_hint(plan) -> str:
    """The --stage-boundaries of Megatron-LM's even split (the embedding with the first
    layers, the head with the last), for `planner simulate` to cost it."""
    n, layers = plan.layout.num_chunks, plan.model.num_layers
    if layers % n:
        return f" ({layers} layers do not split evenly over {n} chunks)"
    per = layers // n
    starts = [0] + [1 + per * i for i in range(1, n)]
    return (f"; simulate Megatron-LM's even split with --stage-boundaries "
            f"{','.join(map(str, starts))}")


def _data_parallel(plan) -> list[str]:
    d = plan.layout.data
    if d.compression != "none":
        raise refuse(ENGINE, f"compression {d.compression}: Megatron-LM has no gradient-"
                             "compression setting")
    if plan.layout.dp == 1 or d.zero == 0:
        return []
    return ["--use-distributed-optimizer"] if d.zero in (1, 2) else ["--use-torch-fsdp2"]


def _recompute(recompute: str) -> list[str]:
    return {"none": [], "selective": ["--recompute-activations"],
            "full": ["--recompute-granularity", "full", "--recompute-method", "uniform",
                     "--recompute-num-layers", "1"]}[recompute]


def _moe(spec) -> list[str]:
    if spec.shared_expert_gate:
        raise refuse(ENGINE, "a gated shared expert (shared_expert_gate) is not expressed "
                             "in Megatron-LM's arguments here")
    family = families.of(spec)
    pattern = [1 if family.layer_variant(spec, i) == "moe" else 0
               for i in range(spec.num_layers)]
    args = ["--num-experts", str(spec.num_experts), "--moe-router-topk",
            str(spec.experts_per_token), "--moe-ffn-hidden-size",
            str(spec.moe_ffn_hidden_size or spec.ffn_hidden_size),
            "--moe-layer-freq", "[" + ",".join(map(str, pattern)) + "]",
            "--moe-aux-loss-coeff", repr(spec.moe_aux_loss_coeff),
            "--moe-router-load-balancing-type",
            "aux_loss" if spec.moe_aux_loss_coeff else "none"]
    if spec.moe_capacity_factor:
        args += ["--moe-expert-capacity-factor", repr(spec.moe_capacity_factor)]
    if spec.shared_expert_ffn_hidden_size:
        args += ["--moe-shared-expert-intermediate-size",
                 str(spec.shared_expert_ffn_hidden_size)]
    if not spec.moe_renormalize:
        args.append("--moe-router-pre-softmax")
    return args


def _rotary_base(theta: float) -> str:
    """Megatron-LM parses --rotary-base as an integer."""
    if theta != int(theta):
        raise refuse(ENGINE, f"rope_theta {theta}: Megatron-LM's --rotary-base is an integer")
    return str(int(theta))


def _model(plan) -> list[str]:
    spec = plan.model
    if spec.family not in ("gpt", "llama", "moe"):
        raise refuse(ENGINE, f"family {spec.family}: Megatron-LM trains decoder transformers "
                             "(gpt, llama, moe)")
    args = ["--num-layers", str(spec.num_layers), "--hidden-size", str(spec.hidden_size),
            "--num-attention-heads", str(spec.num_heads), "--ffn-hidden-size",
            str(spec.ffn_hidden_size), "--seq-length", str(spec.seq_len),
            "--max-position-embeddings", str(spec.seq_len)]
    if spec.family == "gpt":
        return args + ["--untie-embeddings-and-output-weights"]
    args += ["--swiglu", "--normalization", "RMSNorm", "--position-embedding-type", "rope",
             "--rotary-base", _rotary_base(spec.rope_theta), "--disable-bias-linear"]
    kv = spec.num_kv_heads or spec.num_heads
    if kv != spec.num_heads:
        args += ["--group-query-attention", "--num-query-groups", str(kv)]
    if spec.head_dim:
        args += ["--kv-channels", str(spec.head_dim)]
    if spec.qkv_bias:
        args.append("--add-qkv-bias")
    if spec.qk_norm:
        args.append("--qk-layernorm")
    if not spec.tie_embeddings:
        args.append("--untie-embeddings-and-output-weights")
    return args + (_moe(spec) if spec.family == "moe" else [])


def _numerics(plan) -> list[str]:
    precision = {"float32": [], "bf16-mixed": ["--bf16"], "fp16-mixed": ["--fp16"]}
    if plan.dtype not in precision:
        raise refuse(ENGINE, f"dtype {plan.dtype}: Megatron-LM trains in float32 or bf16/fp16 "
                             "mixed precision")
    opt = plan.optimizer
    if opt in ("adam", "adamw"):
        optimizer = ["--optimizer", "adam", "--adam-beta1", str(ADAM_BETAS[0]), "--adam-beta2",
                     str(ADAM_BETAS[1]), "--adam-eps", f"{ADAM_EPS:g}", "--weight-decay",
                     str(ADAMW_WEIGHT_DECAY if opt == "adamw" else 0.0)]
    else:
        optimizer = ["--optimizer", "sgd", "--sgd-momentum",
                     str(SGD_MOMENTUM if opt == "sgd-momentum" else 0.0), "--weight-decay", "0.0"]
    return precision[plan.dtype] + optimizer + [
        "--lr", repr(plan.learning_rate), "--lr-decay-style", "constant", "--lr-warmup-iters",
        "0", "--clip-grad", "0.0", "--seed", str(plan.seed)]


def arguments(plan) -> list[str]:
    """Megatron-LM's arguments for the plan (refusing what it cannot express)."""
    common_refusals(ENGINE, plan)
    layout = plan.layout
    args = ["--tensor-model-parallel-size", str(layout.tp)]
    if layout.tensor.sequence_parallel:
        args.append("--sequence-parallel")
    args += _pipeline(plan) + _data_parallel(plan)
    args += ["--micro-batch-size", str(layout.microbatch_size), "--global-batch-size",
             str(plan.global_batch_size)]
    return args + _recompute(layout.recompute) + _model(plan) + _numerics(plan)


def render(plan) -> str:
    args = arguments(plan)
    lines = header(plan, "Megatron-LM") + [
        f"# data parallel = {plan.world_size} / (tp {plan.layout.tp} x pp {plan.layout.pp}) = "
        f"{plan.layout.dp}; add your --data-path and tokenizer arguments",
        f"# use: source THIS.sh; torchrun --nproc-per-node ... pretrain_gpt.py "
        '"${PLANNER_ARGS[@]}" ...', "PLANNER_ARGS=("]
    i = 0
    while i < len(args):                      # one flag per line, with its value(s)
        j = i + 1
        while j < len(args) and not args[j].startswith("--"):
            j += 1
        lines.append("  " + " ".join(shlex.quote(a) for a in args[i:j]))
        i = j
    return "\n".join(lines + [")", ""])
