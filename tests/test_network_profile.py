"""`planner profile --network` on 2 gloo ranks (tiny sweep), and the fitting it relies on."""
import json
import os
import subprocess
import sys

import pytest

from planner import serde
from planner.cost import collectives
from planner.dims import ParallelDims
from planner.clusters import resolve_cluster
from planner.commands.profile_network import parse_bytes
from planner.errors import PlannerError
from planner.models import resolve_model
from planner.profile import network
from planner.specs import BlockProfile, Cluster, ModelProfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def D(dp, pp, tp):
    """Degrees in the grid order (dp, pp, tp) as a ParallelDims."""
    return ParallelDims(dp=dp, pp=pp, tp=tp)


def run(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


# --------------------------------------------------------------------------------------------
# Fitting (pure python)
# --------------------------------------------------------------------------------------------
def test_fit_relative_recovers_a_line_and_pins_negatives():
    sizes = [2.0**k for k in range(10, 25)]
    times = [50e-6 + n / 2e9 for n in sizes]
    lat, bw, err = network.fit_alpha_beta(sizes, times)
    assert lat == pytest.approx(50e-6) and bw == pytest.approx(2e9) and err < 1e-6
    # a curve that only a negative latency would fit: latency pinned at 0
    a, b = network.fit_relative([[1.0, n] for n in sizes], [max(n / 1e9 - 1e-6, 1e-7)
                                                              for n in sizes])
    assert a == 0.0 and b > 0


def test_two_bands_find_the_bend():
    # flat 100 us up to 64 KiB, then 1 GB/s: the split lands at the bend, both bands exact
    sizes = [2.0**k for k in range(10, 27)]
    times = [max(100e-6, n / 1e9) for n in sizes]
    bands = network.fit_bands(sizes, times)
    assert bands.latency_s == pytest.approx(100e-6, rel=1e-3)
    assert bands.bandwidth_bytes_per_s == pytest.approx(1e9, rel=1e-3)
    assert bands.median_abs_pct_error < 1.0
    assert 64 * 1024 <= bands.split_bytes <= 256 * 1024
    one_line = network.fit_alpha_beta(sizes, times)[2]
    assert one_line > 10 * bands.median_abs_pct_error


def test_fit_keeps_extrapolation_sane_on_a_latency_bound_sweep():
    # a sweep that never left the flat latency-bound region has no usable slope
    fit = network.make_fit("all_reduce", "intra_node", 2, [1024, 2048, 4096, 8192],
                           [100e-6, 100e-6, 100e-6, 100e-6])
    assert fit.bandwidth_bytes_per_s >= 0.5 * 8192 / 100e-6
    assert fit.latency_s == pytest.approx(100e-6)


def test_level_groups():
    assert network.level_groups([0, 0]) == {"intra_node": [[0, 1]]}
    assert network.level_groups([0, 0, 1, 1]) == {"intra_node": [[0, 1], [2, 3]],
                                                  "inter_node": [[0, 2], [1, 3]]}
    assert network.level_groups([0, 1]) == {"inter_node": [[0, 1]]}


def test_sizes_and_flags():
    assert network.sweep_sizes(1024, 8192) == [1024, 2048, 4096, 8192]
    assert network.sweep_sizes(1024, 4096, 2) == [1024, 1448, 2048, 2896, 4096]
    assert parse_bytes("256MiB") == 256 * 2**20 and parse_bytes("64K") == 65536
    with pytest.raises(PlannerError, match="--max-bytes 'lots' is not a size"):
        parse_bytes("lots")


def test_bad_flags_fail_before_launching():
    proc = run("-m", "planner.cli", "profile", "--network", "--collectives", "all_reduce,gossip")
    assert proc.returncode == 2
    assert "error: --collectives" in proc.stderr and "gossip" in proc.stderr
    assert "Traceback" not in proc.stderr and "launching" not in proc.stderr


# --------------------------------------------------------------------------------------------
# The real thing: 2 gloo ranks under torchrun, messages 1-16 KiB
# --------------------------------------------------------------------------------------------
def tiny_profile(model) -> ModelProfile:
    """A hand-written profile (plausible CPU figures) so `planner plan` has compute costs."""
    blocks = tuple(BlockProfile(i, f"b{i}", kind, 1e-3, 2e-3, 1e-5, 1e-5, 1e6, 5000, 20000,
                                4096, 2048)
                   for i, kind in enumerate(["embedding"] + ["block"] * model.num_layers
                                            + ["head"]))
    return ModelProfile(model, model.fingerprint(), "cpu", "cpu", "float32", 1, 4, 1, "adam",
                        blocks, 0.02, 1e-3, 1e-3, 5, 1, "test", "2025-01-01T00:00:00Z")


@pytest.mark.slow
def test_profile_network_writes_a_cluster_that_planner_accepts(tmp_path):
    out = tmp_path / "cluster.json"
    proc = run("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "planner.commands.profile_network", "--out", str(out), "--max-bytes",
               "16KiB", "--repeats", "3", "--time-budget-s", "60", timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    assert "intra_node all_reduce" in proc.stderr  # progress went to stderr

    cluster = Cluster.load(str(out))
    assert Cluster.from_dict(json.loads(json.dumps(cluster.to_dict()))) == cluster
    assert resolve_cluster(str(out)) == cluster
    assert (cluster.backend, cluster.num_nodes, cluster.devices_per_node) == ("gloo", 1, 2)
    assert cluster.intra_node.source.startswith("measured")
    fits = {(f.collective, f.level, f.group_size): f for f in cluster.collective_fits}
    assert set(fits) == {(c, "intra_node", 2) for c in network.COLLECTIVES}
    for f in fits.values():
        assert f.message_bytes == (1024, 2048, 4096, 8192, 16384)
        assert all(t > 0 for t in f.time_s) and f.fit_median_abs_pct_error >= 0
    # the model answers from the measured points
    model = collectives.CommModel(cluster)
    ar = fits[("all_reduce", "intra_node", 2)]
    assert model.time("all_reduce", 4096, "dp", D(2, 1, 1)) == pytest.approx(
        collectives.monotone(list(ar.time_s))[2])

    model_spec = resolve_model("mlp-tiny")
    prof = tmp_path / "prof.json"
    tiny_profile(model_spec).save(str(prof))
    plan_path = tmp_path / "plan.json"
    proc = run("-m", "planner.cli", "plan", "--cluster", str(out), "--profile", str(prof),
               "--gpus", "2", "--global-batch", "8", "--out", str(plan_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = serde.read_json(str(plan_path))
    assert Cluster.from_dict(plan["cluster"]).collective_fits == cluster.collective_fits
