"""`planner export --plan plan.json --to torchtitan|megatron|deepspeed`: the plan's layout as
that engine's configuration (``planner.export``), so the plan can run on the engine a user
already has. What the engine cannot express is refused in one line, before anything is
written; the file is written atomically (default: the plan's path with the engine and its
suffix, e.g. ``plan.torchtitan.toml``).
"""
from __future__ import annotations

import os



def add_arguments(parser) -> None:
    from planner.export import ENGINES
    parser.add_argument("--plan", required=True, help="plan JSON from `planner plan`/`simulate`")
    parser.add_argument("--to", required=True, choices=ENGINES,
                        help="torchtitan: TOML job config; megatron: Megatron-LM arguments "
                             "(a bash array); deepspeed: DeepSpeed JSON config")
    parser.add_argument("--out", help="file to write (default: beside the plan, "
                                      "<plan>.<engine>.<toml|sh|json>); - prints it")


def run(args) -> int:
    from planner import export, serde
    from planner.outputs import check_writable
    from planner.specs import Plan

    plan = Plan.load(args.plan)
    engine = export.module(args.to)
    out = args.out or os.path.splitext(args.plan)[0] + f".{args.to}{engine.SUFFIX}"
    if out != "-":
        check_writable("--out", out)
    text = engine.render(plan)                 # refuses before anything is written
    if out == "-":
        print(text, end="")
        return 0
    serde.write_text(out, text)
    print(out)
    return 0
