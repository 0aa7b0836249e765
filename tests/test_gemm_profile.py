"""`planner profile --gemm`: the efficiency curve's fit, and the command on this CPU."""
import math

import numpy as np
import pytest

from planner import cli, devices
from planner.cost.roofline import fit_matmul_efficiency, matmul_efficiency


def test_fit_recovers_a_known_curve():
    flops = np.logspace(6, 13, 40)
    for ceiling, scale in ((0.87, 3e9), (0.6, 2e7)):
        eff = [matmul_efficiency(f, ceiling, scale) for f in flops]
        got = fit_matmul_efficiency(flops, eff)
        assert got == pytest.approx((ceiling, scale), rel=1e-4)
        noisy = [e * (1 + 0.03 * math.sin(7 * i)) for i, e in enumerate(eff)]
        c, s = fit_matmul_efficiency(flops, noisy)
        assert c == pytest.approx(ceiling, rel=0.03) and s == pytest.approx(scale, rel=0.15)
    with pytest.raises(ValueError):
        fit_matmul_efficiency([1e9], [0.5])


def test_shapes_stay_under_the_flop_cap():
    from planner.profile.gemm import shapes
    got = shapes((32, 64, 128), 2e6)
    assert got and all(2 * m * n * k <= 2e6 for m, n, k in got)
    assert (128, 128, 32) in got or (32, 128, 128) in got


def test_cpu_sweep_writes_a_device_model(tmp_path, capsys):
    out = tmp_path / "cpu-gemm.json"
    rc = cli.main(["profile", "--gemm", "--device", "cpu", "--max-gflops", "0.005",
                   "--repeats", "1", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    dm = devices.load(str(out))
    assert dm.gemm is not None and len(dm.gemm.points) >= 10
    assert dm.gemm.timer == "cpu" and dm.gemm.dtype == "float32"
    for name in ("matmul_efficiency_max", "matmul_efficiency_scale_flops"):
        assert getattr(dm, name).source.startswith("measured: planner profile --gemm")
    assert 0 < dm.matmul_efficiency_max.value <= 1
    # the peak of a CPU is the sweep's fastest GEMM, said so
    assert dm.peak_flops_per_s["tf32"].source.startswith("measured")
    assert max(p.flops / p.time_s for p in dm.gemm.points) == dm.peak("float32")
    assert "wrote" in capsys.readouterr().out


def test_base_keeps_its_other_figures(tmp_path):
    out = tmp_path / "a100-cpu-measured.json"
    base = "profiles/a100-sxm4-80gb.json"
    assert cli.main(["profile", "--gemm", "--device", "cpu", "--max-gflops", "0.002",
                     "--repeats", "1", "--base", base, "--out", str(out)]) == 0
    dm, a100 = devices.load(str(out)), devices.load(base)
    assert dm.peak_flops_per_s == a100.peak_flops_per_s
    assert dm.memory_efficiency == a100.memory_efficiency
    assert dm.matmul_efficiency_max.source.startswith("measured")


def test_cuda_without_a_gpu_is_a_one_line_error(capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    assert cli.main(["profile", "--gemm", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --device cuda: no CUDA device is visible to torch here"]
