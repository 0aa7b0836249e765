"""What `planner plan` says about a mixed cluster: how the work was split, the options it
weighed, and what the slow devices bought.

Figures per option (``planner.search.mixed.Option``): predicted step time, throughput in
tokens (sequences times sequence length) per second, tokens per device-hour (throughput x 3600 /
devices used: what a device-hour of this cluster buys) and MFU against the peaks of the devices
used. Every number comes from the simulations the search ran.
"""
from __future__ import annotations

from planner.explain import format_duration


def throughput(option, tokens_per_step: int) -> dict:
    """Step, tokens/s, tokens per device-hour and MFU of an option's best layout."""
    layout, pred, _ = option.best
    tps = tokens_per_step / pred.step_time_s
    return {"step_time_s": pred.step_time_s, "tokens_per_s": tps,
            "tokens_per_device_hour": tps * 3600.0 / layout.world_size, "mfu": pred.mfu,
            "devices": layout.world_size}


def node_ranks(cluster) -> str:
    """Which nodes take which node ranks: "node ranks 0-1 H100-SXM5-80GB, 2-3 a100, ..."."""
    parts, first = [], 0
    for g in cluster.groups:
        last = first + g.num_nodes - 1
        parts.append(f"{first}{'' if last == first else f'-{last}'} {g.device.name}")
        first = last + 1
    return "node ranks " + ", ".join(parts)


def describe_split(mx, step, spec) -> list[str]:
    """Lines saying where each pipeline stage's blocks run and how many micro-batches each
    kind of replica takes (with its time alone, before waiting for the others)."""
    layout = step.layout
    names = [d.name for d in mx.kinds.devices]
    lines = [node_ranks(mx.cluster)]
    starts = list(layout.pipeline.stage_boundaries or (0,)) + [spec.num_blocks]
    owners = [layout.pipeline.kind.chunk_rank(c, layout.pp) for c in range(layout.num_chunks)]
    seen = set()
    for rep, alone in zip(step.replicas, step.alone_s):
        if layout.pp > 1 and rep.kinds not in seen:
            seen.add(rep.kinds)
            blocks = [0] * layout.pp
            for c, o in enumerate(owners):
                blocks[o] += starts[c + 1] - starts[c]
            lines.append("pipeline " + _stages(rep.kinds, blocks, names)
                         + f" (of {spec.num_blocks} blocks: embedding, {spec.num_layers} "
                         "layers, head)")
        kinds = sorted({names[k] for k in rep.kinds})
        rows = rep.microbatches * layout.microbatch_size
        lines.append(f"{len(rep.members)} replica(s) on {' + '.join(kinds)}: "
                     f"{rep.microbatches} micro-batches of {layout.microbatch_size} "
                     f"({rows} sequences each), {format_duration(alone)} alone")
    lines.append(f"step {format_duration(step.step_time_s)}: data parallelism syncs at the "
                 "slowest replica")
    return lines


def _stages(kinds, blocks, names) -> str:
    """ "ranks 0-3 on A100 hold 6+5+5+5 = 21 blocks, ranks 4-7 on H100 hold ..." """
    runs: list = []
    for s, k in enumerate(kinds):
        if runs and runs[-1][0] == k:
            runs[-1][1].append(s)
        else:
            runs.append([k, [s]])
    out = []
    for k, stages in runs:
        span = f"{stages[0]}" if len(stages) == 1 else f"{stages[0]}-{stages[-1]}"
        counts = [blocks[s] for s in stages]
        held = "+".join(map(str, counts)) + (f" = {sum(counts)}" if len(counts) > 1 else "")
        out.append(f"rank{'s' if len(stages) > 1 else ''} {span} on {names[k]} hold {held}")
    return ", ".join(out)


def _row(label: str, figures: dict) -> str:
    return (f"{label:34} {figures['devices']:4d} devices  "
            f"{format_duration(figures['step_time_s']):>10}/step  "
            f"{figures['tokens_per_s']:10.0f} tokens/s  "
            f"{figures['tokens_per_device_hour'] / 1e6:8.2f} M tokens/device-hour  "
            f"MFU {figures['mfu']:5.1%}")


def compare(result, tokens_per_step: int) -> list[str]:
    """One line per option tried, the chosen one marked."""
    out = []
    for o in result.options:
        if o.best is None:
            out.append(f"{o.label:34} nothing fits")
            continue
        mark = "  <- chosen" if o is result.chosen else ""
        out.append(_row(o.label, throughput(o, tokens_per_step)) + mark)
    return out


def _fastest_alone(result):
    """The single-kind option with the fastest step: what the fast devices do alone."""
    alone = [o for o in result.options if len(o.kinds) == 1 and o.best is not None]
    return min(alone, key=lambda o: o.best[1].step_time_s) if alone else None


def why(result, tokens_per_step: int, speeds: dict) -> str:
    """A paragraph: what the chosen option buys over the fast devices alone and over the even
    split, in throughput and in tokens per device-hour, and why (the kinds' speeds)."""
    chosen = result.chosen
    c = throughput(chosen, tokens_per_step)
    alone, even = _fastest_alone(result), result.even
    text = []
    if speeds:
        fastest = min(speeds.values())
        text.append("One micro-batch through the whole model on one device takes "
                    + ", ".join(f"{format_duration(t)} on {name} ({t / fastest:.2f}x)"
                                for name, t in sorted(speeds.items(), key=lambda kv: kv[1]))
                    + ".")
    if alone is not None and alone is not chosen:
        a = throughput(alone, tokens_per_step)
        gain = c["tokens_per_s"] / a["tokens_per_s"] - 1.0
        per_hour = c["tokens_per_device_hour"] / a["tokens_per_device_hour"] - 1.0
        text.append(f"The {c['devices'] - a['devices']} more devices of \"{chosen.label}\" "
                    f"buy {gain:+.1%} throughput over {alone.label} ({a['devices']} devices), "
                    f"at {per_hour:+.1%} tokens per device-hour.")
    elif alone is chosen:
        text.append(f"The other devices do not pay: every option using them is slower than "
                    f"{alone.label} for this batch.")
    ranked = [o for o in result.options if o.best is not None]
    by_hour = max(ranked, key=lambda o: throughput(o, tokens_per_step)["tokens_per_device_hour"])
    if by_hour is not chosen:
        text.append(f"The plan is ranked by step time (throughput for this global batch); by "
                    f"tokens per device-hour {by_hour.label} would win.")
    if even is not None and even is not chosen and even.best is not None:
        e = throughput(even, tokens_per_step)
        text.append(f"The even split over all nodes ({even.best[0].describe()}) runs "
                    f"{format_duration(e['step_time_s'])} per step: every replica waits for "
                    f"the slowest devices, so the split by speed is "
                    f"{e['step_time_s'] / c['step_time_s']:.2f}x faster.")
    return " ".join(text)
