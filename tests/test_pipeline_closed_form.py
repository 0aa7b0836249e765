"""The event loop against closed forms (issue 11, item 7): equal stages, no communication.

One block per chunk, every chunk the same forward f/v and backward b/v seconds, so a rank does
f + b per micro-batch. Then (Narayanan et al. SC'21, sec. 2.2; formulas.md "Pipeline"):

- GPipe and 1F1B: step = m(f + b) + (p - 1)(f + b): the bubble (p - 1)(f + b) does not depend on
  the number of micro-batches m (m < p included: the first micro-batch still crosses every
  stage forward and back).
- interleaved 1F1B with v chunks per rank: the bubble shrinks to (p - 1)(f + b)/v (torch's
  order needs m to be a multiple of p, so m = 8 is left out at p = 32).

And with a boundary transfer of c seconds each way (``test_1f1b_send_cost_per_microbatch``),
pinned by a timeline worked out by hand.
"""
import pytest

from planner.clusters import dgx_a100
from planner.cost import pp as pp_cost
from planner.cost.compute import BlockCost
from planner.sim import evaluate
from planner.sim.run import RunSpec
from planner.specs import Layout, ModelSpec

F, B = 1.0, 2.0


def no_comm(*args, **kwargs):
    return 0.0


def chunks(n: int, fwd: float, bwd: float):
    spec = ModelSpec("toy", "custom", num_layers=n, hidden_size=8, callable_path="m:f")
    blocks = [BlockCost(f"b{i}", "block", fwd, bwd, 1e9, 1000, 100, 10) for i in range(n)]
    return RunSpec(spec, dgx_a100(), "bf16-mixed", "adam"), blocks


def step_without_optimizer(run, blocks, layout, comm=no_comm):
    _, pred = evaluate(run, blocks, layout, comm=comm, timeline=False)
    return pred.step_time_s - pred.breakdown_s["optimizer"], pred


@pytest.mark.parametrize("p", [2, 4, 8, 32])
@pytest.mark.parametrize("m", [8, 64, 512])
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_flush_bubble_is_p_minus_1_stages_whatever_m(schedule, p, m):
    run, blocks = chunks(p, F, B)
    step, pred = step_without_optimizer(run, blocks, Layout.make(pp=p, num_microbatches=m,
                                                                 schedule=schedule))
    assert step - m * (F + B) == pytest.approx((p - 1) * (F + B), rel=1e-9)
    assert pred.bubble_fraction == pytest.approx(pp_cost.bubble_fraction(p, m), rel=1e-6)


# interleaved-1f1b needs m % p == 0: m = 8 with p = 32 is not a layout, so it is not a case
@pytest.mark.parametrize("p, m", [(p, m) for p in (2, 4, 8, 32) for m in (8, 64, 512)
                                  if m % p == 0])
@pytest.mark.parametrize("v", [2, 4])
def test_interleaved_bubble_divides_by_v(p, m, v):
    run, blocks = chunks(p * v, F / v, B / v)
    layout = Layout.make(pp=p, num_microbatches=m, schedule="interleaved-1f1b",
                         virtual_stages=v)
    step, pred = step_without_optimizer(run, blocks, layout)
    assert step - m * (F + B) == pytest.approx((p - 1) * (F + B) / v, rel=1e-9)
    assert pred.bubble_fraction == pytest.approx(pp_cost.bubble_fraction(p, m, v), rel=1e-6)


def send_cost(c):
    def comm(name, n_bytes, dim, stage=None):
        return c if name == "send_recv" else 0.0
    return comm


def test_1f1b_send_cost_per_microbatch():
    """Two stages, m = 4, f = 1, b = 2, each boundary transfer c = 0.5 (on its own stream).

    By hand: stage 0 runs F0 F1 B0 F2 B1 F3 B2 B3 and stage 1 F0 B0 F1 B1 ... Activation i
    leaves stage 0 when F_i ends and arrives c later; gradient i likewise. F0 ends at 1,
    reaches stage 1 at 1 + c, which runs F0 and B0 (f + b), and the gradient is back at
    4 + 2c = 5 for stage 0's B0; F2 follows at 7; B1's gradient left stage 1 at 7.5 and is
    back at 8. Stage 1's F2 waits for activation 2, sent at 8 and arriving at 8.5 (stage 1 was
    free at 7.5). Every second micro-batch exposes the 2c round trip, so the step is
    (m + p - 1)(f + b) + m*c = 15 + 4c = 17, and m*c for any m.
    """
    c = 0.5
    run, blocks = chunks(2, F, B)
    _, pred = evaluate(run, blocks, Layout.make(pp=2, num_microbatches=4, schedule="1f1b"),
                       comm=send_cost(c))
    events = {r: [(e.name, e.start_s, e.end_s) for e in pred.timeline
                  if e.rank == r and e.stream == "compute" and e.name != "optimizer"]
              for r in (0, 1)}
    assert events[0] == [("F0 c0", 0, 1), ("F1 c0", 1, 2), ("B0 c0", 5, 7), ("F2 c0", 7, 8),
                         ("B1 c0", 8, 10), ("F3 c0", 10, 11), ("B2 c0", 12, 14),
                         ("B3 c0", 15, 17)]
    assert events[1] == [("F0 c1", 1.5, 2.5), ("B0 c1", 2.5, 4.5), ("F1 c1", 4.5, 5.5),
                         ("B1 c1", 5.5, 7.5), ("F2 c1", 8.5, 9.5), ("B2 c1", 9.5, 11.5),
                         ("F3 c1", 11.5, 12.5), ("B3 c1", 12.5, 14.5)]
    for m in (4, 8, 16, 64):
        step, _ = step_without_optimizer(run, blocks, Layout.make(pp=2, num_microbatches=m,
                                                                  schedule="1f1b"),
                                         comm=send_cost(c))
        assert step == pytest.approx((m + 1) * (F + B) + m * c, rel=1e-12)
