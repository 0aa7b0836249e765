"""DP cost formulas against hand-computed values."""
import pytest

from planner.cost import comm, dp
from planner.cost.memory import bytes_per_param, zero_sharded

MIB = 2**20


def test_ring_all_reduce_hand_computed():
    # p=4, n=8 MiB, alpha=10us, beta=1ns/B: 2*3*10us + 2*(3/4)*8MiB*1ns = 60us + 12.582912 ms
    t = comm.all_reduce_ring(8 * MIB, 4, 10e-6, 1e-9)
    assert t == pytest.approx(60e-6 + 1.5 * 8 * MIB * 1e-9, rel=1e-12)
    assert comm.all_reduce_ring(8 * MIB, 1, 10e-6, 1e-9) == 0.0


def test_ddp_buckets_first_bucket_small_then_cap():
    # Gradients of 0.5, 0.75, 30 and 10 MiB in backward order; caps 1 MiB then 25 MiB.
    buckets = dp.ddp_buckets([0.5 * MIB, 0.75 * MIB, 30 * MIB, 10 * MIB])
    sizes = [round(b / MIB, 3) for b, _ in buckets]
    assert sizes == [1.0, 25.0, 15.25]
    assert [i for _, i in buckets] == [1, 2, 3]
    assert sum(b for b, _ in buckets) == pytest.approx(41.25 * MIB)


def test_zero_bytes_per_param_match_the_zero_paper():
    p, g, o = bytes_per_param("bf16-mixed", "adam")
    assert (p, g, o) == (2, 2, 12) and p + g + o == 16
    nd = 64
    assert sum(zero_sharded(p, g, o, 1, nd)) == pytest.approx(4 + 12 / nd)
    assert sum(zero_sharded(p, g, o, 2, nd)) == pytest.approx(2 + 14 / nd)
    assert sum(zero_sharded(p, g, o, 3, nd)) == pytest.approx(16 / nd)
    assert sum(bytes_per_param("float32", "adam")) == 16  # 4 + 4 + 8
