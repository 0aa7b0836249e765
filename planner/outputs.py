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


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where
    the system cannot."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def replace_dir(new: str, final: str) -> None:
    """Put the complete directory ``new`` at ``final`` (same file system), replacing what was
    there: atomically where the system swaps paths, else by renaming the old one aside first,
    so that ``final`` is at every moment either the whole old directory or the whole new one
    (or, in the fallback's instant between two renames, absent, with the old one beside it).
    Raises OSError."""
    import shutil
    if not os.path.exists(final):
        os.rename(new, final)
        return
    if _exchange(new, final):
        shutil.rmtree(new, ignore_errors=True)   # ``new`` now holds the old directory
        return
    aside = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(final)), prefix=".old-")
    os.rmdir(aside)
    os.rename(final, aside)
    try:
        os.rename(new, final)
    except OSError:
        os.rename(aside, final)             # put the old one back
        raise
    shutil.rmtree(aside, ignore_errors=True)
