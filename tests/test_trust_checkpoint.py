"""Issue 13, checkpoints: --resume never unpickles unverified bytes; bad checkpoints, one line.

Bad-input table (``CASES``): case, how the checkpoint of a 3-step run is damaged, the expected
one-line error of ``python -m executor --resume``, exit status 2, and what must not appear (the
marker a malicious ``.metadata`` pickle would write). Each case copies one good checkpoint.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest

from executor_helpers import load_params, make_plan, run_plan
from executor.reference import train_reference

pytestmark = pytest.mark.slow

MB = dict(microbatch_size=2, num_microbatches=2)


class _Evil:
    """Unpickling runs os.system: it leaves a marker file if anything unpickles it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _evil_metadata(path, marker, same_size: bool):
    blob = pickle.dumps(_Evil(marker))
    if same_size:       # pickle.load stops at STOP: padding keeps the size, and the payload
        size = os.path.getsize(path)
        assert len(blob) < size
        blob += b"\0" * (size - len(blob))
    with open(path, "wb") as fh:
        fh.write(blob)


def _run(args, key, timeout=120):
    return subprocess.run([sys.executable, "-m", "executor", *args,
                           "--checkpoint-key", str(key)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A plan, its 3-step checkpoint directory and the key that signed it."""
    base = tmp_path_factory.mktemp("ckpt")
    plan_path, key = base / "plan.json", base / "keys" / "key"
    make_plan(**MB).save(str(plan_path))
    proc = _run(["--plan", str(plan_path), "--steps", "3", "--warmup", "1", "--quiet",
                 "--checkpoint-dir", str(base / "ck")], key)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(base / "ck")) == ["latest.json", "step-3"]
    return plan_path, base / "ck", key


def _latest(value):
    def edit(ck, marker):
        (ck / "latest.json").write_text(json.dumps(
            {"step": value, "plan_fingerprint": json.loads(
                (ck / "step-3" / "executor.json").read_text())["plan_fingerprint"]}))
    return edit


def _other_key(ck, marker):
    (ck.parent / "other-key").write_text("ab" * 32 + "\n")
    os.chmod(ck.parent / "other-key", 0o600)


def _resign_manifest(ck, marker):
    """An attacker edits .metadata and fixes the manifest with a hash: no key, no signature."""
    import hashlib
    meta = ck / "step-3" / ".metadata"
    _evil_metadata(meta, marker, same_size=False)
    man = json.loads((ck / "step-3" / "manifest.json").read_text())
    for entry in man["files"]:
        if entry["path"] == ".metadata":
            entry["bytes"] = os.path.getsize(meta)
            entry["hmac_sha256"] = hashlib.sha256(meta.read_bytes()).hexdigest()
    (ck / "step-3" / "manifest.json").write_text(json.dumps(man))


def _edit_history(ck):
    """Someone rewrites a recorded loss (a JSON file, read before any pickle), same size."""
    path = ck / "step-3" / "executor.json"
    text = path.read_text()
    i = text.index('"losses"')
    i = next(j for j in range(i, len(text)) if text[j] in "123456789")
    path.write_text(text[:i] + ("2" if text[i] == "1" else "1") + text[i + 1:])


def _distcp(ck):
    return next(p for p in (ck / "step-3").iterdir() if p.suffix == ".distcp")


CASES = [
    ("evil .metadata", lambda ck, m: _evil_metadata(ck / "step-3" / ".metadata", m, False),
     "step-3/.metadata: ", "manifest.json says"),
    ("evil .metadata, same size",
     lambda ck, m: _evil_metadata(ck / "step-3" / ".metadata", m, True),
     "step-3/.metadata: content does not match its HMAC in manifest.json", ""),
    ("manifest re-hashed", _resign_manifest, "manifest.json: signature does not match", ""),
    ("truncated shard", lambda ck, m: os.truncate(_distcp(ck), 100), ".distcp: 100 bytes, "
     "manifest.json says", ""),
    ("flipped byte", lambda ck, m: _flip(_distcp(ck)), ".distcp: content does not match", ""),
    ("missing shard", lambda ck, m: os.unlink(_distcp(ck)), ".distcp: missing (listed in "
     "manifest.json)", ""),
    ("edited history", lambda ck, m: _edit_history(ck), "step-3/executor.json: content does "
     "not match its HMAC in manifest.json", ""),
    ("extra file", lambda ck, m: (ck / "step-3" / "extra.pt").write_bytes(b"x"),
     "extra.pt: not listed in manifest.json", ""),
    ("no manifest", lambda ck, m: os.unlink(ck / "step-3" / "manifest.json"),
     "step-3: no manifest.json: not a complete checkpoint", ""),
    ("latest step 99", _latest(99), "latest.json: field 'step': 99, but ", "step-99 does not "
     "exist (complete checkpoints in"),
    ("latest step -4", _latest(-4), "latest.json: field 'step': expected an integer >= 1 "
     "(steps completed), got -4", ""),
    ("latest step 'x'", _latest("x"), "field 'step': expected an integer >= 1", ""),
    ("latest malformed", lambda ck, m: (ck / "latest.json").write_text("{"),
     "latest.json: malformed JSON", ""),
    ("latest missing", lambda ck, m: os.unlink(ck / "latest.json"),
     "latest.json: no such file (no checkpoint was completed", ""),
    ("another key", _other_key, "signature does not match checkpoint key", ""),
]


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case,damage,expected,also", CASES, ids=[c[0] for c in CASES])
def test_resume_refuses_bad_checkpoints(case, damage, expected, also, good, tmp_path):
    plan_path, ck_good, key = good
    ck = tmp_path / "ck"
    shutil.copytree(ck_good, ck)
    marker = tmp_path / "PWNED"
    damage(ck, marker)
    use_key = tmp_path / "other-key" if case == "another key" else key
    proc = _run(["--plan", str(plan_path), "--steps", "5", "--warmup", "1", "--quiet",
                 "--checkpoint-dir", str(ck), "--resume"], use_key)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and expected in lines[0] and also in lines[0], lines
    assert not marker.exists(), "a checkpoint file was unpickled before it was verified"


# (case, key file state, expected) for the key itself; exit 2 each.
KEY_CASES = [
    ("key missing", None, "no such file; a checkpoint is signed with the key of whoever"),
    ("key readable by others", 0o644, "others may read or write it (mode 644); run chmod 600"),
    ("key not hex", "garbage", "expected 64 hex digits"),
]


@pytest.mark.parametrize("case,state,expected", KEY_CASES, ids=[c[0] for c in KEY_CASES])
def test_resume_refuses_bad_keys(case, state, expected, good, tmp_path):
    plan_path, ck, key = good
    bad = tmp_path / "key"
    if isinstance(state, int):
        shutil.copy(key, bad)
        os.chmod(bad, state)
    elif state is not None:
        bad.write_text(state)
        os.chmod(bad, 0o600)
    proc = _run(["--plan", str(plan_path), "--steps", "5", "--warmup", "1", "--quiet",
                 "--checkpoint-dir", str(ck), "--resume"], bad)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr


def test_key_inside_checkpoint_dir_is_refused(good, tmp_path):
    plan_path, _, _ = good
    proc = _run(["--plan", str(plan_path), "--steps", "3", "--warmup", "1", "--quiet",
                 "--checkpoint-dir", str(tmp_path / "ck")], tmp_path / "ck" / "key")
    assert proc.returncode == 2 and "lies inside --checkpoint-dir" in proc.stderr, proc.stderr
    assert not (tmp_path / "ck").exists()


def test_crash_mid_checkpoint_is_never_resumed(tmp_path):
    """Rank 0 dies after the shards of step 4 are written, before they are signed: step-4 does
    not exist, latest.json still names step 2, and resuming from it is exact."""
    plan = make_plan(dp=2, zero=3, **MB)
    ck, env = str(tmp_path / "ck"), {"PLANNER_CHECKPOINT_KEY": str(tmp_path / "key")}
    crash = dict(env, EXECUTOR_FAULT="crash-in-checkpoint:0:4")
    first, _, _ = run_plan(plan, tmp_path / "a", steps=5, env=crash, timeout=90,
                           extra=["--checkpoint-dir", ck, "--checkpoint-every", "2"])
    assert first.returncode != 0
    assert sorted(os.listdir(ck)) == [".step-4.partial", "latest.json", "step-2"]
    assert json.loads((tmp_path / "ck" / "latest.json").read_text())["step"] == 2
    proc, metrics, params_dir = run_plan(plan, tmp_path / "b", steps=5, env=env,
                                         extra=["--checkpoint-dir", ck, "--resume"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert metrics.first_step == 2 and len(metrics.losses) == 3
    assert sorted(os.listdir(ck)) == ["latest.json", "step-2", "step-5"]   # partial removed
    ref_losses, ref_state = train_reference(plan, 5)
    from executor_helpers import assert_matches
    assert_matches(metrics.losses, load_params(params_dir), ref_losses[2:], ref_state,
                   1e-10, 1e-12)
