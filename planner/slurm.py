"""``planner validate --slurm FILE``: a SLURM batch script that runs the validation's trials.

The script starts one ``planner validate --trials WORKDIR/trials.json`` per node (``srun``, one
task per node), each with ``--node-rank`` from its task's ``$SLURM_NODEID``, the rendezvous on
the first node of the allocation (``scontrol show hostnames``) and ``$SLURM_JOB_ID`` as the
rendezvous id. Every trial is then one torchrun job across the nodes (``planner.trials``), and
node 0 prints the results into the job's output and writes ``--out``: the same code as
``planner validate --nnodes`` on the command line, so the trial order, the wall limits and the
statistics live in one place. ``WORKDIR`` must be on a filesystem every node sees.
"""
from __future__ import annotations

import shlex
import sys

# torchrun's own default rendezvous port.
PORT = 29500
# Wall time: each trial's limit plus start-up, and a margin for planning-free start and summary.
PER_TRIAL_MARGIN_S = 60
JOB_MARGIN_S = 600


def wall_time(trials: int, timeout_s: float) -> str:
    """SLURM's ``days-hours:minutes:seconds`` for ``trials`` trials of at most ``timeout_s``."""
    total = int(trials * (timeout_s + PER_TRIAL_MARGIN_S) + JOB_MARGIN_S)
    days, rest = divmod(total, 86400)
    return f"{days}-{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"


def script(trials_path: str, workdir: str, nnodes: int, nproc_per_node: int, gpus: bool,
           wall: str, extra: list[str], cwd: str, port: int = PORT) -> str:
    """The batch script; ``extra`` are further ``planner validate`` flags (``--out``...)."""
    q = shlex.quote
    node_cmd = " ".join(q(a) for a in [sys.executable, "-m", "planner.cli", "validate",
                                       "--trials", trials_path, *extra])
    lines = [
        "#!/bin/bash",
        "# Written by `planner validate --slurm`: runs the trials of",
        f"# {trials_path} on {nnodes} node(s) of {nproc_per_node} rank(s).",
        "# One `planner validate --trials` per node launches each trial with torchrun over the",
        "# c10d rendezvous on the first node; node 0 prints the results here.",
        "#SBATCH --job-name=planner-validate",
        f"#SBATCH --nodes={nnodes}",
        "#SBATCH --ntasks-per-node=1",
        *([f"#SBATCH --gpus-per-node={nproc_per_node}"] if gpus else []),
        f"#SBATCH --time={wall}",
        f"#SBATCH --output={workdir}/slurm-%j.out",
        "set -euo pipefail",
        f"cd {q(cwd)}",
        'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "# $SLURM_NODEID is each task's own: expanded by the task's shell, not this one.",
        f"srun --nodes={nnodes} --ntasks-per-node=1 \\",
        "  bash -c 'exec \"$@\" --node-rank \"$SLURM_NODEID\"' validate-node \\",
        f"  {node_cmd} \\",
        f'  --nnodes "$SLURM_NNODES" --rdzv-endpoint "$head:{port}" --rdzv-id "$SLURM_JOB_ID"',
    ]
    return "\n".join(lines) + "\n"
