"""The one exception type for user mistakes.

Anything the user can fix (a bad flag, a malformed file, a layout that does not divide) raises
``PlannerError`` with a message naming the file, field and value and what would be valid. The
CLI prints it on one line and exits with status 2; any other exception is a bug and keeps its
traceback.
"""


class PlannerError(Exception):
    """A user-facing error; ``str(err)`` is the whole message, one line."""


def where(path, field):
    """Format the location prefix used in error messages: ``plan.json: layout.dp``."""
    if path and field:
        return f"{path}: field '{field}'"
    return str(path or f"field '{field}'")
