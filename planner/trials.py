"""The trials of ``planner validate``: each layout run by the executor, on this host or across
machines, and its measurement against its prediction.

On one host a trial is ``torchrun --standalone``. Across machines (``--nnodes N``) every machine
runs the same ``planner validate`` command with its own ``--node-rank``: node 0 plans, writes the
trial plans and ``trials.json`` into the work directory, runs each trial and reports; the others
wait for ``trials.json`` of this run (``--rdzv-id``) and run the same trials. Each trial is one
torchrun job over the c10d rendezvous at ``--rdzv-endpoint`` (id ``{rdzv-id}-{k}``; node 0 hosts
its store); a node starts trial k only once node 0 has finished trial k-1 (a marker file), so
that no node meets a store of the trial before.

Why this design: the executor's rank 0 writes the metrics wherever it lands, and multi-node
training already needs a directory every node sees (checkpoints), so the work directory is
shared; one node planning guarantees that every node runs the same plans in the same order even
where the nodes' profile directories differ; and the same command on every machine is how
torchrun, ``srun`` and ``pdsh`` launch work. ``planner.slurm`` writes the batch script that runs
exactly this on a SLURM allocation.
"""
from __future__ import annotations

import datetime
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from planner.children import child_env
from planner import serde
from planner.errors import PlannerError
from planner.specs import Metrics, Plan, Trial, TrialSet, Validation, ValidationRow
from planner.validate import pct_error, summarise

TRIALS_FILE = "trials.json"
POLL_S = 0.5
# How long a node waits, beyond a trial's wall limit, for node 0 to end that trial (kill a
# timed-out job, write the marker) before it gives up.
MARKER_GRACE_S = 120.0


@dataclass(frozen=True)
class RunSettings:
    """How each layout is measured: executor steps, warm-up, a wall limit and where files go."""
    workdir: str
    steps: int = 6
    warmup: int = 2
    timeout_s: float = 600.0
    # The command line's --model when it named custom code: the executor imports a plan's
    # callable only when its own --model repeats it.
    model: str = ""
    # Across machines (``planner.trials``): this node of ``nnodes`` and torchrun's c10d
    # rendezvous; trial k meets under the id ``{rdzv_id}-{k}``.
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str = ""
    rdzv_id: str = ""


def launch_args(nproc: int, s: RunSettings, trial: int) -> list[str]:
    """torchrun's options for a job of ``nproc`` ranks: this host alone, or this node's share
    over the rendezvous, whose store node 0 hosts (``is_host``, so that no node but the one
    that reports can take it down) and which gives up when the trial's wall limit would."""
    if s.nnodes == 1:
        return ["--standalone", f"--nproc-per-node={nproc}"]
    return ["--nnodes", str(s.nnodes), f"--nproc-per-node={nproc // s.nnodes}",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", s.rdzv_endpoint,
            "--rdzv-id", f"{s.rdzv_id}-{trial}",
            "--rdzv-conf",
            f"is_host={int(s.node_rank == 0)},join_timeout={max(1, int(s.timeout_s))}"]


def executor_command(nproc: int, plan_path: str, metrics_path: str, s: RunSettings,
                     trial: int = 0) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launch_args(nproc, s, trial),
            "-m", "executor", "--plan", plan_path,
            "--steps", str(s.steps), "--warmup", str(s.warmup), "--metrics", metrics_path,
            "--quiet"] + (["--model", s.model] if s.model else [])


def log_path(plan_path: str, s: RunSettings) -> str:
    """This node's log of a trial (each node its own in a shared work directory)."""
    stem = os.path.splitext(plan_path)[0]
    return stem + (".log" if s.node_rank == 0 else f".node{s.node_rank}.log")


def run_executor(cmd: list[str], log_path: str, timeout_s: float) -> str:
    """Run one executor job; "ok" or why it gave no metrics (its last error line).

    The job runs in its own session so that a timeout ends torchrun and all of its ranks
    (our own process group, by its id), not just the launcher.
    """
    env = child_env()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return f"timed out after {timeout_s:.0f} s (log {log_path})"
    if rc == 0:
        return "ok"
    return f"executor exit {rc}: {first_error(log_path)} (log {log_path})"


_NOISE = ("File ", "Traceback", "raise ", "torch.distributed.elastic", "W1", "E1", "I1")


def first_error(log_path: str) -> str:
    """The line of a failed job's log that says what went wrong: the executor's own
    ``error: ...`` line, else the first exception or abort message that is not torchrun's
    launcher noise (its ChildFailedError banner only repeats that a rank died)."""
    with open(log_path, encoding="utf-8", errors="replace") as fh:
        lines = [ln.strip() for ln in fh if ln.strip()]
    for ln in lines:
        if ln.startswith("error:"):
            return ln
    for ln in lines:
        if ln.startswith(_NOISE) or "ChildFailedError" in ln:
            continue
        if any(w in ln for w in ("Error", "Exception", "terminate called", "Killed",
                                 "Segmentation fault", "Aborted")):
            return ln
    return lines[-1] if lines else "no output"


def measure(plan, plan_path: str, role: str, predicted_rank: int, s: RunSettings,
            trial: int = 0) -> ValidationRow:
    """Run ``plan`` with the executor and compare its metrics with the plan's prediction."""
    metrics_path = os.path.splitext(plan_path)[0] + "-metrics.json"
    if os.path.exists(metrics_path):
        os.unlink(metrics_path)  # a stale file must never pass for this run's measurement
    p = plan.prediction
    base = dict(layout=plan.layout, role=role, predicted_rank=predicted_rank,
                predicted_step_time_s=p.step_time_s, predicted_peak_memory_bytes=p.peak_memory_bytes,
                predicted_breakdown_s=dict(p.breakdown_s), plan_fingerprint=plan.fingerprint())
    status = run_executor(executor_command(plan.world_size, plan_path, metrics_path, s, trial),
                          log_path(plan_path, s), s.timeout_s)
    if status != "ok" and s.nnodes > 1:
        status += "; the other nodes' logs are beside it (.node*.log)"
    if status != "ok":
        # A job that failed after writing metrics (e.g. at shutdown) still failed: its
        # numbers are not counted, but the user should know they exist.
        if os.path.exists(metrics_path):
            status += f"; it had written {metrics_path}"
        return ValidationRow(**base, status=status)
    m = Metrics.load(metrics_path)
    if m.plan_fingerprint != plan.fingerprint():
        return ValidationRow(**base, status=f"{metrics_path}: metrics of another plan")
    mem = max(m.peak_memory_bytes) if m.peak_memory_bytes else 0
    q = statistics.quantiles(m.step_times_s, n=4) if len(m.step_times_s) >= 2 else [0, 0, 0]
    return ValidationRow(
        **base, measured_step_time_s=m.step_time_s, measured_step_time_iqr_s=q[2] - q[0],
        measured_peak_memory_bytes=mem, memory_measure=m.memory_measure,
        step_time_error_pct=pct_error(p.step_time_s, m.step_time_s),
        memory_error_pct=pct_error(p.peak_memory_bytes, mem) if mem > 0 else 0.0)


@dataclass(frozen=True)
class Entry:
    """One trial: its plan, the plan's file in the work directory, role and predicted rank."""
    plan: object
    path: str
    role: str
    predicted_rank: int


def save_plans(plans: list, roles: list[tuple[int, str]], workdir: str) -> list[Entry]:
    """Write ``plans[i]`` for each ``(i, role)`` as ``layout-{i+1:03d}.json`` in ``workdir``."""
    os.makedirs(workdir, exist_ok=True)
    entries = []
    for i, role in roles:
        path = os.path.join(workdir, f"layout-{i + 1:03d}.json")
        plans[i].save(path)
        entries.append(Entry(plans[i], path, role, i + 1))
    return entries


def validate(plans: list, roles: list[tuple[int, str]], s: RunSettings, describe: dict,
             progress=None) -> Validation:
    """Measure ``plans[i]`` for each ``(i, role)`` in ``roles`` and summarise.

    ``plans`` are the feasible layouts' plans, best predicted first (index 0: the pick);
    ``describe`` holds the Validation header (model, cluster, world_size, global_batch_size).
    """
    return measure_all(save_plans(plans, roles, s.workdir), s, describe, progress)


def measure_all(entries: list[Entry], s: RunSettings, describe: dict, progress=None,
                after_trial=None) -> Validation:
    """Run each trial in order (``after_trial(k, entry, row)`` after each) and summarise."""
    rows = []
    for k, e in enumerate(entries):
        if progress:
            progress(f"[{k + 1}/{len(entries)}] #{e.predicted_rank} {e.role}: "
                     f"{e.plan.layout.describe()}")
        rows.append(measure(e.plan, e.path, e.role, e.predicted_rank, s, k))
        if after_trial:
            after_trial(k, e, rows[-1])
    return Validation(**describe, steps=s.steps, warmup_steps=s.warmup, rows=tuple(rows),
                      created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(
                          timespec="seconds"), **summarise(rows))


# --------------------------------------------------------------------------------------------
# Across machines
# --------------------------------------------------------------------------------------------
def check_nodes(s: RunSettings, world_size: int | None = None, rendezvous: bool = True) -> None:
    """One-line errors for --nnodes/--node-rank/--rdzv-* that cannot work (``rendezvous``:
    whether the command line must give the rendezvous)."""
    if s.nnodes < 1:
        raise PlannerError(f"--nnodes must be >= 1, got {s.nnodes}")
    if not 0 <= s.node_rank < s.nnodes:
        raise PlannerError(f"--node-rank {s.node_rank} must be in 0..{s.nnodes - 1} "
                           f"(--nnodes {s.nnodes})")
    if s.nnodes > 1 and rendezvous:
        host, _, port = s.rdzv_endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise PlannerError(f"--nnodes {s.nnodes} needs --rdzv-endpoint HOST:PORT (torchrun's "
                               f"c10d rendezvous, on node 0's host), got {s.rdzv_endpoint!r}")
        if not s.rdzv_id:
            raise PlannerError(f"--nnodes {s.nnodes} needs --rdzv-id ID, a new one for each "
                               "validation (e.g. $SLURM_JOB_ID)")
    if world_size is not None and world_size % s.nnodes:
        raise PlannerError(f"{world_size} devices do not split evenly over --nnodes {s.nnodes} "
                           f"({world_size} % {s.nnodes} = {world_size % s.nnodes})")


def write_trials(entries: list[Entry], s: RunSettings, describe: dict, run_id: str) -> str:
    """Node 0 (or --slurm): ``trials.json`` beside the plans, for every node."""
    path = os.path.join(s.workdir, TRIALS_FILE)
    if run_id and os.path.exists(path):
        try:
            old = TrialSet.load(path).run_id
        except PlannerError:
            old = ""
        if old == run_id:
            raise PlannerError(f"{path}: written by an earlier validation with --rdzv-id "
                               f"{run_id}; give each validation a new --rdzv-id")
    trials = tuple(Trial(os.path.basename(e.path), e.plan.fingerprint(), e.role,
                         e.predicted_rank) for e in entries)
    TrialSet(run_id=run_id, **describe, steps=s.steps, warmup_steps=s.warmup, trials=trials,
             created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(
                 timespec="seconds")).save(path)
    return path


def load_trials(path: str) -> tuple[TrialSet, list[Entry]]:
    """A trial set and its plans, each checked against the fingerprint the set lists."""
    ts = TrialSet.load(path)
    directory = os.path.dirname(os.path.abspath(path))
    entries = []
    for i, t in enumerate(ts.trials):
        plan_path = os.path.join(directory, t.plan_path)
        plan = Plan.load(plan_path)
        if plan.fingerprint() != t.plan_fingerprint:
            raise PlannerError(f"{plan_path}: plan {plan.fingerprint()}, but {path} field "
                               f"'trials[{i}].plan_fingerprint' lists {t.plan_fingerprint} "
                               "(changed since the trials were written)")
        if plan.world_size != ts.world_size:
            raise PlannerError(f"{plan_path}: world size {plan.world_size}, but {path} is of "
                               f"world size {ts.world_size}")
        entries.append(Entry(plan, plan_path, t.role, t.predicted_rank))
    return ts, entries


def _poll(ready, timeout_s: float, failure: str):
    deadline = time.monotonic() + timeout_s
    while True:
        found = ready()
        if found:
            return found
        if time.monotonic() > deadline:
            raise PlannerError(failure)
        time.sleep(POLL_S)


def wait_for_trials(s: RunSettings, timeout_s: float) -> str:
    """A node other than 0: the ``trials.json`` node 0 writes for this run (``--rdzv-id``)."""
    path = os.path.join(s.workdir, TRIALS_FILE)

    def ready():
        try:
            return path if TrialSet.load(path).run_id == s.rdzv_id else ""
        except PlannerError:
            return ""                     # not written yet (or of an earlier run)
    return _poll(ready, timeout_s,
                 f"{path}: node 0 wrote no trials of run --rdzv-id {s.rdzv_id} within "
                 f"{timeout_s:.0f} s; start node 0 with the same command, and give --workdir a "
                 "directory every node shares")


def _marker(entry: Entry) -> str:
    return os.path.splitext(entry.path)[0] + ".done.json"


def write_marker(s: RunSettings, trial: int, entry: Entry, row) -> None:
    """Node 0, after a trial: the other nodes may start the next one."""
    serde.write_json(_marker(entry), {"run_id": s.rdzv_id, "trial": trial,
                                      "status": row.status})


def wait_marker(s: RunSettings, entry: Entry, timeout_s: float) -> None:
    path = _marker(entry)

    def ready():
        try:
            return serde.read_json(path).get("run_id") == s.rdzv_id
        except (PlannerError, AttributeError):
            return False
    _poll(ready, timeout_s, f"{path}: node 0 did not finish this trial of run --rdzv-id "
                            f"{s.rdzv_id} within {timeout_s:.0f} s")


def follow(entries: list[Entry], s: RunSettings, progress=None) -> int:
    """Node ``s.node_rank`` > 0: this node's share of every trial, each once node 0 has
    finished the one before. Returns how many ended well here (node 0 measures them)."""
    ok = 0
    for k, e in enumerate(entries):
        if k:
            wait_marker(s, entries[k - 1], s.timeout_s + MARKER_GRACE_S)
        if progress:
            progress(f"[{k + 1}/{len(entries)}] #{e.predicted_rank} {e.role}: "
                     f"{e.plan.layout.describe()} (node {s.node_rank} of {s.nnodes})")
        metrics_path = os.path.splitext(e.path)[0] + "-metrics.json"
        status = run_executor(executor_command(e.plan.world_size, e.path, metrics_path, s, k),
                              log_path(e.path, s), s.timeout_s)
        ok += status == "ok"
        if progress and status != "ok":
            progress(f"  {status}")
    return ok
