"""``python -m executor.launch [torchrun options] --plan plan.json [executor options]``.

torchrun, with the executor as its program, ending in one line. torchrun itself cannot be told
to be quiet: when a worker fails, its ``main`` raises ``ChildFailedError`` and Python prints
that traceback and a failure table (``--redirects``/``--tee``/``--local-ranks-filter`` only
route the workers' own output; ``@record`` only fills the table's "traceback" field from an
error file), and Ctrl-C ends it in a ``SignalException`` traceback. This launcher runs the same
code (``torch.distributed.run.parse_args`` and ``run``: every torchrun option works) and
catches those:

- the ranks are told (``EXECUTOR_LAUNCHER``) to print nothing on failure and to leave their
  one line in torchrun's error file (``executor.failures``);
- torch.distributed's log lines in this process (the OMP_NUM_THREADS banner, "Sending process
  ... closing signal SIGTERM", "failed (exitcode: 1)") are dropped unless ``LOGLEVEL`` is set;
- from the failures torchrun collected, it prints the root cause (``root_cause``) as one
  ``error: ...`` line and exits with that rank's status (128 + N for signal N);
- Ctrl-C prints ``interrupted`` and exits 130.

Elastic jobs (``--nnodes MIN:MAX``): torch 2.13's agents share one TCP store per job, whose
address each agent caches from the first rendezvous it joins; a node that joins in a later round
then waits forever for an address its peers never publish again (``DynamicRendezvousHandler.
next_rendezvous``). The launcher sets ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (unless set), so
that every round publishes its store; plain torchrun needs it set by hand.

Options before ``--plan`` are torchrun's (``--standalone``, ``--nproc-per-node``, ``--nnodes``,
``--rdzv-*``...); ``--plan`` and everything after are the executor's.
"""
from __future__ import annotations

import logging
import os
import signal
import sys

from executor import failures

USAGE = ("usage: python -m executor.launch [torchrun options] --plan PLAN.json "
         "[executor options]\n(torchrun options: python -m torch.distributed.run --help; "
         "executor options: python -m executor --help)")
SHARE_STORE_ENV = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"
# Lower is chosen first as the root cause (see ``root_cause``).
_PRIORITY = {"user": 0, "bug": 0, "timeout": 0, "died": 1, "terminated": 2, "peer": 3,
             "interrupt": 4}


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    for i, arg in enumerate(argv):
        if arg == "--plan" or arg.startswith("--plan="):
            return argv[:i], argv[i:]
    return argv, []


def _quiet_logging() -> None:
    if "LOGLEVEL" in os.environ:
        return
    # torch._logging gives "torch.distributed" its own stderr handler (propagate False)
    log = logging.getLogger("torch.distributed")
    log.handlers = [logging.NullHandler()]
    log.propagate = False


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def describe(rank: int, failure) -> tuple[str, str, int]:
    """(kind, one line, exit status) of one failed rank as torchrun collected it."""
    data = getattr(failure, "error_file_data", {}) or {}
    ours = data.get("planner") if isinstance(data, dict) else None
    if isinstance(ours, dict):
        message = data.get("message")
        text = message.get("message", "") if isinstance(message, dict) else str(message)
        return ours.get("kind", "bug"), text, int(ours.get("exit_status", 1))
    code = failure.exitcode
    if code < 0:
        kind = "terminated" if -code == signal.SIGTERM else "died"
        return kind, f"error: [rank {rank}] ended by {_signal_name(code)}", 128 - code
    return "died", f"error: [rank {rank}] exited with status {code} without an error line", code


def root_cause(failures_by_rank: dict) -> tuple[str, int]:
    """One line and an exit status for the whole job.

    The first of: a rank's own error (a user mistake, a bug, a timeout: the earliest), a rank
    that died without a word (killed, aborted), one ended by SIGTERM (by someone, or by torchrun
    after an earlier failure, which would then rank first), a rank that lost its peers (the
    consequence of one of the above), an interrupt.
    """
    rows = []
    for rank, f in failures_by_rank.items():
        kind, text, status = describe(rank, f)
        data = getattr(f, "error_file_data", {}) or {}
        when = (data.get("planner") or {}).get("time_s", f.timestamp) \
            if isinstance(data, dict) else f.timestamp
        # A user mistake is the same on every rank: say it as rank 0 (no "[rank r]") would.
        order = rank if kind == "user" else when
        rows.append((_PRIORITY.get(kind, 0), order, rank, kind, text, status))
    rows.sort(key=lambda r: r[:3])
    _, _, rank, kind, text, status = rows[0]
    if kind == "interrupt":
        return "interrupted", 130
    if failures.TRACEBACK_ENV not in os.environ and kind == "bug":
        error_file = getattr(failures_by_rank[rank], "error_file", "")
        if error_file and os.path.isfile(error_file):
            text += f" (traceback: {error_file})"
    return text, max(1, status)


def main(argv=None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:            # Ctrl-C before torchrun's agent took over (imports)
        print("interrupted", file=sys.stderr, flush=True)
        return 130


def _main(argv) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    launcher_args, executor_args = split_argv(argv)
    if not executor_args:
        print(f"error: give --plan PLAN.json after the torchrun options\n{USAGE}",
              file=sys.stderr)
        return 2
    os.environ[failures.LAUNCHER_ENV] = "1"          # inherited by every rank
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.run import parse_args, run
    _quiet_logging()              # after torch's import, which sets up its log handlers
    args = parse_args([*launcher_args, "-m", "executor", *executor_args])
    if ":" in str(args.nnodes):
        os.environ.setdefault(SHARE_STORE_ENV, "1")
    try:
        run(args)
    except ChildFailedError as err:
        text, status = root_cause(err.failures)
        print(text, file=sys.stderr, flush=True)
        return status
    except RendezvousError as err:       # no job started: the ranks never met
        cause = err.__cause__ or err
        print(f"error: rendezvous failed ({args.rdzv_endpoint or 'default endpoint'}): "
              f"{str(cause).splitlines()[0] if str(cause) else type(cause).__name__}",
              file=sys.stderr, flush=True)
        return 1
    except (KeyboardInterrupt, SignalException) as err:
        sig = getattr(err, "sigval", signal.SIGINT)
        print("interrupted" if sig == signal.SIGINT else f"stopped by {sig.name}",
              file=sys.stderr, flush=True)
        return 128 + int(sig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
