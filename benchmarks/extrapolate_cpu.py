"""How well does a measured profile extrapolate? (issue 7, item 3)

1. Micro-batch: profile a model at micro-batch 1 and 2, predict 4 and 8 with
   ``planner.profile.extrapolate`` (time = overhead + FLOPs / measured throughput, the line fitted
   through the two sizes), profile 4 and 8, and print predicted against measured per block and for
   the whole model. The proportional model (scale the micro-batch 2 profile, no overhead) is shown
   beside it for comparison.
2. Tensor parallel: measure rank 0's Megatron shard of one transformer block (tp 2 and 4) on the
   same input and compare its time and bytes with the prediction from the full block.

    python benchmarks/extrapolate_cpu.py [--larger] [--repeats 20] [--timer cpu|wall]

Timings on a shared 2-core machine are noisy (a few % between runs, more for sub-millisecond
blocks; several times slower while other processes hold the cores). By default this benchmark
times with process CPU time on one thread (``--timer cpu``), which equals wall time on an idle
core and ignores time the core spends on other processes; pass ``--timer wall`` on a quiet
machine. Read the errors as indicative and rerun before quoting them.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from planner.models import resolve_model  # noqa: E402
from planner.models.build import build_model  # noqa: E402
from planner.profile.compute import measure_blocks, profile_model  # noqa: E402
from planner.profile.extrapolate import extrapolate_block, extrapolate_profile  # noqa: E402
from planner.specs import ModelSpec  # noqa: E402

# Four times the work per layer of gpt-tiny, still seconds on one core.
LARGER = ModelSpec("gpt-cpu-small", "gpt", num_layers=4, hidden_size=256, num_heads=8,
                   seq_len=128, vocab_size=1024)


def pct(pred, meas):
    return 100.0 * (pred - meas) / meas


def median_profile(passes):
    """Per-block and whole-step medians over profiles of the same model and micro-batch."""
    def med(values):
        return statistics.median(values)
    blocks = tuple(replace(b, **{f: med([getattr(p.blocks[b.index], f) for p in passes])
                                 for f in ("forward_time_s", "backward_time_s",
                                           "forward_time_spread_s", "backward_time_spread_s")})
                   for b in passes[0].blocks)
    return replace(passes[0], blocks=blocks,
                   **{f: med([getattr(p, f) for p in passes])
                      for f in ("step_time_s", "step_time_spread_s", "optimizer_step_time_s")})


def micro_batch_study(spec, measure_mbs, predict_mbs, args):
    # Passes alternate over the micro-batch sizes, so a slow spell of the shared machine does
    # not land on one size only (which the two-point fit would amplify).
    runs = {mb: [] for mb in measure_mbs + predict_mbs}
    for _ in range(args.passes):
        for mb in runs:
            runs[mb].append(profile_model(spec, mb, repeats=args.repeats, warmup=args.warmup,
                                          timer=args.timer))
    profiles = {mb: median_profile(p) for mb, p in runs.items()}
    base = [profiles[mb] for mb in measure_mbs]
    print(f"\n== {spec.name}: measured at micro-batch {measure_mbs}, predicting {predict_mbs} "
          f"(median of {args.passes} passes x {args.repeats} runs, 1 thread, {args.timer} "
          "time) ==")
    summary = []
    for mb in predict_mbs:
        meas = profiles[mb]
        pred = extrapolate_profile(base, mb)
        prop = extrapolate_profile(base[-1:], mb)
        print(f"-- micro-batch {mb}: ms predicted / measured (error %), proportional error %")
        print(f"{'#':>3} {'block':<17} {'fwd pred':>9} {'fwd meas':>9} {'err':>7} {'prop':>7}"
              f"  {'bwd pred':>9} {'bwd meas':>9} {'err':>7} {'prop':>7}")
        errs = []
        for p, m, q in zip(pred.blocks, meas.blocks, prop.blocks):
            ef, eb = pct(p.forward_time_s, m.forward_time_s), pct(p.backward_time_s,
                                                                   m.backward_time_s)
            errs += [abs(ef), abs(eb)]
            print(f"{m.index:>3} {m.name[:17]:<17} {p.forward_time_s * 1e3:>9.3f} "
                  f"{m.forward_time_s * 1e3:>9.3f} {ef:>+7.1f} "
                  f"{pct(q.forward_time_s, m.forward_time_s):>+7.1f}  "
                  f"{p.backward_time_s * 1e3:>9.3f} {m.backward_time_s * 1e3:>9.3f} {eb:>+7.1f} "
                  f"{pct(q.backward_time_s, m.backward_time_s):>+7.1f}")
        sums = [sum(b.forward_time_s + b.backward_time_s for b in x.blocks)
                for x in (pred, meas, prop)]
        e_sum, e_step = pct(sums[0], sums[1]), pct(pred.step_time_s, meas.step_time_s)
        print(f"blocks fwd+bwd: predicted {sums[0] * 1e3:.2f} ms, measured {sums[1] * 1e3:.2f} ms "
              f"({e_sum:+.1f}%; proportional {pct(sums[2], sums[1]):+.1f}%)")
        print(f"whole step: predicted {pred.step_time_s * 1e3:.2f} ms, measured "
              f"{meas.step_time_s * 1e3:.2f} ms (IQR {meas.step_time_spread_s * 1e3:.2f}) "
              f"({e_step:+.1f}%; proportional {pct(prop.step_time_s, meas.step_time_s):+.1f}%)")
        print(f"per-block |error|: median {statistics.median(errs):.1f}%, max {max(errs):.1f}%")
        summary.append((spec.name, mb, statistics.median(errs), max(errs), e_sum, e_step))
    return profiles, summary


def shard_block(block, tp):
    """Rank 0's Megatron shard of a TransformerBlock: column-parallel q/k/v/fc keep the first
    1/tp of their output features, row-parallel out projections the first 1/tp of their inputs
    (the all-reduce that sums partial outputs is communication, not measured here)."""
    shard = copy.deepcopy(block)

    def cut(lin, column):
        n = (lin.out_features if column else lin.in_features) // tp
        new = nn.Linear(lin.in_features if column else n, n if column else lin.out_features)
        with torch.no_grad():
            new.weight.copy_(lin.weight[:n] if column else lin.weight[:, :n])
            new.bias.copy_(lin.bias[:n] if column else lin.bias)
        return new

    for name in ("q", "k", "v"):
        setattr(shard.attn, name, cut(getattr(shard.attn, name), True))
    shard.attn.proj = cut(shard.attn.proj, False)
    shard.mlp.fc = cut(shard.mlp.fc, True)
    shard.mlp.proj = cut(shard.mlp.proj, False)
    return shard


def tp_study(spec, profiles, measure_mbs, mb, tps, args):
    torch.set_num_threads(1)
    model = build_model(spec)
    tokens, _ = model.synthetic_batch(mb, torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = model.blocks[0](tokens)
    block = model.blocks[1]
    blocks = [block] + [shard_block(block, t) for t in tps]
    measured = measure_blocks(blocks, [x] * len(blocks), args.repeats, args.warmup,
                              data_input=False, timer=args.timer)
    # All layers are identical: fit through every layer's points, as extrapolate_profile does.
    base = [(m, b) for m in measure_mbs for b in profiles[m].blocks if b.kind == "block"]
    print(f"\n== {spec.name}: tensor-parallel shard of block 1 at micro-batch {mb}, predicted "
          f"from the full layers at {measure_mbs} ==")
    print(f"{'tp':>3} {'fwd pred':>9} {'fwd meas':>9} {'err':>7}  {'bwd pred':>9} "
          f"{'bwd meas':>9} {'err':>7}  {'saved pred':>11} {'saved meas':>11}  "
          f"{'GFLOP pred':>10} {'meas':>7}  {'params pred':>11} {'meas':>9}")
    for t, m in zip([1] + list(tps), measured):
        p = extrapolate_block(base, mb, tp=t)
        print(f"{t:>3} {p.forward_time_s * 1e3:>9.3f} {m.forward_time_s * 1e3:>9.3f} "
              f"{pct(p.forward_time_s, m.forward_time_s):>+7.1f}  "
              f"{p.backward_time_s * 1e3:>9.3f} {m.backward_time_s * 1e3:>9.3f} "
              f"{pct(p.backward_time_s, m.backward_time_s):>+7.1f}  "
              f"{p.saved_activation_bytes:>11,} {m.saved_activation_bytes:>11,}  "
              f"{p.forward_flops / 1e9:>10.4f} {m.forward_flops / 1e9:>7.4f}  "
              f"{p.param_count:>11,} {m.param_count:>9,}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--larger", action="store_true", help=f"also {LARGER.name}")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--passes", type=int, default=3,
                        help="profiles per micro-batch, alternating sizes; medians are used")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--timer", choices=("cpu", "wall"), default="cpu",
                        help="process CPU time (default; steady on a shared machine) or wall")
    args = parser.parse_args()
    measure_mbs, predict_mbs = [1, 2], [4, 8]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; noisy shared machine: errors of a "
          "few % are within run-to-run variation")
    summary = []
    for spec in [resolve_model("gpt-tiny")] + ([LARGER] if args.larger else []):
        profiles, rows = micro_batch_study(spec, measure_mbs, predict_mbs, args)
        summary += rows
        tp_study(spec, profiles, measure_mbs, 8, (2, 4), args)
    print("\n== summary: model, micro-batch, per-block |err| median / max, blocks-sum err, "
          "step err ==")
    for name, mb, med, mx, e_sum, e_step in summary:
        print(f"{name:<14} mb={mb}: {med:5.1f}% / {mx:5.1f}%   sum {e_sum:+6.1f}%   "
              f"step {e_step:+6.1f}%")


if __name__ == "__main__":
    main()
