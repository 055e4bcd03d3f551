"""Static plans of regions for the graph executor: dependency counts, main lines, pin consumers.

A plan is computed once per region and shared by every frame (activation) of it. Uses inside a
switch's nested regions count as uses by the switch, so a switch starts only when every value its
regions read is ready. The *main line* is the lineage of the region's output state: the text a
stream shows. The *pin consumers* of a prefill are the nodes that first extend its state.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

from compiler import ir
from compiler.ir import Node, Region

__all__ = ["Plan", "PlanCache", "make_plan", "pin_consumers"]

def _subtree(node: Node) -> Iterator[Node]:
    yield node
    for region in node.regions:
        for inner in region.nodes:
            yield from _subtree(inner)


@dataclass
class Plan:
    """A region's dependency counts (uses inside nested regions lifted to their switch)."""

    nodes: tuple[Node, ...]
    num_deps: dict[int, int]
    users: dict[int, list[Node]]
    main_line: frozenset[int]  # the lineage of the region's output: the text a stream shows


def make_plan(region: Region) -> Plan:
    tops = {n.id: n for n in region.nodes}
    preds: dict[int, set[int]] = {n.id: set() for n in region.nodes}
    for top in region.nodes:
        for inner in _subtree(top):
            for operand in inner.operands:
                if operand.id in tops and operand.id != top.id and tops[operand.id] is operand:
                    preds[top.id].add(operand.id)
    users: dict[int, list[Node]] = {n.id: [] for n in region.nodes}
    for node_id, ps in preds.items():
        for p in ps:
            users[p].append(tops[node_id])
    main: set[int] = set()
    out = region.output
    current = out.operands[0] if out is not None and out.operands else None
    while current is not None and current.id in tops and current.id not in main:
        main.add(current.id)
        # A branch's operand is its fork (not a state): the main line of a region never starts inside one.
        current = current.operands[0] if current.operands and current.operands[0].kind is ir.Kind.STATE else None
    return Plan(region.nodes, {k: len(v) for k, v in preds.items()}, users, frozenset(main))


def pin_consumers(node: Node) -> frozenset[int]:
    """The nodes that first extend the state `node` produces (LLM nodes or opaque steps): its users,
    followed through the ops that carry a state on without the model (`ir.StateUse.CONTINUES`), the
    readers (`READS`) left out."""
    graph = node.graph
    found: set[int] = set()
    seen: set[int] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        for user in graph.users(current):
            if user.id in seen or user.region is not node.region:
                continue
            seen.add(user.id)
            use = user.op.state_use
            if use is ir.StateUse.CONTINUES:
                stack.append(user)
            elif use is not ir.StateUse.READS:
                found.add(user.id)
    return frozenset(found)


class PlanCache:
    """Plans and pin consumers computed once per region / node and shared by every run (thread-safe:
    streaming runs execute on their own threads)."""

    def __init__(self) -> None:
        self._plans: dict[Region, Plan] = {}
        self._consumers: dict[tuple[str, int], frozenset[int]] = {}
        self._lock = threading.Lock()

    def plan(self, region: Region) -> Plan:
        with self._lock:
            plan = self._plans.get(region)
            if plan is None:
                plan = self._plans[region] = make_plan(region)
            return plan

    def pin_consumers(self, node: Node) -> frozenset[int]:
        key = (node.graph.name, node.id)
        with self._lock:
            if key not in self._consumers:
                self._consumers[key] = pin_consumers(node)
            return self._consumers[key]
