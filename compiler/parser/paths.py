"""Path traces and their merge into one graph with switches.

A traced run of the function records a *path*: a flat list of instructions (an IR op, operands as
indices of earlier instructions, the user's line) in the order the program executed them. Where the
program branched on a value with finitely many outcomes the path holds a *decision*: the value, its
domain and the outcome this run took. The tracer re-runs the function once per combination of
outcomes (`compiler.parser.tracer`), so all paths agree up to their first differing decision.

`build_graph` merges the paths: instructions common to all paths are emitted once; at a decision
whose outcomes lead to different continuations, a `switch` on the decided value gets one region per
outcome (outcomes whose continuations are identical share the `default` region), and the rest of
the function (everything after the `if`, too: Python does not say where branches re-join) is built
inside each region from the paths that took that outcome. A switch threads one state: when the
continuation uses more than one state that existed before the decision (an open fork, another
branch), the merge gives up with `SwitchUnsupported` and the function falls back to the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from compiler.errors import CompileError
from compiler.ir import Graph, Kind, Op, Output, Region, StateIn, Switch

__all__ = ["Decision", "Instr", "Path", "SwitchUnsupported", "build_graph"]


@dataclass(frozen=True)
class Decision:
    """A branch point: the program needed the concrete value of operand 0, one of `domain`."""

    domain: tuple[Any, ...]


@dataclass(frozen=True)
class Instr:
    op: Op | Decision
    operands: tuple[int, ...] = ()
    loc: str | None = None
    meta: tuple[tuple[str, Any], ...] = ()

    def kind(self) -> Kind | None:
        return None if isinstance(self.op, Decision) else self.op.result_kind()


@dataclass
class Path:
    """One run's instructions and the outcome of each decision (by instruction index)."""

    instrs: list[Instr] = field(default_factory=list)
    outcomes: dict[int, Any] = field(default_factory=dict)

    def future(self, start: int) -> tuple:
        """Everything from instruction `start` on, comparable across paths that share the prefix."""
        later = tuple(self.outcomes[i] for i in sorted(self.outcomes) if i >= start)
        return tuple(self.instrs[start:]), later


class SwitchUnsupported(Exception):
    """A decision that cannot become a switch (several live states); `loc` is the branch's line."""

    def __init__(self, reason: str, loc: str | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.loc = loc


def build_graph(name: str, paths: Sequence[Path]) -> Graph:
    graph = Graph(name)
    _build(graph, graph.body, list(paths), 0, {})
    return graph


def _build(graph: Graph, region: Region, paths: list[Path], k: int, env: dict[int, Any]) -> None:
    while True:
        instr = paths[0].instrs[k]
        for other in paths[1:]:
            if k >= len(other.instrs) or other.instrs[k] != instr:
                raise CompileError(f"the function traced differently on two runs at {instr.loc} "
                                   "(does it use randomness, time or global state?)")
        if isinstance(instr.op, Decision):
            if _emit_switch(graph, region, paths, k, env, instr):
                return
            k += 1
            continue
        node = graph.add(instr.op, [env[o] for o in instr.operands], region=region, loc=instr.loc,
                         meta=dict(instr.meta) or None)
        env[k] = node
        if isinstance(instr.op, Output):
            return
        k += 1


def _emit_switch(graph: Graph, region: Region, paths: list[Path], k: int, env: dict[int, Any],
                 instr: Instr) -> bool:
    """Emit the switch for the decision at `k`; False when every outcome continues the same way."""
    domain = instr.op.domain  # type: ignore[union-attr]
    by_outcome: dict[Any, list[Path]] = {}
    for outcome in domain:
        taken = [p for p in paths if _same_value(p.outcomes[k], outcome)]
        if taken:
            by_outcome[outcome] = taken
    futures: list[tuple[frozenset, list[Any]]] = []
    for outcome, taken in by_outcome.items():
        key = frozenset(p.future(k + 1) for p in taken)
        for existing_key, members in futures:
            if existing_key == key:
                members.append(outcome)
                break
        else:
            futures.append((key, [outcome]))
    if len(futures) == 1:
        return False
    state_ref = _switch_state(paths, k, instr)
    default_members: list[Any] = []
    largest = max(futures, key=lambda f: len(f[1]))
    if len(largest[1]) > 1:
        default_members = largest[1]
    cases = [o for o in by_outcome if not any(_same_value(o, d) for d in default_members)]
    switch = graph.add(Switch(cases=tuple(cases), default=bool(default_members)),
                       [env[state_ref], env[instr.operands[0]]], region=region, loc=instr.loc)
    for i, case in enumerate(cases):
        _build_case(graph, switch.regions[i], by_outcome[case], k + 1, env, state_ref)
    if default_members:
        # The members' continuations are identical: build from one member's paths.
        _build_case(graph, switch.regions[-1], by_outcome[default_members[0]], k + 1, env, state_ref)
    graph.add(Output(), [switch], region=region)
    return True


def _build_case(graph: Graph, region: Region, paths: list[Path], k: int, env: dict[int, Any],
                state_ref: int) -> None:
    inner = dict(env)
    inner[state_ref] = graph.add(StateIn(), region=region)
    _build(graph, region, paths, k, inner)


def _switch_state(paths: list[Path], k: int, instr: Instr) -> int:
    """The one state from before the decision that the continuations use."""
    used: set[int] = set()
    for path in paths:
        for later in path.instrs[k + 1:]:
            for ref in later.operands:
                if ref < k and path.instrs[ref].kind() in (Kind.STATE, Kind.FORK):
                    used.add(ref)
    if len(used) != 1 or paths[0].instrs[next(iter(used))].kind() is not Kind.STATE:
        raise SwitchUnsupported(
            "a branch on a generated value while several states are live (an unjoined fork, or a "
            "branch's state used after the branch point) cannot become a switch", instr.loc)
    return next(iter(used))


def _same_value(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b
