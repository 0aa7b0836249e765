"""`planner profile --model M`: measure per-block costs here and write a ModelProfile JSON.

Module-level imports stay cheap (no torch): torch is imported inside ``run``.
"""
from __future__ import annotations

import os
import re
import sys

from planner.errors import PlannerError
from planner.outputs import check_writable
from planner.specs import DTYPES, OPTIMIZERS

PROFILES_DIR = "profiles"


def add_arguments(parser) -> None:
    from planner.models import MODEL_HELP  # torch-free
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--seq-len", type=int, help="sequence length (default: the model's)")
    parser.add_argument("--microbatch-size", type=int, default=1)
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                        help="optimizer of the measured whole step")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per block (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default 1: steadier medians on a shared CPU)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--timer", choices=("wall", "cpu"), default="wall",
                        help="cpu: process CPU time (one thread, CPU only), steadier on a "
                             "machine shared with other work; recorded in the profile's source")
    parser.add_argument("--out", default=None,
                        help=f"output path (default {PROFILES_DIR}/<model>-<device>-b<mb>-<dtype>"
                             ".json)")


def default_path(model_name: str, device: str, microbatch_size: int, dtype: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name).strip("._") or "model"
    return os.path.join(PROFILES_DIR, f"{safe}-{device}-b{microbatch_size}-{dtype}.json")


def run(args) -> int:
    from planner.models import resolve_model
    from planner.profile.compute import profile_model

    _check_numbers(args)
    spec = resolve_model(args.model, args.seq_len)
    out = args.out or default_path(spec.name, args.device, args.microbatch_size, args.dtype)
    check_writable("--out", out)          # before minutes of measuring, not after
    profile = profile_model(spec, args.microbatch_size, dtype=args.dtype,
                            optimizer=args.optimizer, repeats=args.repeats, warmup=args.warmup,
                            num_threads=args.threads, device=args.device, timer=args.timer,
                            progress=lambda line: print(line, file=sys.stderr, flush=True),
                            trusted_callable=args.model)
    profile.save(out)
    print(format_table(profile))
    for note in noise_notes(profile):
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {out}")
    return 0


def _check_numbers(args) -> None:
    for flag, low in (("microbatch_size", 1), ("repeats", 1), ("warmup", 0), ("threads", 1)):
        value = getattr(args, flag)
        if value is not None and value < low:
            raise PlannerError(f"--{flag.replace('_', '-')} must be >= {low}, got {value}")


def noise_notes(profile) -> list[str]:
    """What makes these measurements less sharp than they look: a loaded machine, and blocks
    or a whole step whose repeats spread widely (``planner.noise``)."""
    from planner import noise
    notes = [noise.load_note("the measured times")]
    notes.append(noise.spread_note("the whole step's timings", profile.step_time_spread_s,
                                   profile.step_time_s))
    wide = [b.name for b in profile.blocks
            if noise.relative_spread(b.forward_time_spread_s + b.backward_time_spread_s,
                                     b.forward_time_s + b.backward_time_s) > noise.NOISY_SPREAD]
    if wide:
        notes.append(f"{len(wide)} of {len(profile.blocks)} blocks' timings spread by more than "
                     f"{noise.NOISY_SPREAD:.0%} of their median ({', '.join(wide[:4])}"
                     + (", ..." if len(wide) > 4 else "") + "): see the spread column; "
                     "--timer cpu or an idle machine gives steadier figures")
    return [n for n in notes if n]


def format_table(profile) -> str:
    """Per-block table, totals, and the per-block sum against the measured whole step."""
    mib = 1 / 2**20
    head = (f"{'#':>3} {'block':<18} {'fwd ms':>9} {'bwd ms':>9} {'spread ms':>13} "
            f"{'GFLOPs':>9} {'params':>11} {'saved MiB':>10} {'out MiB':>8}")
    lines = [f"{profile.model.name} on {profile.device_name}, {profile.dtype}, micro-batch "
             f"{profile.microbatch_size} x seq {profile.seq_len}, {profile.num_threads} thread(s), "
             f"median of {profile.repeats} after {profile.warmup} warm-up", head]
    for b in profile.blocks:
        spread = f"{b.forward_time_spread_s * 1e3:.3f}/{b.backward_time_spread_s * 1e3:.3f}"
        lines.append(f"{b.index:>3} {b.name[:18]:<18} {b.forward_time_s * 1e3:>9.3f} "
                     f"{b.backward_time_s * 1e3:>9.3f} {spread:>13} {b.forward_flops / 1e9:>9.3f} "
                     f"{b.param_count:>11,} {b.saved_activation_bytes * mib:>10.2f} "
                     f"{b.output_bytes * mib:>8.2f}")
    fwd = sum(b.forward_time_s for b in profile.blocks)
    bwd = sum(b.backward_time_s for b in profile.blocks)
    lines.append(f"{'':>3} {'total':<18} {fwd * 1e3:>9.3f} {bwd * 1e3:>9.3f} {'':>13} "
                 f"{sum(b.forward_flops for b in profile.blocks) / 1e9:>9.3f} "
                 f"{profile.param_count:>11,} "
                 f"{sum(b.saved_activation_bytes for b in profile.blocks) * mib:>10.2f}")
    total = fwd + bwd + profile.optimizer_step_time_s
    diff = 100 * (total - profile.step_time_s) / profile.step_time_s
    lines.append(f"blocks fwd+bwd {(fwd + bwd) * 1e3:.3f} ms + optimizer "
                 f"{profile.optimizer_step_time_s * 1e3:.3f} ms = {total * 1e3:.3f} ms vs measured "
                 f"whole step {profile.step_time_s * 1e3:.3f} ms "
                 f"(IQR {profile.step_time_spread_s * 1e3:.3f}): {diff:+.1f}%")
    return "\n".join(lines)
