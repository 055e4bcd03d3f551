"""The meaning of every IR op, written once: `Interpreter`, in the style of torch.fx's `Interpreter`.

One method per op, named as the op (`append`, `gen`, `switch`, ...), over an abstract value domain
(`Domain`). Three things run graphs through it, each with its own domain:

- the graph executor (`executor/program/graph_run.py`): real `PromptState`s, a model client whose requests
  it batches across program instances, host steps under the caller's `HostPolicy`;
- the semantics checker (`compiler/passes/semantics.py`): symbolic states and text, a "model" whose
  outputs are symbols determined by what it would see, so two graphs can be compared without one;
- the test oracle (`tests/test_lang_support.py`): real states on a fake (or tiny real) engine.

The interpreter evaluates one node whose operands are known (`run_node`); how a graph is scheduled
is not its business. An op that needs the model (or a host job) returns a `Pending`: the requests
the domain made, and how their results become the node's value. A `switch` returns an
`EnterRegion`: which region runs, on which state; the region's output is the switch's value. The
driver decides when requests run and how regions are entered: `run_graph` below does both at once
(checker, oracle); the executor submits the requests of many instances together and runs regions
as child frames.

A method receives the frame it runs in (`Frame`: the region's incoming state, the function's
arguments, the values computed so far), the node, and its operands' values. What a domain supplies
is only what differs between real and symbolic runs: the empty state, the text `append` writes for
a value, the model, host functions, and whether a switch value is opaque. States are immutable and
offer the operations of `compiler.prompt_state.PromptState` (the symbolic state is a subclass).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from compiler import ir
from compiler.errors import ProgramError
from compiler.ir import Graph, Node, Region

__all__ = ["Bundle", "Chosen", "Domain", "EnterRegion", "Frame", "Generated", "Interpreter", "NodeFailed",
           "Pending", "run_graph"]

# SGLang runs a gen with choices as a select with the default method.
DEFAULT_CHOICES_METHOD = "token_length_normalized"


# ---------------------------------------------------------------------------------------------------
# Values and directives


@dataclass(frozen=True)
class Bundle:
    """A `fork` value: the branch states of a `fork` or the result states of a `batch_gen`."""

    states: tuple[Any, ...]


@dataclass(frozen=True)
class Generated:
    """What the model generated for one state: the text and its meta info (None: none)."""

    text: Any
    meta: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Chosen:
    """Which candidate a select picked, and the meta info of the decision."""

    index: int
    meta: Mapping[str, Any]


class Pending:
    """Work outside the interpreter that a node waits for: model requests, or a host job.

    Whoever drives the interpreter runs `requests` (the executor batches them across instances) and
    calls `finish(results)`, one result per request in order, to get the node's value. A pending
    without requests is already decided (`Pending.ready`).
    """

    __slots__ = ("requests", "finish")

    def __init__(self, requests: Sequence[Any], finish: Callable[[list[Any]], Any]) -> None:
        self.requests = tuple(requests)
        self.finish = finish

    @classmethod
    def ready(cls, value: Any) -> Pending:
        return cls((), lambda _results: value)

    def then(self, fn: Callable[[Any], Any]) -> Pending:
        """The pending whose value is `fn` of this one's."""
        finish = self.finish
        return Pending(self.requests, lambda results: fn(finish(results)))

    @classmethod
    def all(cls, pendings: Sequence[Pending]) -> Pending:
        """One pending for several: its requests are theirs in order; its value the list of theirs."""
        counts = [len(p.requests) for p in pendings]

        def finish(results: list[Any]) -> list[Any]:
            values, start = [], 0
            for pending, count in zip(pendings, counts):
                values.append(pending.finish(list(results[start:start + count])))
                start += count
            return values

        return cls([r for p in pendings for r in p.requests], finish)


@dataclass(frozen=True)
class EnterRegion:
    """A switch's decision: run `region` on `state`; its output is the switch's value."""

    region: Region
    state: Any


class NodeFailed(ProgramError):
    """A node of a synchronous run failed (`run_graph`): the message names the graph and the node."""

    def __init__(self, node: Node, reason: str) -> None:
        super().__init__(f"@{node.graph.name}: %{node.id} ({node.op.opname}): {reason}")
        self.node = node
        self.reason = reason


# ---------------------------------------------------------------------------------------------------
# What the interpreter needs from its driver and its domain


class Frame(Protocol):
    """One activation of a region: the body of a run, or a taken switch region."""

    @property
    def incoming(self) -> Any:
        """The state `state_in` (and a body's `state_new`) starts from."""
        ...

    @property
    def arguments(self) -> Mapping[str, Any]:
        """The run's arguments by name (`arg`)."""
        ...

    def lookup(self, node: Node) -> Any:
        """The value of a node computed earlier in this frame or an enclosing one."""
        ...


class Domain(Protocol):
    """What differs between a real and a symbolic run (see the module docstring)."""

    chat_format: Any  # how roles render (`compiler.chat_template.ChatFormat` or prefix/suffix)

    def new_state(self) -> Any:
        """An empty state (`state_new`)."""
        ...

    def text(self, value: Any) -> Any:
        """The text `append` writes for a value: a string as is, anything else as `str(value)`."""
        ...

    def opaque_case(self, value: Any, num_regions: int) -> int | None:
        """The region a switch takes on a value the domain cannot compare (symbolic), else None."""
        ...

    def generate(self, node: Node, states: Sequence[Any]) -> Pending:
        """Generation by `node`'s sampling attributes, once per state: finishes with [Generated]."""
        ...

    def choose(self, node: Node, text: Any, candidates: Sequence[str], method: str) -> Pending:
        """Score `candidates` as continuations of `text` and pick by `method`: finishes with Chosen."""
        ...

    def prefill(self, node: Node, state: Any, text: Any) -> Pending:
        """Warm the model's cache with `text` (a hint; the value it finishes with is ignored)."""
        ...

    def host(self, node: Node, values: Sequence[Any]) -> Any:
        """Run host step `node`'s function on the operands' values: its result, or a Pending."""
        ...


# ---------------------------------------------------------------------------------------------------
# The interpreter


def _bind_generated(state: Any, name: str | None, out: Generated) -> Any:
    state = state.appended(out.text)
    return state if name is None else state.with_var(name, out.text, out.meta)


class Interpreter:
    """The meaning of each IR op: `run_node` calls the method named as the node's op."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain

    def run_node(self, frame: Frame, node: Node) -> Any:
        """The node's value, a `Pending` it waits for, or an `EnterRegion` (a switch).

        Raises `ProgramError` (a `StateError` among them) when the program itself fails here.
        """
        method = getattr(self, node.op.opname)
        result = method(frame, node, *[frame.lookup(o) for o in node.operands])
        if isinstance(result, Pending) and not result.requests:
            return result.finish([])
        return result

    # -- values ----------------------------------------------------------------------------------------
    def arg(self, frame: Frame, node: Node) -> Any:
        """The run's argument by name, else the default; none of either is an error."""
        op: ir.Arg = node.op  # type: ignore[assignment]
        if op.name in frame.arguments:
            return frame.arguments[op.name]
        if op.default is not ir.NO_DEFAULT:
            return ir.thaw_json(op.default)
        raise ProgramError(f"missing argument {op.name!r}")

    def const(self, frame: Frame, node: Node) -> Any:
        return ir.thaw_json(node.op.value)  # type: ignore[attr-defined]

    def getvar(self, frame: Frame, node: Node, state: Any) -> Any:
        return state[node.op.name]  # type: ignore[attr-defined]

    # -- states and text ------------------------------------------------------------------------------
    def state_new(self, frame: Frame, node: Node) -> Any:
        return self.domain.new_state()

    def state_in(self, frame: Frame, node: Node) -> Any:
        return frame.incoming

    def append(self, frame: Frame, node: Node, state: Any, value: Any) -> Any:
        return state.appended(self.domain.text(value))

    def role_begin(self, frame: Frame, node: Node, state: Any) -> Any:
        return state.role_begin(node.op.role, self.domain.chat_format)  # type: ignore[attr-defined]

    def role_end(self, frame: Frame, node: Node, state: Any) -> Any:
        return state.role_end(node.op.role, self.domain.chat_format)  # type: ignore[attr-defined]

    def set_var(self, frame: Frame, node: Node, state: Any, value: Any) -> Any:
        return state.with_var(node.op.name, value)  # type: ignore[attr-defined]

    def var_scope_begin(self, frame: Frame, node: Node, state: Any) -> Any:
        """Only a mark: the matching end finds it on its state's history."""
        return state

    def var_scope_end(self, frame: Frame, node: Node, state: Any) -> Any:
        """Bind `name` to the text appended since the matching `var_scope_begin` on this state's history."""
        name = node.op.name  # type: ignore[attr-defined]
        # Scopes of one name nest like brackets: an inner end on the way back skips its begin
        # (a pass that inlines a switch region must not make the outer end find the inner begin).
        begin, inner = None, 0
        for n in _state_history(node.operands[0]):
            if isinstance(n.op, ir.VarScopeEnd) and n.op.name == name:
                inner += 1
            elif isinstance(n.op, ir.VarScopeBegin) and n.op.name == name:
                if inner == 0:
                    begin = n
                    break
                inner -= 1
        if begin is None:
            raise ProgramError(f"var_scope_end {name!r} has no matching var_scope_begin on its state")
        return state.with_var(name, state.text[len(frame.lookup(begin).text):])

    # -- LLM ops --------------------------------------------------------------------------------------
    def gen(self, frame: Frame, node: Node, state: Any) -> Any:
        """The state with the generated text appended and bound to `name` (a gen with choices is a
        select with the default method)."""
        op: ir.Gen = node.op  # type: ignore[assignment]
        if op.choices is not None:
            return self._choose(node, state, op.name, op.choices, DEFAULT_CHOICES_METHOD, "")
        return self.domain.generate(node, [state]).then(lambda outs: _bind_generated(state, op.name, outs[0]))

    def batch_gen(self, frame: Frame, node: Node, *states: Any) -> Any:
        """`gen` on every operand state, as one batch: result i continues operand i."""
        op: ir.BatchGen = node.op  # type: ignore[assignment]
        if op.choices is not None:
            choices = [self._choose(node, s, op.name, op.choices, DEFAULT_CHOICES_METHOD, "") for s in states]
            return Pending.all(choices).then(lambda outs: Bundle(tuple(outs)))
        return self.domain.generate(node, states).then(
            lambda outs: Bundle(tuple(_bind_generated(s, op.name, o) for s, o in zip(states, outs))))

    def select(self, frame: Frame, node: Node, state: Any) -> Any:
        """The state with the picked choice appended and `prefix + choice` bound to `name`."""
        op: ir.Select = node.op  # type: ignore[assignment]
        return self._choose(node, state, op.name, op.choices, op.method, op.prefix)

    def score(self, frame: Frame, node: Node, state: Any) -> Any:
        """`select` as lower-select writes it: the same op under the name the executor promises to run as
        one batched scoring request (which it does for `select` too)."""
        return self.select(frame, node, state)

    def _choose(self, node: Node, state: Any, name: str | None, choices: Sequence[str], method: str,
                prefix: str) -> Pending:
        # A prefix hoisted out of the choices already ends the state's text; the candidates are still
        # prefix + choice, scored after the text without it.
        if prefix and not state.text.endswith(prefix):
            raise ProgramError(f"the state's text does not end with the hoisted choice prefix {prefix!r}")
        text = state.text[:len(state.text) - len(prefix)]
        candidates = [prefix + c for c in choices]

        def bind(chosen: Chosen) -> Any:
            out = state.appended(choices[chosen.index])
            if name is None:
                return out
            return out.with_var(name, candidates[chosen.index], {**chosen.meta, "choices": candidates})

        return self.domain.choose(node, text, candidates, method).then(bind)

    def prefill(self, frame: Frame, node: Node, state: Any, *values: Any) -> Any:
        """A hint, identity on the state: warm the cache with its text (and the values' text after it)."""
        text = state.text
        for value in values:
            text = text + self.domain.text(value)
        return self.domain.prefill(node, state, text).then(lambda _result: state)

    # -- control --------------------------------------------------------------------------------------
    def fork(self, frame: Frame, node: Node, state: Any) -> Bundle:
        """`n` copies of the state, each remembering where it was forked."""
        branch = state.forked()
        return Bundle((branch,) * node.op.n)  # type: ignore[attr-defined]

    def branch(self, frame: Frame, node: Node, bundle: Bundle) -> Any:
        return bundle.states[node.op.index]  # type: ignore[attr-defined]

    def join(self, frame: Frame, node: Node, parent: Any, *branches: Any) -> Any:
        """Every variable bound in any branch since the fork becomes, in the parent, the list of its
        values per branch (None where a branch has none), meta info likewise: nothing is dropped.
        `concate_and_append` first appends what each branch added (text, messages), in order."""
        if node.op.mode == "concate_and_append":  # type: ignore[attr-defined]
            for branch in branches:
                parent = parent.extended(*branch.added_since_fork())
        names: list[str] = []
        for branch in branches:
            names.extend(n for n in branch.bound_since_fork if n not in names)
        for name in names:
            parent = parent.with_var(name, [b.get(name) for b in branches], [b.get_meta_info(name) for b in branches])
        return parent

    def switch(self, frame: Frame, node: Node, state: Any, value: Any) -> EnterRegion:
        """The region whose case equals the value (type and value: 1 is not true), else the default."""
        op: ir.Switch = node.op  # type: ignore[assignment]
        index = self.domain.opaque_case(value, len(node.regions))
        if index is None:
            index = next((i for i, c in enumerate(op.cases) if type(c) is type(value) and c == value), None)
        if index is None:
            if not op.default:
                raise ProgramError(f"the value {value!r} matches no case of {list(op.cases)!r} and there is "
                                   "no default")
            index = len(op.cases)
        return EnterRegion(node.regions[index], state)

    def host(self, frame: Frame, node: Node, *values: Any) -> Any:
        """A graph break: the function named by `func` on the operands' values (the domain runs it)."""
        return self.domain.host(node, values)

    def output(self, frame: Frame, node: Node, state: Any) -> Any:
        """The region's result."""
        return state


def _state_history(node: Node) -> Iterator[Node]:
    """The nodes a state's text was built through, newest first: back along operand 0, through a
    fork's branch to the forked state, from a batch_gen's result i to its operand i, and from a
    switch region's `state_in` to the state the switch was given."""
    current: Node | None = node
    while current is not None:
        yield current
        op = current.op
        if isinstance(op, ir.StateIn):
            switch = current.region.parent if current.region is not None else None
            current = switch.operands[0] if switch is not None else None
        elif isinstance(op, ir.Branch) and isinstance(current.operands[0].op, ir.BatchGen):
            current = current.operands[0].operands[op.index]
        else:
            current = current.operands[0] if current.operands else None


# ---------------------------------------------------------------------------------------------------
# A synchronous driver


class _SyncFrame:
    def __init__(self, incoming: Any, arguments: Mapping[str, Any], parent: _SyncFrame | None) -> None:
        self.incoming = incoming
        self.arguments = arguments
        self.parent = parent
        self.values: dict[int, Any] = {}

    def lookup(self, node: Node) -> Any:
        frame: _SyncFrame | None = self
        while frame is not None:
            if node.id in frame.values:
                return frame.values[node.id]
            frame = frame.parent
        raise AssertionError(f"%{node.id} is used before it was computed")


def run_graph(interpreter: Interpreter, graph: Graph, arguments: Mapping[str, Any],
              incoming: Any = None) -> Any:
    """Run `graph` node by node in list order (which respects dependencies), every node included,
    entering switch regions as they are taken. The domain must answer at once (no pending requests).
    Returns the output state; a failing node raises `NodeFailed`."""
    frame = _SyncFrame(interpreter.domain.new_state() if incoming is None else incoming, arguments, None)
    return _run_region(interpreter, graph.body, frame)


def _run_region(interpreter: Interpreter, region: Region, frame: _SyncFrame) -> Any:
    for node in region:
        try:
            value = interpreter.run_node(frame, node)
        except NodeFailed:
            raise
        except ProgramError as exc:
            raise NodeFailed(node, str(exc)) from exc
        if isinstance(value, EnterRegion):
            value = _run_region(interpreter, value.region, _SyncFrame(value.state, frame.arguments, frame))
        elif isinstance(value, Pending):
            raise TypeError(f"@{node.graph.name} %{node.id}: a synchronous run got requests to schedule; its "
                            "domain must answer at once")
        frame.values[node.id] = value
    output = region.output
    assert output is not None, "a region without output passed verification"
    return frame.values[output.id]
