"""Measure matrix-multiply efficiency on the local device: the curve the roofline uses.

``planner profile --gemm`` times C[m,n] = A[m,k] B[k,n] over a sweep of shapes and fits
``eff(F) = ceiling * (1 - exp(-F / scale))`` (``planner.cost.roofline.matmul_efficiency``) to
the achieved share of the device's peak. This is how public "maximum achievable matmul FLOPS"
figures are taken (e.g. Bekman's mamf-finder.py in the Machine Learning Engineering Open Book:
the best throughput over a sweep of GEMM shapes, timed with CUDA events after a warm-up).

Timing: on CUDA, CUDA events around ``reps`` back-to-back ``torch.matmul(a, b, out=c)`` calls
after a synchronising warm-up (events measure GPU time, not launch time; ``reps`` is chosen so
that one timed group takes at least ``min_time_s``, and the median of ``repeats`` groups is
kept); float32 runs with TF32 allowed, the precision whose peak it is compared with
(``planner.cost.precision.peak_key``). On CPU, one intra-op thread and the process's CPU time
(``time.process_time``) around the same loop by default: on a machine shared with other work
wall time mostly measures waiting for a core (``timer="wall"`` measures it anyway).
Operands are drawn once per shape (normal, scaled by 1/sqrt(k)) so values stay finite.
"""
from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import time
from dataclasses import replace

import torch

from planner.cost.precision import peak_key
from planner.cost.roofline import fit_matmul_efficiency, matmul_efficiency
from planner.devices import DeviceModel, Figure, GemmPoint, GemmSweep
from planner.errors import PlannerError

TORCH_DTYPES = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16,
                "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32,
                "float64": torch.float64}
# Sizes of the sweep: powers of two from 128 (a few tiles) to 16384 (past where published
# A100/H100 curves flatten); products m x n x k up to ``max_flops`` / 2.
GPU_SIZES = (128, 256, 512, 1024, 2048, 4096, 8192, 16384)
CPU_SIZES = (32, 64, 128, 256, 512)


def shapes(sizes, max_flops: float) -> list[tuple[int, int, int]]:
    """(m, n, k) to time: every square shape, m tall against n = k (activations against a
    weight), and the transformer's 1:4 and 4:1 MLP shapes, each at most ``max_flops``."""
    out = set()
    for a in sizes:
        for b in sizes:
            for m, n, k in ((a, b, b), (a, 4 * b, b), (a, b, 4 * b)):
                if 2.0 * m * n * k <= max_flops:
                    out.add((m, n, k))
    return sorted(out, key=lambda s: (2.0 * s[0] * s[1] * s[2], s))


def _time_group(fn, reps: int, device: torch.device, clock=time.perf_counter) -> float:
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / reps          # elapsed_time is in ms
    t0 = clock()
    for _ in range(reps):
        fn()
    return (clock() - t0) / reps


def time_gemm(m: int, n: int, k: int, dtype: torch.dtype, device: torch.device,
              repeats: int = 5, warmup: int = 2, min_time_s: float = 0.02,
              clock=time.perf_counter) -> float:
    """Median seconds of one m x n x k matmul (module docstring)."""
    gen = torch.Generator(device=device).manual_seed(m * 131 + n * 17 + k)
    a = torch.randn(m, k, generator=gen, device=device, dtype=dtype) / math.sqrt(k)
    b = torch.randn(k, n, generator=gen, device=device, dtype=dtype)
    c = torch.empty(m, n, device=device, dtype=dtype)

    def fn():
        torch.matmul(a, b, out=c)
    for _ in range(warmup):
        fn()
    one = _time_group(fn, 1, device, clock)
    reps = max(1, min(1000, math.ceil(min_time_s / max(one, 1e-9))))
    return statistics.median(_time_group(fn, reps, device, clock) for _ in range(repeats))


def sweep(dtype: str, device: torch.device, max_flops: float, repeats: int = 5,
          progress=None, timer: str = "cpu") -> GemmSweep:
    """Time every shape of ``shapes``; returns the sweep (points in FLOP order)."""
    if dtype not in TORCH_DTYPES:
        raise PlannerError(f"--dtype {dtype!r} is not one of: {', '.join(TORCH_DTYPES)}")
    tdtype = TORCH_DTYPES[dtype]
    sizes = GPU_SIZES if device.type == "cuda" else CPU_SIZES
    clock = time.perf_counter
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = dtype == "float32"
        name = torch.cuda.get_device_name(device)
        timer = "cuda-events"
    else:
        torch.set_num_threads(1)
        name = f"cpu ({platform.processor() or platform.machine()}, 1 thread)"
        if timer == "cpu":
            clock = time.process_time
    points = []
    for m, n, k in shapes(sizes, max_flops):
        t = time_gemm(m, n, k, tdtype, device, repeats, clock=clock)
        points.append(GemmPoint(m, n, k, 2.0 * m * n * k, t))
        if progress:
            progress(f"  {m:>6} x {n:>6} x {k:>6}  {t * 1e3:10.4f} ms  "
                     f"{2.0 * m * n * k / t / 1e12:8.3f} TFLOP/s")
    if len(points) < 2:
        raise PlannerError(f"--max-gflops {max_flops / 1e9:g} leaves {len(points)} shape(s) to "
                           "time; the curve needs at least 2")
    date = datetime.date.today().isoformat()
    return GemmSweep(name, dtype, date, timer, tuple(points))


def fitted_model(base: DeviceModel, result: GemmSweep, peak_source: str = "") -> DeviceModel:
    """``base`` with its matmul ceiling and scale fitted on ``result``, both marked measured,
    and the sweep attached. Without a peak for the dtype in ``base`` (a CPU), the fastest
    GEMM of the sweep is taken as the peak (``peak_source`` says so)."""
    key = peak_key(result.dtype)
    rates = [p.flops / p.time_s for p in result.points]
    peaks = dict(base.peak_flops_per_s)
    if key not in peaks:
        peaks[key] = Figure(max(rates), peak_source or "measured: the fastest GEMM of the sweep "
                                                        "(no datasheet peak for this device)")
        base = replace(base, peak_flops_per_s=peaks)
    peak = peaks[key].value
    ceiling, scale = fit_matmul_efficiency([p.flops for p in result.points],
                                           [r / peak for r in rates])
    best = max(result.points, key=lambda p: p.flops / p.time_s)
    where = (f"measured: planner profile --gemm on {result.device_name}, {result.dtype}, "
             f"{result.date}, {len(result.points)} shapes, {result.timer} timing; fitted "
             f"ceiling * (1 - exp(-F/scale)); best shape {best.m}x{best.n}x{best.k} at "
             f"{best.flops / best.time_s / 1e12:.1f} TFLOP/s = {best.flops / best.time_s / peak:.1%}"
             f" of peak")
    return replace(base, matmul_efficiency_max=Figure(min(ceiling, 1.0), where),
                   matmul_efficiency_scale_flops=Figure(scale, where), gemm=result)


def fit_error_pct(model: DeviceModel, result: GemmSweep) -> list[float]:
    """Per point: predicted against measured time of the fitted curve, in % (compute roof only:
    the fit's own residuals, shown by the command)."""
    peak = model.peak(result.dtype)
    out = []
    for p in result.points:
        eff = matmul_efficiency(p.flops, model.matmul_efficiency_max.value,
                                model.matmul_efficiency_scale_flops.value)
        out.append(100.0 * (p.flops / (peak * eff) - p.time_s) / p.time_s)
    return out


def cpu_base(device_name: str) -> DeviceModel:
    """A device model of this CPU to put the curve in: memory from the OS, bandwidth of one
    large copy measured here, the other figures zero (not measured by this command)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    x = torch.empty(2**25, dtype=torch.float32)      # 128 MiB, past any cache
    y = torch.empty_like(x)
    y.copy_(x)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        y.copy_(x)
        times.append(time.perf_counter() - t0)
    bandwidth = 2 * x.numel() * 4 / statistics.median(times)     # read + write
    zero = Figure(0.0, "assumed: not measured by planner profile --gemm")
    return DeviceModel(
        name=device_name,
        memory_bytes=Figure(float(total), "measured: os.sysconf physical pages"),
        peak_flops_per_s={},
        memory_bandwidth_bytes_per_s=Figure(bandwidth, "measured: one 128 MiB copy "
                                                        "(read + write), median of 5"),
        matmul_efficiency_max=Figure(1.0, "placeholder"),
        matmul_efficiency_scale_flops=Figure(1.0, "placeholder"),
        memory_efficiency=Figure(1.0, "measured: the bandwidth above is achieved bandwidth"),
        kernel_overhead_s=zero, host_overhead_s=zero, microbatch_overhead_s=zero,
        notes="Written by planner profile --gemm on a CPU.")
