"""Device models: the figures the roofline cost model (``planner.cost.roofline``) needs.

A device model is a JSON profile (``profiles/a100-sxm4-80gb.json``,
``profiles/h100-sxm5-80gb.json``) in which every figure carries its value and where it came
from -- "datasheet (...)", "fitted on ... (planner.calibrate)", or "assumed (...)" -- so a plan
can say which of its inputs were measured. Cluster presets point at a profile through
``DeviceSpec.model_profile``; a relative path there is resolved against the current directory
first and then against the repository that holds this package (``profiles/`` beside
``planner/``), so planning works from any directory.

The dataclasses live here rather than in ``planner.specs`` because only the cost model reads
them; they use the same strict serde (unknown or mistyped fields are one-line errors).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

from planner import serde
from planner.errors import PlannerError

SCHEMA_VERSION = 1
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROFILE_DIR = os.path.join(REPO_ROOT, "profiles")


@dataclass(frozen=True)
class Figure:
    """One number of a device model and its provenance."""
    value: float
    source: str


@dataclass(frozen=True)
class Calibration:
    """How the fitted figures were obtained and how well they predict held-out data."""
    data: str                                  # the data set, relative to the repository
    date: str
    method: str
    split_seed: int
    train_rows: int
    heldout_rows: int
    train_median_abs_pct_error: float
    heldout_median_abs_pct_error: float
    heldout_max_abs_pct_error: float
    assumptions: dict[str, str]
    predictor: dict[str, str]                  # SimulatorPredictor settings that reproduce it
    alternatives_heldout_median_abs_pct_error: dict[str, float] | None = None  # assumption ->
    alternatives_heldout_max_abs_pct_error: dict[str, float] | None = None
    alternatives_train_loss: dict[str, float] | None = None   # mean squared log error
    # fitted figure -> {"-10%": ..., "+10%": ...}: how many percentage points the held-out
    # median error moves when the figure moves by that much (planner.calibrate.sensitivity)
    sensitivity_heldout_median_abs_pct_error: dict[str, dict[str, float]] | None = None


@dataclass(frozen=True)
class GemmPoint:
    """One timed matrix multiply of a ``planner profile --gemm`` sweep: C[m,n] = A[m,k] B[k,n]."""
    m: int
    n: int
    k: int
    flops: float                # 2mnk
    time_s: float               # median of the timed repeats

    def __post_init__(self):
        if min(self.m, self.n, self.k) < 1 or not self.flops > 0 or not self.time_s > 0:
            raise PlannerError(f"gemm point m={self.m} n={self.n} k={self.k}: sizes must be >= 1 "
                               f"and flops, time_s > 0 (got {self.flops}, {self.time_s})")


@dataclass(frozen=True)
class GemmSweep:
    """What ``planner profile --gemm`` measured, so that the fitted curve can be checked."""
    device_name: str
    dtype: str
    date: str
    timer: str                  # "cuda-events" | "wall"
    points: tuple[GemmPoint, ...]


@dataclass(frozen=True)
class DeviceModel:
    """Peaks and efficiency curve of one accelerator for ``planner.cost.roofline``.

    - ``matmul_efficiency_max`` and ``matmul_efficiency_scale_flops``: a matrix multiply of F
      FLOPs runs at ``peak * max * (1 - exp(-F / scale))`` (a saturating curve: small GEMMs fill
      few of the SMs and waves, large ones approach ``max``). Measured by ``planner profile
      --gemm`` (the sweep kept in ``gemm``), or ``max`` from published maximum achievable
      matmul throughput and ``scale`` fitted on step times (``planner.calibrate``).
    - ``memory_efficiency``: achieved / datasheet HBM bandwidth for memory-bound kernels.
    - ``kernel_overhead_s``: fixed GPU time per kernel (launch latency, ramp-up and tail).
    - ``host_overhead_s``: CPU time the framework spends issuing one kernel; a pass cannot run
      faster than its kernel count times this (the launch-bound floor of eager PyTorch).
    - ``microbatch_overhead_s``: fixed time per micro-batch outside the blocks' kernels (the
      training framework's per-micro-batch work: batch loading, loss scaling and averaging,
      engine bookkeeping), charged to the head's forward (where the loss is computed).
    """
    name: str
    memory_bytes: Figure
    peak_flops_per_s: dict[str, Figure]
    memory_bandwidth_bytes_per_s: Figure
    matmul_efficiency_max: Figure
    matmul_efficiency_scale_flops: Figure
    memory_efficiency: Figure
    kernel_overhead_s: Figure
    host_overhead_s: Figure
    microbatch_overhead_s: Figure
    calibration: Calibration | None = None
    notes: str = ""
    schema_version: int = SCHEMA_VERSION
    gemm: GemmSweep | None = None       # the sweep the matmul figures were fitted on, if any

    def __post_init__(self):
        if self.schema_version != SCHEMA_VERSION:
            raise PlannerError(f"schema_version {self.schema_version} is not supported (this "
                               f"planner reads {SCHEMA_VERSION})")
        # NaN fails every comparison, so each check asks for a finite number first.
        for name in ("memory_bytes", "memory_bandwidth_bytes_per_s",
                     "matmul_efficiency_scale_flops"):
            v = getattr(self, name).value
            if not (math.isfinite(v) and v > 0):
                raise PlannerError(f"field '{name}.value' must be a finite number > 0, got {v}")
        for name in ("matmul_efficiency_max", "memory_efficiency"):
            v = getattr(self, name).value
            if not 0 < v <= 1:
                raise PlannerError(f"field '{name}.value' must be in (0, 1], got {v}")
        for name in ("kernel_overhead_s", "host_overhead_s", "microbatch_overhead_s"):
            v = getattr(self, name).value
            if not (math.isfinite(v) and v >= 0):
                raise PlannerError(f"field '{name}.value' must be a finite number >= 0, got {v}")
        for key, fig in self.peak_flops_per_s.items():
            if not (math.isfinite(fig.value) and fig.value > 0):
                raise PlannerError(f"field 'peak_flops_per_s.{key}.value' must be a finite "
                                   f"number > 0, got {fig.value}")

    def peak(self, dtype: str) -> float:
        """Dense tensor-core peak for a training dtype (``planner.cost.precision.peak_key``)."""
        from planner.cost.precision import peak_key
        key = peak_key(dtype)
        if key not in self.peak_flops_per_s:
            raise PlannerError(f"device model {self.name} has no peak_flops_per_s[{key!r}] for "
                               f"dtype {dtype}; it has: {', '.join(self.peak_flops_per_s)}")
        return self.peak_flops_per_s[key].value

    def with_values(self, **values: float) -> "DeviceModel":
        """A copy with some figures' values replaced (sources kept): what a fit varies."""
        return replace(self, **{k: replace(getattr(self, k), value=float(v))
                                for k, v in values.items()})

    def to_dict(self) -> dict:
        return serde.to_dict(self)

    def save(self, path: str) -> None:
        serde.write_json(path, self.to_dict())


# What the calibration on measured step times fits. The matmul ceiling is not among them:
# single-node runs of small models cannot identify it (issue 11's authors fixed it at 0.64,
# 0.75 and 0.80 and refitted the rest: 3.1%-3.3% median on that data; `calibrate_a100.py
# --ceilings` reruns that comparison), so it comes from published
# maximum achievable GEMM throughput or from `planner profile --gemm`.
FITTED = ("matmul_efficiency_scale_flops", "memory_efficiency", "kernel_overhead_s",
          "host_overhead_s", "microbatch_overhead_s")


def resolve_path(path: str) -> str:
    """An existing file for ``path``: as given (absolute or from the current directory), else
    relative to the repository root holding ``planner/`` (where ``profiles/`` ships)."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    for candidate in (os.path.join(REPO_ROOT, path), os.path.join(PROFILE_DIR, path)):
        if os.path.exists(candidate):
            return candidate
    raise PlannerError(f"device model profile {path!r}: no such file here or under {REPO_ROOT}")


_CACHE: dict[str, tuple[float, DeviceModel]] = {}


def load(path: str) -> DeviceModel:
    """Read a device-model profile (cached per file and modification time)."""
    real = os.path.abspath(resolve_path(path))
    mtime = os.path.getmtime(real)
    hit = _CACHE.get(real)
    if hit and hit[0] == mtime:
        return hit[1]
    model = serde.from_dict(DeviceModel, serde.read_json(real), ctx=path)
    _CACHE[real] = (mtime, model)
    return model
