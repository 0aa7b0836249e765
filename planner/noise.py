"""How far measurements and predictions can be trusted: machine load, spreads, bands.

Three honest numbers the commands print next to their results:

- the machine's load: the 1-minute load average (``os.getloadavg``) against the cores
  (``os.cpu_count``). Above one runnable process per core, wall-clock times include waiting
  for a core, so measured times are slower and noisier than the costs they stand for;
- the spread of repeated measurements: the inter-quartile range (IQR) relative to the median;
- the uncertainty band of a prediction: how far a predicted step time may be from the truth,
  so that two layouts whose predictions differ by less than it are reported as a tie rather
  than as a winner. With measured compute (a profile) the band is the relative IQR of the
  profile's measured whole step (the predictions are built from those measurements and cannot
  be sharper); with a device model it is that model's held-out median |error| on the measured
  iteration times it was fitted against (``DeviceModel.calibration``:
  A100: 3.2% on Megatron-DeepSpeed runs, ``benchmarks/calibrate_a100.py``); a device model
  without a calibration borrows the A100's, marked "assumed".
"""
from __future__ import annotations

import os
import statistics

# Above this relative IQR a set of repeated timings is called noisy (5%: well above the 1-2%
# run-to-run spread of an idle CPU core or a GPU kernel; ../shared/notes/torch-on-cpu.md).
NOISY_SPREAD = 0.05
# The device model whose held-out median |error| is the band of an uncalibrated device model
# (read from its calibration record, so a refit moves both).
A100_PROFILE = "profiles/a100-sxm4-80gb.json"


def machine_load() -> tuple[float, int]:
    """(1-minute load average, cores); load 0.0 where the OS does not report it."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        load = 0.0
    return load, os.cpu_count() or 1


def load_note(what: str = "measured times") -> str:
    """A sentence when the machine is busier than its cores ("" otherwise)."""
    load, cores = machine_load()
    if load <= cores:
        return ""
    return (f"the machine is loaded (load average {load:.1f} on {cores} cores): {what} include "
            "waiting for a core and are slower and noisier than on an idle machine")


def quartiles(values) -> tuple[float, float, float]:
    """(first quartile, median, third quartile); a single value is its own interval."""
    values = list(values)
    if not values:
        return 0.0, 0.0, 0.0
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return q1, statistics.median(values), q3


def relative_spread(spread: float, median: float) -> float:
    return spread / median if median > 0 else 0.0


def spread_note(label: str, spread: float, median: float) -> str:
    """A sentence when a measurement's IQR is more than ``NOISY_SPREAD`` of its median."""
    rel = relative_spread(spread, median)
    if rel <= NOISY_SPREAD:
        return ""
    return (f"{label} spread widely: IQR {rel:.0%} of the median (more than "
            f"{NOISY_SPREAD:.0%}); take its differences below that as noise")


def prediction_band(profile, cluster) -> tuple[float, str]:
    """(relative band, why) of step times predicted from ``profile`` (a ModelProfile, or None
    for the device model of ``cluster``)."""
    if profile is not None:
        rel = relative_spread(profile.step_time_spread_s, profile.step_time_s)
        return rel, "relative IQR of the profiled step"
    from planner import devices
    path = cluster.device.model_profile
    if path:
        model = devices.load(path)
        if model.calibration is not None:
            rel = model.calibration.heldout_median_abs_pct_error / 100
            return rel, f"held-out median error of the {model.name} device model"
    a100 = devices.load(A100_PROFILE).calibration
    return a100.heldout_median_abs_pct_error / 100, (
        "assumed: held-out median error of the A100 device model (this device's model is not "
        "calibrated)")


def ties(step_times_s, band: float) -> list[bool]:
    """For each step time of a ranked list, whether it is within ``band`` of the best."""
    if not step_times_s:
        return []
    best = step_times_s[0]
    return [i > 0 and best > 0 and (t - best) / best <= band
            for i, t in enumerate(step_times_s)]
