"""chain-gens: mark a `gen` whose state reaches the next `gen` through text known before it runs.

Why: a chat turn, an agent step or a template is gen -> constant text -> gen. Run node by node, every
hop goes out of the runtime and back: the first request finishes, the executor hears of it, runs
the text ops, tokenizes the whole prompt again and sends a new request, which waits in the queue and
re-matches its prefix in the radix cache. The compiled graph knows the text between the two gens
before the first one runs, so the executor can send it along (`runtime_client.ChainedGen`) and the
runtime continues the SAME running request: the forced text is prefilled in the next step with the
other requests' decodes and the KV stays where it is.

What it marks: `node.meta["chain"] = <id of the next gen>` on a `gen` (no choices) whose state is
continued by exactly one op, which is an append of a `const` or `arg`, a role begin or end, or a
variable scope begin (each keeps the text a pure function of the state and values known at the
start), followed in the same way until a `gen` (no choices). Readers of the states in between
(`getvar`) do not matter; any other user (a fork, a host step, a select, the output) ends the chain.
The mark changes no op and no text: the program means the same; an executor that ignores it runs the
graph as before. The mark lives in `meta`, which an artifact does not keep (a loaded artifact runs
without chains).
"""

from __future__ import annotations

from compiler import ir
from compiler.ir import Gen, Graph, Node
from compiler.passes.base import Pass, register

__all__ = ["CHAIN_META", "ChainGens", "chain_path"]

CHAIN_META = "chain"
# Ops that continue a state with text known before the gen before them runs.
_TEXT_OPS = frozenset({"append", "role_begin", "role_end", "var_scope_begin"})
_KNOWN_VALUES = frozenset({"const", "arg"})


def _chainable_gen(node: Node) -> bool:
    return isinstance(node.op, Gen) and node.op.choices is None and node.op.max_tokens != 0


def chain_path(node: Node) -> list[Node] | None:
    """The text ops from `node` (a gen) to the next gen, and that gen last; None if there is none."""
    if not _chainable_gen(node):
        return None
    graph = node.graph
    path: list[Node] = []
    current = node
    while True:
        continuing = [u for u in graph.users(current) if u.op.state_use is not ir.StateUse.READS]
        if len(continuing) != 1:
            return None
        nxt = continuing[0]
        if nxt.region is not node.region or not nxt.operands or nxt.operands[0] is not current:
            return None
        if any(o is current for o in nxt.operands[1:]):
            return None
        if _chainable_gen(nxt):
            path.append(nxt)
            return path
        if nxt.op.opname not in _TEXT_OPS:
            return None
        if any(o.op.opname not in _KNOWN_VALUES for o in nxt.operands[1:]):
            return None
        path.append(nxt)
        current = nxt


@register
class ChainGens(Pass):
    """Mark gen -> known text -> gen chains for the executor (see the module docstring).

    Why: the executor can then send the text and the next gen with the first gen's request, and the
    runtime continues the same running request instead of a client round trip per hop.

    Guarantees: only `node.meta["chain"]` changes (set on marked gens, removed where a chain no
    longer holds); ops, operands and texts are untouched, so every run means the same.
    """

    name = "chain-gens"

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in list(graph.nodes()):
            if not isinstance(node.op, Gen):
                continue
            path = chain_path(node)
            target = path[-1].id if path else None
            if node.meta.get(CHAIN_META) != target:
                if target is None:
                    node.meta.pop(CHAIN_META, None)
                else:
                    node.meta[CHAIN_META] = target
                changed = True
        return changed
