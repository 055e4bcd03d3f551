"""The regex syntax tree every constraint is built from.

Regex strings (parsed with interegular, see `regex_parser`) and JSON schemas (see `json_schema`) both
become these nodes; the automaton builder (`automaton`) compiles them, and `to_regex` prints them as a
Python `re` pattern (for display and for cross-checking with `re.fullmatch`). The smart constructors
(`concat`, `alt`, `repeat`, ...) simplify as they go, in particular they propagate the empty language
`EMPTY`: that is how a recursive `$ref` cut at the unrolling depth removes exactly the optional
parts that would need deeper nesting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .charset import CharSet

if TYPE_CHECKING:
    from .dfa import DFA


@dataclass(frozen=True, eq=False)
class Empty:
    """The empty language (matches nothing)."""


@dataclass(frozen=True, eq=False)
class Epsilon:
    """The empty string."""


@dataclass(frozen=True, eq=False)
class Chars:
    """One character from a set."""

    charset: CharSet


@dataclass(frozen=True, eq=False)
class Concat:
    parts: tuple[Node, ...]


@dataclass(frozen=True, eq=False)
class Alt:
    options: tuple[Node, ...]


@dataclass(frozen=True, eq=False)
class Repeat:
    """`node{min,max}`; `max` None means unbounded."""

    node: Node
    min: int
    max: int | None


@dataclass(frozen=True, eq=False)
class Automaton:
    """A precompiled byte-level DFA spliced in as is (intersections, cached leaves).

    `regex` is an equivalent Python `re` text used only for printing (it may use lookaheads), or a
    function computing it on demand (printing can be costly and compiling never needs it).
    """

    dfa: DFA
    regex: str | Callable[[], str]


Node = Empty | Epsilon | Chars | Concat | Alt | Repeat | Automaton

EMPTY = Empty()
EPSILON = Epsilon()


def chars(cs: CharSet) -> Node:
    return EMPTY if cs.is_empty() else Chars(cs)


def literal(text: str) -> Node:
    if not text:
        return EPSILON
    if len(text) == 1:
        return Chars(CharSet.of(text))
    return Concat(tuple(Chars(CharSet.of(c)) for c in text))


def concat(*parts: Node) -> Node:
    flat: list[Node] = []
    for p in parts:
        if isinstance(p, Empty):
            return EMPTY
        if isinstance(p, Epsilon):
            continue
        if isinstance(p, Concat):
            flat.extend(p.parts)
        else:
            flat.append(p)
    if not flat:
        return EPSILON
    if len(flat) == 1:
        return flat[0]
    return Concat(tuple(flat))


def alt(*options: Node) -> Node:
    flat: list[Node] = []
    nullable = False
    for o in options:
        if isinstance(o, Empty):
            continue
        if isinstance(o, Alt):
            flat.extend(o.options)
        elif isinstance(o, Epsilon):
            nullable = True
        else:
            flat.append(o)
    # Merge single-character options into one class: smaller automata, shorter printed regexes.
    singles = [o for o in flat if isinstance(o, Chars)]
    if len(singles) > 1:
        merged = CharSet.union(s.charset for s in singles)
        flat = [o for o in flat if not isinstance(o, Chars)] + [Chars(merged)]
    if not flat:
        return EPSILON if nullable else EMPTY
    body = flat[0] if len(flat) == 1 else Alt(tuple(flat))
    return optional(body) if nullable else body


def repeat(node: Node, lo: int, hi: int | None) -> Node:
    if hi is not None and hi < lo:
        return EMPTY
    if isinstance(node, Empty):
        return EPSILON if lo == 0 else EMPTY
    if isinstance(node, Epsilon) or hi == 0:
        return EPSILON
    if lo == 1 and hi == 1:
        return node
    return Repeat(node, lo, hi)


def optional(node: Node) -> Node:
    if isinstance(node, (Empty, Epsilon)):
        return EPSILON
    if isinstance(node, Repeat) and node.min in (0, 1):
        return Repeat(node.node, 0, node.max)
    return Repeat(node, 0, 1)


def star(node: Node) -> Node:
    return repeat(node, 0, None)


def is_empty(node: Node) -> bool:
    return isinstance(node, Empty)


def nullable(node: Node) -> bool:
    if isinstance(node, Epsilon):
        return True
    if isinstance(node, (Empty, Chars)):
        return False
    if isinstance(node, Concat):
        return all(nullable(p) for p in node.parts)
    if isinstance(node, Alt):
        return any(nullable(o) for o in node.options)
    if isinstance(node, Repeat):
        return node.min == 0 or nullable(node.node)
    if isinstance(node, Automaton):
        return bool(node.dfa.accepting[node.dfa.initial])
    raise TypeError(node)


def size(node: Node, limit: int | None = None) -> int:
    """Number of character positions after unrolling bounded repeats (the automaton's rough size)."""
    if isinstance(node, (Empty, Epsilon)):
        return 0
    if isinstance(node, Chars):
        return 1
    if isinstance(node, (Concat, Alt)):
        return sum(size(p) for p in (node.parts if isinstance(node, Concat) else node.options))
    if isinstance(node, Repeat):
        copies = node.max if node.max is not None else max(node.min, 1)
        return size(node.node) * copies
    if isinstance(node, Automaton):
        return int(node.dfa.num_states)
    raise TypeError(node)


def to_regex(node: Node) -> str:
    """A Python `re` pattern for the node, meant for `re.fullmatch`."""
    return _print(node, 0)


# Precedences: 0 alternation, 1 concatenation, 2 atom.
def _print(node: Node, prec: int) -> str:
    if isinstance(node, Empty):
        return "[^\\x00-\\U0010ffff]"
    if isinstance(node, Epsilon):
        return "(?:)" if prec > 1 else ""
    if isinstance(node, Chars):
        return node.charset.to_regex()
    if isinstance(node, Concat):
        text = "".join(_print(p, 1) for p in node.parts)
        return f"(?:{text})" if prec > 1 else text
    if isinstance(node, Alt):
        text = "|".join(_print(o, 0) for o in node.options)
        return f"(?:{text})" if prec > 0 else text
    if isinstance(node, Repeat):
        base = _print(node.node, 2)
        if isinstance(node.node, Repeat):  # Python rejects a quantifier on a quantifier
            base = f"(?:{base})"
        lo, hi = node.min, node.max
        if (lo, hi) == (0, None):
            q = "*"
        elif (lo, hi) == (1, None):
            q = "+"
        elif (lo, hi) == (0, 1):
            q = "?"
        elif hi is None:
            q = f"{{{lo},}}"
        elif lo == hi:
            q = f"{{{lo}}}"
        else:
            q = f"{{{lo},{hi}}}"
        return base + q
    if isinstance(node, Automaton):
        text = node.regex if isinstance(node.regex, str) else node.regex()
        return f"(?:{text})"
    raise TypeError(node)
