"""The search: its bounds really are lower bounds, it finds what brute force finds, flags fix
dimensions, and plans on fixed inputs match the golden files."""
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from planner import schedules, sim
from planner import search as S
from planner.search import space as SP
from planner.clusters import dgx_a100
from planner.cost import compute
from planner.explain import explain
from planner.models import PRESETS

GIB = 2**30
GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


def small_run(memory_gib=6):
    spec = PRESETS["gpt2-small"]
    cl = dgx_a100().with_size(8)
    cl = replace(cl, device=replace(cl.device, memory_bytes=memory_gib * GIB))
    run = sim.RunSpec(spec, cl, "bf16-mixed", "adam")
    return run, (lambda b: compute.analytic_costs(spec, b, cl.device, "bf16-mixed", 2))


def all_layouts(run, blocks_for, n, batch, space):
    """Every layout the search enumerates, by the same rules (``planner.search.space``)."""
    spec = run.model
    for tp in SP.tp_sizes(spec, n, run.cluster.devices_per_node, space):
        for cp in SP.cp_sizes(spec, n // tp, space):
            for pp in SP.divisors(n // (tp * cp)):
                dp = n // (tp * cp * pp)
                if pp > spec.num_blocks or batch % dp:
                    continue
                for ep in SP.ep_sizes(spec, dp * cp, space):
                    for b in SP.divisors(batch // dp):
                        m = batch // (dp * b)
                        for name, v in SP.schedule_options(pp, m, spec.num_blocks, space):
                            for zero, rc, sp in SP.leaves(spec, dp, tp, pp, b, m, name, v, space,
                                                          cp=cp, ep=ep):
                                yield (dp, tp, pp, b, m, name, v, zero, rc, sp, cp, ep, False)


def check_bounds_and_brute_force(run, blocks_for, n, batch, space, least=50):
    """Every bound below what the simulator says, and the search's top 5 = brute force's."""
    blocks = {}
    truth = []
    for key in all_layouts(run, blocks_for, n, batch, space):
        dp, tp, pp, b, m, name, v, zero, rc, sp, cp, ep, off = key
        layout = SP.make_layout(key, space)
        blk = blocks.setdefault(b, tuple(blocks_for(b)))
        comm = sim.default_comm_time(run.cluster, layout)
        filled, pred = sim.evaluate(run, blk, layout, comm, timeline=False)
        bundle = sim.rows_bundle(run, blk, layout, comm)
        kind = schedules.get(name)
        bound = sim.step_floor(run, layout.dims, layout.data, kind, m, bundle.total_s,
                               bundle.slowest_s, bundle.params, comm, bundle.expert_params)
        assert bound <= pred.step_time_s * (1 + 1e-9), key
        slowest = S.least_bottleneck(bundle.block_s, pp * v, bundle.send_s)
        assert m * slowest <= pred.step_time_s * (1 + 1e-9), key
        _, costs, _ = sim.prepare(run, blk, layout, comm)
        assert sim.chain_bound(run, filled, costs, comm) <= pred.step_time_s * (1 + 1e-9), key
        assert sim.memory_floor(run, layout.dims, layout.data, kind, m, v, bundle.params,
                                bundle.activation_bytes) <= \
            pred.peak_memory_bytes * (1 + 1e-9), key
        if pred.fits:
            truth.append((pred.step_time_s, key))
    assert len(truth) > least
    res = S.search(run, blocks_for, n, batch, space, top_k=5)
    # The search lists a layout with more recomputation only if none with less fits (it
    # cannot be faster): so does the reference.
    fits = {key for _, key in truth}
    order = SP.RECOMPUTE_ORDER

    def dominated(key):
        lighter = order[:order.index(key[8])]
        return any(key[:8] + (r,) + key[9:] in fits for r in lighter)

    truth = sorted((t, k) for t, k in truth if not dominated(k))
    found = [p.step_time_s for _, p in res.ranked]
    assert found == pytest.approx([t for t, _ in truth[:5]], rel=1e-9)
    assert res.simulated < len(truth)          # the bounds spared some simulations
    assert res.enumerated == sum(1 for _ in all_layouts(run, blocks_for, n, batch, space))
    return res


def test_bounds_hold_and_search_matches_brute_force():
    run, blocks_for = small_run()
    check_bounds_and_brute_force(run, blocks_for, 8, 16, S.Space(max_virtual_stages=3))


def test_bounds_hold_with_experts_and_context_parallel():
    """A small MoE, cp searched from 32 tokens on: ep and cp values in the space, bounds still
    lower bounds, the search still brute force's top 5."""
    spec = replace(PRESETS["moe-tiny"], seq_len=256)
    cl = dgx_a100().with_size(8)
    cl = replace(cl, device=replace(cl.device, memory_bytes=1 * GIB, reserved_memory_bytes=0))
    run = sim.RunSpec(spec, cl, "bf16-mixed", "adam")

    def blocks_for(b):
        return compute.analytic_costs(spec, b, cl.device, "bf16-mixed", 2)

    space = S.Space(max_virtual_stages=2, cp_min_seq_len=32)
    keys = list(all_layouts(run, blocks_for, 8, 8, space))
    assert {k[10] for k in keys} >= {1, 2, 4} and {k[11] for k in keys} >= {1, 2, 4}
    res = check_bounds_and_brute_force(run, blocks_for, 8, 8, space, least=20)
    assert res.ranked


def test_fixed_dimensions_are_respected():
    run, blocks_for = small_run(memory_gib=80)
    space = S.Space(tp=2, pp=2, schedule="interleaved-1f1b", zero=2, recompute="selective")
    res = S.search(run, blocks_for, 8, 16, space, top_k=3)
    assert res.ranked
    for layout, _ in res.ranked:
        assert (layout.tp, layout.pp, layout.pipeline.schedule, layout.data.zero, layout.recompute) == \
            (2, 2, "interleaved-1f1b", 2, "selective")
        assert layout.pipeline.virtual_stages >= 2 and layout.dp == 2


def test_explanation_names_the_differing_terms():
    run, blocks_for = small_run(memory_gib=80)
    res = S.search(run, blocks_for, 8, 16, S.Space(), top_k=2)
    text = explain(res.ranked)
    (w, wp), (r, rp) = res.ranked
    assert w.describe() in text and r.describe() in text
    assert "beats" in text and "%" in text
    assert wp.step_time_s <= rp.step_time_s


def test_combinations_the_executor_refuses_are_not_proposed(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "planner.cli", "plan", "--model", "gpt2-small",
                           "--cluster", "dgx-a100-80gb", "--gpus", "8", "--global-batch", "16",
                           "--dp", "4", "--tp", "2", "--zero", "1", "--compression",
                           "powersgd", "--out",
                           str(tmp_path / "p.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "executor" in proc.stderr


def test_nothing_fits_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-m", "planner.cli", "plan", "--model", "gpt3-175b",
                           "--cluster", "dgx-a100-80gb", "--gpus", "8", "--global-batch", "8"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: no layout fits in 80.00 GiB")


def test_planning_imports_no_torch():
    code = ("import sys; import planner.cli, planner.commands.plan, planner.commands.simulate, "
            "planner.search, planner.sim, planner.explain; "
            "bad = [m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_simulate_json_has_the_promised_fields(tmp_path):
    out = tmp_path / "plan.json"
    proc = subprocess.run(
        [sys.executable, "-m", "planner.cli", "simulate", "--model", "gpt3-1.3b", "--cluster",
         "dgx-a100-80gb", "--gpus", "16", "--global-batch", "32", "--tp", "2", "--pp", "2",
         "--microbatch-size", "2", "--schedule", "zbv", "--zero", "0", "--sequence-parallel",
         "--format", "json", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    for key in ("step_time_s", "tflops_per_device", "mfu", "peak_memory_bytes", "memory", "fits",
                "layout", "breakdown_s", "collectives"):
        assert key in data, key
    assert data["layout"]["pipeline"]["schedule"] == "zbv"
    assert data["layout"]["pipeline"]["virtual_stages"] == 2
    assert data["peak_memory_bytes"] == max(r["parameters_bytes"] + r["gradients_bytes"]
                                            + r["optimizer_bytes"] + r["activations_bytes"]
                                            + r["buffers_bytes"] for r in data["memory"])
    from planner.specs import Plan
    plan = Plan.load(str(out))
    assert plan.layout.pipeline.stage_boundaries and plan.prediction.timeline


def _close(a, b, path=""):
    """Field-by-field comparison: numbers within 1e-6 relative, everything else equal."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-12), path
    else:
        assert a == b, path


@pytest.mark.parametrize("name", sorted(f[:-5] for f in os.listdir(GOLDEN)
                                        if f.endswith(".json")))
def test_golden_plans(name):
    """Regenerate after an intended change of the cost model: python tests/golden/regenerate.py"""
    sys.path.insert(0, GOLDEN)
    try:
        import regenerate
    finally:
        sys.path.pop(0)
    with open(os.path.join(GOLDEN, name + ".json"), encoding="utf-8") as fh:
        expected = json.load(fh)
    _close(regenerate.compute(name), expected, name)
