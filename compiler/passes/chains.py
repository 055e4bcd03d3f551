"""Helpers the passes share: following a state's continuation, the state chain of a fork's branch, the
dependencies between nodes across region boundaries, and reordering a region by its dependencies."""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx

from compiler.ir import (
    Append,
    BatchGen,
    Branch,
    Const,
    Graph,
    Join,
    Kind,
    Node,
    Output,
    Prefill,
    Region,
    RoleBegin,
    RoleEnd,
    SetVar,
    VarScopeBegin,
    VarScopeEnd,
)

__all__ = [
    "PURE_STATE_OPS", "TEXT_OPS", "VAR_OPS", "branches_of", "branch_chain", "const_text", "continuation", "defined_before",
    "dependency_graph", "reorder", "sync_points",
]

# State ops that only add text or are hints.
TEXT_OPS = (Append, RoleBegin, RoleEnd, Prefill)
# State ops that only bind variables; the text is unchanged.
VAR_OPS = (SetVar, VarScopeBegin, VarScopeEnd)
# Neither calls the model nor runs user code: removable when unused, no position among branch steps.
PURE_STATE_OPS = (*TEXT_OPS, *VAR_OPS)


def const_text(node: Node) -> str | None:
    """The string of a text `const`, else None."""
    if isinstance(node.op, Const) and isinstance(node.op.value, str):
        return node.op.value
    return None


def continuation(graph: Graph, state: Node) -> Node | None:
    """The op that continues `state` (by linearity at most one), or None. Reads do not count."""
    for user in graph.users(state):
        if any(o is state and user.op.consumes(i) for i, o in enumerate(user.operands)):
            return user
    return None


def branches_of(graph: Graph, bundle: Node) -> dict[int, Node]:
    """The `branch` nodes taking states out of a fork or batch_gen, by index."""
    return {u.op.index: u for u in graph.users(bundle) if isinstance(u.op, Branch)}


def branch_chain(graph: Graph, start: Node) -> list[Node]:
    """The states that continue `start` (not included), in order, up to the end of its lineage.

    The chain stops before the `join` that joins it as a branch and before an `output`; it goes through
    the join of a nested fork (where it is the parent, operand 0) and through a `batch_gen` (the
    batch_gen is in the chain, then the `branch` that takes this chain's state out of it).
    """
    chain: list[Node] = []
    current = start
    while True:
        nxt = continuation(graph, current)
        if nxt is None or isinstance(nxt.op, Output):
            return chain
        if isinstance(nxt.op, Join) and nxt.operands[0] is not current:
            return chain
        chain.append(nxt)
        if isinstance(nxt.op, BatchGen):
            index = next(i for i, o in enumerate(nxt.operands) if o is current)
            taken = branches_of(graph, nxt).get(index)
            if taken is None:
                return chain
            chain.append(taken)
            nxt = taken
        if nxt.kind is not Kind.STATE:
            return chain
        current = nxt


def sync_points(chain: Iterable[Node]) -> list[Node]:
    """The nodes of a chain that do more than add text or bind variables: model calls, host steps,
    switches, joins of nested forks. Positions in this list are what "the same position in every branch" means."""
    return [n for n in chain if not isinstance(n.op, (*PURE_STATE_OPS, Branch))]


def dependency_graph(graph: Graph) -> nx.DiGraph:
    """`graph.dataflow` plus an edge from every node inside a region to the switch owning the region
    (a switch's result depends on everything its regions compute)."""
    deps = graph.dataflow.copy()
    for node in graph.nodes():
        if node.parent is not None:
            deps.add_edge(node.id, node.parent.id)
    return deps


def defined_before(value: Node, anchor: Node) -> bool:
    """Whether `value` may be used by a node placed right before `anchor`: defined earlier in the same
    region, or in an enclosing region before the switch that holds `anchor`."""
    probe: Node | None = anchor
    while probe is not None:
        if value.region is probe.region:
            nodes = probe.region.nodes
            return nodes.index(value) < nodes.index(probe)
        probe = probe.parent
    return False


def reorder(graph: Graph, region: Region) -> bool:
    """Put the nodes of `region` in dependency order, keeping the current order where it is free.

    Passes that rewire states across branches (fusing gens) may leave a node before one it now uses;
    this restores define-before-use with the least movement. Returns whether the order changed.
    """
    order = graph.topological_order(region)
    if list(region.nodes) == order:
        return False
    for node in order:
        graph.move(node, region=region)
    return True
