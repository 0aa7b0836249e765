"""How the report writes numbers: units chosen for the magnitude shown, never ``2.125e+04``.

Imported by ``html``, ``measured`` and ``plots``; pandas is imported by the callers only.
"""
from __future__ import annotations

import html

MIB = 2**20
GIB = 2**30


def esc(text) -> str:
    return html.escape(str(text))


def number(value) -> str:
    """Four significant digits with thousands separators; large values in full, not in
    exponent notation."""
    if value != value:                      # NaN
        return "-"
    if abs(value) >= 1e4:
        return f"{value:,.0f}"
    return f"{value:,.4g}"


def table(df, index: bool = False) -> str:
    return df.to_html(index=index, border=0, escape=True, na_rep="-", float_format=number)


def time_unit(largest_s: float) -> tuple[str, float]:
    """(unit, factor from seconds) for durations up to ``largest_s``: s from 1 s up, ms from
    1 ms, us below."""
    if largest_s >= 1.0:
        return "s", 1.0
    if largest_s >= 1e-3:
        return "ms", 1e3
    return "us", 1e6


def mem_unit(largest_bytes: float) -> tuple[str, float]:
    """GiB for accelerator-sized figures, MiB for small CPU runs (readable tick labels)."""
    return ("GiB", GIB) if largest_bytes >= 2 * GIB else ("MiB", MIB)
