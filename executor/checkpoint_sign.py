"""Checkpoint signatures: an HMAC-SHA256 of every file, keyed by a secret kept outside the
checkpoint, checked before a single byte of the checkpoint is loaded.

Why: torch.distributed.checkpoint's ``.metadata`` is a pickle that ``FileSystemReader``
unpickles, so loading a checkpoint someone else handed you runs their code. A plain hash would
not help (whoever edits the files recomputes it); a MAC needs the key, which only the user who
wrote the checkpoint has. (torch's safetensors storage, ``HuggingFaceStorageWriter/Reader``,
was tried first: it needs the ``safetensors`` package and cannot hold the non-tensor optimizer
entries of a flattened state dict, ``param_groups.*.lr``/``betas``...; the written file then
fails to load with "header too large".)

The key: 32 random bytes as 64 hex digits in a key file, whose path is ``--checkpoint-key`` /
``$PLANNER_CHECKPOINT_KEY`` (not the key itself), by default
``$XDG_CONFIG_HOME/planner/checkpoint.key`` (``~/.config/planner/checkpoint.key``),
created mode 0600 on the first save and refused if others can read or write it or if it lies
inside the checkpoint directory. Ranks on several nodes must see the same key file.

``manifest.json`` (JSON, never pickled) lists every file of ``step-N/`` with its size and MAC,
plus the step and the plan fingerprint, and carries a MAC of itself. It is written last, into
the temporary ``.step-N.partial/`` that is then renamed to ``step-N/``: a directory without a
valid manifest is an interrupted save and is never loaded.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile

from planner import serde
from planner.errors import PlannerError

KEY_ENV = "PLANNER_CHECKPOINT_KEY"
MANIFEST = "manifest.json"
FORMAT = "planner-checkpoint-1"
_CHUNK_BYTES = 1 << 20


def key_path(flag: str = "") -> str:
    if flag:
        return flag
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV]
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "planner", "checkpoint.key")


def _create_key(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".key-")     # mode 0600
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)       # atomic and exclusive: ranks starting together agree
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def load_key(path: str, create: bool) -> bytes:
    """The key in ``path`` (created when ``create`` and missing); one-line errors."""
    where = f"checkpoint key {path}"
    if not os.path.exists(path):
        if not create:
            raise PlannerError(f"{where}: no such file; a checkpoint is signed with the key of "
                               f"whoever wrote it: set {KEY_ENV} or --checkpoint-key to that "
                               "key file")
        try:
            _create_key(path)
        except OSError as err:
            raise PlannerError(f"{where}: cannot create it ({err.strerror}); set {KEY_ENV} or "
                               "--checkpoint-key to a writable place") from None
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise PlannerError(f"{where}: not a regular file")
    if st.st_mode & 0o077:
        raise PlannerError(f"{where}: others may read or write it (mode "
                           f"{stat.S_IMODE(st.st_mode):o}); run chmod 600 {path}")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise PlannerError(f"{where}: owned by uid {st.st_uid}, not by you (uid {os.getuid()})")
    try:
        with open(path, encoding="ascii") as fh:
            key = bytes.fromhex(fh.read().strip())
    except (OSError, ValueError, UnicodeDecodeError):
        key = b""
    if len(key) != 32:
        raise PlannerError(f"{where}: expected 64 hex digits (a key the executor wrote)")
    return key


def check_key_outside(key_file: str, directory: str) -> None:
    key_dir = os.path.realpath(os.path.dirname(os.path.abspath(key_file)))
    ckpt = os.path.realpath(directory)
    if key_dir == ckpt or key_dir.startswith(ckpt + os.sep):
        raise PlannerError(f"checkpoint key {key_file}: lies inside --checkpoint-dir {directory}; "
                           "whoever gets the checkpoint would get the key: keep it elsewhere")


def file_mac(key: bytes, path: str) -> str:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK_BYTES):
            mac.update(chunk)
    return mac.hexdigest()


def _body_mac(key: bytes, body: dict) -> str:
    blob = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, blob, hashlib.sha256).hexdigest()


def _files(directory: str) -> list[str]:
    """Every file under ``directory`` (relative, sorted), the manifest excepted."""
    out = []
    for root, _, names in os.walk(directory):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), directory)
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def write_manifest(key: bytes, directory: str, info: dict) -> None:
    """Sign every file of ``directory`` (written completely before this is called)."""
    entries = []
    for rel in _files(directory):
        full = os.path.join(directory, rel)
        entries.append({"path": rel, "bytes": os.path.getsize(full),
                        "hmac_sha256": file_mac(key, full)})
    body = {"format": FORMAT, **info, "files": entries}
    serde.write_json(os.path.join(directory, MANIFEST),
                     {**body, "manifest_hmac_sha256": _body_mac(key, body)})


def read_manifest(key: bytes, key_file: str, directory: str) -> dict:
    """The manifest of ``directory`` once its own MAC checks out (nothing else is read)."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise PlannerError(f"{directory}: no {MANIFEST}: not a complete checkpoint written by "
                           "this executor (an interrupted save, or an older format); refusing "
                           "to load it")
    data = serde.read_json(path)
    mac = data.pop("manifest_hmac_sha256", None) if isinstance(data, dict) else None
    if not isinstance(mac, str) or not hmac.compare_digest(mac, _body_mac(key, data)):
        raise PlannerError(f"{path}: signature does not match checkpoint key {key_file}: the "
                           "checkpoint was written with another key or edited since; refusing "
                           f"to load it (set {KEY_ENV} to the key that wrote it)")
    return data


def check_listing(directory: str, manifest: dict) -> None:
    """Every listed file present with its size, nothing unlisted: cheap, before any process
    group exists; the contents are checked by ``verify_files``."""
    listed = {e["path"]: e for e in manifest["files"]}
    for rel in _files(directory):
        if rel not in listed:
            raise PlannerError(f"{os.path.join(directory, rel)}: not listed in {MANIFEST}; "
                               "refusing a checkpoint with unsigned files")
    for rel, entry in listed.items():
        full = os.path.join(directory, rel)
        if not os.path.isfile(full):
            raise PlannerError(f"{full}: missing (listed in {MANIFEST}); the checkpoint is "
                               "incomplete")
        size = os.path.getsize(full)
        if size != entry["bytes"]:
            raise PlannerError(f"{full}: {size} bytes, {MANIFEST} says {entry['bytes']} "
                               "(truncated or replaced); refusing to load it")


def verify_files(key: bytes, directory: str, entries: list[dict]) -> int | None:
    """Index of the first of ``entries`` whose content does not match its MAC, else None."""
    for i, entry in enumerate(entries):
        try:
            ok = hmac.compare_digest(file_mac(key, os.path.join(directory, entry["path"])),
                                     entry["hmac_sha256"])
        except OSError:
            ok = False
        if not ok:
            return i
    return None
