"""lower-select: `select` (and `gen` with `choices`) becomes `score`, one batched scoring step."""

from __future__ import annotations

import dataclasses

from compiler.ir import Gen, Graph, Score, Select
from compiler.passes.base import Pass, register

__all__ = ["LowerSelect"]

# The gen attributes that a `gen(..., choices=...)` keeps when it becomes a score; SGLang ignores the
# other sampling parameters of a gen with choices, but we only lower when they are unset, so that no
# attribute the user wrote is silently dropped.
_CHOICE_GEN_ATTRIBUTES = {"name", "temperature", "choices", "fsm"}


@register
class LowerSelect(Pass):
    """Lower `select` to `score`: all choices scored against the shared prompt in one batched request.

    Why: a select is a scoring problem, not generation: the executor submits the prompt once and every
    candidate continuation as one batch (the prompt's KV shared through the radix cache), instead of a
    request per choice. `score` is the op the executor implements; `select` is what the tracer writes.

    Guarantees: the score has exactly the select's attributes (name, choices, method, temperature,
    prefix), so the chosen text, the bound variable and the node id are unchanged. A `gen` with
    `choices` (SGLang runs it as a select with the default method and the gen's temperature) is lowered
    too when it has no other sampling attribute; otherwise it is left as it is.
    """

    name = "lower-select"

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in list(graph.nodes()):
            op = node.op
            if isinstance(op, Select):
                graph.set_op(node, Score(**op.attributes()))
                changed = True
            elif isinstance(op, Gen) and op.choices is not None:
                default = Gen()
                if any(getattr(op, f.name) != getattr(default, f.name) for f in dataclasses.fields(op)
                       if f.name not in _CHOICE_GEN_ATTRIBUTES):
                    continue
                graph.set_op(node, Score(op.name, op.choices, temperature=op.temperature))
                changed = True
        return changed
