"""The simulated step as a Chrome trace-event file that Perfetto and chrome://tracing open.

Format: the Trace Event Format (Google, "Trace Event Format", docs.google.com/document/d/
1CvAClvFfyA5R-PhYUmn5OOQtYMH4h6I0nSsKchNAySU): a JSON object whose ``traceEvents`` holds
complete events (``"ph": "X"``, ``ts`` and ``dur`` in microseconds) and metadata events
(``"ph": "M"``, ``process_name`` / ``thread_name``). One process (``pid``) per rank, one thread
(``tid``) per stream, so each rank shows its compute and communication streams as two tracks,
as torch.profiler's own traces do. Pure Python: no pandas, matplotlib or torch.
"""
from __future__ import annotations

import json
import os

from planner.specs import Prediction, TimelineEvent

# Streams the simulator uses (planner.sim): compute, pipeline sends, data-parallel
# collectives; the tracks appear in this order, any others after them, sorted.
STREAM_ORDER = ("compute", "p2p", "comm")

_COMM_WORDS = ("all_reduce", "allreduce", "all_gather", "allgather", "reduce_scatter",
               "reducescatter", "all_to_all", "broadcast", "send", "recv", "bucket", "comm")


def op_kind(event: TimelineEvent) -> str:
    """Classify an event for colours and trace categories, from its stream and name.

    planner.sim names compute operations ``F<mb> c<chunk>`` (forward), ``B<mb>``
    (backward), ``I<mb>``/``W<mb>`` (input and weight gradient of zero-bubble schedules) and
    ``optimizer``; its ``p2p`` stream holds pipeline sends and its ``comm`` stream the
    data-parallel collectives (buckets, FSDP all-gathers and reduce-scatters, parameter-server
    push/pull). A collective whose name carries a group (``tp``/``pp``/``dp``) is filed there.
    """
    name = event.name.lower()
    words = name.replace("/", " ").replace(":", " ").replace("-", " ").split()
    if "optimizer" in name:
        return "optimizer"
    if "recompute" in name:
        return "recompute"
    if event.stream == "p2p":
        return "pp comm"
    if event.stream != "compute" or any(w in name for w in _COMM_WORDS):
        for group in ("tp", "pp", "dp"):
            if group in words or f"[{group}]" in name or name.startswith(f"{group}_"):
                return f"{group} comm"
        if "send" in name or "recv" in name:
            return "pp comm"
        return "dp comm" if event.stream == "comm" or "bucket" in name else "comm"
    first, digit = name[:1], name[1:2].isdigit()
    if first == "f" and digit or name.startswith("fwd") or "forward" in name:
        return "forward"
    if first in "bi" and digit or name.startswith("bwd") or "backward" in name:
        return "backward"
    if first == "w" and digit:
        return "weight grad"
    return "other"


def streams_of(events) -> list[str]:
    seen = {e.stream for e in events}
    return [s for s in STREAM_ORDER if s in seen] + sorted(seen - set(STREAM_ORDER))


def chrome_trace(prediction: Prediction, title: str = "", stage_of: dict | None = None) -> dict:
    """Trace-event JSON object for ``prediction.timeline``.

    ``stage_of`` maps rank -> pipeline stage for the process labels (default: from
    ``prediction.memory``). Times convert seconds -> microseconds (the format's unit).
    """
    events = prediction.timeline
    if stage_of is None:
        stage_of = {m.rank: m.stage for m in prediction.memory}
    streams = streams_of(events)
    tid = {s: i for i, s in enumerate(streams)}
    out = []
    for rank in sorted({e.rank for e in events}):
        label = f"rank {rank}" + (f" (stage {stage_of[rank]})" if rank in stage_of else "")
        out.append({"ph": "M", "name": "process_name", "pid": rank, "tid": 0,
                    "args": {"name": label}})
        out.append({"ph": "M", "name": "process_sort_index", "pid": rank, "tid": 0,
                    "args": {"sort_index": rank}})
        for stream, t in tid.items():
            out.append({"ph": "M", "name": "thread_name", "pid": rank, "tid": t,
                        "args": {"name": stream}})
            out.append({"ph": "M", "name": "thread_sort_index", "pid": rank, "tid": t,
                        "args": {"sort_index": t}})
    for e in sorted(events, key=lambda e: (e.rank, tid[e.stream], e.start_s)):
        out.append({"ph": "X", "name": e.name, "cat": op_kind(e), "pid": e.rank,
                    "tid": tid[e.stream], "ts": e.start_s * 1e6,
                    "dur": max(0.0, e.end_s - e.start_s) * 1e6})
    return {"traceEvents": out, "displayTimeUnit": "ms",
            "otherData": {"source": "planner simulation of one training step",
                          "title": title, "step_time_s": prediction.step_time_s}}


def write_trace(path: str, prediction: Prediction, title: str = "") -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(chrome_trace(prediction, title), fh)
    return path
