"""The semantics checker: the IR interpreter on symbolic values, the oracle that says a pass kept a
program's meaning.

It runs a graph without a model, through the one interpreter of the IR
(`compiler.ir_interpreter.Interpreter`) with a symbolic domain. A generated text is an opaque symbol
determined by what the model would see: `<gen:name:digest>`, where the digest covers the gen's
sampling attributes and the full prompt text (so equal prompts and parameters give equal outputs, as
greedy decoding does). A select picks its choice by a hash of the prompt, the full candidates, the
method and the temperature. Roles are markers (`<begin:user>`, `<end:user>`), arguments
`<arg:name>`, host steps `<host:func:digest>` of their inputs. A switch on a symbolic value takes a
region chosen by a hash of the value; on a concrete value it matches cases as every run does. Two
graphs mean the same when `evaluate` gives equal outcomes: the final text (a tuple of strings and
symbols, adjacent strings merged) and the variables, or the same error.

Text that contains symbols is a `SymbolicText`, which behaves like a string where the states need it to
(concatenation, `len`, slicing, `endswith`; a symbol counts as one character), so the symbolic state
is the real `PromptState` with two leniencies (`SymbolicPromptState`): reading an unbound variable gives a
symbol, and roles are markers that never fail. A real run fails there; dead-node elimination may
remove such a dead read or role, and the checker must not count that as a change of meaning.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from compiler.errors import ProgramError
from compiler.ir import Graph, Module, Node
from compiler.ir_interpreter import Chosen, Generated, Interpreter, Pending, run_graph
from compiler.prompt_state import PromptState

__all__ = ["Outcome", "Sym", "SymbolicPromptState", "SymbolicText", "evaluate", "evaluate_module"]


def _digest(value: Any) -> str:
    return hashlib.sha256(repr(value).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _pick(key: Any, n: int) -> int:
    return int(_digest(key), 16) % n


@dataclass(frozen=True)
class Sym:
    """An opaque piece of text or value: `kind` says what produced it, `key` identifies it. As text
    it is one character long; adding text to it makes a `SymbolicText`."""

    kind: str
    key: str

    def __repr__(self) -> str:
        return f"<{self.kind}:{self.key}>"

    def __len__(self) -> int:
        return 1

    def __add__(self, other: Any) -> Any:
        return SymbolicText.of((self, *_pieces(other)))

    def __radd__(self, other: Any) -> Any:
        return SymbolicText.of((*_pieces(other), self))

    def endswith(self, suffix: str) -> bool:
        return suffix == ""


class SymbolicText:
    """Text with symbols in it: strings (non-empty, never two adjacent) and `Sym`s. `SymbolicText.of`
    gives a plain `str` when there is no symbol, so a text is a `str` or a `SymbolicText`."""

    __slots__ = ("pieces",)

    def __init__(self, pieces: tuple[Any, ...]) -> None:
        self.pieces = pieces

    @staticmethod
    def of(pieces: Sequence[Any]) -> Any:
        merged: list[Any] = []
        for piece in pieces:
            if isinstance(piece, str):
                if not piece:
                    continue
                if merged and isinstance(merged[-1], str):
                    merged[-1] += piece
                    continue
            merged.append(piece)
        if all(isinstance(p, str) for p in merged):
            return "".join(merged)
        return SymbolicText(tuple(merged))

    def __len__(self) -> int:
        return sum(len(p) if isinstance(p, str) else 1 for p in self.pieces)

    def __add__(self, other: Any) -> Any:
        return SymbolicText.of((*self.pieces, *_pieces(other)))

    def __radd__(self, other: Any) -> Any:
        return SymbolicText.of((*_pieces(other), *self.pieces))

    def __getitem__(self, key: slice) -> Any:
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("a symbolic text is sliced with step 1 only")
        out, position = [], 0
        for piece in self.pieces:
            size = len(piece) if isinstance(piece, str) else 1
            lo, hi = max(start - position, 0), min(stop - position, size)
            if lo < hi:
                out.append(piece[lo:hi] if isinstance(piece, str) else piece)
            position += size
        return SymbolicText.of(out)

    def endswith(self, suffix: str) -> bool:
        last = self.pieces[-1]
        return suffix == "" or (isinstance(last, str) and last.endswith(suffix))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SymbolicText) and other.pieces == self.pieces

    def __hash__(self) -> int:
        return hash(self.pieces)

    def __repr__(self) -> str:
        return f"SymbolicText({self.pieces!r})"


def _pieces(text: Any) -> tuple[Any, ...]:
    if isinstance(text, SymbolicText):
        return text.pieces
    if isinstance(text, (str, Sym)):
        return (text,)
    raise TypeError(f"{text!r} is not a text")


def _has_sym(value: Any) -> bool:
    if isinstance(value, (Sym, SymbolicText)):
        return True
    if isinstance(value, (list, tuple)):
        return any(_has_sym(v) for v in value)
    if isinstance(value, Mapping):
        return any(_has_sym(v) for v in value.values())
    return False


def _as_tuple(text: Any) -> tuple[Any, ...]:
    return () if text == "" else _pieces(text)


class SymbolicPromptState(PromptState):
    """A `PromptState` over symbolic text, lenient where a real run fails (see the module docstring)."""

    __slots__ = ()

    def __getitem__(self, name: str) -> Any:
        return self.variables[name] if name in self.variables else Sym("unbound", name)

    def role_begin(self, role: str, chat_format: Any) -> PromptState:
        return self.appended(Sym("begin", role))

    def role_end(self, role: str, chat_format: Any) -> PromptState:
        return self.appended(Sym("end", role))

    def public(self) -> tuple[tuple[Any, ...], tuple[tuple[str, Any], ...]]:
        """What the program can observe: the text as pieces, and the variables by name."""
        return _as_tuple(self.text), tuple(sorted(self.variables.items()))


class _SymbolicArguments(Mapping[str, Any]):
    """Every argument is given, as the symbol `<arg:name>` (its default is one value of many)."""

    def __getitem__(self, name: str) -> Any:
        return Sym("arg", name)

    def __contains__(self, name: object) -> bool:
        return True

    def __iter__(self) -> Any:
        return iter(())

    def __len__(self) -> int:
        return 0


def _sampling_key(node: Node) -> tuple[tuple[str, Any], ...]:
    # fsm is where a compiled constraint lives, not a different constraint.
    return tuple((k, v) for k, v in node.op.attributes().items() if k != "fsm")


class SymbolicDomain:
    """The checker's domain: symbols for what only a model or a host could say (`Domain`)."""

    chat_format = None  # roles are markers (SymbolicPromptState)

    def new_state(self) -> SymbolicPromptState:
        return SymbolicPromptState()

    def text(self, value: Any) -> Any:
        if isinstance(value, (str, Sym, SymbolicText)):
            return value
        if _has_sym(value):
            return Sym("str", _digest(value))
        return str(value)

    def opaque_case(self, value: Any, num_regions: int) -> int | None:
        return _pick(("switch", value), num_regions) if _has_sym(value) else None

    def generate(self, node: Node, states: Sequence[Any]) -> Pending:
        name = node.op.name  # type: ignore[attr-defined]
        key = _sampling_key(node)
        return Pending.ready([Generated(Sym(f"gen:{name}", _digest((key, s.text)))) for s in states])

    def choose(self, node: Node, text: Any, candidates: Sequence[str], method: str) -> Pending:
        key = ("select", text, tuple(candidates), method, node.op.temperature)  # type: ignore[attr-defined]
        return Pending.ready(Chosen(_pick(key, len(candidates)), {}))

    def prefill(self, node: Node, state: Any, text: Any) -> Pending:
        return Pending.ready(None)

    def host(self, node: Node, values: Sequence[Any]) -> Any:
        op = node.op
        inputs = tuple(v.public() if isinstance(v, SymbolicPromptState) else v for v in values)
        out = Sym(f"host:{op.func}", _digest(inputs))  # type: ignore[attr-defined]
        return values[0].appended(out) if op.returns == "state" else out  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Outcome:
    """A graph's result: its final text and variables, or the error it raises."""

    text: tuple[Any, ...] = ()
    variables: tuple[tuple[str, Any], ...] = ()
    error: str | None = None


def evaluate(graph: Graph) -> Outcome:
    """Run `graph` top-level (an empty state, symbolic arguments) and return its outcome."""
    try:
        state = run_graph(Interpreter(SymbolicDomain()), graph, _SymbolicArguments())
    except ProgramError as exc:
        return Outcome(error=str(exc))
    text, variables = state.public()
    return Outcome(text, variables)


def evaluate_module(module: Module) -> dict[str, Outcome]:
    """The outcome of running each function of the module top-level."""
    return {graph.name: evaluate(graph) for graph in module}
