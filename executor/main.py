"""``torchrun --standalone --nproc-per-node N -m executor --plan plan.json [options]``.

Runs the plan's layout for ``--steps`` steps on synthetic data (or ``--data tokens.npy``) and
writes the measured losses, step times, peak memory and throughput as Metrics JSON (rank 0).
A plan that does not fit this launch (edited model fingerprint, wrong world size, unsupported
combination), a bad flag or an output that cannot be written is refused before the process
group starts, with one ``error: ...`` line and exit status 2. Whatever else ends a rank is one
line too (``executor.failures``); ``python -m executor.launch`` wraps torchrun so that the
whole job ends in one line.

Elastic runs: given an elastic plan set (``planner plan --elastic MIN:MAX``) under torchrun's
elastic rendezvous (``--nnodes MIN:MAX --max-restarts R``, c10d), every (re)start runs the plan
of the world size it finds and, with ``--checkpoint-dir DIR --checkpoint-every K
--auto-resume``, continues from the newest checkpoint, resharded to that plan's layout, with the
same global batch: the same training as an uninterrupted run.
"""
from __future__ import annotations

import argparse
import os

from planner.errors import PlannerError
from planner.models import CONTRACT


class _Parser(argparse.ArgumentParser):
    """Flag errors are PlannerErrors: one line from one rank, not a usage block per rank."""

    def error(self, message):
        raise PlannerError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m executor", description=__doc__.split("\n\n")[1])
    p.add_argument("--plan", required=True,
                   help="plan JSON written by `planner plan`, or an elastic set of plans "
                   "(`planner plan --elastic MIN:MAX`): the plan of this WORLD_SIZE runs")
    p.add_argument("--model", default="", metavar="MODULE:CALLABLE",
                   help="required when the plan's model is custom code, and must name the "
                   "plan's callable_path: the executor imports code only when its command line "
                   "says so, never because a plan file does. Contract: " + CONTRACT)
    p.add_argument("--steps", type=int, default=10, help="training steps to run (default 10)")
    p.add_argument("--warmup", type=int, default=2,
                   help="first steps left out of step_times_s (losses still kept; default 2)")
    p.add_argument("--metrics", default="", help="write Metrics JSON here (rank 0)")
    p.add_argument("--data", default="", help="a .npy 1-D array of token ids instead of "
                   "synthetic tokens (gpt models)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: cuda:LOCAL_RANK when CUDA is available, else cpu")
    p.add_argument("--timeout-s", type=float, default=60.0,
                   help="process-group timeout: a hung peer fails the job after this long")
    p.add_argument("--trace-dir", default="", metavar="DIR",
                   help="write a torch.profiler Chrome trace per rank (DIR/trace-rank{r}.json) "
                   "of up to 3 steps after warm-up")
    p.add_argument("--checkpoint-dir", default="", metavar="DIR",
                   help="save model and optimizer state with torch.distributed.checkpoint to "
                   "DIR/step-K at the end (and every --checkpoint-every steps), signed with "
                   "HMAC-SHA256 (see --checkpoint-key)")
    p.add_argument("--checkpoint-key", default="", metavar="FILE",
                   help="secret key that signs checkpoints and must verify them before "
                   "--resume loads anything (default $PLANNER_CHECKPOINT_KEY, else "
                   "$XDG_CONFIG_HOME/planner/checkpoint.key or ~/.config/planner/checkpoint.key; "
                   "created mode 0600 on the first save; keep it outside DIR)")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="K",
                   help="also checkpoint every K steps (default: only at the end)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --checkpoint-dir; --steps is "
                   "the total, so the run does steps saved..steps-1")
    p.add_argument("--auto-resume", action="store_true",
                   help="continue from the newest checkpoint in --checkpoint-dir when it holds "
                   "one, else start at step 0: every restart of a torchrun elastic job (--nnodes "
                   "MIN:MAX, --max-restarts) runs the same command")
    p.add_argument("--count-collectives", action="store_true",
                   help="count the collectives of the last step by kind and group, and their "
                   "bytes, into the metrics (that step is not timed)")
    p.add_argument("--save-params", default="", metavar="DIR",
                   help="write each rank's full parameters to DIR/params-rank{r}.npz after "
                   "training (exactness tests)")
    p.add_argument("--quiet", dest="verbose", action="store_false",
                   help="no per-step progress lines")
    return p


def _cpu_threads() -> None:
    """One intra-op thread per rank unless the user chose (OMP_NUM_THREADS).

    torchrun sets OMP_NUM_THREADS=1 only for more than one process per node; a world-1 run
    would otherwise take every core while the profile it was planned from used one
    (`planner profile --threads`, default 1), and the two could not be compared.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        import torch
        torch.set_num_threads(1)


def main(argv=None) -> int:
    """Run; whatever ends a rank early is reported in one line (``executor.failures``)."""
    from executor import failures
    try:
        return _main(argv)
    except SystemExit:
        raise                           # --help
    except BaseException as err:        # noqa: BLE001 - every rank ends in one line
        return failures.report(err)


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    from executor import preflight, runtime
    preflight.check_numbers(args)
    _cpu_threads()
    from executor.train import run
    from planner.specs.elastic import load_for_world
    plan, elastic = load_for_world(args.plan, runtime.env_world_size())
    metrics = run(plan, args.plan, args, elastic)
    if metrics is not None:
        if args.metrics:
            try:
                metrics.save(args.metrics)
            except OSError as err:
                raise PlannerError(f"--metrics {args.metrics}: cannot write "
                                   f"({err.strerror or err})") from None
        _summary(metrics, args.metrics, plan)
    runtime.shutdown()
    return 0


def _summary(m, path: str, plan) -> None:
    from planner import families
    losses = " ".join(f"{x:.4f}" for x in m.losses)
    # Metrics.tokens_per_s counts sequences x seq_len: samples for a model without a sequence.
    unit = "tokens/s" if families.of(plan.model).has_sequence else "samples/s"
    print(f"layout {m.layout.describe()} on {m.world_size} {m.device} rank(s), {m.backend}")
    print(f"losses {losses}")
    print(f"step_time_s {m.step_time_s:.4f} (median of {len(m.step_times_s)}), {unit} "
          f"{m.tokens_per_s:.1f}, peak memory per rank {list(m.peak_memory_bytes)} bytes")
    if path:
        print(f"wrote {path}")
