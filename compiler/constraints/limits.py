"""The budgets of one constraint compile: wall time, states, positions, table memory, nesting.

Every limit comes from `compiler.budgets` (so it is configurable, and its error message names the
budget and how to raise it). A compile opens a `compiling(...)` scope; code deep inside the compiler
(the subset construction, the token index, the counted-repetition tiler) calls `check_time()`,
`check_states(n)` or `check_memory(nbytes, what)` without threading a parameter through every
function. Outside a scope (a test calling `byte_dfa` directly) the same checks apply with no
deadline.

Memory is checked *before* a large table is allocated, from its computed size: a hostile bound
should end in a `ConstraintError`, never in the machine swapping.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from compiler import budgets

from .errors import ConstraintError


@dataclass
class _Scope:
    what: str  # "regex '...'" or "JSON schema": the subject of every budget message
    deadline: float | None  # time.monotonic() value after which the compile is over budget
    started: float
    memo: dict[Any, Any] = field(default_factory=dict)  # results shared within this compile


def compile_memo() -> dict[Any, Any] | None:
    """A dict that lives as long as the outermost `compiling` scope (None outside one): for results
    that equal inputs give again within one compile (`dfa_ops` keeps small automata there)."""
    scope = _SCOPE.get()
    return scope.memo if scope is not None else None


_SCOPE: ContextVar[_Scope | None] = ContextVar("sgc_constraint_scope", default=None)


def _subject() -> str:
    scope = _SCOPE.get()
    return scope.what if scope is not None else "the constraint"


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_regex(pattern: str) -> str:
    return f"regex {_short(pattern)!r}"


@contextlib.contextmanager
def compiling(what: str) -> Iterator[None]:
    """Run one constraint compile under the `constraint_seconds` deadline (nested scopes share the
    outermost deadline: a schema's patterns are part of the schema's compile)."""
    outer = _SCOPE.get()
    if outer is not None:
        yield
        return
    now = time.monotonic()
    seconds = float(budgets.value("constraint_seconds"))
    token = _SCOPE.set(_Scope(what, now + seconds, now))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def over(name: str, actual: float | None, what: str | None = None, **where: object) -> ConstraintError:
    """A `ConstraintError` for budget `name` (see `compiler.budgets.over_budget`); `what` says what
    is over it (default: the constraint being compiled)."""
    subject = _subject() if what is None else f"{_subject()}: {what}"
    return ConstraintError(budgets.over_budget(name, actual, subject), **where)  # type: ignore[arg-type]


def check_time() -> None:
    """Raise once the compile has run past `constraint_seconds`. Cheap: call it in long loops."""
    scope = _SCOPE.get()
    if scope is not None and scope.deadline is not None:
        now = time.monotonic()
        if now > scope.deadline:
            raise over("constraint_seconds", now - scope.started, "compile time")


def current_deadline() -> float | None:
    """The compile's `time.monotonic()` deadline (None outside a scope): for native code that
    checks the clock itself."""
    scope = _SCOPE.get()
    return scope.deadline if scope is not None else None


def max_states(override: int | None = None) -> int:
    return int(override) if override is not None else int(budgets.value("constraint_states"))


def check_states(n: int, override: int | None = None) -> None:
    limit = max_states(override)
    if n > limit:
        if override is not None:  # an explicit argument, not the configurable budget
            raise ConstraintError(
                f"{_subject()}: the automaton exceeds its budget of {limit} states; simplify the constraint"
            )
        raise over("constraint_states", n, "automaton states")


def check_positions(n: int, **where: object) -> None:
    if n > budgets.value("constraint_positions"):
        raise over("constraint_positions", n, "unrolled positions", **where)


def check_memory(nbytes: int, what: str) -> None:
    """Raise before allocating `nbytes` for `what` if that is over `constraint_memory_bytes`."""
    if nbytes > budgets.value("constraint_memory_bytes"):
        raise ConstraintError(
            budgets.over_budget("constraint_memory_bytes", nbytes, f"{_subject()} ({what})")
        )


def max_nesting() -> int:
    return int(budgets.value("constraint_nesting"))


def check_pattern_chars(n: int, what: str) -> None:
    if n > budgets.value("pattern_chars"):
        raise ConstraintError(budgets.over_budget("pattern_chars", n, what))
