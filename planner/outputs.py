"""Can an output be written? Checked before the work that produces it, not after.

Writability is probed by creating (and removing) a temporary file in the output's directory,
or in its nearest existing ancestor when the directory does not exist yet (it is created at
write time): permission bits, read-only mounts and a full disk all show up that way, where
``os.access`` would miss the last two. Nothing is left behind.
"""
from __future__ import annotations

import os
import tempfile

from planner.errors import PlannerError


def check_writable(flag: str, path: str, kind: str = "file") -> None:
    """One-line ``PlannerError`` unless ``path`` (``kind`` "file" or "dir") can be written."""
    full = os.path.abspath(path)
    if kind == "file":
        if os.path.isdir(full):
            raise PlannerError(f"{flag} {path}: is a directory; give the path of a file")
        directory = os.path.dirname(full)
    else:
        if os.path.exists(full) and not os.path.isdir(full):
            raise PlannerError(f"{flag} {path}: exists and is not a directory")
        directory = full
    existing = directory
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise PlannerError(f"{flag} {path}: {existing} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".planner-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise PlannerError(f"{flag} {path}: cannot write in {existing} "
                           f"({err.strerror or type(err).__name__})") from None


def write_text(flag: str, path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file + rename); one-line errors."""
    check_writable(flag, path, "file")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
