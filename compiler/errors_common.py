"""Attach the user's source location to an error raised while compiling their program."""

from __future__ import annotations


def located(exc: Exception, loc: str | None) -> Exception:
    """The same error with "file:line: " in front of its message (when the node has a loc)."""
    if loc and not str(exc).startswith(loc):
        exc.args = (f"{loc}: {exc}", *exc.args[1:])
    return exc
