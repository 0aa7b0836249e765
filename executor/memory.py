"""Peak memory of one rank during training.

CUDA: ``torch.cuda.max_memory_allocated`` (the caching allocator's peak of live tensors), reset
before the model is built. CPU: there is no allocator counter, so we use the kernel's peak
resident set size (``VmHWM`` in /proc/self/status), reset before the model is built by writing
"5" to /proc/self/clear_refs (Linux >= 4.0, proc(5)), minus the resident size at that moment.
That counts what training added to the process: parameters, gradients, optimizer state,
activations, communication buffers, plus allocator slack and lazily loaded code pages (a few
MiB), so it is an upper bound on tensor bytes. Where clear_refs cannot be written, the
process-lifetime ``ru_maxrss`` minus the same baseline is used and the measure says so.
"""
from __future__ import annotations

import resource

import torch


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakMemory:
    """Call ``start()`` before building the model and ``peak_bytes()`` after training."""

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline_bytes = 0
        self.measure = ""

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.measure = "cuda max_memory_allocated"
            return
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
                fh.write("5")
            self.measure = "cpu peak RSS (VmHWM after clear_refs) minus RSS before model build"
        except OSError:
            self.measure = "cpu ru_maxrss minus RSS before model build (peak not resettable)"
        self.baseline_bytes = _status_kib("VmRSS") * 1024

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.measure.startswith("cpu peak RSS"):
            peak = _status_kib("VmHWM") * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(0, peak - self.baseline_bytes)
