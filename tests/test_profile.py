"""The compute profiler: what it measures for gpt-tiny and a custom model, its JSON, its CLI.

Times are only checked to be positive (tests never assert wall-clock values); FLOPs and bytes
are checked against hand-derived counts.
"""
import argparse
import json
import os
import subprocess
import sys

import pytest

from planner.errors import PlannerError
from planner.models import resolve_model
from planner.specs import ModelProfile

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
MB = 2


@pytest.fixture(scope="module")
def tiny():
    from planner.profile.compute import profile_model
    spec = resolve_model("gpt-tiny")
    return spec, profile_model(spec, MB, repeats=2, warmup=1)


def test_blocks_kinds_and_params_match_the_module(tiny):
    from planner.models.build import build_model
    spec, prof = tiny
    model = build_model(spec)
    assert len(prof.blocks) == spec.num_layers + 2 == len(model.blocks)
    assert [b.kind for b in prof.blocks] == ["embedding"] + ["block"] * spec.num_layers + ["head"]
    assert [b.index for b in prof.blocks] == list(range(len(prof.blocks)))
    for bp, module in zip(prof.blocks, model.blocks):
        assert bp.param_count == sum(p.numel() for p in module.parameters())
        assert bp.param_bytes == 4 * bp.param_count   # float32
    assert prof.param_count == sum(p.numel() for p in model.parameters())


def test_transformer_block_flops_match_megatron_count(tiny):
    # Forward of one layer, ffn = 4h, multiply-add = 2 FLOPs (Narayanan et al. SC'21, eq. 2):
    # q, k, v, out projections 4 * 2bsh^2 = 8bsh^2; MLP h->4h->h 2 * 2bs*h*4h = 16bsh^2;
    # QK^T 2bs^2h and AV 2bs^2h (no causal halving): 24bsh^2 + 4bs^2h.
    spec, prof = tiny
    b, s, h = MB, spec.seq_len, spec.hidden_size
    expected = 24 * b * s * h * h + 4 * b * s * s * h
    for bp in prof.blocks[1:-1]:
        assert bp.forward_flops == pytest.approx(expected, rel=0.02)
    assert prof.blocks[-1].forward_flops == pytest.approx(2 * b * s * h * spec.vocab_size, rel=0.02)
    assert prof.blocks[0].forward_flops == 0   # an embedding lookup does no arithmetic


def test_saved_activation_bytes_match_a_hand_count(tiny):
    # What a pre-norm block keeps for backward, in units of one b*s*h float32 tensor:
    # LayerNorm inputs 2, LayerNorm outputs (inputs of q/k/v and fc) 2, q, k, v 3, attention
    # output (input of the out projection) 1, fc output (GELU input) 4, GELU output 4 = 16;
    # plus LayerNorm mean and rstd (4 * b*s) and the attention log-sum-exp (b*a*s).
    spec, prof = tiny
    b, s, h, a = MB, spec.seq_len, spec.hidden_size, spec.num_heads
    unit = b * s * h * 4
    expected = 16 * unit + 4 * (4 * b * s) + 4 * b * a * s
    for bp in prof.blocks[1:-1]:
        assert bp.output_bytes == unit
        assert bp.saved_activation_bytes > bp.output_bytes
        assert bp.saved_activation_bytes == pytest.approx(expected, rel=0.05)
    # The head keeps its LayerNorm input and output, and the loss its log-softmax (b*s*V).
    head = prof.blocks[-1]
    assert head.output_bytes == b * s * spec.vocab_size * 4
    assert head.saved_activation_bytes >= 2 * unit + b * s * spec.vocab_size * 4


def test_times_and_metadata(tiny):
    import torch
    spec, prof = tiny
    for bp in prof.blocks:
        assert bp.forward_time_s > 0 and bp.backward_time_s > 0
        assert bp.forward_time_spread_s >= 0 and bp.backward_time_spread_s >= 0
    assert prof.step_time_s > 0 and 0 < prof.optimizer_step_time_s < prof.step_time_s
    assert prof.num_threads == 1 and prof.device == "cpu" and prof.device_name
    assert (prof.microbatch_size, prof.seq_len, prof.dtype) == (MB, spec.seq_len, "float32")
    assert prof.torch_version == torch.__version__ and prof.created_utc.endswith("+00:00")
    assert prof.source == "measured" and prof.model_fingerprint == spec.fingerprint()


def test_profile_json_round_trips(tiny, tmp_path):
    _, prof = tiny
    path = tmp_path / "sub" / "p.json"
    prof.save(str(path))
    assert ModelProfile.load(str(path)) == prof
    assert not [p for p in os.listdir(path.parent) if p.startswith(".tmp")]


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["blocks"][1].pop("forward_time_s"), "blocks[1].forward_time_s"),
    (lambda d: d["blocks"][0].__setitem__("param_count", "many"), "blocks[0].param_count"),
    (lambda d: d.pop("step_time_s"), "step_time_s"),
    (lambda d: d["model"].__setitem__("num_layers", 0), "num_layers"),
    (lambda d: d.__setitem__("model_fingerprint", "0" * 16), "model_fingerprint"),
])
def test_bad_profile_json_names_file_and_field(tiny, tmp_path, edit, field):
    _, prof = tiny
    data = prof.to_dict()
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlannerError) as err:
        ModelProfile.load(str(path))
    assert str(path) in str(err.value) and field in str(err.value)


def test_malformed_profile_json(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('{"model": {"name": "gpt-tiny", ')
    with pytest.raises(PlannerError, match="cut.json: malformed JSON"):
        ModelProfile.load(str(path))


def test_custom_model_by_import_path(monkeypatch):
    from planner.profile.compute import profile_model
    monkeypatch.syspath_prepend(TESTS_DIR)
    prof = profile_model(resolve_model("custom_models:make"), 4, optimizer="sgd",
                         repeats=2, warmup=1, trusted_callable="custom_models:make")
    assert prof.model.family == "custom"
    assert (prof.model.num_layers, prof.model.hidden_size) == (3, 16)
    assert prof.model_fingerprint == prof.model.fingerprint()
    assert [b.name for b in prof.blocks] == ["Linear", "GELU", "Linear"]
    assert [b.param_count for b in prof.blocks] == [16 * 32 + 32, 0, 32 * 4 + 4]
    assert [b.forward_flops for b in prof.blocks] == [2 * 4 * 16 * 32, 0, 2 * 4 * 32 * 4]
    assert [b.output_bytes for b in prof.blocks] == [4 * 32 * 4, 4 * 32 * 4, 4 * 4 * 4]
    assert all(b.forward_time_s > 0 for b in prof.blocks)


def test_bad_arguments_raise_planner_error():
    from planner.profile.compute import profile_model
    spec = resolve_model("gpt-tiny")
    for kwargs in ({"microbatch_size": 0}, {"microbatch_size": 1, "dtype": "int8"},
                   {"microbatch_size": 1, "optimizer": "lamb"},
                   {"microbatch_size": 1, "repeats": 0}, {"microbatch_size": 1, "num_threads": 0},
                   {"microbatch_size": 1, "timer": "tsc"},
                   {"microbatch_size": 1, "timer": "cpu", "num_threads": 2}):
        with pytest.raises(PlannerError):
            profile_model(spec, **kwargs)


def test_cpu_timer_is_recorded_in_source():
    from planner.profile.compute import profile_model
    prof = profile_model(resolve_model("mlp-tiny"), 2, repeats=2, warmup=1, timer="cpu")
    assert prof.source == "measured (process CPU time)"
    assert all(b.forward_time_s > 0 for b in prof.blocks)


def test_command_writes_a_loadable_profile(tmp_path, capsys):
    from planner.commands import profile as cmd
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    out = tmp_path / "p.json"
    args = parser.parse_args(["--model", "mlp-tiny", "--microbatch-size", "3", "--repeats", "2",
                              "--warmup", "1", "--optimizer", "sgd-momentum", "--timer", "cpu",
                              "--out", str(out)])
    assert cmd.run(args) == 0
    prof = ModelProfile.load(str(out))
    assert prof.microbatch_size == 3 and len(prof.blocks) == 6 and prof.optimizer == "sgd-momentum"
    assert prof.source == "measured (process CPU time)"
    captured = capsys.readouterr()
    assert "vs measured whole step" in captured.out and "block   5" in captured.err


def test_default_path_is_sanitized():
    from planner.commands.profile import default_path
    assert default_path("pkg.mod:make", "cpu", 2, "float32") == os.path.join(
        "profiles", "pkg.mod_make-cpu-b2-float32.json")


def test_command_module_does_not_import_torch():
    code = "import sys, planner.commands.profile; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
