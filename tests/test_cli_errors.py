"""Bad input: one line naming what is wrong, non-zero exit, no traceback."""
import json
import subprocess
import sys


def planner(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "planner.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def assert_user_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_unknown_model():
    assert_user_error(planner("plan", "--model", "gpt-9000", "--global-batch", "8"),
                      "gpt-9000", "is not a preset")


def test_malformed_and_incomplete_json(tmp_path):
    bad = tmp_path / "arch.json"
    bad.write_text("{not json")
    assert_user_error(planner("plan", "--model", str(bad), "--global-batch", "8",
                              "--cluster", "dgx-a100-80gb"), "arch.json", "malformed JSON")
    bad.write_text(json.dumps({"family": "gpt", "num_layers": 4}))
    assert_user_error(planner("plan", "--model", str(bad), "--global-batch", "8",
                              "--cluster", "dgx-a100-80gb"), "arch.json", "hidden_size")
    prof = tmp_path / "profile.json"
    prof.write_text(json.dumps({"model": {}}))
    assert_user_error(planner("plan", "--profile", str(prof), "--global-batch", "8"),
                      "profile.json", "missing required field")


def test_layout_that_does_not_divide():
    assert_user_error(planner("plan", "--model", "gpt2-small", "--cluster", "dgx-a100-80gb",
                              "--gpus", "8", "--global-batch", "12", "--dp", "8"),
                      "--global-batch 12 does not divide over --dp 8 (12 % 8 = 4)")


def test_uneven_gpus_over_nodes():
    assert_user_error(planner("plan", "--model", "gpt2-small", "--cluster", "dgx-a100-80gb",
                              "--gpus", "12", "--global-batch", "12"),
                      "--gpus 12 is not a whole number of nodes of 8")


def test_plan_json_output_on_a_preset(tmp_path):
    proc = planner("plan", "--model", "gpt2-small", "--cluster", "dgx-a100-80gb", "--gpus", "8",
                   "--global-batch", "64", "--format", "json", "--out", str(tmp_path / "p.json"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in ("step_time_s", "peak_memory_bytes", "fits", "layout"):
        assert key in out
    dims = out["layout"]["dims"]
    assert dims["dp"] * dims["tp"] * dims["pp"] == 8
    assert out["fits"] is True and out["step_time_s"] > 0


def test_implementation_megatron_flags(tmp_path):
    """--implementation megatron is costed analytically on a GPU cluster and recorded in the
    plan; the executor and validate refuse a plan costed for another implementation."""
    out = tmp_path / "m.json"
    proc = planner("simulate", "--model", "gpt3-1.3b", "--cluster", "dgx-a100-80gb", "--gpus",
                   "16", "--global-batch", "16", "--tp", "2", "--pp", "4", "--microbatch-size",
                   "1", "--implementation", "megatron", "--partition", "even", "--format",
                   "json", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert (got["implementation"], got["partition"]) == ("megatron", "even")
    # Megatron's even split: 24 layers over 4 stages, embedding first, head last
    assert got["layout"]["pipeline"]["stage_boundaries"] == [0, 7, 13, 19]
    plan = json.loads(out.read_text())
    assert (plan["implementation"], plan["partition"]) == ("megatron", "even")
    assert_user_error(planner("plan", "--model", "gpt-tiny", "--global-batch", "8",
                              "--implementation", "megatron"),
                      "--implementation megatron", "localhost-cpu")
    assert_user_error(planner("validate", "--model", "gpt-tiny", "--gpus", "2", "--global-batch",
                              "8", "--implementation", "megatron"), "validate runs this")
    proc = subprocess.run([sys.executable, "-m", "executor", "--plan", str(out), "--steps", "2"],
                          capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "WORLD_SIZE": "16"})
    assert proc.returncode == 2 and "field 'implementation'" in proc.stderr, proc.stderr
