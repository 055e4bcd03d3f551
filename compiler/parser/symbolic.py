"""Symbolic values: what a traced program holds where the eager one holds generated text or arguments.

`s["x"]` and every unbound argument are `SymValue`s standing for an IR node. The tracer learns what
the program does with them through Python's operator hooks:

- appended to the state (`s += x`, `"Q: " + x`, `user(x)`): compiled, no break;
- `==`, `<`, `in`, `bool()`, string methods, indexing: a *value host step* (`host returns="value"`,
  a builtin such as `operator:eq` or `builtins:str.strip`) whose result is again symbolic;
- a Python `if` on a value with a finite set of outcomes (a select's choice, a bool from a host step)
  becomes a *decision*: the tracer runs the function once per outcome and merges the runs into a
  `switch` (see `compiler.parser.paths`);
- what Python needs as a real int/float/str/iteration (`int(x)`, `len(x)`, `for c in x`,
  `json.loads(x)`): a *control break*; the function runs on the host (eager interpreter).

An f-string or `str()` of a non-finite value cannot return a symbolic object (Python demands a real
`str`), so it returns a *placeholder* string (private-use characters around a number) that the state
decodes back into the value when the string is appended. A placeholder that never reaches the state
(printed, parsed, measured) forces the host fallback; string operations applied to a formatted
string that contains one are not visible to the tracer (documented in docs/language.md).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from compiler.lang_expr import Expr, ExprList
from compiler.parser.recorder import Recorder

__all__ = ["PLACEHOLDER", "SymText", "SymValue", "Symbolic", "VarInfo", "split_placeholders"]

PLACEHOLDER = re.compile("\ue000sgc(\\d+)\ue001")
_MARK = re.compile("[\ue000\ue001]")

# str methods whose result is a bool: a branch on one is a decision with outcomes (True, False).
_BOOL_METHODS = frozenset({
    "startswith", "endswith", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier",
    "islower", "isnumeric", "isprintable", "isspace", "istitle", "isupper",
})
_BOOLS = (True, False)


@dataclass(frozen=True)
class VarInfo:
    """What the tracer knows about a state variable.

    kind: "text" (a gen's output or a var_scope), "choice" (a select: `domain` holds the choices),
    "list" (after a join: `elements` holds each branch's info, None where a branch has none), "const"
    (set_var of a known value: `value`), "value" (set_var of a symbolic value: `domain` if finite).
    `source` identifies the binding (the IR instruction), so two reads of one select decide once.
    """

    kind: str
    source: int
    domain: tuple[Any, ...] | None = None
    elements: tuple[VarInfo | None, ...] = ()
    value: Any = None


def split_placeholders(text: str) -> list[str | int]:
    """`text` as constant pieces and placeholder numbers, in order (empty pieces dropped)."""
    out: list[str | int] = []
    pos = 0
    for match in PLACEHOLDER.finditer(text):
        if match.start() > pos:
            out.append(text[pos:match.start()])
        out.append(int(match.group(1)))
        pos = match.end()
    if pos < len(text):
        out.append(text[pos:])
    return out


def has_marks(text: str) -> bool:
    return bool(_MARK.search(text))


MAX_ORIGIN_CHARS = 160  # how long a symbolic value's description for messages may get
_MAX_TEXT_ORIGINS = 4  # how many sources a concatenation's description names


class Symbolic:
    """Base of symbolic values. `origin` says what it is, for messages (`s["answer"]`, `argument 'q'`)."""

    __sgc_symbolic__ = True

    def __init__(self, run: Recorder, origin: str) -> None:
        self._run = run
        # Bounded: a chain of 10k `x = x.strip()` would otherwise describe itself in O(n^2) memory.
        self._origin = origin if len(origin) <= MAX_ORIGIN_CHARS else origin[:MAX_ORIGIN_CHARS - 3] + "..."

    # -- what subclasses provide ----------------------------------------------------------------------
    def _value_ref(self) -> int:
        """The IR instruction holding this value as one node."""
        raise NotImplementedError

    def _parts(self) -> list[str | int]:
        """Constant strings and value refs, in order, as `s += self` appends them."""
        raise NotImplementedError

    def _finite(self) -> tuple[tuple[Any, ...], Any] | None:
        """(domain, decision key) when the value has finitely many outcomes, else None."""
        return None

    # -- helpers --------------------------------------------------------------------------------------
    def _materialize(self) -> Any:
        """The concrete value on this path: a decision over the finite domain."""
        finite = self._finite()
        assert finite is not None
        domain, key = finite
        return self._run.decide(key, self._value_ref(), domain)

    def _host(self, func: str, args: tuple[Any, ...], what: str, domain: tuple[Any, ...] | None = None) -> SymValue:
        return self._run.host_value(func, (self, *args), f"{what} on {self._origin} runs as a host step",
                                    f"{what} of {self._origin}", domain)

    def _needs(self, what: str) -> Any:
        """A control break: `what` (with `{}` for this value) needs the real value."""
        reason = what.format(self._origin) if "{}" in what else f"{what} of {self._origin}"
        hint = " (bind the argument at compile time to compile this)" if self._origin.startswith("argument") else ""
        self._run.needs_host(f"{reason} needs its value in Python{hint}")

    def _is_concrete(self, other: Any) -> bool:
        return not isinstance(other, Symbolic)

    # -- text building: compiled ----------------------------------------------------------------------
    def __add__(self, other: Any) -> Any:
        if isinstance(other, Expr):
            return ExprList.of(self, other)
        if isinstance(other, (str, Symbolic)):
            return SymText(self._run, [self, other])
        return self._host("operator:add", (other,), "+")

    def __radd__(self, other: Any) -> Any:
        if isinstance(other, str):
            return SymText(self._run, [other, self])
        return self._run.host_value("operator:add", (other, self), f"+ with {self._origin} runs as a host step",
                                    f"+ of {self._origin}", None)

    def __str__(self) -> str:
        if self._finite() is not None:
            return str(self._materialize())
        return self._run.placeholder(self, "str()")

    def __format__(self, spec: str) -> str:
        if self._finite() is not None:
            return format(self._materialize(), spec)
        if spec:
            return self._needs(f"format spec {spec!r}")
        return self._run.placeholder(self, "an f-string")

    def __repr__(self) -> str:
        if self._finite() is not None:
            return repr(self._materialize())
        return self._run.placeholder(self._host("builtins:repr", (), "repr()"), "repr()")

    # -- comparisons and tests: host steps, decided when Python needs a bool ------------------------------
    def _compare(self, func: str, other: Any, symbol: str) -> Any:
        if self._finite() is not None and self._is_concrete(other):
            return getattr(operator, func.split(":")[1])(self._materialize(), other)
        return self._host(func, (other,), symbol, _BOOLS)

    def __eq__(self, other: object) -> Any:  # type: ignore[override]
        return self._compare("operator:eq", other, "==")

    def __ne__(self, other: object) -> Any:  # type: ignore[override]
        return self._compare("operator:ne", other, "!=")

    def __lt__(self, other: Any) -> Any:
        return self._compare("operator:lt", other, "<")

    def __le__(self, other: Any) -> Any:
        return self._compare("operator:le", other, "<=")

    def __gt__(self, other: Any) -> Any:
        return self._compare("operator:gt", other, ">")

    def __ge__(self, other: Any) -> Any:
        return self._compare("operator:ge", other, ">=")

    def __hash__(self) -> int:
        if self._finite() is not None:
            return hash(self._materialize())
        return self._needs("hashing {} (a dict key or set member)")

    def __bool__(self) -> bool:
        if self._finite() is not None:
            return bool(self._materialize())
        return bool(self._host("builtins:bool", (), "bool()", _BOOLS)._materialize())

    def __contains__(self, item: Any) -> bool:
        if self._finite() is not None and self._is_concrete(item):
            return item in self._materialize()
        return bool(self._host("operator:contains", (item,), "`in`", _BOOLS)._materialize())

    # -- Python needs a real value: control breaks ----------------------------------------------------------
    def __len__(self) -> int:
        if self._finite() is not None:
            return len(self._materialize())
        return self._needs("len()")

    def __iter__(self) -> Iterator[Any]:
        if self._finite() is not None:
            return iter(self._materialize())
        return self._needs("iterating over {}")

    def __int__(self) -> int:
        if self._finite() is not None:
            return int(self._materialize())
        return self._needs("int()")

    def __float__(self) -> float:
        if self._finite() is not None:
            return float(self._materialize())
        return self._needs("float()")

    def __index__(self) -> int:
        if self._finite() is not None:
            return operator.index(self._materialize())
        return self._needs("using {} as an integer")

    def __copy__(self) -> Symbolic:
        return self

    def __deepcopy__(self, memo: dict) -> Symbolic:
        return self

    # -- string methods and indexing: host steps --------------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        if self._finite() is not None and self._is_concrete(key):
            return self._materialize()[key]
        if isinstance(key, slice):
            return self._host("compiler.parser.host_funcs:text_slice", (key.start, key.stop, key.step), "slicing")
        return self._host("operator:getitem", (key,), "indexing")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_run", "_origin"):
            raise AttributeError(name)
        if self._finite() is not None:
            return getattr(self._materialize(), name)
        if not hasattr(str, name):
            raise AttributeError(f"'str' object has no attribute {name!r}")

        def method(*args: Any, **kwargs: Any) -> Any:
            if kwargs:
                return self._needs(f"str.{name}() with keyword arguments")
            return self._host(f"builtins:str.{name}", args, f"str.{name}()",
                              _BOOLS if name in _BOOL_METHODS else None)

        return method

    def __mul__(self, other: Any) -> Any:
        return self._host("operator:mul", (other,), "*")

    def __mod__(self, other: Any) -> Any:
        return self._host("operator:mod", (other,), "%")


class SymValue(Symbolic):
    """One IR value: an argument, a variable, a host step's result. `domain`: its finite outcomes."""

    def __init__(self, run: Recorder, ref: int, origin: str, domain: tuple[Any, ...] | None = None,
                 key: Any = None, info: VarInfo | None = None) -> None:
        super().__init__(run, origin)
        self._ref = ref
        self._domain = domain
        self._key = ref if key is None else key
        self._info = info

    def _value_ref(self) -> int:
        return self._ref

    def _parts(self) -> list[str | int]:
        return [self._ref]

    def _finite(self) -> tuple[tuple[Any, ...], Any] | None:
        if self._domain is None:
            return None
        return self._domain, self._key

    # A list variable (after a gathering join): its length is known, its items are host steps.
    def _elements(self) -> tuple[VarInfo | None, ...] | None:
        return self._info.elements if self._info is not None and self._info.kind == "list" else None

    def __len__(self) -> int:
        elements = self._elements()
        if elements is not None:
            return len(elements)
        return super().__len__()

    def __iter__(self) -> Iterator[Any]:
        elements = self._elements()
        if elements is not None:
            return (self[i] for i in range(len(elements)))
        return super().__iter__()

    def __getitem__(self, key: Any) -> Any:
        elements = self._elements()
        if elements is not None and isinstance(key, int) and not isinstance(key, bool):
            if not -len(elements) <= key < len(elements):
                raise IndexError(f"list index {key} out of range for {self._origin} ({len(elements)} branches)")
            index = key % len(elements)
            info = elements[index]
            domain = info.domain if info is not None and info.kind == "choice" else None
            key_ = ("element", self._key, index) if info is None else ("var", info.source)
            return self._run.host_value(
                "operator:getitem", (self, index), f"indexing {self._origin} runs as a host step",
                f"{self._origin}[{index}]", domain, key=key_, record=True)
        return super().__getitem__(key)


class SymText(Symbolic):
    """A concatenation of strings and symbolic values (`"Q: " + question`), appended piece by piece."""

    def __init__(self, run: Recorder, items: list[Any]) -> None:
        pieces: list[str | Symbolic] = []
        sources: dict[str, None] = {}  # the first few distinct origins, for messages
        for item in items:
            if isinstance(item, SymText):
                pieces.extend(item._pieces)
                sources.update(dict.fromkeys(item._sources))
            elif isinstance(item, (str, Symbolic)):
                pieces.append(item)
                if isinstance(item, Symbolic):
                    sources[item._origin] = None
            else:
                pieces.append(str(item))
        self._pieces = pieces
        self._ref: int | None = None
        self._sources = tuple(sources)[:_MAX_TEXT_ORIGINS + 1]
        names = ", ".join(self._sources[:_MAX_TEXT_ORIGINS]) + (", ..." if len(self._sources) > _MAX_TEXT_ORIGINS else "")
        super().__init__(run, "text built from " + names)

    def _parts(self) -> list[str | int]:
        out: list[str | int] = []
        for piece in self._pieces:
            if isinstance(piece, str):
                out.append(piece)
            else:
                out.extend(piece._parts())
        return out

    def _value_ref(self) -> int:
        if self._ref is None:
            self._ref = self._run.concat_ref(self._parts())
        return self._ref

    def __add__(self, other: Any) -> Any:
        if isinstance(other, Expr):
            return ExprList.of(self, other)
        if isinstance(other, (str, Symbolic)):
            return SymText(self._run, [self, other])
        return super().__add__(other)

    def __str__(self) -> str:
        return "".join(p if isinstance(p, str) else str(p) for p in self._pieces)

    def __format__(self, spec: str) -> str:
        if spec:
            return self._needs(f"format spec {spec!r}")
        return str(self)
