"""``--trace-dir``: a torch.profiler trace of the measured steps, one Chrome trace per rank.

Warm-up steps are skipped (``schedule(wait=warmup)``) and at most ``TRACE_STEPS`` steps are
recorded, so the trace stays small; each step is a ``step k`` range. Open
``DIR/trace-rank{r}.json`` in chrome://tracing or Perfetto.
"""
from __future__ import annotations

import contextlib
import os

import torch
from torch.profiler import ProfilerActivity, profile, record_function, schedule

TRACE_STEPS = 3


class _NoTrace:
    def step(self):
        pass


@contextlib.contextmanager
def tracer(trace_dir: str, rank: int, warmup: int, steps: int, device):
    if not trace_dir:
        yield _NoTrace()
        return
    os.makedirs(trace_dir, exist_ok=True)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    path = os.path.join(trace_dir, f"trace-rank{rank}.json")
    with profile(activities=activities, record_shapes=False,
                 schedule=schedule(wait=warmup, warmup=0,
                                   active=max(1, min(TRACE_STEPS, steps - warmup)), repeat=1),
                 on_trace_ready=lambda prof: prof.export_chrome_trace(path)) as prof:
        yield prof


def step_range(step: int):
    return record_function(f"step {step}")


def cuda_sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
