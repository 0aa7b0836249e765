"""planner export: each engine's configuration says what the plan runs, in that engine's names.

torchtitan's field names are checked against a table copied from torchtitan 0.2.2's
``torchtitan/config/job_config.py`` (the fields this exporter may write); the pipeline schedule
name against torch's own ``get_schedule_class``; batch arithmetic and stage splits against the
plan.
"""
from __future__ import annotations

import contextlib
import io
import json
import tomllib

import pytest

from planner.cli import main
from planner.specs import Plan

# torchtitan 0.2.2, torchtitan/config/job_config.py: JobConfig's sections and their fields
# (only those the exporter writes; every one of these names exists there).
TORCHTITAN_FIELDS = {
    "job": {"description"}, "model": {"name", "flavor"},
    "optimizer": {"name", "lr", "beta1", "beta2", "eps", "weight_decay"},
    "lr_scheduler": {"warmup_steps", "decay_ratio"},
    "training": {"local_batch_size", "global_batch_size", "seq_len", "max_norm",
                 "mixed_precision_param", "mixed_precision_reduce"},
    "parallelism": {"data_parallel_replicate_degree", "data_parallel_shard_degree",
                    "fsdp_reshard_after_forward", "tensor_parallel_degree",
                    "pipeline_parallel_degree", "pipeline_parallel_schedule",
                    "pipeline_parallel_microbatch_size", "module_fqns_per_model_part"},
    "activation_checkpoint": {"mode", "selective_ac_option"}, "debug": {"seed"},
}


def run(argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, out.getvalue()


def make_plan(tmp_path, model, gpus, batch, *flags) -> str:
    path = str(tmp_path / "plan.json")
    rc, _ = run(["simulate", "--model", model, "--cluster", "dgx-a100-80gb", "--gpus",
                 str(gpus), "--global-batch", str(batch), *flags, "--out", path])
    assert rc == 0
    return path


def export(path, engine) -> str:
    rc, text = run(["export", "--plan", path, "--to", engine, "--out", "-"])
    assert rc == 0
    return text


def test_torchtitan_pipeline_with_fsdp_and_tp(tmp_path):
    from torch.distributed.pipelining.schedules import get_schedule_class

    path = make_plan(tmp_path, "llama3-8b", 32, 64, "--dp", "4", "--tp", "2", "--pp", "4",
                     "--microbatch-size", "2", "--schedule", "interleaved-1f1b",
                     "--virtual-stages", "2", "--zero", "3", "--sequence-parallel",
                     "--recompute", "selective")
    plan = Plan.load(path)
    doc = tomllib.loads(export(path, "torchtitan"))
    for section, fields in doc.items():
        assert set(fields) <= TORCHTITAN_FIELDS[section], section
    par, tr = doc["parallelism"], doc["training"]
    assert doc["model"] == {"name": "llama3", "flavor": "8B"}
    assert (par["data_parallel_shard_degree"], par["tensor_parallel_degree"],
            par["pipeline_parallel_degree"]) == (4, 2, 4)
    assert par["data_parallel_replicate_degree"] == 1
    assert par["fsdp_reshard_after_forward"] == "always"          # ZeRO-3
    assert get_schedule_class(par["pipeline_parallel_schedule"]).__name__ == \
        "ScheduleInterleaved1F1B"
    # local batch = one replica's share, split into micro-batches of the plan's size
    assert tr["local_batch_size"] * 4 == tr["global_batch_size"] == 64
    assert tr["local_batch_size"] // par["pipeline_parallel_microbatch_size"] == \
        plan.layout.num_microbatches
    parts = par["module_fqns_per_model_part"]
    assert len(parts) == 4 * 2                                      # pp x v chunks
    flat = [name for part in parts for name in part]
    assert flat == ["tok_embeddings"] + [f"layers.{i}" for i in range(32)] + ["norm", "output"]
    assert doc["activation_checkpoint"] == {"mode": "selective", "selective_ac_option": "op"}
    assert tr["mixed_precision_param"] == "bfloat16"


def test_torchtitan_ddp_and_unknown_model(tmp_path):
    path = make_plan(tmp_path, "gpt2-small", 8, 16, "--dp", "8")
    text = export(path, "torchtitan")
    doc = tomllib.loads(text)
    assert doc["parallelism"]["data_parallel_replicate_degree"] == 8
    assert doc["parallelism"]["data_parallel_shard_degree"] == 1
    assert "torchtitan has no flavor of gpt2-small" in text


def test_megatron_arguments(tmp_path):
    path = make_plan(tmp_path, "llama3-8b", 32, 64, "--dp", "4", "--tp", "2", "--pp", "4",
                     "--microbatch-size", "2", "--schedule", "interleaved-1f1b",
                     "--virtual-stages", "2", "--zero", "2", "--sequence-parallel",
                     "--recompute", "full")
    capture = io.StringIO()
    with contextlib.redirect_stderr(capture):
        assert main(["export", "--plan", path, "--to", "megatron"]) == 2
    # the balanced partition gives the head its own chunk; the refusal says how to cost the
    # split Megatron-LM runs, which then exports
    hint = "--stage-boundaries 0,5,9,13,17,21,25,29"
    assert hint in capture.getvalue()
    path = make_plan(tmp_path, "llama3-8b", 32, 64, "--dp", "4", "--tp", "2", "--pp", "4",
                     "--microbatch-size", "2", "--schedule", "interleaved-1f1b",
                     "--virtual-stages", "2", "--zero", "2", "--sequence-parallel",
                     "--recompute", "full", *hint.split())
    text = export(path, "megatron")
    body = text.split("PLANNER_ARGS=(")[1].split(")")[0].split()
    args = {}
    for i, a in enumerate(body):
        if a.startswith("--"):
            nxt = body[i + 1] if i + 1 < len(body) else "--"
            args[a] = None if nxt.startswith("--") else nxt
    assert args["--tensor-model-parallel-size"] == "2"
    assert args["--pipeline-model-parallel-size"] == "4"
    assert "--sequence-parallel" in args and "--use-distributed-optimizer" in args
    # 32 layers over 4 stages x 2 chunks: 4 layers per virtual stage
    assert args["--num-layers-per-virtual-pipeline-stage"] == "4"
    assert int(args["--micro-batch-size"]) * 4 * Plan.load(path).layout.num_microbatches == \
        int(args["--global-batch-size"]) == 64
    assert args["--recompute-granularity"] == "full"
    assert args["--num-query-groups"] == "8" and "--swiglu" in args and "--bf16" in args
    assert args["--weight-decay"] == "0.0"                          # Adam: no decay


def test_megatron_uneven_first_and_last_stage(tmp_path):
    # gpt2-small: embedding + 12 layers + head; 3 stages cut at blocks 0, 4, 9
    path = make_plan(tmp_path, "gpt2-small", 3, 6, "--dp", "1", "--pp", "3",
                     "--microbatch-size", "1", "--stage-boundaries", "0,4,9")
    text = export(path, "megatron")
    assert "--decoder-first-pipeline-num-layers 3" in text       # blocks 1-3
    assert "--decoder-last-pipeline-num-layers 4" in text        # blocks 9-12, head


def test_deepspeed_config(tmp_path):
    path = make_plan(tmp_path, "gpt2-medium", 8, 64, "--dp", "8", "--microbatch-size", "2",
                     "--zero", "1", "--compression", "bf16")
    doc = json.loads(export(path, "deepspeed"))
    assert doc["train_batch_size"] == 64 == (doc["train_micro_batch_size_per_gpu"]
                                             * doc["gradient_accumulation_steps"] * 8)
    assert doc["zero_optimization"] == {"stage": 1}
    assert doc["communication_data_type"] == "bf16" and doc["bf16"] == {"enabled": True}
    assert doc["optimizer"]["type"] == "Adam" and doc["gradient_clipping"] == 0.0


def test_export_writes_beside_the_plan(tmp_path, capsys):
    path = make_plan(tmp_path, "gpt2-small", 8, 16, "--dp", "8")
    assert main(["export", "--plan", path, "--to", "deepspeed"]) == 0
    out = tmp_path / "plan.deepspeed.json"
    assert capsys.readouterr().out.strip() == str(out)
    assert json.loads(out.read_text())["train_batch_size"] == 16


@pytest.mark.parametrize("engine,flags,why", [
    ("torchtitan", ["--dp", "2", "--tp", "4"], "without sequence parallelism"),
    ("torchtitan", ["--dp", "4", "--pp", "2", "--microbatch-size", "1", "--zero", "0"],
     "DDP only as the sole dimension"),
    ("megatron", ["--dp", "4", "--pp", "2", "--microbatch-size", "1", "--schedule", "zbv"],
     "schedule zbv"),
    ("deepspeed", ["--dp", "4", "--pp", "2", "--microbatch-size", "1"], "pp 2"),
    ("deepspeed", ["--dp", "8", "--recompute", "full"], "recompute full"),
    ("megatron", ["--dp", "8", "--dp-comm", "parameter_server"], "parameter server"),
])
def test_refusals_name_the_engine_and_the_reason(tmp_path, capsys, engine, flags, why):
    path = make_plan(tmp_path, "gpt2-small", 8, 16, *flags)
    capsys.readouterr()
    assert main(["export", "--plan", path, "--to", engine]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --to {engine}: ") and why in err and "\n" not in err
    assert not list(tmp_path.glob(f"plan.{engine}.*"))


def test_megatron_moe_routing(tmp_path):
    path = make_plan(tmp_path, "mixtral-8x7b", 64, 64, "--dp", "8", "--tp", "8",
                     "--microbatch-size", "1", "--zero", "2", "--sequence-parallel")
    text = export(path, "megatron")
    for arg in ("--num-experts 8", "--moe-router-topk 2", "--rotary-base 1000000",
                "--moe-aux-loss-coeff 0.02", "--moe-layer-freq '[" + ",".join(["1"] * 32) + "]'",
                "--num-query-groups 8", "--use-distributed-optimizer"):
        assert arg in text, arg
