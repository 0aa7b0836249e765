"""Step time without a barrier every step: stragglers, a staleness bound, local SGD.

The model of ranks that run at different speeds (``RunSpec.straggler_cv`` = c): each rank's
work in a step takes D * (1 + c * z), z independent standard normals across ranks and steps
(clipped at -0.9 so no step is shorter than a tenth of D), D the simulated step of one rank
before its gradient exchange. With c = 0 every rank takes D and nothing here changes a layout
that synchronises every step.

- Synchronous (a barrier every step: DDP, ZeRO, the synchronous server, compressed exchanges):
  everyone waits for the slowest, E[max of p] = D + c D e_p, with e_p the expected maximum of p
  standard normals, integrated numerically: e_p = int x p phi(x) Phi(x)^(p-1) dx (e_2 =
  1/sqrt(pi) = 0.564, e_8 = 1.424, e_1024 = 3.25).
- Local SGD with period H: a barrier every H steps; between two, each rank's time is a sum of H
  independent steps, normal with standard deviation c D sqrt(H), so the wait per step is
  c D e_p / sqrt(H) (exact under the model, the all-reduce itself aside).
- A parameter server with staleness bound s (``executor.parallel.ps_async``): a rank starts
  clock t once it has finished clock t-1 and version t-s has come back, which needs every
  rank's clock t-s-1 plus the push, the servers' optimizer and the pull (L). This max-plus
  recurrence is run for ``CLOCKS`` clocks with seeded normals (Monte Carlo) and its mean period
  taken; with c = 0 it is max(D, L / s) exactly, and s = 0 gives the synchronous D + c D e_p + L.
"""
from __future__ import annotations

import random
from functools import lru_cache
from statistics import NormalDist

CLOCKS = 400          # clocks of the recurrence; the first WARM are left out of the mean
WARM = 50
CLIP = -0.9


@lru_cache(maxsize=1024)
def expected_max_normal(p: int) -> float:
    """e_p: E[max of p independent standard normals] (e_1 = 0), by the trapezoidal rule on
    [-10, 10] in steps of 0.005 (the integrand is smooth and negligible outside)."""
    if p <= 1:
        return 0.0
    nd, h = NormalDist(), 0.005
    total = 0.0
    for i in range(1, 4000):
        x = -10.0 + i * h
        total += x * p * nd.pdf(x) * nd.cdf(x) ** (p - 1)
    return total * h


def barrier_wait_s(p: int, step_s: float, cv: float, period: int = 1) -> float:
    """Mean wait per step for the slowest of p ranks at a barrier every ``period`` steps."""
    if cv <= 0 or p <= 1:
        return 0.0
    return cv * step_s * expected_max_normal(p) / period ** 0.5


def stale_period_s(p: int, step_s: float, latency_s: float, staleness: int, cv: float,
                   seed: int = 0) -> float:
    """Mean clock period of p ranks under a staleness bound s >= 1 (module docstring)."""
    if cv <= 0 or p <= 1:
        return max(step_s, latency_s / staleness)
    # The recurrence scales with D: run it in units of D, cached on the ratios.
    return step_s * _stale_period(p, round(latency_s / step_s, 4), staleness, round(cv, 4),
                                  seed)


@lru_cache(maxsize=256)
def _stale_period(p: int, latency: float, s: int, cv: float, seed: int) -> float:
    rng = random.Random(seed)
    ends = [[0.0] * p]                 # ends[t][i]: when rank i finished clock t-1
    slowest = [0.0]                    # slowest[t] = max_i ends[t][i]
    for t in range(CLOCKS):
        v = t - s                      # version needed at clock t
        ready = slowest[v] + latency if v >= 1 else 0.0
        prev = ends[-1]
        row = [max(prev[i], ready) + 1.0 + cv * max(CLIP, rng.gauss(0.0, 1.0))
               for i in range(p)]
        ends.append(row)
        slowest.append(max(row))
    return (slowest[CLOCKS] - slowest[WARM]) / (CLOCKS - WARM)
