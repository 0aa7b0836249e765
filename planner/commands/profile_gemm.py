"""`planner profile --gemm`: time matmuls here and write their efficiency curve into a device
model (``planner.profile.gemm``).

    planner profile --gemm --device cuda --dtype bf16-mixed [--base profiles/a100-sxm4-80gb.json]
                           [--out profiles/my-a100.json]
    planner profile --gemm --device cpu --dtype float32 --max-gflops 1

The written profile is ``--base`` (on CUDA default: the shipped A100 or H100 profile by the
device's name) with ``matmul_efficiency_max`` and ``matmul_efficiency_scale_flops`` replaced
by the fitted, measured values and the sweep attached; point a cluster's
``device.model_profile`` at it to plan with it. Nothing is written over ``--base`` unless
``--out`` names it.
"""
from __future__ import annotations

import os
import re
import sys

from planner.errors import PlannerError
from planner.specs import DTYPES

# device-name fragment -> the shipped profile of that device
SHIPPED = (("A100", "a100-sxm4-80gb.json"), ("H100", "h100-sxm5-80gb.json"))


def add_arguments(parser) -> None:
    parser.add_argument("--gemm", action="store_true",
                        help="time matmuls over a sweep of shapes; write a device model")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="default bf16-mixed on cuda (16-bit GEMMs), float32 on cpu")
    parser.add_argument("--base", default="",
                        help="device model whose other figures the output keeps (default on "
                             "cuda: the shipped profile of an A100 or H100; on cpu: one made "
                             "here)")
    parser.add_argument("--max-gflops", type=float, default=None,
                        help="largest GEMM to time, in GFLOP (default 4400 on cuda, 2 on cpu)")
    parser.add_argument("--repeats", type=int, default=5, help="timed groups per shape (median)")
    parser.add_argument("--timer", choices=("cpu", "wall"), default="cpu",
                        help="on cpu: process CPU time of the one thread (default; steady on a "
                             "shared machine) or wall time; cuda always uses CUDA events")
    parser.add_argument("--out", default="", help="device model to write (default "
                                                  "profiles/<device>-<dtype>-gemm.json)")


def _base(args, device_name: str):
    from planner import devices
    from planner.profile.gemm import cpu_base
    if args.base:
        return devices.load(args.base)
    if args.device == "cpu":
        return cpu_base(device_name)
    for fragment, path in SHIPPED:
        if fragment in device_name:
            return devices.load(os.path.join(devices.PROFILE_DIR, path))
    raise PlannerError(f"no shipped device model for {device_name!r}: pass --base with one "
                       "whose peaks and bandwidth are this device's")


def run(args) -> int:
    import torch

    from planner.profile import gemm

    if args.repeats < 1:
        raise PlannerError(f"--repeats must be >= 1, got {args.repeats}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise PlannerError("--device cuda: no CUDA device is visible to torch here")
    dtype = args.dtype or ("bf16-mixed" if args.device == "cuda" else "float32")
    max_gflops = args.max_gflops if args.max_gflops is not None else (
        4400.0 if args.device == "cuda" else 2.0)
    if not max_gflops > 0:
        raise PlannerError(f"--max-gflops must be > 0, got {args.max_gflops}")
    device = torch.device(args.device)
    print(f"timing GEMMs on {args.device}, {dtype}, up to {max_gflops:g} GFLOP", file=sys.stderr)
    result = gemm.sweep(dtype, device, max_gflops * 1e9, args.repeats,
                        progress=lambda line: print(line, file=sys.stderr, flush=True),
                        timer=args.timer)
    model = gemm.fitted_model(_base(args, result.device_name), result)
    errors = gemm.fit_error_pct(model, result)
    out = args.out or os.path.join("profiles", re.sub(r"[^A-Za-z0-9._-]+", "_",
                                                      result.device_name).strip("._")
                                   + f"-{dtype}-gemm.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    model.save(out)
    peak = model.peak(dtype)
    print(f"{len(result.points)} shapes on {result.device_name}: ceiling "
          f"{model.matmul_efficiency_max.value:.3f} of {peak / 1e12:.1f} TFLOP/s, scale "
          f"{model.matmul_efficiency_scale_flops.value:.3g} FLOPs; fit error per shape median "
          f"{sorted(abs(e) for e in errors)[len(errors) // 2]:.1f}%, max "
          f"{max(abs(e) for e in errors):.1f}%")
    print(f"wrote {out}")
    return 0
