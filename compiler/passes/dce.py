"""dce: dead node elimination, and switches whose outcome is known at compile time."""

from __future__ import annotations

from typing import Any

from compiler.ir import (
    BatchGen,
    Branch,
    Const,
    Fork,
    Gen,
    GetVar,
    Graph,
    Node,
    Region,
    Score,
    Select,
    SetVar,
    Switch,
    VarScopeEnd,
)
from compiler.passes.base import Pass, register
from compiler.passes.chains import PURE_STATE_OPS

__all__ = ["DeadCodeElimination", "possible_values"]

_UNKNOWN = None


def possible_values(selector: Node) -> list[Any] | None:
    """The values a switch selector can take, when the compiler knows them: a constant's value, or the
    strings a `getvar` can read when the variable was last bound by a `select`/`score` (prefix + each
    choice), a `gen` with choices, or a `set_var` of a constant. None when unknown."""
    if isinstance(selector.op, Const):
        return [selector.op.value]
    if not isinstance(selector.op, GetVar):
        return _UNKNOWN
    name = selector.op.name
    state = selector.operands[0]
    seen: set[int] = set()
    while state.id not in seen:
        seen.add(state.id)
        op = state.op
        if isinstance(op, (Select, Score)):
            if op.name == name:
                return [op.prefix + c for c in op.choices]
        elif isinstance(op, Gen):
            if op.name == name:
                return list(op.choices) if op.choices is not None else _UNKNOWN
        elif isinstance(op, Branch):
            source = state.operands[0]
            if isinstance(source.op, BatchGen):
                if source.op.name == name:
                    return list(source.op.choices) if source.op.choices is not None else _UNKNOWN
                state = source.operands[op.index]
                continue
            state = source.operands[0]  # a fork's branch starts as a copy of the forked state
            continue
        elif isinstance(op, SetVar):
            if op.name == name:
                value = state.operands[1]
                return [value.op.value] if isinstance(value.op, Const) else _UNKNOWN
        elif isinstance(op, VarScopeEnd):
            if op.name == name:
                return _UNKNOWN
        elif not isinstance(op, PURE_STATE_OPS):
            return _UNKNOWN  # joins, host steps, switches and entries may bind anything
        state = state.operands[0]
    return _UNKNOWN


def _case_matches(case: Any, value: Any) -> bool:
    return type(case) is type(value) and case == value


def _taken_region(switch: Node, value: Any) -> Region | None:
    """The region a switch runs for `value` (None: a runtime error, no case and no default)."""
    for case, region in zip(switch.op.cases, switch.regions):  # type: ignore[attr-defined]
        if _case_matches(case, value):
            return region
    return switch.regions[-1] if switch.op.default else None  # type: ignore[attr-defined]


def _is_trivial(region: Region) -> bool:
    return len(region) == 2 and region.output is not None and region.output.operands[0] is region.entry


@register
class DeadCodeElimination(Pass):
    """Remove dead nodes and dead switch regions.

    Why: tracing and the other passes leave values nobody reads (constants, `getvar`s of variables
    used only in Python, hoisted or folded leftovers) and switches whose outcome the compiler can see;
    every node left costs the executor bookkeeping, and a gen in a dead region costs a constraint
    compilation.

    What goes: a `const` or `getvar` without users; a state op that neither calls the model nor runs
    user code (`append`, `role_begin`, `role_end`, `prefill`, `set_var`, `var_scope_begin/end`) without
    users, then a fork `branch` and a `fork` left without users (a
    branch nobody continues adds no text anywhere). A switch whose selector is a constant runs one
    known region: that region is inlined in place of the switch. A switch on a variable last bound by
    a `select`/`score` (or a gen with choices) can only take the regions of those choices: the others
    are emptied (`state_in` then `output`), and when exactly one region can run it is inlined.

    Guarantees: nothing that can affect a final text, a variable or an error is removed. `gen`,
    `batch_gen`, `select`, `score`, `host` (even value-returning: it runs user code that may
    fail), joins, entries and outputs always stay, and so do `arg`s: they are the function's signature
    (the run's keyword arguments are checked against them). A switch whose
    known value matches no case and has no default stays (it is a runtime error to report).
    """

    name = "dce"

    def run(self, graph: Graph) -> bool:
        changed = False
        while True:
            step = self._simplify_switches(graph)
            step |= self._sweep(graph)
            if not step:
                return changed
            changed = True

    # -- switches ----------------------------------------------------------------------------------
    def _simplify_switches(self, graph: Graph) -> bool:
        for node in list(graph.nodes()):
            if node not in graph or not isinstance(node.op, Switch):
                continue
            values = possible_values(node.operands[1])
            if values is None:
                continue
            taken = [_taken_region(node, v) for v in values]
            if None not in taken and len({id(r) for r in taken}) == 1:
                self._inline(graph, node, taken[0])  # type: ignore[arg-type]
                return True  # the node list changed: start over
            live = {id(r) for r in taken if r is not None}
            emptied = False
            for region in node.regions:
                if id(region) not in live and not _is_trivial(region):
                    self._empty(graph, region)
                    emptied = True
            if emptied:
                return True
        return False

    @staticmethod
    def _inline(graph: Graph, switch: Node, region: Region) -> None:
        entry, output = region.entry, region.output
        assert entry is not None and output is not None
        for inner in region.nodes:
            if inner is not entry and inner is not output:
                graph.move(inner, before=switch)
        state = switch.operands[0]
        result = output.operands[0]
        graph.replace_all_uses(entry, state)
        graph.replace_all_uses(switch, state if result is entry else result)
        graph.erase(switch)

    @staticmethod
    def _empty(graph: Graph, region: Region) -> None:
        entry, output = region.entry, region.output
        assert entry is not None and output is not None
        graph.set_operands(output, [entry])
        for inner in reversed(region.nodes):
            if inner is not entry and inner is not output:
                graph.erase(inner)

    # -- dead nodes --------------------------------------------------------------------------------
    @staticmethod
    def _sweep(graph: Graph) -> bool:
        changed = False
        for node in reversed(list(graph.nodes())):
            if node in graph and not graph.users(node) and _removable(node):
                graph.erase(node)
                changed = True
        return changed


def _removable(node: Node) -> bool:
    op = node.op
    if isinstance(op, (Const, GetVar, Fork, *PURE_STATE_OPS)):
        return True
    return isinstance(op, Branch) and isinstance(node.operands[0].op, Fork)
