"""How an executor rank ends on an error: one line, an error file, an exit status.

Every rank catches what ends it (``main.main``) and sorts it into a kind:

- ``user``: a ``PlannerError`` (bad plan, flag or file): the same on every rank, so it is
  printed once per node, by local rank 0; exit 2;
- ``peer``: a collective failed because another rank died or closed its connection
  (gloo's "Connection closed/reset by peer", torch.distributed's DistError): a consequence,
  printed by local rank 0 only; exit 1;
- ``timeout``: a collective waited ``--timeout-s`` for a rank that did not come; exit 1;
- ``bug``: any other exception, printed by the rank it happened on, as ``Type: message``; the
  traceback goes to the error file (and to stderr with ``EXECUTOR_TRACEBACK=1``); exit 1;
- ``interrupt``: Ctrl-C (every rank of the terminal's process group gets it); exit 130, silent.

Under torchrun each rank also writes the error file torchrun gives it
(``TORCHELASTIC_ERROR_FILE``, the format of
``torch.distributed.elastic.multiprocessing.errors``: ``message`` with a timestamp), so
torchrun's failure summary shows our line instead of "To enable traceback see ...", and
``executor.launch`` (which sets ``EXECUTOR_LAUNCHER``; the ranks then print nothing) picks the
root cause from the files and prints one line.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass

from planner.errors import PlannerError

LAUNCHER_ENV = "EXECUTOR_LAUNCHER"
TRACEBACK_ENV = "EXECUTOR_TRACEBACK"
EXIT_STATUS = {"user": 2, "peer": 1, "timeout": 1, "bug": 1, "interrupt": 130}
# Non-reporting ranks of a user error wait this long before exiting: torchrun stops every
# worker as soon as one exits, which could kill the reporting rank before it has printed.
QUIET_RANK_EXIT_DELAY_S = 2.0
# What a collective raises on a rank whose peer went away (gloo's tcp transport, c10d).
_PEER_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
               "Connection refused", "ECONNRESET", "EPIPE")
_TIMEOUT_SIGNS = ("Timed out waiting", "Socket Timeout", "wait timeout")

_progress = {"step": None}


def at_step(step: int | None) -> None:
    """The step this rank is in, for the error line ("at step 3")."""
    _progress["step"] = step


@dataclass(frozen=True)
class Failure:
    kind: str
    message: str          # one line, without "error: " and the rank

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS[self.kind]


def _chain(err: BaseException):
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def _clean(text: str) -> str:
    """First line of a c10d/gloo message, without its source location and its advice."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", line)
    return line.split(". This is typically")[0].strip()


def classify(err: BaseException) -> Failure:
    if isinstance(err, PlannerError):
        return Failure("user", str(err))
    if isinstance(err, KeyboardInterrupt):
        return Failure("interrupt", "interrupted")
    step = _progress["step"]
    at = f" at step {step}" if step is not None else ""
    for e in _chain(err):
        text = str(e)
        if any(s in text for s in _PEER_SIGNS):
            return Failure("peer", f"lost contact with another rank{at} ({_clean(text)}); the "
                           "cause is on that rank")
        if any(s in text for s in _TIMEOUT_SIGNS):
            return Failure("timeout", f"waited --timeout-s for another rank{at} and gave up "
                           f"({_clean(text)})")
    return Failure("bug", f"{type(err).__name__}{at}: {_clean(str(err)) or repr(err)}")


def _rank() -> str:
    return os.environ.get("RANK", "0")


def line(failure: Failure, rank: str | None = None) -> str:
    """``error: [rank r] message`` (no prefix on rank 0 for the user's own mistakes)."""
    rank = _rank() if rank is None else rank
    prefix = "" if failure.kind == "user" and rank == "0" else f"[rank {rank}] "
    return f"error: {prefix}{failure.message}"


def write_error_file(failure: Failure, tb: str) -> str:
    """The error file torchrun asked for (``TORCHELASTIC_ERROR_FILE``), if any."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE", "")
    if not path:
        return ""
    now = time.time()
    # torchrun's own format (ErrorHandler.record_exception) without "py_callstack", so that its
    # failure table shows our line; the traceback is ours to keep.
    data = {"message": {"message": line(failure), "extraInfo": {"timestamp": str(int(now))}},
            "planner": {"kind": failure.kind, "rank": int(_rank()), "time_s": now,
                        "exit_status": failure.exit_status, "traceback": tb}}
    try:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
    except OSError:
        return ""           # the summary then says the rank ended without an error file
    return path


def report(err: BaseException) -> int:
    """Say what ended this rank (see the module docstring); returns the exit status."""
    failure = classify(err)
    tb = "".join(traceback.format_exception(err)) if failure.kind == "bug" else ""
    write_error_file(failure, tb)
    if os.environ.get(TRACEBACK_ENV) and tb:
        print(tb, file=sys.stderr, end="", flush=True)
    if failure.kind == "interrupt":
        return failure.exit_status
    first_on_node = os.environ.get("LOCAL_RANK", "0") == "0"
    if failure.kind == "user" and not first_on_node:
        time.sleep(QUIET_RANK_EXIT_DELAY_S)       # let local rank 0 report it, as rank 0
    elif not os.environ.get(LAUNCHER_ENV) and (failure.kind == "bug" or first_on_node):
        print(line(failure), file=sys.stderr, flush=True)
    return failure.exit_status
