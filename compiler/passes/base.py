"""What a pass is, and the registry of passes by name (for the pass manager and the CLI).

A pass is a small class with a kebab-case `name` and `run(graph) -> bool` that rewrites one `Graph` in
place (its switch regions included) and says whether it changed anything. Passes are registered with
`@register`, so `sgc` can list them and `print_after={"hoist-prefix"}` can name them.
"""

from __future__ import annotations

import re
from typing import ClassVar

from compiler.ir import Graph

__all__ = ["PASSES", "Pass", "UnknownPassError", "available_passes", "get_pass", "register"]

_KEBAB = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


class Pass:
    """Base of all passes. Subclasses set `name` and implement `run`; the class docstring says why the
    pass exists and what it guarantees (its first line is the summary `sgc` lists)."""

    name: ClassVar[str] = ""

    def run(self, graph: Graph) -> bool:
        """Rewrite `graph` in place; return whether anything changed."""
        raise NotImplementedError

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def __repr__(self) -> str:
        return f"<pass {self.name}>"


PASSES: dict[str, type[Pass]] = {}


class UnknownPassError(ValueError):
    """A pass name that is not registered; the message lists the known ones."""

    def __init__(self, name: str) -> None:
        self.pass_name = name
        known = ", ".join(sorted(PASSES)) or "none"
        super().__init__(f"unknown pass {name!r} (passes: {known})")


def register(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available by its name."""
    if not _KEBAB.fullmatch(cls.name):
        raise ValueError(f"pass name {cls.name!r} of {cls.__name__} is not kebab-case")
    if PASSES.get(cls.name, cls) is not cls:
        raise ValueError(f"pass name {cls.name!r} is already taken by {PASSES[cls.name].__name__}")
    PASSES[cls.name] = cls
    return cls


def get_pass(name: str) -> type[Pass]:
    """The pass class registered as `name`; `UnknownPassError` otherwise."""
    try:
        return PASSES[name]
    except KeyError:
        raise UnknownPassError(name) from None


def available_passes() -> list[tuple[str, str]]:
    """(name, summary) of every registered pass, by name: what `sgc` lists."""
    return [(name, PASSES[name].summary()) for name in sorted(PASSES)]
