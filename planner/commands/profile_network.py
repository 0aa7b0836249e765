"""`planner profile --network`: measure collectives on each link level and write a cluster file.

Runs under torchrun, one rank per device:

    torchrun --standalone --nproc-per-node 2 -m planner.commands.profile_network --out c.json
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint HOST:PORT \\
        -m planner.commands.profile_network --out c.json          (two nodes: both levels)

``planner profile --network ...`` outside torchrun launches the first form itself
(``--nproc-per-node``, default 2). Progress goes to stderr, the file path to stdout; the file is
a Cluster (``planner plan --cluster c.json``) whose levels and collective fits are measured.

Ending: every rank waits at a barrier until rank 0 has written the file, then the process group
is destroyed and each rank leaves with ``os._exit`` after flushing: gloo's C++ static
destructors, after DTensor/FSDP work (the FSDP probe of ``interference``), sometimes abort at
interpreter exit ("terminate called without an active exception", SIGABRT, as in
``executor/__main__.py``), which turned finished runs into failures. When launched by
``planner profile --network``, rank 0 writes ``OUT.partial`` and the launcher renames it to
``OUT`` only if torchrun exits 0 (else removes it): a failed run never leaves a file that
looks valid, nor replaces an earlier good one.
"""
from __future__ import annotations

import os
import subprocess
import sys

from planner.children import child_env
from planner.errors import PlannerError
from planner.outputs import check_writable

SIZE_UNITS = {"": 1, "B": 1, "K": 2**10, "KIB": 2**10, "M": 2**20, "MIB": 2**20,
              "G": 2**30, "GIB": 2**30}
DEFAULT_OUT = os.path.join("profiles", "cluster-network.json")


def parse_bytes(text: str, flag: str = "--max-bytes") -> int:
    """'256MiB', '64K', '1048576' -> bytes."""
    s = text.strip().upper()
    num = s.rstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    unit = s[len(num):]
    try:
        value = float(num) * SIZE_UNITS[unit]
    except (ValueError, KeyError):
        raise PlannerError(f"{flag} {text!r} is not a size: use bytes or a unit K/KiB, M/MiB, "
                           "G/GiB (e.g. 256MiB)") from None
    if value < 1:
        raise PlannerError(f"{flag} must be >= 1 byte, got {text!r}")
    return int(value)


def add_arguments(parser) -> None:
    from planner.profile.network import COLLECTIVES  # no torch: pure python module top
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"cluster file to write ({DEFAULT_OUT})")
    parser.add_argument("--cluster", default="",
                        help="preset or file whose device figures the output keeps (default: "
                             "localhost-cpu on gloo, dgx-h100-80gb / dgx-a100-80gb on CUDA)")
    parser.add_argument("--name", default="", help="name of the written cluster")
    parser.add_argument("--min-bytes", default="1KiB", help="smallest message (1KiB)")
    parser.add_argument("--max-bytes", default="256MiB", help="largest message (256MiB)")
    parser.add_argument("--points-per-octave", type=int, default=1,
                        help="message sizes per doubling (1)")
    parser.add_argument("--time-budget-s", type=float, default=15.0,
                        help="stop growing messages when the sweep has used this long (15)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed calls per point and pass, at least (5)")
    parser.add_argument("--passes", type=int, default=2,
                        help="sweeps over the sizes, alternating direction, pooled (2)")
    parser.add_argument("--collectives", default=",".join(COLLECTIVES),
                        help=f"comma-separated subset of {','.join(COLLECTIVES)}")
    parser.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto")
    parser.add_argument("--timeout-s", type=float, default=120.0,
                        help="process-group timeout: a hung rank fails after this long (120)")
    parser.add_argument("--nproc-per-node", type=int, default=2,
                        help="ranks to launch when not already under torchrun (2)")


def _config(args):
    from planner.profile.network import COLLECTIVES, SweepConfig
    colls = tuple(c.strip() for c in args.collectives.split(",") if c.strip())
    bad = [c for c in colls if c not in COLLECTIVES]
    if bad or not colls:
        raise PlannerError(f"--collectives {args.collectives!r}: {bad[0] if bad else 'empty'} "
                           f"is not one of {', '.join(COLLECTIVES)}")
    lo, hi = parse_bytes(args.min_bytes, "--min-bytes"), parse_bytes(args.max_bytes)
    if hi < lo:
        raise PlannerError(f"--max-bytes {args.max_bytes} is below --min-bytes {args.min_bytes}")
    for flag, value, least in (("--repeats", args.repeats, 1), ("--passes", args.passes, 1),
                               ("--points-per-octave", args.points_per_octave, 1)):
        if value < least:
            raise PlannerError(f"{flag} must be >= {least}, got {value}")
    if args.time_budget_s <= 0:
        raise PlannerError(f"--time-budget-s must be > 0, got {args.time_budget_s}")
    return SweepConfig(collectives=colls, min_bytes=lo, max_bytes=hi,
                       points_per_octave=args.points_per_octave, repeats=args.repeats,
                       passes=args.passes, time_budget_s=args.time_budget_s)


def _forwarded(args) -> list[str]:
    out = ["--staged"]
    for flag in ("out", "cluster", "name", "min_bytes", "max_bytes", "points_per_octave",
                 "time_budget_s", "repeats", "passes", "collectives", "backend", "timeout_s"):
        out += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return out


def staged_path(out: str) -> str:
    return out + ".partial"


def publish(out: str, rc: int) -> int:
    """After torchrun: ``OUT.partial`` becomes ``OUT`` if every rank succeeded, else goes."""
    partial = staged_path(out)
    if rc == 0 and os.path.isfile(partial):
        os.replace(partial, out)
        return 0
    if os.path.exists(partial):
        os.unlink(partial)
    if rc == 0:
        raise PlannerError(f"--out {out}: the ranks ended well but wrote no {partial}")
    print(f"error: profile --network failed (torchrun exit {rc}); {out} was not written",
          file=sys.stderr)
    return rc


def _launch(args) -> int:
    """Not under torchrun: start ``--nproc-per-node`` ranks of this module on this machine."""
    if args.nproc_per_node < 2:
        raise PlannerError(f"--nproc-per-node must be >= 2 to measure a link, "
                           f"got {args.nproc_per_node}")
    check_writable("--out", args.out)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={args.nproc_per_node}", "-m", "planner.commands.profile_network",
           *_forwarded(args)]
    print("launching: " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    return publish(args.out, subprocess.call(cmd, env=child_env()))


def run(args) -> int:
    if "LOCAL_RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        _config(args)  # bad flags fail here, once, not in every rank
        return _launch(args)
    return _run_rank(args)


def _base_cluster(arg: str, backend: str, device_name: str):
    from planner.clusters import resolve_cluster
    if arg:
        return resolve_cluster(arg)
    if backend == "gloo":
        return resolve_cluster("localhost-cpu")
    return resolve_cluster("dgx-h100-80gb" if "H100" in device_name else "dgx-a100-80gb")


def _run_rank(args) -> int:
    import datetime

    import torch
    import torch.distributed as dist

    from planner.profile import interference, network

    config = _config(args)
    if int(os.environ.get("RANK", "0")) == 0:
        check_writable("--out", args.out)       # before minutes of measuring, not after
    backend = args.backend
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    local = int(os.environ["LOCAL_RANK"])
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=args.timeout_s))
    try:
        if dist.get_world_size() < 2:
            raise PlannerError("profile --network needs at least 2 ranks (torchrun "
                               "--nproc-per-node 2 or more)")
        points, info = network.sweep(config, int(os.environ.get("GROUP_RANK", "0")))
        # in the same job: the ranks' effect on each other's compute, and comm/compute overlap
        device = torch.device("cuda", local) if backend == "nccl" else torch.device("cpu")
        inter = interference.measure(torch, dist, device)
        if dist.get_rank() == 0:
            _write(args, points, info, inter, backend)
        dist.barrier()        # nobody tears the group down while rank 0 still writes
        return 0
    finally:
        dist.destroy_process_group()


def _write(args, points, info, inter, backend) -> None:
    from planner.profile import network
    fits = network.fits_from_points(points)
    base = _base_cluster(args.cluster, info["backend"], info["device"])
    cluster = network.build_cluster(base, fits, info, args.name, inter)
    print(f"interference: compute x{inter.compute_slowdown:.2f} with all ranks busy, "
          f"comm/compute overlap {inter.comm_overlap:.2f}, FSDP2 "
          f"{inter.fsdp_call_overhead_s * 1e6:.0f} us per collective call "
          f"({inter.source(backend, info['world'])})", file=sys.stderr)
    cluster.save(staged_path(args.out) if getattr(args, "staged", False) else args.out)
    _summary(fits)
    print(args.out)
    print(f"plan with: planner plan --cluster {args.out} --model ... --global-batch ...",
          file=sys.stderr)


def _summary(fits) -> None:
    from planner.profile.network import fit_bands
    print(f"{'level':10s} {'collective':14s} {'p':>2s} {'latency us':>10s} {'GB/s':>7s} "
          f"{'split B':>9s} {'err %':>6s} {'small %':>7s} {'large %':>7s}", file=sys.stderr)
    for f in fits:
        b = fit_bands([float(n) for n in f.message_bytes], list(f.time_s))
        print(f"{f.level:10s} {f.collective:14s} {f.group_size:2d} {f.latency_s * 1e6:10.1f} "
              f"{f.bandwidth_bytes_per_s / 1e9:7.2f} {b.split_bytes:9d} "
              f"{f.fit_median_abs_pct_error:6.1f} {b.small_error_pct:7.1f} "
              f"{b.large_error_pct:7.1f}", file=sys.stderr)


def main(argv=None) -> int:
    """``python -m planner.commands.profile_network`` (what torchrun runs in every rank)."""
    import argparse
    parser = argparse.ArgumentParser(prog="planner profile --network",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--network", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--staged", action="store_true", help=argparse.SUPPRESS)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except PlannerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown and C++ static destructors (see the module docstring).
    os._exit(rc)
