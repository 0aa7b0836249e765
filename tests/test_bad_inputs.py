"""The bad-input table of issue 13: each case, its command, the one-line error it must give,
the exit status, and what it may leave on disk.

Every case runs in a fresh directory (the current directory during the command, so default
outputs would land there too). The directory is snapshotted after the case's setup; afterwards
it must hold exactly the same files with the same contents (``KEEP``: nothing written, nothing
half-written, no earlier result lost) unless the case names what may change. stderr must be one
line, ``error: ...``, containing the expected fragment; the exit status 2 (a user's mistake).
Commands run in-process (``planner.cli.main`` / ``executor.main.main``), so an unexpected
exception fails the case with its traceback instead of passing as an error line.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from typing import Callable

import pytest

from planner.cli import main as planner_main

GPU = ["--cluster", "dgx-a100-80gb"]
SMALL = ["--model", "gpt2-small", *GPU, "--gpus", "8", "--global-batch", "16"]


@dataclass
class Case:
    name: str
    argv: list[str]                  # "{tmp}" is replaced by the case's directory
    fragment: str                    # must appear in the one error line
    setup: Callable | None = None    # setup(tmp) writes the inputs the command reads
    program: str = "planner"         # or "executor"
    code: int = 2
    root_skips: bool = False         # permission bits do not stop root
    marks: list = field(default_factory=list)


# -- setup helpers ----------------------------------------------------------------------------
def _write(tmp, name, text):
    path = os.path.join(tmp, name)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def _cluster(**link):
    from planner.clusters import dgx_a100
    data = dgx_a100().to_dict()
    data["intra_node"].update(link)
    return data


def cluster_file(name, **link):
    return lambda tmp: _write(tmp, name, json.dumps(_cluster(**link)))


def cluster_field(name, key, value):
    def setup(tmp):
        data = _cluster()
        data[key] = value
        _write(tmp, name, json.dumps(data))
    return setup


def deep_json(name):
    return lambda tmp: _write(tmp, name, "[" * 100_000 + "]" * 100_000)


def arch(name, **fields):
    spec = {"family": "gpt", "num_layers": 4, "hidden_size": 64, "num_heads": 4,
            "seq_len": 32, "vocab_size": 128, **fields}
    return lambda tmp: _write(tmp, name, json.dumps(spec))


def profile_with(block_field=None, top_field=None, value=float("inf")):
    """A valid gpt-tiny profile with one figure replaced (JSON Infinity/NaN)."""
    def setup(tmp):
        from planner.models import resolve_model
        from planner.specs import BlockProfile, ModelProfile
        spec = resolve_model("gpt-tiny")
        blocks = tuple(BlockProfile(i, f"b{i}", k, 1e-3, 2e-3, 1e-5, 1e-5, 1e9, 10, 40, 1024, 512)
                       for i, k in enumerate(["embedding"] + ["block"] * 4 + ["head"]))
        prof = ModelProfile(spec, spec.fingerprint(), "cuda", "test", "bf16-mixed", 1, 1,
                            spec.seq_len, "adam", blocks, 0.02, 1e-4, 1e-3, 5, 1, "test", "")
        data = prof.to_dict()
        if block_field:
            data["blocks"][2][block_field] = value
        if top_field:
            data[top_field] = value
        _write(tmp, "prof.json", json.dumps(data))
    return setup


def plan_file(*flags, name="plan.json", lr=None):
    """A plan from `planner simulate` (quiet), optionally with its learning rate edited."""
    def setup(tmp):
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            assert planner_main(["simulate", *SMALL, *flags, "--out",
                                 os.path.join(tmp, name)]) == 0
        if lr is not None:
            path = os.path.join(tmp, name)
            data = json.load(open(path))
            data["learning_rate"] = lr
            _write(tmp, name, json.dumps(data))
    return setup


def both(*setups):
    def setup(tmp):
        for s in setups:
            s(tmp)
    return setup


def a_dir(name):
    return lambda tmp: os.makedirs(os.path.join(tmp, name), exist_ok=True)


def foreign_metrics(tmp):
    from planner.specs import Layout, Metrics
    m = Metrics("other", "other", 8, Layout.make(dp=8, microbatch_size=2), "nccl", "cuda", 3, 1,
                (1.0, 1.0, 1.0), (0.1, 0.1), 0.1, (1,) * 8, "test", 1.0, "test", "")
    m.save(os.path.join(tmp, "m.json"))


def old_report(tmp):
    """A report of another plan, written before: it must survive a refused report."""
    plan_file("--dp", "4", "--tp", "2", name="old.json")(tmp)
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        assert planner_main(["report", "--plan", os.path.join(tmp, "old.json"), "--out",
                             os.path.join(tmp, "rep")]) == 0


def npz(tmp):
    import numpy as np
    np.savez(os.path.join(tmp, "tokens.npz"), a=np.arange(10), b=np.arange(5))


def binary(name):
    def setup(tmp):
        with open(os.path.join(tmp, name), "wb") as fh:
            fh.write(b"\xff\xfe\x00\x01\x80garbage")
    return setup


def unreadable(name):
    def setup(tmp):
        path = _write(tmp, name, "name = 'x'\n")
        os.chmod(path, 0)
    return setup


PLAN = "{tmp}/plan.json"
EXE = ["--plan", PLAN]

CASES = [
    # -- numbers that make no sense ------------------------------------------------------------
    Case("gpus 0", ["plan", *SMALL, "--gpus", "0"], "--gpus must be >= 1, got 0"),
    Case("gpus negative", ["plan", *SMALL, "--gpus", "-8"], "--gpus must be >= 1, got -8"),
    Case("gpus not a number", ["plan", *SMALL, "--gpus", "abc"], "invalid int value: 'abc'"),
    Case("lr nan", ["plan", *SMALL, "--lr", "nan"], "--lr must be a finite number > 0"),
    Case("lr negative", ["plan", *SMALL, "--lr", "-5"], "got -5.0"),
    Case("lr infinite", ["simulate", *SMALL, "--lr", "inf"], "--lr must be a finite number"),
    Case("ps-shards negative", ["plan", *SMALL, "--dp-comm", "parameter_server", "--ps-shards",
                                "-3"], "--ps-shards must be >= 1, got -3"),
    Case("powersgd rank 0", ["plan", *SMALL, "--compression", "powersgd", "--powersgd-rank", "0"],
         "--powersgd-rank must be >= 1, got 0"),
    Case("tp 0", ["simulate", *SMALL, "--tp", "0"], "--tp must be >= 1, got 0"),
    Case("dp 0", ["plan", *SMALL, "--dp", "0"], "--dp must be >= 1, got 0"),
    Case("microbatch 0", ["simulate", *SMALL, "--microbatch-size", "0"],
         "--microbatch-size must be >= 1, got 0"),
    Case("virtual stages 0", ["plan", *SMALL, "--virtual-stages", "0"],
         "--virtual-stages must be >= 1"),
    Case("global batch 0", ["plan", *SMALL, "--global-batch", "0"],
         "--global-batch must be >= 1, got 0"),
    Case("top-k 0", ["plan", *SMALL, "--top-k", "0"], "--top-k must be >= 1, got 0"),
    Case("max virtual stages 0", ["plan", *SMALL, "--max-virtual-stages", "0"],
         "--max-virtual-stages must be >= 1"),
    Case("seq-len 0", ["plan", *SMALL, "--seq-len", "0"], "--seq-len must be >= 1, got 0"),
    # -- sizes beyond the search ---------------------------------------------------------------
    Case("gpus 1e9", ["plan", "--model", "gpt-1t", *GPU, "--gpus", "1000000000",
                      "--global-batch", "4096"], "the search supports at most 131,072 devices"),
    Case("global batch 1e9", ["plan", *SMALL, "--global-batch", "1000000000"],
         "at most 65,536 sequences per step"),
    Case("num_layers 1e7", ["plan", "--model", "{tmp}/deep.json", *GPU, "--gpus", "8",
                            "--global-batch", "8"], "the search supports at most 200",
         setup=arch("deep.json", num_layers=10_000_000)),
    # -- no layout: which rule -----------------------------------------------------------------
    Case("tp does not divide heads", ["plan", *SMALL, "--tp", "8"],
         "tensor-parallel divisibility removed 1 tp degree (e.g. tp(8) must divide "
         "num_heads(12)"),
    Case("sequence parallel without tp", ["plan", *SMALL, "--tp", "1", "--sequence-parallel"],
         "sequence parallelism splits activations over tp ranks"),
    Case("pp beyond blocks", ["plan", "--model", "{tmp}/a.json", *GPU, "--gpus", "8",
                              "--global-batch", "8", "--pp", "8"],
         "pp at most the model's blocks removed 1 (tp, pp) split (e.g. pp(8) > 6 blocks)",
         setup=arch("a.json")),
    # -- cluster files -------------------------------------------------------------------------
    Case("NaN link latency", ["plan", *SMALL[:2], "--cluster", "{tmp}/c.json", "--gpus", "8",
                              "--global-batch", "16"],
         "c.json: link intra_node: latency_s must be a finite number >= 0, got nan",
         setup=cluster_file("c.json", latency_s=float("nan"))),
    Case("Inf bandwidth", ["plan", *SMALL[:2], "--cluster", "{tmp}/c.json", "--gpus", "8",
                           "--global-batch", "16"], "bandwidth_bytes_per_s must be a finite",
         setup=cluster_file("c.json", bandwidth_bytes_per_s=float("inf"))),
    Case("negative call latency", ["plan", *SMALL[:2], "--cluster", "{tmp}/c.json", "--gpus",
                                   "8", "--global-batch", "16"],
         "call_latency_s must be a finite number >= 0, got -1.0",
         setup=cluster_file("c.json", call_latency_s=-1.0)),
    Case("NaN compute_slowdown", ["plan", *SMALL[:2], "--cluster", "{tmp}/c.json", "--gpus",
                                  "8", "--global-batch", "16"], "compute_slowdown",
         setup=cluster_field("c.json", "compute_slowdown", float("nan"))),
    Case("cluster toml is a directory", ["plan", *SMALL[:2], "--cluster", "{tmp}/c.toml",
                                         "--gpus", "8", "--global-batch", "16"],
         "c.toml: is a directory", setup=a_dir("c.toml")),
    Case("cluster toml binary", ["plan", *SMALL[:2], "--cluster", "{tmp}/c.toml", "--gpus", "8",
                                 "--global-batch", "16"], "c.toml: not a text file",
         setup=binary("c.toml")),
    Case("cluster toml unreadable", ["plan", *SMALL[:2], "--cluster", "{tmp}/c.toml",
                                     "--gpus", "8", "--global-batch", "16"],
         "permission denied", setup=unreadable("c.toml"), root_skips=True),
    Case("cluster toml malformed", ["plan", *SMALL[:2], "--cluster", "{tmp}/c.toml", "--gpus",
                                    "8", "--global-batch", "16"], "c.toml: malformed TOML",
         setup=lambda tmp: _write(tmp, "c.toml", "name = \n")),
    Case("cluster toml missing", ["plan", *SMALL[:2], "--cluster", "{tmp}/none.toml",
                                  "--global-batch", "16"], "none.toml: no such file"),
    Case("cluster json nested 100000 deep", ["plan", *SMALL[:2], "--cluster", "{tmp}/c.json",
                                             "--global-batch", "16"],
         "c.json: JSON nested too deeply", setup=deep_json("c.json")),
    Case("architecture nested 100000 deep", ["plan", "--model", "{tmp}/m.json", *GPU,
                                             "--global-batch", "16"],
         "m.json: JSON nested too deeply", setup=deep_json("m.json")),
    Case("architecture binary", ["plan", "--model", "{tmp}/m.json", *GPU, "--global-batch",
                                 "16"], "m.json: not a text file", setup=binary("m.json")),
    # -- profiles ------------------------------------------------------------------------------
    Case("Inf block time", ["plan", "--profile", "{tmp}/prof.json", *GPU, "--gpus", "8",
                            "--global-batch", "8"],
         "blocks[2] (b2): forward_time_s must be a finite number >= 0, got inf",
         setup=profile_with(block_field="forward_time_s")),
    Case("NaN step time", ["plan", "--profile", "{tmp}/prof.json", *GPU, "--gpus", "8",
                           "--global-batch", "8"], "step_time_s must be a finite number",
         setup=profile_with(top_field="step_time_s", value=float("nan"))),
    Case("negative saved bytes", ["plan", "--profile", "{tmp}/prof.json", *GPU, "--gpus", "8",
                                  "--global-batch", "8"], "saved_activation_bytes must be >= 0",
         setup=profile_with(block_field="saved_activation_bytes", value=-5)),
    # -- outputs -------------------------------------------------------------------------------
    Case("plan --out is a directory", ["plan", *SMALL, "--out", "{tmp}/out"],
         "--out {tmp}/out: is a directory", setup=a_dir("out")),
    Case("plan --out under a file", ["plan", *SMALL, "--out", "{tmp}/f/plan.json"],
         "is not a directory", setup=lambda tmp: _write(tmp, "f", "x")),
    Case("plan --out read-only file system", ["plan", *SMALL, "--out", "/sys/plan.json"],
         "--out /sys/plan.json: cannot write in /sys"),
    Case("simulate --out is a directory", ["simulate", *SMALL, "--out", "{tmp}/out"],
         "is a directory", setup=a_dir("out")),
    Case("profile --out is a directory", ["profile", "--model", "gpt-tiny", "--out",
                                          "{tmp}/out"], "is a directory", setup=a_dir("out")),
    Case("profile --repeats 0", ["profile", "--model", "gpt-tiny", "--repeats", "0"],
         "--repeats must be >= 1, got 0"),
    Case("export --out is a directory", ["export", "--plan", PLAN, "--to", "deepspeed",
                                         "--out", "{tmp}/out"], "is a directory",
         setup=both(plan_file("--dp", "8"), a_dir("out"))),
    Case("validate --workdir is a file", ["validate", *SMALL, "--workdir", "{tmp}/w"],
         "--workdir {tmp}/w: exists and is not a directory",
         setup=lambda tmp: _write(tmp, "w", "x")),
    Case("validate --timeout-s 0", ["validate", *SMALL, "--timeout-s", "0"],
         "--timeout-s must be a positive number of seconds"),
    Case("demo --steps 0", ["demo", "--steps", "0"], "--steps must be >= 1, got 0"),
    # -- report: validated first, written whole or not at all ----------------------------------
    Case("report foreign metrics", ["report", "--plan", PLAN, "--metrics", "{tmp}/m.json",
                                    "--out", "{tmp}/rep"], "match neither this plan",
         setup=both(plan_file(), foreign_metrics)),
    Case("report foreign metrics over an existing report",
         ["report", "--plan", PLAN, "--metrics", "{tmp}/m.json", "--out", "{tmp}/rep"],
         "match neither this plan", setup=both(old_report, plan_file(), foreign_metrics)),
    Case("report into a directory of other files", ["report", "--plan", PLAN, "--out",
                                                    "{tmp}/mine"], "is not a planner report",
         setup=both(plan_file(), a_dir("mine"),
                    lambda tmp: _write(tmp, "mine/notes.txt", "keep me"))),
    Case("report --out .html", ["report", "--plan", PLAN, "--out", "{tmp}/r.html"],
         "the report is a directory", setup=plan_file()),
    Case("report empty --trace-dir", ["report", "--plan", PLAN, "--trace-dir", "{tmp}/t",
                                      "--out", "{tmp}/rep"], "no trace files",
         setup=both(plan_file(), a_dir("t"))),
    Case("report plan is a directory", ["report", "--plan", "{tmp}/p"], "p: is a directory",
         setup=a_dir("p")),
    Case("compare metrics nested deep", ["compare", "--plan", PLAN, "--metrics",
                                         "{tmp}/m.json"], "JSON nested too deeply",
         setup=both(plan_file(), deep_json("m.json"))),
    Case("plan file with NaN learning rate", ["export", "--plan", PLAN, "--to", "megatron"],
         "learning_rate must be a finite number > 0, got nan",
         setup=plan_file(lr=float("nan"))),
    # -- export: what the engine cannot express ------------------------------------------------
    Case("deepspeed with tp", ["export", "--plan", PLAN, "--to", "deepspeed"],
         "--to deepspeed: tp 2: a DeepSpeed config does not set tensor parallelism",
         setup=plan_file("--dp", "4", "--tp", "2")),
    Case("megatron with gpipe", ["export", "--plan", PLAN, "--to", "megatron"],
         "--to megatron: schedule gpipe",
         setup=plan_file("--dp", "4", "--pp", "2", "--microbatch-size", "1", "--schedule",
                         "gpipe")),
    Case("torchtitan with zero 1", ["export", "--plan", PLAN, "--to", "torchtitan"],
         "--to torchtitan: zero 1", setup=plan_file("--dp", "8", "--zero", "1")),
    Case("export to an unknown engine", ["export", "--plan", PLAN, "--to", "jax"],
         "invalid choice: 'jax'", setup=plan_file()),
    # -- executor flags and data, before any process group -------------------------------------
    Case("executor --warmup -1", [*EXE, "--warmup", "-1"], "--warmup must be >= 0",
         setup=plan_file("--dp", "1", "--gpus", "1"), program="executor"),
    Case("executor --checkpoint-every -1", [*EXE, "--checkpoint-every", "-1"],
         "--checkpoint-every must be >= 0", setup=plan_file("--gpus", "1"),
         program="executor"),
    Case("executor --timeout-s 0", [*EXE, "--timeout-s", "0"],
         "--timeout-s must be a positive number", setup=plan_file("--gpus", "1"),
         program="executor"),
    Case("executor --timeout-s nan", [*EXE, "--timeout-s", "nan"],
         "--timeout-s must be a positive number", setup=plan_file("--gpus", "1"),
         program="executor"),
    Case("executor --steps 0", [*EXE, "--steps", "0"], "--steps must be >= 1",
         setup=plan_file("--gpus", "1"), program="executor"),
    Case("executor --data .npz", [*EXE, "--data", "{tmp}/tokens.npz", "--device", "cpu"],
         "a NumPy archive (.npz)", setup=both(plan_file("--gpus", "1"), npz),
         program="executor"),
    Case("executor --metrics is a directory", [*EXE, "--metrics", "{tmp}/out"],
         "--metrics {tmp}/out: is a directory",
         setup=both(plan_file("--gpus", "1"), a_dir("out")), program="executor"),
]


def snapshot(root: str) -> dict:
    out = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            rel = os.path.relpath(path, root)
            if os.path.isdir(path):
                out[rel + "/"] = None
            else:
                with open(path, "rb") as fh:
                    out[rel] = fh.read()
    return out


def run_case(case: Case, tmp: str, capsys) -> tuple[int, str]:
    argv = [a.replace("{tmp}", tmp) for a in case.argv]
    if case.program == "executor":
        from executor.main import main as executor_main
        return executor_main(argv), capsys.readouterr().err
    return planner_main(argv), capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, tmp_path, monkeypatch, capsys):
    if case.root_skips and hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("permission bits do not stop root")
    tmp = str(tmp_path)
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("PLANNER_CHECKPOINT_KEY", os.path.join(tmp, "no-key"))
    if case.setup:
        case.setup(tmp)
    capsys.readouterr()
    before = snapshot(tmp)
    rc, err = run_case(case, tmp, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.fragment.replace("{tmp}", tmp) in lines[0], lines[0]
    assert rc == case.code, (rc, lines[0])
    # Nothing written, nothing half-written, nothing earlier lost or changed.
    assert snapshot(tmp) == before
