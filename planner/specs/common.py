"""What every boundary-crossing record shares: strict JSON serde, schema versions, checks.

Each record is a frozen dataclass with a ``schema_version`` field whose default is the version
this planner writes. ``from_dict`` (``planner.serde``) reads the current version and every
older one a class knows how to upgrade (``upgrade_dict``); anything else is a one-line error.
"""
from __future__ import annotations

import hashlib
import json
import math

from planner import serde
from planner.errors import PlannerError


def choice(name, value, valid):
    if value not in valid:
        raise PlannerError(f"{name} {value!r} is not one of: {', '.join(map(str, valid))}")


def positive(name, value):
    if value < 1:
        raise PlannerError(f"{name} must be >= 1, got {value}")


def finite(name, value, low=None, low_open=False):
    """A finite number, optionally above ``low`` (``low_open``: strictly): NaN and infinities
    are never valid figures."""
    if not math.isfinite(value) or (low is not None and (value <= low if low_open
                                                          else value < low)):
        bound = "" if low is None else f" {'>' if low_open else '>='} {low}"
        raise PlannerError(f"{name} must be a finite number{bound}, got {value}")


def fingerprint(data) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class Serde:
    """Mixin: JSON round trip through ``planner.serde``."""

    def to_dict(self) -> dict:
        return serde.to_dict(self)

    @classmethod
    def from_dict(cls, data, ctx: str = ""):
        return serde.from_dict(cls, data, ctx)

    @classmethod
    def load(cls, path: str):
        return cls.from_dict(serde.read_json(path), ctx=str(path))

    def save(self, path: str) -> None:
        serde.write_json(path, self.to_dict())
