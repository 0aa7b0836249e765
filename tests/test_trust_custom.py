"""Issue 13, custom models: no code runs because a file names it, and the contract is checked.

Bad-input table: case, command, expected one-line error, exit status, files left. The
``planner profile`` cases run in-process (``planner.cli.main``); the executor cases are refused
before any process group exists, so they run in-process too, except where the current directory
of a fresh ``python -m executor`` process matters.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from executor_helpers import make_plan
from planner.specs import ModelSpec

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
PROFILE = ["profile", "--repeats", "1", "--warmup", "0", "--microbatch-size", "2"]

# (case, --model, expected in the one error line); every case exits 2 and writes no profile.
PROFILE_CASES = [
    ("factory exits", "builtins:exit", "calling exit() raised SystemExit"),
    ("built-in function", "os:abort", "abort is a built-in function, not a model factory"),
    ("not importable", "no_such_module_xyz:make", "cannot import 'no_such_module_xyz'"),
    ("no such callable", "trust_models:nothing", "has no callable 'nothing'"),
    ("needs arguments", "trust_models:needs_argument", "must be callable without arguments"),
    ("returns an int", "trust_models:returns_int", "returned int, not an nn.Module"),
    ("factory raises", "trust_models:raises", "raised ValueError: boom in the user's factory"),
    ("Sequential CNN", "trust_models:cnn_sequential",
     "has no synthetic_batch(batch_size, generator) and its first block is Conv2d"),
    ("embedding outside blocks", "trust_models:with_embedding_outside_blocks",
     "parameters outside 'blocks' (embed.weight, classifier.weight, classifier.bias)"),
    ("forward() differs", "trust_models:forward_differs",
     "forward() returns a torch.float32 tensor of shape (2, 8) that differs from applying "
     "its blocks"),
    ("loss without batch", "trust_models:loss_without_batch",
     "defines loss(outputs, targets) but not synthetic_batch"),
    ("bad synthetic_batch", "trust_models:bad_batch", "must return (inputs, targets)"),
    ("block returns tuple", "trust_models:tuple_block",
     "block 1 (_Pair) returned tuple; each block must return one tensor"),
]


@pytest.mark.parametrize("case,model,expected", PROFILE_CASES, ids=[c[0] for c in PROFILE_CASES])
def test_profile_refuses_bad_custom_models(case, model, expected, tmp_path, capsys,
                                           monkeypatch):
    from planner.cli import main
    monkeypatch.syspath_prepend(TESTS_DIR)
    out = tmp_path / "p.json"
    rc = main([*PROFILE, "--model", model, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("error: --model ") and expected in err[0], err
    assert not out.exists()


def test_profile_accepts_a_cnn_that_keeps_the_contract(tmp_path, capsys, monkeypatch):
    from planner.cli import main
    monkeypatch.syspath_prepend(TESTS_DIR)
    out = tmp_path / "p.json"
    assert main([*PROFILE, "--model", "trust_models:cnn_with_batch", "--out", str(out)]) == 0
    assert out.exists()


def _write_evil(directory) -> str:
    """evilmod.py: importing it (or calling make) leaves a marker file."""
    marker = os.path.join(str(directory), "PWNED")
    (directory / "evilmod.py").write_text(
        f"open({marker!r}, 'w').write('imported')\n"
        "def make():\n    import torch\n    return torch.nn.Sequential(torch.nn.Linear(4, 4))\n")
    return marker


def test_profile_does_not_import_from_the_current_directory(tmp_path, capsys, monkeypatch):
    from planner.cli import main
    marker = _write_evil(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))     # as `python -m` would put it
    monkeypatch.delenv("PYTHONPATH", raising=False)
    rc = main([*PROFILE, "--model", "evilmod:make", "--out", str(tmp_path / "p.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "current directory is not searched" in err[0], err
    assert "PYTHONPATH" in err[0] and not os.path.exists(marker)


CUSTOM = ModelSpec("evilmod:make", "custom", num_layers=1, hidden_size=4,
                   callable_path="evilmod:make")


def _executor(args, cwd, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RANK", "WORLD_SIZE")}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(TESTS_DIR)] + (
        [env_extra] if env_extra else []))
    return subprocess.run([sys.executable, "-m", "executor", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


# (case, extra executor flags, expected one-line error); exit 2, the evil module never imported.
EXECUTOR_CASES = [
    ("plan names code", [], "field 'model.callable_path': the plan runs custom code "
                            "'evilmod:make'; code is imported only when the command line names "
                            "it: add --model evilmod:make"),
    ("other --model", ["--model", "trust_models:cnn_with_batch"],
     "--model trust_models:cnn_with_batch does not match the plan's model.callable_path"),
    ("cwd not searched", ["--model", "evilmod:make"], "cannot import 'evilmod'"),
]


@pytest.mark.parametrize("case,extra,expected", EXECUTOR_CASES,
                         ids=[c[0] for c in EXECUTOR_CASES])
def test_executor_imports_only_what_its_command_line_names(case, extra, expected, tmp_path):
    marker = _write_evil(tmp_path)
    make_plan(model=CUSTOM, dtype="float32").save(str(tmp_path / "plan.json"))
    proc = _executor(["--plan", "plan.json", "--steps", "3", "--warmup", "1", *extra],
                     cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr
    assert not os.path.exists(marker)


def test_executor_runs_a_named_module_from_pythonpath(tmp_path):
    """The normal way still works: the user names it and puts its directory on PYTHONPATH."""
    marker = _write_evil(tmp_path)
    make_plan(model=CUSTOM, dtype="float32").save(str(tmp_path / "plan.json"))
    proc = _executor(["--plan", "plan.json", "--steps", "3", "--warmup", "1", "--quiet",
                      "--model", "evilmod:make"], cwd=tmp_path, env_extra=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert os.path.exists(marker)


def test_executor_refuses_model_flag_for_a_preset_plan(tmp_path, capsys):
    from executor.main import main
    path = tmp_path / "plan.json"
    make_plan().save(str(path))
    rc = main(["--plan", str(path), "--model", "trust_models:cnn_with_batch"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["error: --model trust_models:cnn_with_batch: the plan's model "
                               "'gpt-test' is not custom code (nothing to import); drop --model"]


@pytest.mark.slow
@pytest.mark.parametrize("layout", [
    dict(pp=2, schedule="1f1b", microbatch_size=2, num_microbatches=2),
    dict(pp=2, schedule="gpipe", microbatch_size=1, num_microbatches=4),
], ids=["1f1b", "gpipe"])
def test_pipelined_custom_model_without_loss_or_batch_is_exact(layout, tmp_path):
    """A model with neither synthetic_batch nor loss (default randn input, mean-square loss,
    zero targets a schedule can split) runs under pipelining and equals one process."""
    from executor_helpers import check_exact
    spec = ModelSpec("custom_models:make", "custom", num_layers=3, hidden_size=16,
                     callable_path="custom_models:make")
    check_exact(make_plan(model=spec, **layout), tmp_path,
                extra=["--model", "custom_models:make"])


def test_profile_model_needs_the_command_line_to_trust_a_spec(tmp_path):
    """A custom spec read from a file (profile, plan) is not a command line: nothing imported."""
    from planner.errors import PlannerError
    from planner.profile.compute import profile_model
    with pytest.raises(PlannerError, match="code is imported only when the command line names"):
        profile_model(CUSTOM, 1, repeats=1, warmup=0)
