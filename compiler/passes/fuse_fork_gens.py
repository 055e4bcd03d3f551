"""fuse-fork-gens: the gens at the same position in every branch of a fork become one `batch_gen`."""

from __future__ import annotations

import networkx as nx

from compiler.ir import BatchGen, Branch, Fork, Gen, Graph, Node
from compiler.passes.base import Pass, register
from compiler.passes.chains import branch_chain, branches_of, dependency_graph, reorder, sync_points

__all__ = ["FuseForkGens"]


@register
class FuseForkGens(Pass):
    """Fuse parallel branch gens: the k-th model call of every branch, when all are equal gens, becomes
    one `batch_gen` whose results the branches take with `branch`.

    Why: the branches of a fork run the same template on different inputs; their gens are independent
    and alike. One batch_gen lets the executor submit them together as one batch (sharing the forked
    prefix in the radix cache) instead of discovering them one by one as each branch gets there.

    Positions: in each branch, the ops that do more than add text (gens, selects, scores, host steps,
    switches, nested joins, earlier batch_gens) are numbered from 0 along the branch's state
    chain; position k fuses when every branch has a k-th such op, all are `gen`s, and their ops are
    equal (all sampling attributes and the variable name: a batch_gen has one name). Branches of
    different lengths fuse up to the shortest; a position where any branch differs is skipped and
    later positions are still tried.

    Guarantees: each branch's text and variables are unchanged (result i of a batch_gen is exactly
    what gen i produced: it continues operand i). No fusion creates a cycle: a position is skipped
    when one branch's gen input depends on another branch's gen at that position. The region is then
    reordered by dependencies, moving as little as possible. Forks with n < 2 are left alone.
    """

    name = "fuse-fork-gens"

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in list(graph.nodes()):
            if isinstance(node.op, Fork) and node in graph:
                changed |= self._fuse_fork(graph, node)
        return changed

    def _fuse_fork(self, graph: Graph, fork: Node) -> bool:
        n = fork.op.n  # type: ignore[attr-defined]
        branches = branches_of(graph, fork)
        if n < 2 or len(branches) != n:
            return False
        columns = list(zip(*(sync_points(branch_chain(graph, branches[i])) for i in range(n))))
        fused = False
        for column in columns:
            gens = list(column)
            if not all(isinstance(g.op, Gen) for g in gens) or any(g.op != gens[0].op for g in gens):
                continue
            if self._would_cycle(graph, gens):
                continue
            self._fuse(graph, gens)
            fused = True
        if fused:
            reorder(graph, fork.region)
        return fused

    @staticmethod
    def _would_cycle(graph: Graph, gens: list[Node]) -> bool:
        deps = dependency_graph(graph)
        inputs = {g.operands[0].id for g in gens}
        return any(inputs & nx.descendants(deps, g.id) for g in gens)

    @staticmethod
    def _fuse(graph: Graph, gens: list[Node]) -> None:
        first = min(gens, key=graph.position)
        batch = graph.add(BatchGen(**gens[0].op.attributes()), [g.operands[0] for g in gens], before=first,
                          loc=gens[0].loc)
        anchor = batch
        for i, gen in enumerate(gens):
            taken = graph.add(Branch(i), [batch], after=anchor, loc=gen.loc)
            anchor = taken
            graph.replace_all_uses(gen, taken)
        for gen in gens:
            graph.erase(gen)
