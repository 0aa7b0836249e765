"""``localhost-cpu`` measured on first use: this machine's links and interference, cached.

The preset's figures (``planner.clusters.localhost_cpu``) were measured on another machine
(gloo send/recv, shared/notes/torch-on-cpu.md) and assume what a CPU node does not give:
ranks that do not slow each other down (``compute_slowdown`` 1), communication fully hidden
behind compute (``comm_overlap`` 1; gloo's thread needs a core the ranks are using) and no
cost of FSDP2 beyond its collectives. Planning on them for several ranks mispredicted the
executor by ~70% and picked a layout twice as slow as the best one measured (issue 11).

So when a planning command (plan, simulate, validate) names ``--cluster localhost-cpu`` for
more than one rank, it uses ``planner profile --network`` figures of this machine at that
many ranks: read from the cache if measured before, else measured now (about a minute, said
on stderr) and cached. ``--no-measure`` keeps the preset and says loudly that its figures are
assumed. The cache is keyed by host name, core count, torch version and rank count; delete a
file to measure again.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

from planner.children import child_env
from planner.errors import PlannerError

PRESET = "localhost-cpu"
CACHE_ENV = "PLANNER_CACHE_DIR"


def cache_dir() -> str:
    """``$PLANNER_CACHE_DIR``, else ``$XDG_CACHE_HOME/planner``, else ``~/.cache/planner`` (the
    XDG base-directory convention)."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "planner")


def _torch_version() -> str:
    from importlib import metadata
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "none"


def cache_path(ranks: int) -> str:
    """Where this machine's measurement at ``ranks`` ranks lives."""
    key = f"{socket.gethostname()}-c{os.cpu_count() or 1}-torch{_torch_version()}-r{ranks}"
    return os.path.join(cache_dir(), f"{PRESET}-{re.sub(r'[^A-Za-z0-9._-]+', '_', key)}.json")


def assumed_warning(ranks: int) -> str:
    return (f"warning: --cluster {PRESET} with --no-measure: its link figures are ASSUMED "
            "(gloo send/recv measured on another machine, shared/notes/torch-on-cpu.md), and so "
            "are no slowdown between ranks sharing this machine, communication fully hidden "
            "behind compute and no FSDP2 call overhead; predictions for "
            f"{ranks} ranks can be off by 2x and rank layouts wrongly. Drop --no-measure to "
            f"measure this machine once (about a minute, cached in {cache_dir()}) or plan with "
            "--cluster FILE from `planner profile --network`.")


def measure(path: str, ranks: int) -> None:
    """``planner profile --network`` at ``ranks`` ranks, written to ``path``; its progress goes
    to a log next to it (named in the error if it fails)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    log = path[:-len(".json")] + ".log"
    cmd = [sys.executable, "-m", "planner.commands.profile_network", "--nproc-per-node",
           str(ranks), "--cluster", PRESET, "--name", PRESET, "--out", path]
    with open(log, "w", encoding="utf-8") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT,
                             env=child_env())
    if rc != 0 or not os.path.exists(path):
        raise PlannerError(f"measuring {PRESET} at {ranks} ranks failed (exit {rc}; log {log}): "
                           "fix that, or pass --no-measure to plan on the preset's assumed "
                           "figures")


def resolve(ranks: int, no_measure: bool, say=None):
    """The Cluster ``--cluster localhost-cpu`` means for ``ranks`` ranks (module docstring);
    ``say`` prints a line to the user (stderr by default)."""
    from planner.clusters import localhost_cpu
    from planner.specs import Cluster

    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    if ranks <= 1:
        return localhost_cpu()              # no link, no neighbour: nothing to measure
    if no_measure:
        say(assumed_warning(ranks))
        return localhost_cpu()
    path = cache_path(ranks)
    if not os.path.exists(path):
        say(f"{PRESET}: measuring this machine's links and rank interference at {ranks} ranks "
            f"on first use (planner profile --network, about a minute; cached in {path}; "
            "--no-measure skips it)")
        measure(path, ranks)
    cluster = Cluster.load(path)
    if cluster.num_devices < ranks:
        raise PlannerError(f"{path}: field 'devices_per_node': measured {cluster.num_devices} "
                           f"ranks, planning for {ranks}: delete the file to measure again")
    say(f"{PRESET}: figures measured on this machine ({path}; delete it to measure again)")
    return cluster
