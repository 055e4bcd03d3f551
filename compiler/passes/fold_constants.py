"""fold-constants: adjacent constant appends become one append, empty appends vanish."""

from __future__ import annotations

from compiler.ir import Append, Const, Graph, Node
from compiler.passes.base import Pass, register
from compiler.passes.chains import const_text

__all__ = ["FoldConstants"]


@register
class FoldConstants(Pass):
    """Fold constant text: `append(append(s, "a"), "b")` becomes `append(s, "ab")`; `append(s, "")` vanishes.

    Why: the tracer writes one append per `s += ...` term, so a prompt built from literal pieces is a
    long chain of tiny appends. One append per run of literal text gives the executor fewer nodes to
    schedule, and gives hoist-prefix whole strings to compare across branches.

    Guarantees: only string constants fold (a non-string constant is appended as the executor's
    `str(value)`, which this pass does not presume). Two appends fold only when the state between them
    has no other user (nothing forks, reads or joins it), so every state that anything observes keeps
    its text; the surviving append is the outer one (its id, its users). An empty append's users use
    its input state instead. Constants left without users by the folding are erased; other dead nodes
    are dce's. Works in every region.
    """

    name = "fold-constants"

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in list(graph.nodes()):
            if node not in graph or not isinstance(node.op, Append):
                continue
            text = const_text(node.operands[1])
            if text is None:
                continue
            if text == "":
                self._drop_empty(graph, node)
                changed = True
                continue
            inner = node.operands[0]
            if (isinstance(inner.op, Append) and const_text(inner.operands[1]) is not None
                    and graph.users(inner) == [node]):
                self._fold(graph, inner, node)
                changed = True
        return changed

    @staticmethod
    def _drop_empty(graph: Graph, node: Node) -> None:
        empty = node.operands[1]
        graph.replace_all_uses(node, node.operands[0])
        graph.erase(node)
        _erase_if_unused(graph, empty)

    @staticmethod
    def _fold(graph: Graph, inner: Node, outer: Node) -> None:
        first, second = inner.operands[1], outer.operands[1]
        folded = Const(const_text(first) + const_text(second))  # type: ignore[operator]
        # Reuse a constant that only this pair uses (fewer new ids); both are defined before `outer`.
        if graph.users(first) == [inner]:
            target = first
            graph.set_op(target, folded)
        elif graph.users(second) == [outer]:
            target = second
            graph.set_op(target, folded)
        else:
            target = graph.add(folded, before=outer, loc=first.loc)
        graph.set_operands(outer, [inner.operands[0], target])
        graph.erase(inner)
        for const in (first, second):
            if const is not target:
                _erase_if_unused(graph, const)


def _erase_if_unused(graph: Graph, node: Node) -> None:
    if node in graph and not graph.users(node):
        graph.erase(node)
