"""Strict JSON <-> frozen dataclass conversion shared by every spec type.

`from_dict` checks every field against the dataclass's type hints and raises ``PlannerError``
naming the file and the dotted field path (``plan.json: field 'layout.dp': expected an integer,
got "two"``). Unknown fields are errors too, so a typo never silently falls back to a default.
Only JSON is read: nothing a user hands us is unpickled or evaluated.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import tempfile
import types
import typing

from planner.errors import PlannerError

_HINTS: dict[type, dict] = {}


def _hints(cls) -> dict:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


_NAMES: dict[type, tuple[str, ...]] = {}
_ATOMS = (str, int, float, bool, type(None))


def to_dict(obj):
    """Recursively convert dataclasses/tuples/dicts into JSON-ready structures."""
    cls = type(obj)
    if cls in _ATOMS:
        return obj
    names = _NAMES.get(cls)
    if names is None and dataclasses.is_dataclass(obj):
        names = _NAMES[cls] = tuple(f.name for f in dataclasses.fields(obj))
    if names is not None:
        return {name: to_dict(getattr(obj, name)) for name in names}
    if isinstance(obj, (list, tuple)):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def _fail(ctx, path, expected, value):
    shown = json.dumps(value) if not isinstance(value, (dict, list)) else type(value).__name__
    loc = f"{ctx}: field '{path}'" if ctx else f"field '{path}'"
    raise PlannerError(f"{loc}: expected {expected}, got {shown}")


def _convert(tp, value, ctx, path):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, ctx, path)
    if tp is typing.Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, ctx, path)
    if origin is tuple:
        if not isinstance(value, list):
            _fail(ctx, path, "a list", value)
        elem = args[0]
        return tuple(_convert(elem, v, ctx, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            _fail(ctx, path, "an object", value)
        return {str(k): _convert(args[1], v, ctx, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            _fail(ctx, path, "true or false", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(ctx, path, "an integer", value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(ctx, path, "a number", value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(ctx, path, "a string", value)
        return value
    raise TypeError(f"unsupported field type {tp!r} at {path}")


def from_dict(cls, data, ctx: str = "", path: str = ""):
    """Build ``cls`` from a JSON object, validating names and types of every field.

    ``ctx`` is the file (or flag) the data came from; ``path`` the dotted field prefix.
    Validation inside ``__post_init__`` raising ``PlannerError`` gets the file prefixed.
    """
    label = cls.__name__
    if not isinstance(data, dict):
        _fail(ctx, path or label, f"an object ({label})", data)
    data = _current_version(cls, data, ctx, path)
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        loc = f"{ctx}: " if ctx else ""
        where = f" in '{path}'" if path else ""
        raise PlannerError(f"{loc}unknown field '{unknown[0]}'{where}; valid fields: "
                           f"{', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                loc = f"{ctx}: " if ctx else ""
                raise PlannerError(f"{loc}missing required field '{sub}'")
            continue
        kwargs[name] = _convert(hints[name], data[name], ctx, sub)
    try:
        return cls(**kwargs)
    except PlannerError as err:
        if ctx and not str(err).startswith(ctx):
            raise PlannerError(f"{ctx}: {err}") from None
        raise


def _current_version(cls, data: dict, ctx: str, path: str) -> dict:
    """The record in this planner's schema: older versions go through the class's
    ``upgrade_dict(data) -> data`` (which may raise); newer or unknown ones are refused."""
    default = getattr(cls, "__dataclass_fields__", {}).get("schema_version")
    if default is None:
        return data
    current = default.default
    version = data.get("schema_version", current)
    if version == current:
        return data
    upgrade = getattr(cls, "upgrade_dict", None)
    if (isinstance(version, int) and not isinstance(version, bool) and 1 <= version < current
            and upgrade is not None):
        return upgrade(data)
    loc = f"{ctx}: " if ctx else ""
    where = f"field '{path}.schema_version'" if path else "schema_version"
    raise PlannerError(f"{loc}{where} {json.dumps(version)} is not supported (this planner reads "
                       f"{cls.__name__} versions 1..{current})")


def read_json(path: str):
    """Parse a JSON file, turning OS and syntax errors into one-line ``PlannerError``s."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise PlannerError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PlannerError(f"{path}: is a directory, not a JSON file") from None
    except PermissionError:
        raise PlannerError(f"{path}: cannot read: permission denied") from None
    except UnicodeDecodeError:
        raise PlannerError(f"{path}: not a text file (JSON is UTF-8 text)") from None
    except OSError as err:
        raise PlannerError(f"{path}: cannot read ({err.strerror or type(err).__name__})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise PlannerError(f"{path}: malformed JSON at line {err.lineno} column {err.colno}: "
                           f"{err.msg}") from None
    except RecursionError:
        # json's C parser recurses per nesting level; no file of ours nests more than a few.
        raise PlannerError(f"{path}: JSON nested too deeply to be a planner file") from None


def load(cls, path: str):
    """Read ``path`` and build a ``cls`` from it (errors name the file)."""
    return from_dict(cls, read_json(path), ctx=str(path))


def _dumps(data) -> str:
    """JSON with each top-level field on a line of its own and small values indented, big ones
    (timelines, candidate lists) on one line: readable, and written by json's C encoder
    (``indent`` falls back to the pure-Python one, seconds for a large plan)."""
    if not isinstance(data, dict):
        return json.dumps(data) + "\n"
    lines = []
    for key, value in data.items():
        text = json.dumps(value, separators=(",", ":"))
        if len(text) <= 2000:
            text = json.dumps(value, indent=2).replace("\n", "\n  ")
        lines.append(f"  {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def write_json(path: str, data) -> None:
    """Write atomically (temp file + rename) so a failure never leaves half a file behind and
    never replaces an earlier file with a partial one. A path that cannot be written (a
    directory, no permission, a read-only or full disk) is a one-line ``PlannerError``."""
    write_text(path, _dumps(data))  # serialised before touching the disk


def write_text(path: str, text: str) -> None:
    """``write_text_atomic`` with a failure as a one-line ``PlannerError``."""
    try:
        write_text_atomic(path, text)
    except OSError as err:
        raise PlannerError(f"{path}: cannot write ({err.strerror or type(err).__name__})"
                           ) from None


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory, renamed into
    place once complete (raises OSError; the temporary file is removed on any failure)."""
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
