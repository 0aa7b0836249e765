"""The event simulation against cases a person can check by hand, and its invariants."""
import pytest

from planner.clusters import dgx_a100
from planner.cost import compute, pp as pp_cost
from planner.cost.compute import BlockCost
from planner.models import PRESETS
from planner.partition import ChunkMemory, balanced_partition
from planner.rules import executor_refuses
from planner.sim import BREAKDOWN_KEYS, RunSpec, evaluate, layout_costs, rank_memory
from planner.sim.engine import OPTIONAL_KEYS
from planner.specs import Layout, ModelSpec

GIB = 2**30


def no_comm(*args, **kwargs):
    return 0.0


def toy(n_blocks, fwd=1.0, bwd=2.0, params=1000, act=100, out=10):
    spec = ModelSpec("toy", "custom", num_layers=n_blocks, hidden_size=8, callable_path="m:f")
    blocks = [BlockCost(f"b{i}", "block", fwd, bwd, 1e9, params, act, out)
              for i in range(n_blocks)]
    return RunSpec(spec, dgx_a100(), "bf16-mixed", "adam"), blocks


def gpt(name="gpt3-1.3b", gpus=128, b=2):
    spec = PRESETS[name]
    cl = dgx_a100().with_size(gpus)
    return (RunSpec(spec, cl, "bf16-mixed", "adam"),
            compute.analytic_costs(spec, b, cl.device, "bf16-mixed", 2))


def compute_events(pred, rank):
    return [(e.name, e.start_s, e.end_s) for e in pred.timeline
            if e.rank == rank and e.stream == "compute" and e.name != "optimizer"]


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_two_stages_four_microbatches_equal_costs(schedule):
    # Each stage: 2 blocks of F = 0.5, B = 1 -> t_f = 1, t_b = 2 per micro-batch and stage.
    run, blocks = toy(4, fwd=0.5, bwd=1.0)
    _, pred = evaluate(run, blocks, Layout.make(pp=2, num_microbatches=4, schedule=schedule),
                       comm=no_comm)
    opt = pred.breakdown_s["optimizer"]
    # (m + p - 1)(t_f + t_b) = 5 * 3 = 15, plus a tiny optimizer step
    assert pred.step_time_s - opt == pytest.approx(15.0)
    assert pred.bubble_fraction == pytest.approx((2 - 1) / (4 + 2 - 1), rel=1e-6)
    assert pred.bubble_fraction == pytest.approx(pp_cost.bubble_fraction(2, 4), rel=1e-6)
    if schedule == "1f1b":
        assert compute_events(pred, 0) == [
            ("F0 c0", 0, 1), ("F1 c0", 1, 2), ("B0 c0", 4, 6), ("F2 c0", 6, 7),
            ("B1 c0", 7, 9), ("F3 c0", 9, 10), ("B2 c0", 10, 12), ("B3 c0", 13, 15)]
        assert compute_events(pred, 1)[:3] == [("F0 c1", 1, 2), ("B0 c1", 2, 4),
                                               ("F1 c1", 4, 5)]
        # in flight: stage 0 keeps min(p - 0, m) = 2 micro-batches, stage 1 one
        assert [r.activations_bytes for r in pred.memory] == [2 * 200, 200]
    else:
        assert compute_events(pred, 0)[4] == ("B0 c0", 7, 9)
        assert [r.activations_bytes for r in pred.memory] == [4 * 200, 4 * 200]


def test_interleaved_bubble_matches_formula_and_zbv_is_smaller():
    p, m = 4, 8
    run, blocks = toy(16)
    res = {}
    for name, v in (("1f1b", 1), ("interleaved-1f1b", 2), ("zbv", 2)):
        _, pred = evaluate(run, blocks, Layout.make(pp=p, num_microbatches=m, schedule=name,
                                               virtual_stages=v), comm=no_comm)
        res[name] = pred.bubble_fraction
    assert res["1f1b"] == pytest.approx(pp_cost.bubble_fraction(p, m, 1), rel=1e-6)
    assert res["interleaved-1f1b"] == pytest.approx(pp_cost.bubble_fraction(p, m, 2), rel=1e-6)
    assert res["zbv"] < res["interleaved-1f1b"]


def test_breakdown_sums_to_step_time():
    run, blocks = gpt()
    for layout in (Layout.make(dp=4, tp=2, pp=4, microbatch_size=2, num_microbatches=8),
                   Layout.make(dp=8, tp=2, pp=2, microbatch_size=2, num_microbatches=4, zero=3),
                   Layout.make(dp=4, tp=4, pp=2, microbatch_size=2, num_microbatches=8,
                          schedule="zbv", virtual_stages=2, zero=0, recompute="full",
                          sequence_parallel=True),
                   Layout.make(dp=8, tp=1, pp=4, microbatch_size=2, num_microbatches=8,
                          schedule="interleaved-1f1b", virtual_stages=2, zero=1)):
        _, pred = evaluate(run, blocks, layout, timeline=False)
        assert set(pred.breakdown_s) == set(BREAKDOWN_KEYS) - set(OPTIONAL_KEYS)
        shown = sum(v for k, v in pred.breakdown_s.items() if not k.endswith("_hidden"))
        assert shown == pytest.approx(pred.step_time_s, rel=1e-9)
        assert all(v >= 0 for v in pred.breakdown_s.values())


def test_zero_bytes_per_parameter_match_the_zero_paper():
    # One replica-sharded rank, no activations: bytes per parameter of the ZeRO paper, sec. 5.
    run, blocks = toy(2, act=0, out=0, params=10**6)
    n = 8
    expected = {0: 16, 1: 4 + 12 / n, 2: 2 + 14 / n, 3: 16 / n}
    for zero, per_param in expected.items():
        layout = Layout.make(dp=n, zero=zero, microbatch_size=1, num_microbatches=1)
        _, pred = evaluate(run, blocks, layout, comm=no_comm)
        r = pred.memory[0]
        states = r.parameters_bytes + r.gradients_bytes + r.optimizer_bytes
        assert states / 2e6 == pytest.approx(per_param, rel=1e-6), zero


def test_megatron_tp_two_all_reduces_per_block_each_way():
    """Per micro-batch: 2 activation all-reduces per block each way; the vocabulary-parallel
    embedding one more forward, the loss-parallel head one backward and 3 of one value per
    token (fp32) forward."""
    run, blocks = gpt("gpt3-1.3b", gpus=16)
    layers, m = run.model.num_layers, 4
    layout = Layout.make(dp=2, tp=8, microbatch_size=2, num_microbatches=m)
    _, pred = evaluate(run, blocks, layout, timeline=False)
    b, s, h = 2, run.model.seq_len, run.model.hidden_size
    tp = {(c.phase, c.collective, c.bytes_each): c for c in pred.collectives if c.group == "tp"}
    assert {k[2] for k in tp} == {b * s * h * 2, b * s * 4}
    act = {k[:2]: c for k, c in tp.items() if k[2] == b * s * h * 2}
    assert act[("forward", "all_reduce")].count == (2 * layers + 1) * m
    assert act[("backward", "all_reduce")].count == (2 * layers + 1) * m
    assert all(c.group_size == 8 for c in tp.values())
    assert tp[("forward", "all_reduce", b * s * 4)].count == 3 * m
    # sequence parallel: the same volume as reduce-scatter + all-gather pairs
    _, pred = evaluate(run, blocks, Layout.make(dp=2, tp=8, microbatch_size=2, num_microbatches=m,
                                           sequence_parallel=True), timeline=False)
    tp = {(c.phase, c.collective): c.count for c in pred.collectives if c.group == "tp"}
    assert tp[("forward", "reduce_scatter")] == 2 * layers * m
    assert tp[("forward", "all_gather")] == 2 * layers * m + m   # + the head's input gather
    assert tp[("backward", "reduce_scatter")] == 2 * layers * m + m   # + its gradient
    assert tp[("backward", "all_gather")] == 2 * layers * m + m   # + the embedding's slice
    # full recompute repeats the blocks' forward collectives in the backward pass
    _, pred = evaluate(run, blocks, Layout.make(dp=2, tp=8, microbatch_size=2, num_microbatches=m,
                                           recompute="full"), timeline=False)
    tp = {(c.phase, c.collective, c.bytes_each): c.count for c in pred.collectives
          if c.group == "tp"}
    assert tp[("backward", "all_reduce", b * s * h * 2)] == (4 * layers + 1) * m


def test_full_recompute_adds_one_forward_per_block():
    run, blocks = toy(4, fwd=1.0, bwd=2.0)
    _, none = evaluate(run, blocks, Layout.make(pp=2, num_microbatches=4), comm=no_comm)
    _, full = evaluate(run, blocks, Layout.make(pp=2, num_microbatches=4, recompute="full"),
                       comm=no_comm)
    # per rank: 2 blocks x 4 micro-batches of one extra forward each
    assert full.breakdown_s["recompute"] == pytest.approx(8.0)
    assert full.step_time_s - none.step_time_s == pytest.approx(5 * 2.0, rel=1e-6)
    assert full.memory[0].activations_bytes < none.memory[0].activations_bytes


def test_memory_never_grows_with_tp_or_pp():
    """Peak memory per rank is non-increasing in tp (every schedule) and in pp (one chunk per
    rank) at Megatron's even split of the layers, within 1% (the embedding's and the head's
    shares move). The balanced partition is chosen for time, so it may move blocks as tp or pp
    change their times (e.g. more layers beside the vocabulary-parallel head once it gets
    cheaper) and is not compared. Interleaved schedules keep more chunk-micro-batches in
    flight as pp grows, (v-1)*p + 2(p-1) warm-up chunks in torch's order, so their memory may
    grow with pp."""
    from dataclasses import replace
    run, blocks = gpt()
    run = replace(run, partition="even")
    for schedule, v in (("1f1b", 1), ("gpipe", 1), ("interleaved-1f1b", 2), ("zbv", 2)):
        for rc in ("none", "selective", "full"):
            for zero in (0, 1, 2, 3):
                for sp in (False, True):
                    peak = {}
                    for tp in (1, 2, 4, 8):
                        for pp in (1, 2, 4, 8):
                            if (sp and tp == 1) or (v > 1 and pp == 1):
                                continue
                            layout = Layout.make(dp=2, tp=tp, pp=pp, microbatch_size=2,
                                                 num_microbatches=8, schedule=schedule,
                                                 virtual_stages=v, recompute=rc, zero=zero,
                                                 sequence_parallel=sp)
                            if executor_refuses(layout):
                                continue
                            peak[tp, pp] = evaluate(run, blocks, layout,
                                                    timeline=False)[1].peak_memory_bytes
                    for (tp, pp), bytes_ in peak.items():
                        for (t2, p2), b2 in peak.items():
                            grows = (t2 > tp and p2 == pp) or (v == 1 and t2 == tp and p2 > pp)
                            if grows:
                                assert b2 <= bytes_ * 1.01, (schedule, rc, zero, sp, tp, pp,
                                                             t2, p2)


def test_partition_memory_model_is_rank_memory():
    """The partition's memory objective and the reported per-rank memory are one formula."""
    run, blocks = gpt()
    for layout in (Layout.make(dp=2, tp=2, pp=4, microbatch_size=2, num_microbatches=8),
                   Layout.make(dp=2, tp=1, pp=4, microbatch_size=2, num_microbatches=8, zero=1),
                   Layout.make(dp=4, tp=2, pp=4, microbatch_size=2, num_microbatches=8, zero=3,
                          recompute="full"),
                   Layout.make(dp=2, tp=1, pp=4, microbatch_size=2, num_microbatches=8,
                          schedule="gpipe", compression="powersgd", powersgd_rank=4)):
        from planner.sim import default_comm_time
        from planner.sim.memory import chunk_memory
        comm = default_comm_time(run.cluster, layout)
        filled, costs = layout_costs(run, blocks, layout, comm)
        cm = chunk_memory(filled, costs.memory)
        starts = list(filled.pipeline.stage_boundaries) + [len(blocks)]
        for r, rm in enumerate(rank_memory(run, filled, costs)):
            assert cm.of(r, starts[r], starts[r + 1] - 1) == pytest.approx(rm.total_bytes,
                                                                           rel=1e-6, abs=8)


def test_ddp_overlap_hides_reduction_on_fast_links():
    run, blocks = gpt("gpt2-medium", gpus=8)
    layout = Layout.make(dp=8, microbatch_size=2, num_microbatches=2)
    _, fast = evaluate(run, blocks, layout, comm=lambda name, n, dim, stage=None: 1e-12 * n,
                       timeline=False)
    _, slow = evaluate(run, blocks, layout, comm=lambda name, n, dim, stage=None: 1e-9 * n,
                       timeline=False)
    # only what becomes ready at the very end -- the embedding's gradients, reduced after the
    # last backward op -- stays exposed on a fast link
    last = blocks[0].param_count * 2 * 1e-12
    assert fast.breakdown_s["dp_comm_exposed"] <= 1.5 * last
    assert slow.breakdown_s["dp_comm_exposed"] > 100 * fast.breakdown_s["dp_comm_exposed"]
    assert slow.breakdown_s["dp_comm_hidden"] > 0   # the buckets before the last overlap
    ar = [c for c in slow.collectives if c.group == "dp" and c.collective == "all_reduce"]
    grads = sum(blk.param_count for blk in blocks) * 2
    assert sum(c.count * c.bytes_each for c in ar) == pytest.approx(grads, rel=1e-6)


def test_powersgd_sends_rank_r_factors():
    run, blocks = gpt("gpt2-medium", gpus=8)
    r = 4
    layout = Layout.make(dp=8, microbatch_size=2, num_microbatches=1, compression="powersgd",
                    powersgd_rank=r)
    _, pred = evaluate(run, blocks, layout, timeline=False)
    sent = sum(c.count * c.bytes_each for c in pred.collectives if c.group == "dp")
    h, f, v, s = 1024, 4096, 50257, 1024
    L = run.model.num_layers
    mats = L * ([(h, h)] * 4 + [(f, h), (h, f)]) + [(v, h), (s, h), (v, h)]
    packed = sum(r * (a + b) for a, b in mats if a * b > 2 * r * (a + b))
    matrix = sum(a * b for a, b in mats if a * b > 2 * r * (a + b))
    total = sum(blk.param_count for blk in blocks)
    expected = (packed + total - matrix) * 2      # bf16 gradients; the rest travels as is
    assert sent == pytest.approx(expected, rel=0.02)
    assert sent < 0.05 * total * 2


def test_parameter_server_time_is_the_formula():
    run, blocks = toy(2, fwd=0.0, bwd=0.0, params=10**6, act=0, out=0)
    alpha, beta = 1e-5, 1e-9

    def comm(name, n, dim, stage=None):
        from planner.cost.comm import parameter_server
        return parameter_server(n, 4, 2, alpha, beta) if name == "parameter_server" else 0.0

    layout = Layout.make(dp=4, dp_comm="parameter_server", ps_shards=2)
    _, pred = evaluate(run, blocks, layout, comm=comm)
    n = 2e6 * 2   # two blocks of 1e6 bf16 gradients
    t = 2 * (alpha + 4 * n * beta / 2)
    assert pred.breakdown_s["dp_comm_exposed"] == pytest.approx(t, rel=1e-9)
    assert pred.memory[0].optimizer_bytes == pytest.approx(2e6 * 12 / 2, rel=1e-9)


def test_mfu_is_model_flops_over_peak():
    run, blocks = gpt("gpt3-1.3b", gpus=8)
    layout = Layout.make(dp=8, microbatch_size=2, num_microbatches=2, recompute="full")
    _, pred = evaluate(run, blocks, layout, timeline=False)
    model_flops = 3 * sum(b.forward_flops for b in blocks) * 2 * 8
    assert pred.mfu == pytest.approx(model_flops / (pred.step_time_s * 8 * 312e12), rel=1e-9)
    # hardware FLOPs count the recomputed forward: higher than the model's
    assert pred.tflops_per_device * 1e12 > model_flops / (pred.step_time_s * 8)


def test_explicit_stage_boundaries_are_used_and_checked():
    run, blocks = toy(8)
    layout, _ = evaluate(run, blocks, Layout.make(pp=2, num_microbatches=2, stage_boundaries=(0, 3)),
                         comm=no_comm)
    assert layout.pipeline.stage_boundaries == (0, 3)
    from planner.errors import PlannerError
    with pytest.raises(PlannerError, match="stage_boundaries"):
        evaluate(run, blocks, Layout.make(pp=2, num_microbatches=2, stage_boundaries=(0, 9)),
                 comm=no_comm)


def test_memory_tie_break_only_when_the_spread_partition_does_not_fit():
    # 5 equal blocks over 2 stages: (2, 3) and (3, 2) are equally fast (bottleneck 3). The
    # time partition spreads the slack: (0, 2). With stage 0 keeping one micro-batch and
    # stage 1 two, (0, 2) peaks at 3*2*10 = 60 bytes, (0, 3) at 2*2*10 = 40.
    mem_model = ChunkMemory([10.0] * 5, [0.0] * 5, [1, 2])
    starts, worst = balanced_partition([1.0] * 5, 2, memory=mem_model)
    assert starts == (0, 2) and worst == pytest.approx(3.0)     # fits: the time choice stays
    starts, worst = balanced_partition([1.0] * 5, 2, memory=mem_model, cap=50.0)
    assert starts == (0, 3) and worst == pytest.approx(3.0)     # only the lighter one fits
    assert balanced_partition([1.0] * 5, 2)[0] == (0, 2)


def test_layouts_the_executor_refuses_are_refused_here():
    run, blocks = gpt("gpt3-1.3b", gpus=16)
    from planner.errors import PlannerError
    for bad in (Layout.make(dp=4, tp=2, pp=2, num_microbatches=4, schedule="zbv", virtual_stages=2,
                       zero=2),
                Layout.make(dp=8, tp=2, zero=1, compression="powersgd", powersgd_rank=2),
                Layout.make(dp=8, tp=2, compression="fp16"),
                Layout.make(dp=16, zero=2, compression="powersgd", powersgd_rank=2),
                Layout.make(dp=16, zero=1, dp_comm="parameter_server", ps_shards=2)):
        with pytest.raises(PlannerError):
            evaluate(run, blocks, bad, timeline=False)


def test_megatron_pipeline_sends_scatter_and_gather():
    """Megatron (tp > 1, no sp): each tp rank sends 1/tp of the boundary activation and the
    receivers all-gather it over tp, per boundary, micro-batch and direction; the executor
    sends it whole; under sp every implementation sends the rank's slice."""
    from dataclasses import replace
    run, _ = gpt("gpt3-1.3b", gpus=16)
    layout = Layout.make(tp=8, pp=2, microbatch_size=1, num_microbatches=4)
    b, s, h, m = 1, run.model.seq_len, run.model.hidden_size, 4
    act = b * s * h * 2
    sends = {}
    for impl in ("executor", "megatron"):
        r = replace(run, implementation=impl)
        blocks = compute.analytic_costs(r.model, 1, r.cluster.device, "bf16-mixed", 2,
                                        implementation=impl)
        _, pred = evaluate(r, blocks, layout, timeline=False)
        sends[impl] = {}
        for c in pred.collectives:     # forward and backward listed apart: summed here
            if c.group == "pp" or (c.collective, c.bytes_each) == ("all_gather", act):
                key = (c.collective, c.group, c.bytes_each)
                sends[impl][key] = sends[impl].get(key, 0) + c.count
        _, sp = evaluate(r, blocks, replace(layout, tensor=replace(layout.tensor,
                                                                   sequence_parallel=True)),
                         timeline=False)
        assert {c.bytes_each for c in sp.collectives if c.group == "pp"} == {act // 8}
    assert sends["executor"] == {("send_recv", "pp", act): 2 * m}
    assert sends["megatron"] == {("send_recv", "pp", act // 8): 2 * m,
                                 ("all_gather", "tp", act): 2 * m}
    # the transfer costs the send of 1/8 plus the all-gather
    from planner.cost import pp as pp_cost
    from planner.sim import default_comm_time
    comm = default_comm_time(run.cluster, layout)
    assert pp_cost.send_time(comm, act, 8, True) == pytest.approx(
        comm("send_recv", act // 8, "pp") + comm("all_gather", act, "tp"))
