"""The environment of the Python processes the planner starts itself (profiling runs, torchrun
jobs of the executor, network measurements).

``PYTHONSAFEPATH=1`` (Python 3.11+; the ``-P`` flag) keeps the child's working directory off
its import path: ``python -m ...`` would otherwise put the user's current directory first, and
a ``planner/`` or ``executor/`` folder there would be imported instead of the installed
package (custom model code is imported only where the command line names it:
``planner.models.custom``). One intra-op thread per rank, as timing on a shared CPU needs.
"""
from __future__ import annotations

import os


def child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONSAFEPATH": "1"}
