"""`planner` command line: parse, dispatch to planner/commands/<name>.py, print errors.

A user mistake (``PlannerError``) prints one line, ``error: ...``, and exits 2. Command modules
import torch, pandas or matplotlib only inside ``run`` so that ``planner plan`` starts fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from planner.errors import PlannerError

# name -> (module, one-line help). Order is the order `planner --help` shows.
COMMANDS = {
    "demo": ("planner.commands.demo",
             "end to end on built-in defaults: profile, plan, run, predicted vs measured"),
    "profile": ("planner.commands.profile",
                "measure a model's per-block costs here (--network: the links, under torchrun; "
                "--gemm: matmul efficiency into a device model)"),
    "plan": ("planner.commands.plan", "search layouts and write the best as a plan file"),
    "simulate": ("planner.commands.simulate", "evaluate one complete layout; write a plan file"),
    "compare": ("planner.commands.compare", "a plan's prediction against executor metrics"),
    "report": ("planner.commands.report", "HTML report with timelines, memory and candidates"),
    "validate": ("planner.commands.validate",
                 "run the executor on top layouts and measure prediction error"),
    "export": ("planner.commands.export",
               "write a plan as a torchtitan, Megatron-LM or DeepSpeed configuration"),
    "models": ("planner.commands.models", "list the model presets with their parameter counts"),
    "clusters": ("planner.commands.clusters", "list the cluster presets and their key figures"),
    "converge": ("planner.commands.converge",
                 "train under each data-parallel scheme: loss against steps and time, bytes"),
}
NETWORK_MODULE = "planner.commands.profile_network"
GEMM_MODULE = "planner.commands.profile_gemm"


class _Parser(argparse.ArgumentParser):
    """Usage errors (a bad flag value, a missing flag) are one line like every other error,
    not argparse's usage block; `--help` still shows the usage."""

    def error(self, message):
        raise PlannerError(f"{self.prog}: {message} (see {self.prog} --help)")


def _load(module: str):
    return importlib.import_module(module)


def _presets_epilog() -> str:
    """The preset names (`planner models` and `planner clusters` give their figures)."""
    import textwrap
    from planner.clusters import PRESETS as CLUSTERS
    from planner.models import PRESETS as MODELS

    def wrap(head: str, names) -> str:
        return textwrap.fill(head + ", ".join(names), width=96, subsequent_indent="  ")
    return (wrap("model presets (planner models): ", MODELS) + "\n"
            + wrap("cluster presets (planner clusters): ", CLUSTERS))


def build_parser(argv) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="planner", description="Profile, simulate and plan distributed training layouts.",
        epilog=_presets_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    wanted = argv[0] if argv and not argv[0].startswith("-") else None
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen command's module is imported; --help lists them all without imports.
        if name == wanted:
            if name == "profile" and "--network" in argv:
                module = NETWORK_MODULE
                sp.add_argument("--network", action="store_true",
                                help="measure collectives over the links (run under torchrun)")
            elif name == "profile" and "--gemm" in argv:
                module = GEMM_MODULE       # adds --gemm itself
            mod = _load(module)
            mod.add_arguments(sp)
            sp.set_defaults(_run=mod.run)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(argv).parse_args(argv)
        return int(args._run(args) or 0)
    except PlannerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `planner plan ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
