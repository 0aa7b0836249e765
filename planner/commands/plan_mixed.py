"""`planner plan` on a mixed cluster (``planner.search.mixed``): search, write, explain."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace

from planner.errors import PlannerError
from planner.planfile import make_plan, print_text, run_spec, summary


def run_mixed(args, inp, space, path: str) -> int:
    from planner import explain_mixed as em
    from planner.explain import explain
    from planner.search.mixed import search_mixed

    rs = run_spec(inp)
    t0 = time.perf_counter()
    res = search_mixed(rs, inp.costs_on, inp.global_batch_size, space, top_k=args.top_k)
    elapsed = time.perf_counter() - t0
    chosen = res.chosen
    if chosen is None:
        raise PlannerError(f"no layout of cluster {inp.cluster.name} fits for global batch "
                           f"{inp.global_batch_size}, on any of its kinds of device or on all")
    layout, prediction, split, speeds = _final(rs, inp, chosen)
    tokens = inp.global_batch_size * inp.model.seq_len
    ranked = [(lay, pred) for lay, pred, _ in chosen.ranked]
    band, why_band = inp.band
    text = f"{em.why(res, tokens, speeds)} {explain(ranked, band=band, band_source=why_band)}"
    used = replace(inp, cluster=chosen.cluster, num_devices=chosen.num_devices)
    plan = make_plan(used, layout, prediction, chosen.candidates, text)
    plan.save(path)
    if args.format == "json":
        out = summary(plan, path)
        out["explanation"] = text
        out["split"] = split
        out["options"] = [{"label": o.label, "kinds": list(o.kinds), "search": o.stats,
                           **(em.throughput(o, tokens) if o.best else {}),
                           "layout": o.best[0].to_dict() if o.best else None,
                           "chosen": o is chosen} for o in res.options]
        out["search_wall_s"] = elapsed
        json.dump(out, sys.stdout, indent=2)
        print()
        return 0
    print_text(plan, path)
    print(f"option      {chosen.label} (of {len(res.options)}, {elapsed:.2f} s)")
    for line in split:
        print(f"split       {line}")
    for line in em.compare(res, tokens):
        print(f"compared    {line}")
    print(f"why         {text}")
    return 0


def _final(rs, inp, chosen):
    """The chosen layout simulated again with its timeline, the split it makes, and the time
    of one micro-batch through the model on one device of each kind used."""
    from planner import search
    from planner.explain_mixed import node_ranks
    from planner.sim import mixed as msim

    layout, _, step = chosen.best
    run = replace(rs, cluster=chosen.cluster)
    if step is None:                                 # one kind: the homogeneous simulator
        device = chosen.cluster.device
        layout, pred = search.evaluate_one(run, lambda b: inp.costs_on(device, b), layout)
        split = [node_ranks(chosen.cluster), "one kind of device: an even split"]
    else:
        mx = msim.MixedRun(run, inp.costs_on)
        layout, pred, step = msim.evaluate_mixed(mx, layout, timeline=True)
        from planner.explain_mixed import describe_split
        split = describe_split(mx, step, inp.model)
    kinds = msim.Kinds(rs, inp.costs_on)          # every kind of the cluster, used or not
    probe = msim.even(layout, layout.num_microbatches)
    speeds = {d.name: kinds.bundle(k, probe).total_s for k, d in enumerate(kinds.devices)}
    return layout, pred, split, speeds
