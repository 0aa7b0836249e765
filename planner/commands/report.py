"""`planner report`: a report directory explaining a plan: ``index.html`` (self-contained),
its figures as PNG and SVG, and ``trace.json`` (the simulated step as Chrome trace events, for
Perfetto).

``--out`` is the directory (default ``reports/<plan name>/``). Every input is checked first;
the report is built in a temporary directory and renamed into place, so a refused or failed
run writes nothing and an existing report is replaced whole or not at all. pandas and
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
    parser.add_argument("--out", help="report directory to write (index.html, figures, "
                                      "trace.json; default reports/<plan name>/)")


def default_out(path: str) -> str:
    """reports/<name of the plan (or convergence) file>/"""
    return os.path.join("reports", os.path.splitext(os.path.basename(path))[0])


def run(args) -> int:
    from planner.outputs import check_writable

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
    out = args.out or default_out(args.plan or args.convergence)
    if out.endswith((".html", ".htm")):
        raise PlannerError(f"--out {out}: the report is a directory (index.html, figures, "
                           f"trace.json): give --out {os.path.splitext(out)[0]}")
    from planner.specs.convergence import Convergence
    plan = Plan.load(args.plan) if args.plan else None
    conv = Convergence.load(args.convergence) if args.convergence else None
    metrics = [(path, Metrics.load(path)) for path in args.metrics]
    validation = Validation.load(args.validation) if args.validation else None
    check_writable("--out", os.path.dirname(os.path.abspath(out)), "dir")
    from planner.report.html import build_report

    try:
        files = build_report(plan, out, plan_path=args.plan or "", metrics=metrics,
                             validation=validation, trace_dir=args.trace_dir, top_k=args.top_k,
                             convergence=conv)
    except OSError as err:
        raise PlannerError(f"--out {out}: cannot write the report ({err.strerror or err}); "
                           "nothing was written and an earlier report there is unchanged"
                           ) from None
    print(f"report   {files.html}")
    if files.trace:
        print(f"trace    {files.trace}  (open in Perfetto: ui.perfetto.dev, or chrome://tracing)")
    kinds = ", ".join(sorted({os.path.splitext(f)[1] for f in files.figures}))
    print(f"figures  {len(files.figures)} files in {files.directory} ({kinds})", file=sys.stdout)
    return 0
