"""The IR's closed op set: one frozen dataclass per op, with its operand slots and typed attributes.

`Kind` says what a node produces and `Slot` what an operand position accepts; each op class declares
its signature in class variables (`opname`, `category`, `operand_slots`, `variadic`, `result`) and its
attributes as dataclass fields, checked on construction (`IRError`). `OPS` maps op names to classes.
docs/ir.md is the reference; `compiler.ir` re-exports everything here.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Union

from compiler.ir_text import excerpt
from compiler.ir_values import NO_DEFAULT, Json, freeze_json

__all__ = [
    "OPS", "Append", "Arg", "BatchGen", "Branch", "Const", "Fork", "Gen", "GetVar", "Host", "IRError",
    "Join", "Kind", "Op", "Output", "Prefill", "RoleBegin", "RoleEnd", "Score", "Select", "SetVar", "Slot",
    "StateIn", "StateNew", "StateUse", "Switch", "VarScopeBegin", "VarScopeEnd", "attribute_types",
    "check_attribute", "describe_type",
]


class IRError(ValueError):
    """A malformed op, node or graph. `node` and `graph` say where; the message shows the graph there."""

    def __init__(self, message: str, *, node: Any = None, graph: Any = None) -> None:
        # node: a `compiler.ir.Node`, graph: a `compiler.ir.Graph` (typed loosely: they are defined above this module)
        self.message = message
        self.node = node
        self.graph = graph if graph is not None or node is None else node.graph
        text = message
        if self.graph is not None:
            try:
                text += "\n" + excerpt(self.graph, node)
            except Exception as exc:  # the graph may be too broken to print; the message still stands
                text += f"\n(the graph could not be printed: {exc!r})"
        super().__init__(text)


# ---------------------------------------------------------------------------------------------------
# Value kinds and operand slots


class Kind(enum.Enum):
    """What a node produces. `text` is a value statically known to be a string (a constant)."""

    STATE = "state"
    TEXT = "text"
    VALUE = "value"
    FORK = "fork"
    NONE = "none"  # `output` produces nothing usable

    def __str__(self) -> str:
        return self.value


class Slot(enum.Enum):
    """What an operand position accepts."""

    STATE = (Kind.STATE,)
    VALUE = (Kind.TEXT, Kind.VALUE)
    FORK = (Kind.FORK,)
    ANY = (Kind.STATE, Kind.TEXT, Kind.VALUE)

    def accepts(self, kind: Kind) -> bool:
        return kind in self.value

    def __str__(self) -> str:
        return {"STATE": "state", "VALUE": "text or value", "FORK": "fork", "ANY": "state, text or value"}[
            self.name
        ]


class StateUse(enum.Enum):
    """What an op does with the states it reads, for planners that follow a prompt through a graph
    without running it (the executor keeps a prefill's prefix cached until the nodes that extend it
    run). A static fact of the signature, like `Slot`; what the op means is the interpreter's.
    `tests/test_ir_interpreter.py` checks each op's value against the interpreter's results."""

    CONTINUES = "continues"  # carries the state on without the model or the host: the result's text
    #                          starts with the state's (text and variable ops, fork, branch, join)
    READS = "reads"  # reads it and carries nothing on (getvar, output)
    RUNS = "runs"  # gives it to the model, the host or a region (gen, select, prefill, host, switch, ...)

    def __str__(self) -> str:
        return self.value


# ---------------------------------------------------------------------------------------------------
# Attribute schema: the annotations of each op's dataclass fields


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any) -> Any:
    """`value` checked against annotation `tp` (ints widen to float, lists to tuples)."""
    if tp is Json:
        try:
            return freeze_json(value)
        except TypeError as exc:
            raise _Mismatch from exc
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except _Mismatch:
                pass
        raise _Mismatch
    if origin is Literal:
        for choice in typing.get_args(tp):
            if type(value) is type(choice) and value == choice:
                return value
        raise _Mismatch
    if origin is tuple:
        (elem, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        return tuple(_coerce(v, elem) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    raise AssertionError(f"unsupported attribute annotation {tp!r}")


def describe_type(tp: Any) -> str:
    """An attribute annotation in words, for error messages and docs."""
    if tp is Json:
        return "a JSON value"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {describe_type(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return tp.__name__


_HINTS: dict[type, dict[str, Any]] = {}


def attribute_types(cls: type[Op]) -> dict[str, Any]:
    """The attribute annotations of an op class, resolved (cached)."""
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return _HINTS[cls]


def check_attribute(cls: type[Op], name: str, value: Any) -> Any:
    """`value` coerced to the type of attribute `name` of op class `cls`; IRError if it does not fit."""
    tp = attribute_types(cls)[name]
    try:
        return _coerce(value, tp)
    except _Mismatch:
        raise IRError(f"{cls.opname}: attribute {name!r} must be {describe_type(tp)}, got {value!r}") from None


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# ---------------------------------------------------------------------------------------------------
# Ops: one frozen dataclass per op. Fields are the attributes, in printing order.


@dataclass(frozen=True)
class Op:
    """Base of all ops. Class variables give the signature; fields are the typed attributes."""

    opname: ClassVar[str] = ""
    category: ClassVar[str] = "control"  # for dumps: "llm", "text", "control" or "host"
    operand_slots: ClassVar[tuple[Slot, ...]] = ()  # fixed leading operands
    variadic: ClassVar[Slot | None] = None  # trailing repeated operands, if any
    min_variadic: ClassVar[int] = 0
    result: ClassVar[Kind] = Kind.STATE
    state_use: ClassVar[StateUse] = StateUse.RUNS  # what it does with the states it reads

    def __post_init__(self) -> None:
        self._normalize()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is NO_DEFAULT and f.default is NO_DEFAULT:
                continue
            object.__setattr__(self, f.name, check_attribute(type(self), f.name, value))
        problem = self._check()
        if problem:
            raise IRError(f"{self.opname}: {problem}")

    def _normalize(self) -> None:
        """Hook: convert convenient spellings before type checking (e.g. `stop="x"`)."""

    def _check(self) -> str | None:
        """Hook: op-specific attribute constraints; returns what is wrong, or None."""
        return None

    # -- signature --------------------------------------------------------------------------------
    def result_kind(self) -> Kind:
        return self.result

    def num_regions(self) -> int:
        return 0

    def slot(self, index: int) -> Slot:
        if index < len(self.operand_slots):
            return self.operand_slots[index]
        assert self.variadic is not None
        return self.variadic

    def arity_problem(self, num_operands: int) -> str | None:
        """What is wrong with `num_operands` operands for this op, or None."""
        fixed = len(self.operand_slots)
        if self.variadic is None:
            if num_operands != fixed:
                return f"takes {fixed} operand{'s' * (fixed != 1)}, got {num_operands}"
        elif num_operands < fixed + self.min_variadic:
            return f"takes at least {fixed + self.min_variadic} operands, got {num_operands}"
        return None

    def consumes(self, index: int) -> bool:
        """Whether a state operand at `index` is continued (threaded) here rather than only read."""
        return True

    # -- attributes -------------------------------------------------------------------------------
    def attributes(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def explicit_attributes(self) -> list[tuple[str, Any]]:
        """The attributes that differ from their defaults (required ones always), in field order."""
        out = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.default is dataclasses.MISSING or not _same(value, f.default):
                out.append((f.name, value))
        return out


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


# -- values ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arg(Op):
    """A function argument (by name); `default` is its Python default when it has one."""

    opname = "arg"
    category = "text"
    result = Kind.VALUE
    name: str
    default: Json = NO_DEFAULT

    def _check(self) -> str | None:
        if not _IDENT.fullmatch(self.name):
            return f"argument name {self.name!r} is not an identifier"
        return None


@dataclass(frozen=True)
class Const(Op):
    """A constant: text when `value` is a string, otherwise a JSON value."""

    opname = "const"
    category = "text"
    value: Json

    def result_kind(self) -> Kind:
        return Kind.TEXT if isinstance(self.value, str) else Kind.VALUE


# -- states ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateNew(Op):
    """The function's initial, empty state (a graph that is only run top-level)."""

    opname = "state_new"


@dataclass(frozen=True)
class StateIn(Op):
    """The incoming state: the caller's for a called function, the switch's for a case region."""

    opname = "state_in"


@dataclass(frozen=True)
class Append(Op):
    """The state with a text (or a value's string form) appended."""

    opname = "append"
    category = "text"
    operand_slots = (Slot.STATE, Slot.VALUE)
    state_use = StateUse.CONTINUES


@dataclass(frozen=True)
class RoleBegin(Op):
    """Open a chat message of `role` (the chat template's prefix)."""

    opname = "role_begin"
    category = "text"
    operand_slots = (Slot.STATE,)
    state_use = StateUse.CONTINUES
    role: str

    def _check(self) -> str | None:
        return None if _IDENT.fullmatch(self.role) else f"role {self.role!r} is not an identifier"


@dataclass(frozen=True)
class RoleEnd(Op):
    """Close the chat message of `role` (the chat template's suffix)."""

    opname = "role_end"
    category = "text"
    operand_slots = (Slot.STATE,)
    state_use = StateUse.CONTINUES
    role: str

    def _check(self) -> str | None:
        return None if _IDENT.fullmatch(self.role) else f"role {self.role!r} is not an identifier"


GenDtype = Literal["int", "float", "str", "bool"]
_CONSTRAINTS = ("regex", "json_schema", "ebnf", "choices", "dtype")


@dataclass(frozen=True)
class _Sampling(Op):
    """Attributes shared by `gen` and `batch_gen`: SGLang's `gen` parameters (None: the run's default)."""

    category = "llm"
    operand_slots = (Slot.STATE,)
    name: str | None = None
    max_tokens: int | None = None
    min_tokens: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    ignore_eos: bool | None = None
    return_logprob: bool | None = None
    dtype: GenDtype | None = None
    regex: str | None = None
    json_schema: str | None = None
    ebnf: str | None = None
    choices: tuple[str, ...] | None = None
    fsm: str | None = None  # id of the compiled token FSM in the artifact (set by compile-constraints)

    def _normalize(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))

    def _check(self) -> str | None:
        if self.name is not None and not self.name:
            return "name must not be empty"
        for attr in ("max_tokens", "min_tokens"):
            value = getattr(self, attr)
            if value is not None and value < 0:
                return f"{attr} must be >= 0, got {value}"
        if self.max_tokens is not None and self.min_tokens is not None and self.min_tokens > self.max_tokens:
            return f"min_tokens ({self.min_tokens}) exceeds max_tokens ({self.max_tokens})"
        if any(not s for s in self.stop):
            return "stop strings must not be empty"
        if any(t < 0 for t in self.stop_token_ids):
            return "stop_token_ids must be >= 0"
        if self.temperature is not None and self.temperature < 0:
            return f"temperature must be >= 0, got {self.temperature}"
        if self.top_p is not None and not 0 < self.top_p <= 1:
            return f"top_p must be in (0, 1], got {self.top_p}"
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            return f"min_p must be in [0, 1], got {self.min_p}"
        if self.top_k is not None and (self.top_k == 0 or self.top_k < -1):
            return f"top_k must be -1 (off) or >= 1, got {self.top_k}"
        given = [c for c in _CONSTRAINTS if getattr(self, c) is not None]
        if len(given) > 1:
            return f"at most one constraint may be given, got {', '.join(given)}"
        if self.choices is not None:
            problem = _choices_problem(self.choices)
            if problem:
                return problem
        if self.fsm is not None and not given:
            return "fsm is set but there is no constraint"
        return None


def _choices_problem(choices: tuple[str, ...]) -> str | None:
    if not choices:
        return "choices must not be empty"
    if len(set(choices)) != len(choices):
        return f"choices must be distinct, got {list(choices)!r}"
    return None


@dataclass(frozen=True)
class Gen(_Sampling):
    """Generate into variable `name`: the state with the generated text appended and `name` bound."""

    opname = "gen"


@dataclass(frozen=True)
class BatchGen(_Sampling):
    """The same `gen` on several parallel states at once: a bundle, one state per operand (`branch`)."""

    opname = "batch_gen"
    operand_slots = ()
    variadic = Slot.STATE
    min_variadic = 1
    result = Kind.FORK


@dataclass(frozen=True)
class GetVar(Op):
    """The value of variable `name` in a state (`s[name]`)."""

    opname = "getvar"
    category = "text"
    operand_slots = (Slot.STATE,)
    result = Kind.VALUE
    state_use = StateUse.READS
    name: str

    def consumes(self, index: int) -> bool:
        return False


SelectMethod = Literal["token_length_normalized", "greedy_token_selection", "unconditional_likelihood_normalized"]


@dataclass(frozen=True)
class _Choose(Op):
    category = "llm"
    operand_slots = (Slot.STATE,)
    name: str | None  # None: anonymous (the choice is appended, no variable is bound)
    choices: tuple[str, ...]
    method: SelectMethod = "token_length_normalized"
    temperature: float | None = None
    # Text shared by every choice that hoist-prefix moved out of `choices` into the state (the state
    # already ends with it). The candidates are still `prefix + choice` in every respect: scored as
    # continuations of the state without the prefix, and `name` is bound to `prefix + choice`.
    prefix: str = ""

    def _check(self) -> str | None:
        if self.name is not None and not self.name:
            return "name must not be empty"
        if self.temperature is not None and self.temperature < 0:
            return f"temperature must be >= 0, got {self.temperature}"
        return _choices_problem(self.choices)


@dataclass(frozen=True)
class Select(_Choose):
    """Pick one of `choices` by `method`: the state with the choice appended and `name` bound to it."""

    opname = "select"


@dataclass(frozen=True)
class Score(_Choose):
    """`select` lowered to one batched scoring request (all choices scored against the shared prompt)."""

    opname = "score"


@dataclass(frozen=True)
class _NamedTextOp(Op):
    """A text op about the variable `name` (which must not be empty)."""

    category = "text"
    state_use = StateUse.CONTINUES
    name: str

    def _check(self) -> str | None:
        return None if self.name else "name must not be empty"


@dataclass(frozen=True)
class SetVar(_NamedTextOp):
    """The state with variable `name` bound to the value (`s.set_var(name, value)`); text unchanged."""

    opname = "set_var"
    operand_slots = (Slot.STATE, Slot.VALUE)


@dataclass(frozen=True)
class VarScopeBegin(_NamedTextOp):
    """Start capturing variable `name` (`with s.var_scope(name):`): remembers where the text ends now."""

    opname = "var_scope_begin"
    operand_slots = (Slot.STATE,)


@dataclass(frozen=True)
class VarScopeEnd(_NamedTextOp):
    """Bind `name` to the text appended since the matching `var_scope_begin` on this state's lineage."""

    opname = "var_scope_end"
    operand_slots = (Slot.STATE,)


# -- control -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fork(Op):
    """`n` copies of a state, as a bundle; `branch` takes one out. The forked state is only read."""

    opname = "fork"
    operand_slots = (Slot.STATE,)
    result = Kind.FORK
    state_use = StateUse.CONTINUES
    n: int

    def _check(self) -> str | None:
        return None if self.n >= 1 else f"n must be >= 1, got {self.n}"

    def consumes(self, index: int) -> bool:
        return False


@dataclass(frozen=True)
class Branch(Op):
    """State `index` of a bundle (a `fork` or a `batch_gen`)."""

    opname = "branch"
    operand_slots = (Slot.FORK,)
    state_use = StateUse.CONTINUES
    index: int

    def _check(self) -> str | None:
        return None if self.index >= 0 else f"index must be >= 0, got {self.index}"


JoinMode = Literal["gather_variable", "concate_and_append"]


@dataclass(frozen=True)
class Join(Op):
    """Join the final states of all branches of one fork (in index order) into the parent state."""

    opname = "join"
    operand_slots = (Slot.STATE,)
    variadic = Slot.STATE
    min_variadic = 1
    state_use = StateUse.CONTINUES
    mode: JoinMode = "gather_variable"


@dataclass(frozen=True)
class Switch(Op):
    """Run the region whose case equals the value (or the `default` region, last); its output state."""

    opname = "switch"
    operand_slots = (Slot.STATE, Slot.VALUE)
    cases: tuple[Json, ...]
    default: bool = False

    def num_regions(self) -> int:
        return len(self.cases) + int(self.default)

    def _check(self) -> str | None:
        for case in self.cases:
            if isinstance(case, (tuple, Mapping)):
                return f"case {case!r} is not a scalar"
        keys = [(type(c), c) for c in self.cases]
        if len(set(keys)) != len(keys):
            return f"cases must be distinct, got {list(self.cases)!r}"
        if not self.num_regions():
            return "needs at least one case or a default"
        return None


@dataclass(frozen=True)
class Prefill(Op):
    """Hint: compute the KV of the state's text now (so later forks hit the prefix cache). Identity.

    Optional value operands after the state extend the hinted text: `prefill %s, %v` warms the cache
    with the state's text followed by `v`'s text (the prefix that every branch of the next fork starts
    with, found by hoist-prefix), without changing the state itself.
    """

    opname = "prefill"
    category = "llm"
    operand_slots = (Slot.STATE,)
    variadic = Slot.VALUE


HostResult = Literal["state", "text", "value"]


@dataclass(frozen=True)
class Host(Op):
    """A graph break: Python `func` ("module:qualname") runs in the executor on the operands' real values.

    `returns` is the kind it produces; when it is "state", operand 0 is the state it continues.
    `args` optionally names the operands (same length). `line` is the user's line, `reason` why the
    tracer could not compile it (shown by `sgc compile --explain`).
    """

    opname = "host"
    category = "host"
    variadic = Slot.ANY
    func: str
    reason: str = ""
    line: int | None = None
    args: tuple[str, ...] = ()
    returns: HostResult = "state"

    def result_kind(self) -> Kind:
        return Kind(self.returns)

    def _check(self) -> str | None:
        module, _, qualname = self.func.partition(":")
        if not module or not qualname:
            return f"func must be 'module:qualname', got {self.func!r}"
        if self.line is not None and self.line < 1:
            return f"line must be >= 1, got {self.line}"
        return None

    def arity_problem(self, num_operands: int) -> str | None:
        if self.args and len(self.args) != num_operands:
            return f"names {len(self.args)} args but has {num_operands} operands"
        if self.returns == "state" and num_operands == 0:
            return "returns a state, so operand 0 must be the state it continues"
        return None

    def consumes(self, index: int) -> bool:
        return self.returns == "state" and index == 0


@dataclass(frozen=True)
class Output(Op):
    """The region's result: the final state of the function (or of a switch case)."""

    opname = "output"
    operand_slots = (Slot.STATE,)
    result = Kind.NONE
    state_use = StateUse.READS


OPS: dict[str, type[Op]] = {
    cls.opname: cls
    for cls in (
        Arg, Const, StateNew, StateIn, Append, RoleBegin, RoleEnd, Gen, GetVar, Select, Score, Fork,
        Branch, Join, Switch, Prefill, BatchGen, Host, Output, SetVar, VarScopeBegin, VarScopeEnd,
    )
}
