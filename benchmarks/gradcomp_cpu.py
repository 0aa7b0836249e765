"""Per-value costs of the compressed exchanges' codecs on this CPU (``planner.cost.gradcomp``).

Times the executor's own codec functions (``executor.parallel.gradcomp``) on one thread in
float32 at n = 2^16, 2^18 and 2^20 values, and torch.topk in both of its CPU regimes
(aten/src/ATen/native/TopKImpl.h: std::partial_sort when k * 64 <= n; else std::nth_element,
O(n)). Each figure is the median of ``--repeats`` timings; a per-value constant is the median
over n, printed with its spread over n. The partial sort is fitted (least squares of relative
error, k/n from 1/2000 to 1/64) as a n + b k log2(k) (1 + ln(n/k)): a scan comparing every value
with the heap's top, and the expected k ln(n/k) values that enter the heap in random order
(value i > k enters with probability k/i) at log2 k each. Printed last: the ``CodecSpeed``
literal that ``planner/cost/gradcomp.py`` holds.

    python benchmarks/gradcomp_cpu.py [--repeats 7] [--timer cpu|wall]

By default process CPU time is used (one thread: equal to wall time on an idle core, and blind
to other processes sharing the core); ``--timer wall`` on a quiet machine.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors  # noqa: E402

from executor.parallel import gradcomp as codec  # noqa: E402

SIZES = (2**16, 2**18, 2**20)


def timed(fn, repeats: int, clock) -> float:
    fn()
    out = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        out.append(clock() - t0)
    return statistics.median(out)


def fit(name: str, per_value: dict) -> float:
    values = list(per_value.values())
    mid = statistics.median(values)
    spread = ", ".join(f"n=2^{int(math.log2(n))}: {v * 1e9:.3f}" for n, v in per_value.items())
    print(f"{name:15s} {mid * 1e9:8.3f} ns  ({spread})")
    return mid


def measure(repeats: int, clock) -> dict:
    rows: dict = {k: {} for k in ("copy", "ef", "nth_element", "randk",
                                  "qsgd_encode", "sign_encode", "unpack", "scatter")}
    for n in SIZES:
        g = torch.randn(n)
        r = torch.randn(n) * 0.1
        parts = list(g.split(n // 8))
        gen = torch.Generator()
        k_small, k_big = max(2, n // 1000), n // 10

        def copy():
            flat = _flatten_dense_tensors(parts)
            for t, new in zip(parts, _unflatten_dense_tensors(flat, parts)):
                t.copy_(new)
        rows["copy"][n] = timed(copy, repeats, clock) / n
        idx = torch.randint(0, n, (k_small,))

        def ef():
            a = g + r
            res = a.clone()
            res[idx] = 0
            a.abs()
        rows["ef"][n] = timed(ef, repeats, clock) / n
        a = g.abs()
        rows["nth_element"][n] = timed(lambda: torch.topk(a, k_big, sorted=False), repeats,
                                       clock) / n
        rows["randk"][n] = timed(lambda: torch.randperm(n, generator=gen.manual_seed(1)),
                                 repeats, clock) / n
        rows["qsgd_encode"][n] = timed(lambda: codec.qsgd_encode(g, 4, gen.manual_seed(1)),
                                       repeats, clock) / n
        q = codec.qsgd_encode(g, 4, gen.manual_seed(1))
        rows["unpack"][n] = timed(lambda: codec.qsgd_decode(q, 4, n, g.dtype), repeats,
                                  clock) / n
        rows["sign_encode"][n] = timed(lambda: codec.sign_encode(g), repeats, clock) / n
        payload, _ = codec.topk_encode(g, k_big)
        out = torch.zeros(n)
        rows["scatter"][n] = timed(lambda: codec.topk_decode_into(out, payload, k_big), repeats,
                                   clock) / k_big
    return rows


def partial_sort_fit(repeats: int, clock) -> tuple[float, float]:
    """(a, b) of t = a n + b k log2(k) (1 + ln(n/k)), and the worst relative error."""
    import numpy as np
    xs, ys = [], []
    for n in SIZES:
        a = torch.randn(n).abs()
        for r in (1 / 2000, 1 / 1000, 1 / 300, 1 / 100, 1 / 64):
            k = max(2, int(n * r))
            xs.append([n, k * math.log2(k) * (1 + math.log(n / k))])
            ys.append(timed(lambda: torch.topk(a, k, sorted=False), repeats, clock))
    x, y = np.array(xs), np.array(ys)
    coef, *_ = np.linalg.lstsq(x / y[:, None], np.ones_like(y), rcond=None)
    worst = float(np.max(np.abs(x @ coef - y) / y))
    print(f"partial_sort    a {coef[0] * 1e9:.3f} ns per n, b {coef[1] * 1e9:.3f} ns per "
          f"k log2 k (1 + ln n/k); worst relative error {worst:.0%} over {len(y)} points")
    return float(coef[0]), float(coef[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--timer", choices=("cpu", "wall"), default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(1)
    clock = time.process_time if args.timer == "cpu" else time.perf_counter
    print(f"torch {torch.__version__}, 1 thread, float32, {args.timer} time, median of "
          f"{args.repeats}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("seconds per value (scatter: per received pair)")
    rows = measure(args.repeats, clock)
    fitted = {name: fit(name, per) for name, per in rows.items()}
    fitted["partial_sort_scan"], fitted["partial_sort_heap"] = partial_sort_fit(args.repeats,
                                                                                clock)
    print("\nCodecSpeed(" + ", ".join(f"{k}_s={v:.3g}" for k, v in fitted.items()) + ")")


if __name__ == "__main__":
    main()
