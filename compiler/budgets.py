"""Named budgets: the bounds that keep hostile or careless input from using unbounded time or memory.

Every limit that sgc enforces on data it did not write (artifacts, IR text, regexes, JSON schemas,
requests) is one `Budget` here, with a default, a unit and the environment variable that raises it.
A subsystem checks its input with `check(name, actual, what)` (or reads `value(name)`) and raises its
own error type (`ArtifactError`, `ConstraintError`, `CompileError`, ...) with the one-line message
`over_budget` writes, so every such error names the budget, its value and how to raise it:

    regex '[a-z]{9999999}': 9999999 positions is over the constraint_positions budget of 1000000
    (raise it with SGC_MAX_CONSTRAINT_POSITIONS=N or sgc.budgets.set_budget('constraint_positions', N))

`docs/security.md` lists every budget with its default (`tests/test_budgets.py` keeps them in step).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["BUDGETS", "Budget", "BudgetExceeded", "budget_overrides", "check", "markdown_table", "nesting_depth", "over_budget", "scan_structure",
           "set_budget", "value"]


@dataclass(frozen=True)
class Budget:
    name: str
    default: float
    unit: str
    what: str

    @property
    def env_var(self) -> str:
        return f"SGC_MAX_{self.name.upper()}"


_MIB = 1 << 20

BUDGETS: dict[str, Budget] = {b.name: b for b in (
    # artifacts (.sgc files)
    Budget("artifact_bytes", 256 * _MIB, "bytes", "size of an .sgc file on disk"),
    Budget("artifact_members", 10_000, "members", "number of members in an .sgc zip"),
    Budget("artifact_member_bytes", 128 * _MIB, "bytes", "decompressed size of one artifact member"),
    Budget("artifact_total_bytes", 512 * _MIB, "bytes", "decompressed size of all artifact members together"),
    Budget("manifest_depth", 32, "levels", "nesting depth of an artifact's manifest.json"),
    # the graph IR (artifacts and IR text)
    Budget("ir_nodes", 100_000, "nodes", "nodes in one IR module"),
    Budget("ir_depth", 64, "levels", "nesting depth of regions (switch arms) and values in the IR"),
    Budget("ir_text_bytes", 16 * _MIB, "bytes", "size of IR text given to the reader"),
    Budget("ir_separators", 1_000_000, "separators", "`,` `:` `=` and brackets in IR text (its parse cost)"),
    # constraints (regex, JSON schema, choices)
    Budget("constraint_seconds", 20.0, "seconds", "time to compile one regex or JSON schema constraint"),
    Budget("constraint_states", 4_000_000, "states", "automaton states of one compiled constraint"),
    Budget("constraint_positions", 4_000_000, "positions", "character positions a regex or schema unrolls to"),
    Budget("constraint_memory_bytes", 512 * _MIB, "bytes", "token-table memory of one compiled constraint"),
    Budget("constraint_nesting", 64, "levels", "nesting depth of a JSON schema or regex group"),
    Budget("constraint_unique_paths", 256, "paths",
           "instance paths of one JSON schema whose arrays have their uniqueItems checked while decoding"),
    Budget("pattern_chars", 8_000_000, "characters", "length of a regex or serialized JSON schema"),
    # chat templates (they come with model folders)
    Budget("template_seconds", 2.0, "seconds", "time to render a chat template once"),
    Budget("template_chars", 4 * _MIB, "characters", "size of a chat template's output or of a value it builds"),
    # programs and their inputs
    Budget("args_line_bytes", 16 * _MIB, "bytes", "one line of `sgc run --args` (a longer one is that row's error)"),
    Budget("host_value_chars", 16 * _MIB, "characters", "size of a value a host step may build (str * n, padding)"),
    Budget("program_depth", 200, "levels", "depth of nested @function calls while tracing a program"),
)}

_overrides: dict[str, float] = {}


class BudgetExceeded(ValueError):
    """Raised by `check` when no subsystem-specific error type applies."""


def _budget(name: str) -> Budget:
    try:
        return BUDGETS[name]
    except KeyError:
        raise KeyError(f"unknown budget {name!r}; budgets: {', '.join(sorted(BUDGETS))}") from None


def value(name: str) -> float:
    """The budget in force: `set_budget` / `budget_overrides`, else $SGC_MAX_<NAME>, else the default."""
    budget = _budget(name)
    if name in _overrides:
        return _overrides[name]
    raw = os.environ.get(budget.env_var)
    if raw is None or not raw.strip():
        return budget.default
    try:
        parsed = float(raw)
    except ValueError:
        raise ValueError(f"${budget.env_var}={raw!r} is not a number") from None
    if not parsed > 0:
        raise ValueError(f"${budget.env_var}={raw!r} must be positive")
    return int(parsed) if parsed.is_integer() and isinstance(budget.default, int) else parsed


def set_budget(name: str, limit: float | None) -> None:
    """Set budget `name` for this process (None restores the environment/default)."""
    _budget(name)
    if limit is None:
        _overrides.pop(name, None)
    elif not limit > 0:
        raise ValueError(f"budget {name} must be positive, got {limit!r}")
    else:
        _overrides[name] = limit


@contextlib.contextmanager
def budget_overrides(**limits: float) -> Iterator[None]:
    """Set some budgets for the duration of a `with` block (tests, one-off large compiles)."""
    saved = {name: _overrides.get(name) for name in limits}
    try:
        for name, limit in limits.items():
            set_budget(name, limit)
        yield
    finally:
        for name, old in saved.items():
            set_budget(name, old)


def _fmt(amount: float, unit: str) -> str:
    if unit == "bytes" and amount >= _MIB:
        return f"{amount / _MIB:.1f} MiB"
    if unit == "seconds":
        return f"{amount:.1f} s"
    return f"{int(amount)} {unit}" if float(amount).is_integer() else f"{amount} {unit}"


def over_budget(name: str, actual: float | None, what: str) -> str:
    """The one-line message for `what` exceeding budget `name` (`actual` None: amount not known)."""
    budget = _budget(name)
    limit = value(name)
    amount = f"{_fmt(actual, budget.unit)} is over" if actual is not None else "exceeds"
    return (f"{what}: {amount} the {name} budget of {_fmt(limit, budget.unit)} "
            f"(raise it with {budget.env_var}=N or sgc.budgets.set_budget({name!r}, N))")


def check(name: str, actual: float, what: str, error: type[Exception] = BudgetExceeded) -> None:
    """Raise `error(over_budget(...))` if `actual` is over budget `name`."""
    if actual > value(name):
        raise error(over_budget(name, actual, what))


_STRING_LITERAL = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_LINE_COMMENT = re.compile(r"(?://|#)[^\n]*")


@dataclass(frozen=True)
class TextShape:
    """What `scan_structure` measures of JSON-like text: its deepest `[`/`{` nesting, the 1-based
    line where that is reached, and how many separators (`,` `:` `=` and brackets) it has: a cheap
    proxy for the number of tokens a parser will build."""

    depth: int
    depth_line: int
    separators: int


def scan_structure(text: str, *, comments: bool = False) -> TextShape:
    """Measure `text` (see `TextShape`) in linear time, with no recursion and no parser.

    Double-quoted string literals (one line each, backslash escapes) are skipped, and with
    `comments` so are `// ...` and `# ...` to the end of the line (the IR's comments and locations).
    """
    import numpy as np

    stripped = _STRING_LITERAL.sub('""', text)
    if comments:
        stripped = _LINE_COMMENT.sub("", stripped)
    data = np.frombuffer(stripped.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    opens = np.isin(data, (ord("["), ord("{")))
    closes = np.isin(data, (ord("]"), ord("}")))
    separators = int(np.count_nonzero(np.isin(data, (ord(","), ord(":"), ord("=")))))
    separators += int(np.count_nonzero(opens)) + int(np.count_nonzero(closes))
    if not len(data):
        return TextShape(0, 1, 0)
    depth = np.cumsum(opens.astype(np.int32) - closes.astype(np.int32))
    at = int(np.argmax(depth))
    deepest = int(depth[at])
    if deepest <= 0:
        return TextShape(0, 1, separators)
    return TextShape(deepest, int(np.count_nonzero(data[:at] == ord("\n"))) + 1, separators)


def nesting_depth(text: str, *, comments: bool = False) -> tuple[int, int]:
    """The deepest `[`/`{` nesting of `text` and the line where it is reached (see `scan_structure`)."""
    shape = scan_structure(text, comments=comments)
    return shape.depth, shape.depth_line


def markdown_table() -> str:
    """Every budget as a markdown table (docs/security.md holds it; a test keeps the two equal)."""
    rows = ["| budget | default | what it bounds | raise it with |", "|---|---|---|---|"]
    for budget in BUDGETS.values():
        rows.append(f"| `{budget.name}` | {_fmt(budget.default, budget.unit)} | {budget.what} | "
                    f"`{budget.env_var}` |")
    return "\n".join(rows)
