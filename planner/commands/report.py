"""`planner report`: one self-contained HTML file explaining a plan, with its figures beside it.

Writes ``--out`` (default ``reports/<plan name>.html``), ``<stem>-*.png``/``.svg`` figures and
``<stem>-trace.json`` (the simulated step as Chrome trace events, for Perfetto). pandas and
matplotlib are imported inside ``run`` only.
"""
from __future__ import annotations

import os
import sys

from planner.errors import PlannerError
from planner.specs import Metrics, Plan, Validation


def add_arguments(parser) -> None:
    parser.add_argument("--plan", help="plan JSON from `planner plan`/`simulate`")
    parser.add_argument("--convergence", help="JSON written by `planner converge` (loss "
                                              "against steps and time per scheme)")
    parser.add_argument("--metrics", nargs="+", default=[], metavar="METRICS",
                        help="executor metrics JSON of this plan or of its candidates")
    parser.add_argument("--validation", help="JSON written by `planner validate --out`")
    parser.add_argument("--trace-dir", help="the executor's --trace-dir (torch.profiler traces "
                                            "to link)")
    parser.add_argument("--top-k", type=int, default=5, help="candidates in the breakdown plot")
    parser.add_argument("--out", help="HTML file to write (default reports/<plan name>.html)")


def default_out(path: str) -> str:
    return os.path.join("reports", os.path.splitext(os.path.basename(path))[0] + ".html")


def run(args) -> int:
    if args.top_k < 1:
        raise PlannerError(f"--top-k must be >= 1, got {args.top_k}")
    if args.trace_dir and not os.path.isdir(args.trace_dir):
        raise PlannerError(f"--trace-dir {args.trace_dir}: no such directory")
    if not args.plan and not args.convergence:
        raise PlannerError("give --plan (a plan file) and/or --convergence (from `planner "
                           "converge`)")
    if not args.plan and (args.metrics or args.validation or args.trace_dir):
        raise PlannerError("--metrics, --validation and --trace-dir belong to a plan: give "
                           "--plan too")
    from planner.specs.convergence import Convergence
    plan = Plan.load(args.plan) if args.plan else None
    conv = Convergence.load(args.convergence) if args.convergence else None
    metrics = [(path, Metrics.load(path)) for path in args.metrics]
    validation = Validation.load(args.validation) if args.validation else None
    out = args.out or default_out(args.plan or args.convergence)
    if not out.endswith((".html", ".htm")):
        raise PlannerError(f"--out {out}: the report is HTML; give a path ending in .html")
    from planner.report.html import build_report

    files = build_report(plan, out, plan_path=args.plan or "", metrics=metrics,
                         validation=validation, trace_dir=args.trace_dir, top_k=args.top_k,
                         convergence=conv)
    print(f"report   {files.html}")
    if files.trace:
        print(f"trace    {files.trace}  (open in Perfetto: ui.perfetto.dev, or chrome://tracing)")
    print(f"figures  {len(files.figures)} files beside it ({', '.join(sorted({os.path.splitext(f)[1] for f in files.figures}))})",
          file=sys.stdout)
    return 0
