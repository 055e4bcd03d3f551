"""A symbolic reference interpreter for the IR: the oracle that says a pass kept a program's meaning.

It runs a graph without a model. A generated text is an opaque symbol determined by what the model
would see: `<gen:name#digest>`, where the digest covers the gen's sampling attributes and the full
prompt text (so equal prompts and parameters give equal outputs, as greedy decoding does). A select
picks its choice by a hash of the prompt, the full candidates, the method and the temperature. Roles
are markers (`<user>`, `</user>`), arguments `<arg:name>`, host steps `<host:func#digest>` of their
inputs. A switch on a symbolic value takes a region chosen by a hash of the value; on a concrete value
it matches cases as the executor does. Two graphs mean the same when `evaluate` gives equal results:
the final text (a tuple of strings and symbols, adjacent strings merged) and the variables.

The interpreter follows docs/ir.md: `append` writes `str(value)` for non-strings, a `select` with a
`prefix` scores `prefix + choice` against the text without the prefix, a `gather_variable` join sets
each variable bound in any branch after the fork to the list of the branches' values, a
`concate_and_append` join appends the text each branch added after the fork.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from compiler.ir import (
    Append,
    Arg,
    BatchGen,
    Branch,
    Const,
    Fork,
    Gen,
    GetVar,
    Graph,
    Host,
    Join,
    Module,
    Node,
    Output,
    Prefill,
    Region,
    RoleBegin,
    RoleEnd,
    Score,
    Select,
    SetVar,
    StateIn,
    StateNew,
    Switch,
    VarScopeBegin,
    VarScopeEnd,
    branch_origin,
    thaw_json,
)

__all__ = ["Outcome", "ProgramError", "Sym", "SymText", "evaluate", "evaluate_module"]


class ProgramError(Exception):
    """An error the program itself would raise at run time (e.g. a switch value that matches no case)."""


@dataclass(frozen=True)
class Sym:
    """An opaque piece of text or value: `kind` says what produced it, `key` identifies it."""

    kind: str
    key: str

    def __repr__(self) -> str:
        return f"<{self.kind}:{self.key}>"


@dataclass(frozen=True)
class SymText:
    """A string value with symbols in it (a `var_scope` that captured generated text): appending it
    writes its pieces."""

    pieces: tuple[Any, ...]


def _digest(value: Any) -> str:
    return hashlib.sha256(repr(value).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _pick(key: Any, n: int) -> int:
    return int(_digest(key), 16) % n


Text = tuple[Any, ...]  # strings and Syms, no empty strings, no two strings adjacent


def _concat(text: Text, piece: Any) -> Text:
    if isinstance(piece, str):
        if not piece:
            return text
        if text and isinstance(text[-1], str):
            return (*text[:-1], text[-1] + piece)
    return (*text, piece)


def _has_sym(value: Any) -> bool:
    if isinstance(value, (Sym, SymText)):
        return True
    if isinstance(value, tuple):
        return any(_has_sym(v) for v in value)
    if isinstance(value, Mapping):
        return any(_has_sym(v) for v in value.values())
    return False


def _as_pieces(value: Any) -> tuple[Any, ...]:
    """The pieces `append` writes for a value: the string itself, a symbol, or `str(value)`."""
    if isinstance(value, (str, Sym)):
        return (value,)
    if isinstance(value, SymText):
        return value.pieces
    if _has_sym(value):
        return (Sym("str", _digest(value)),)
    return (str(thaw_json(value)),)


def _text_value(text: Text) -> Any:
    """A text as a variable's value: a plain string when it has no symbols."""
    if all(isinstance(p, str) for p in text):
        return "".join(text)
    return SymText(text)


@dataclass(frozen=True)
class State:
    text: Text = ()
    variables: Mapping[str, tuple[Any, int]] = field(default_factory=dict)  # name -> (value, stamp)
    scopes: Mapping[str, Text] = field(default_factory=dict)  # open var_scopes: name -> text at begin

    def append(self, *pieces: Any) -> State:
        text = self.text
        for piece in pieces:
            text = _concat(text, piece)
        return State(text, self.variables, self.scopes)

    def bind(self, name: str, value: Any, stamp: int) -> State:
        return State(self.text, {**self.variables, name: (value, stamp)}, self.scopes)

    def open_scope(self, name: str) -> State:
        return State(self.text, self.variables, {**self.scopes, name: self.text})

    def values(self) -> dict[str, Any]:
        return {name: value for name, (value, _) in self.variables.items()}

    def public(self) -> tuple[Text, tuple[tuple[str, Any], ...]]:
        """What the program can observe (stamps are the interpreter's own bookkeeping)."""
        return self.text, tuple(sorted(self.values().items()))


@dataclass(frozen=True)
class _Bundle:
    states: tuple[State, ...]
    forked: State | None  # the forked state (None for a batch_gen)


@dataclass(frozen=True)
class Outcome:
    """A graph's result: its final text and variables, or the error it raises."""

    text: Text = ()
    variables: tuple[tuple[str, Any], ...] = ()
    error: str | None = None


def _strip_suffix(text: Text, suffix: str) -> Text:
    if not suffix:
        return text
    if not text or not isinstance(text[-1], str) or not text[-1].endswith(suffix):
        raise AssertionError(f"the state's text {text!r} does not end with the select prefix {suffix!r}")
    last = text[-1][: -len(suffix)]
    return (*text[:-1], last) if last else text[:-1]


def _suffix_after(text: Text, base: Text) -> Text:
    """The part of `text` after its prefix `base`."""
    if not base:
        return text
    head, last = base[:-1], base[-1]
    if text[: len(head)] != head or len(text) < len(base):
        raise AssertionError("a branch's text does not start with the forked text")
    piece = text[len(head)]
    if isinstance(last, str) and isinstance(piece, str) and piece.startswith(last):
        rest = piece[len(last):]
        return ((rest,) if rest else ()) + text[len(head) + 1:]
    if piece != last:
        raise AssertionError("a branch's text does not start with the forked text")
    return text[len(head) + 1:]


def _sampling_key(op: Gen | BatchGen) -> tuple[tuple[str, Any], ...]:
    # fsm is where a compiled constraint lives, not a different constraint.
    return tuple((k, v) for k, v in op.attributes().items() if k != "fsm")


class _Interpreter:
    def __init__(self, module: Module | None) -> None:
        self.module = module
        self.stamps = itertools.count()

    def run(self, graph: Graph, state: State, args: Mapping[str, Any]) -> State:
        env: dict[int, Any] = {}
        return self.region(graph.body, env, state, args)

    def region(self, region: Region, env: dict[int, Any], state_in: State, args: Mapping[str, Any]) -> State:
        for node in region:
            env[node.id] = self.node(node, env, state_in, args)
        output = region.output
        assert output is not None
        return env[output.operands[0].id]

    def choose(self, state: State, candidates: list[str], method: str, temperature: Any, prefix: str) -> int:
        prompt = _strip_suffix(state.text, prefix)
        return _pick(("select", prompt, tuple(candidates), method, temperature), len(candidates))

    def gen(self, op: Gen | BatchGen, state: State) -> State:
        if op.choices is not None:  # SGLang runs a gen with choices as a select with the default method
            index = self.choose(state, list(op.choices), "token_length_normalized", op.temperature, "")
            out: Any = op.choices[index]
        else:
            out = Sym(f"gen:{op.name}", _digest((_sampling_key(op), state.text)))
        state = state.append(out)
        return state.bind(op.name, out, next(self.stamps)) if op.name is not None else state

    def node(self, node: Node, env: dict[int, Any], state_in: State, args: Mapping[str, Any]) -> Any:
        op = node.op
        operands = [env[o.id] for o in node.operands]
        if isinstance(op, Arg):
            return args.get(op.name, Sym("arg", op.name))
        if isinstance(op, Const):
            return op.value
        if isinstance(op, StateNew):
            return State()
        if isinstance(op, StateIn):
            return state_in
        if isinstance(op, Append):
            return operands[0].append(*_as_pieces(operands[1]))
        if isinstance(op, RoleBegin):
            return operands[0].append(Sym("begin", op.role))
        if isinstance(op, RoleEnd):
            return operands[0].append(Sym("end", op.role))
        if isinstance(op, Prefill):
            return operands[0]
        if isinstance(op, Gen):
            return self.gen(op, operands[0])
        if isinstance(op, BatchGen):
            return _Bundle(tuple(self.gen(op, s) for s in operands), None)
        if isinstance(op, GetVar):
            entry = operands[0].variables.get(op.name)
            return entry[0] if entry is not None else Sym("unbound", op.name)
        if isinstance(op, (Select, Score)):
            candidates = [op.prefix + c for c in op.choices]
            index = self.choose(operands[0], candidates, op.method, op.temperature, op.prefix)
            state = operands[0].append(op.choices[index])
            return state if op.name is None else state.bind(op.name, candidates[index], next(self.stamps))
        if isinstance(op, SetVar):
            return operands[0].bind(op.name, operands[1], next(self.stamps))
        if isinstance(op, VarScopeBegin):
            return operands[0].open_scope(op.name)
        if isinstance(op, VarScopeEnd):
            state = operands[0]
            if op.name not in state.scopes:
                return state.bind(op.name, Sym("unopened-scope", op.name), next(self.stamps))
            captured = _suffix_after(state.text, state.scopes[op.name])
            return state.bind(op.name, _text_value(captured), next(self.stamps))
        if isinstance(op, Fork):
            return _Bundle((operands[0],) * op.n, operands[0])
        if isinstance(op, Branch):
            return operands[0].states[op.index]
        if isinstance(op, Join):
            return self.join(node, env, operands)
        if isinstance(op, Switch):
            return self.switch(node, env, operands, args)
        if isinstance(op, Host):
            inputs = tuple(v.public() if isinstance(v, State) else v for v in operands)
            out = Sym(f"host:{op.func}", _digest(inputs))
            return operands[0].append(out) if op.returns == "state" else out
        if isinstance(op, Output):
            return None
        raise AssertionError(f"no semantics for {op.opname}")

    def join(self, node: Node, env: dict[int, Any], operands: list[Any]) -> State:
        parent, branches = operands[0], operands[1:]
        origin = branch_origin(node.operands[1])
        assert origin is not None
        forked: State = env[origin[0].id].forked
        if node.op.mode == "concate_and_append":  # type: ignore[attr-defined]
            for branch in branches:
                parent = parent.append(*_suffix_after(branch.text, forked.text))
            return parent
        names = sorted({name for b in branches for name, (_, stamp) in b.variables.items()
                        if forked.variables.get(name, (None, None))[1] != stamp})
        for name in names:
            gathered = tuple(b.variables.get(name, (Sym("unbound", name), None))[0] for b in branches)
            parent = parent.bind(name, gathered, next(self.stamps))
        return parent

    def switch(self, node: Node, env: dict[int, Any], operands: list[Any], args: Mapping[str, Any]) -> State:
        state, value = operands
        op: Switch = node.op  # type: ignore[assignment]
        if _has_sym(value):
            region = node.regions[_pick(("switch", value), len(node.regions))]
        else:
            matches = [r for c, r in zip(op.cases, node.regions) if type(c) is type(value) and c == value]
            if matches:
                region = matches[0]
            elif op.default:
                region = node.regions[-1]
            else:
                raise ProgramError(f"switch %{node.id}: {value!r} matches no case")
        return self.region(region, env, state, args)


def evaluate(graph: Graph, module: Module | None = None) -> Outcome:
    """Run `graph` top-level (an empty state, symbolic arguments) and return its outcome."""
    interpreter = _Interpreter(module if module is not None else graph.module)
    try:
        state = interpreter.run(graph, State(), {})
    except ProgramError as exc:
        return Outcome(error=str(exc))
    text, variables = state.public()
    return Outcome(text, variables)


def evaluate_module(module: Module) -> dict[str, Outcome]:
    """The outcome of running each function of the module top-level."""
    return {graph.name: evaluate(graph, module) for graph in module}
