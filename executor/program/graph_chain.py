"""Chains for the graph executor: a gen marked by the chain-gens pass is sent with what follows it.

The pass (`compiler/passes/chain_gens.py`) marks a `gen` whose state reaches the next `gen` only
through text known before it runs. When such a gen's request is sent, `plan_chain` runs those text
ops ahead of time on the gen's state with a placeholder for the generated text (the interpreter on
the executor's own domain, so each op means exactly what it means when it really runs): the text
after the placeholder is the forced text, and the next gen's request (sampling parameters, end of
turn, FSM) is built from its state as `ExecutorDomain.generate` builds it. Marked gens after that
one chain on, up to `MAX_LINKS`.

The runtime then runs the next gen on the same sequence (`runtime_client.ChainedGen`). When the loop
really reaches the next gen, it *adopts* the running request instead of sending one, but only if
the state's text is exactly the text the runtime was told (the previous prompt, the generated text,
the forced text); otherwise it aborts the chained request and sends the gen as usual. So a chain can
make a run faster, never different.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from compiler.ir import Node
from compiler.ir_interpreter import Interpreter
from compiler.lang_sampling import RunDefaults
from compiler.passes.chain_gens import CHAIN_META, chain_path
from compiler.prompt_state import PromptState
from executor.program.graph_llm import gen_request
from executor.runtime.runtime_client import ChainedGen, RequestHandle

__all__ = ["CHAIN_META", "MAX_LINKS", "Adoptable", "ChainLink", "plan_chain"]

MAX_LINKS = 16  # gens chained ahead of one request (a longer chain continues from its last link)
_MARK = "\x00sgc-chain-"  # placeholder for generated text; never in a prompt (NUL is not text)


@dataclass(frozen=True)
class ChainLink:
    """The executor's side of one chained gen: the node it runs, its forced text, the links after it."""

    node: Node
    forced_text: str
    then: ChainLink | None


@dataclass(eq=False)
class Adoptable:
    """A chained request the runtime runs (or will run) for `node`, whose prompt is `expected_text`."""

    node: Node
    expected_text: str
    handle: RequestHandle
    link: ChainLink | None  # the links after it
    used: bool = False


class _AheadFrame:
    """An interpreter frame that sees the placeholder states of the chain, the real frame otherwise."""

    def __init__(self, frame: Any, values: dict[int, Any]) -> None:
        self._frame = frame
        self._values = values
        self.incoming = frame.incoming
        self.arguments = frame.arguments

    def lookup(self, node: Node) -> Any:
        if node.id in self._values and node.graph is self._frame.graph:
            return self._values[node.id]
        return self._frame.lookup(node)


def plan_chain(interpreter: Interpreter, frame: Any, node: Node, state: PromptState, defaults: RunDefaults,
               chat_format: Callable[[], Any], fsms: Mapping[str, Any] | None) -> tuple[ChainedGen, ChainLink] | None:
    """What to send with `node`'s request (on `state`): the chained gens, or None when nothing chains."""
    planned: list[tuple[Node, str, Any]] = []
    gen = node
    current = _with_placeholder(state, gen, 0)
    anchor = current.text
    while len(planned) < MAX_LINKS and CHAIN_META in gen.meta:
        path = chain_path(gen)
        if not path or path[-1].id != gen.meta[CHAIN_META]:
            break
        ahead = _AheadFrame(frame, {gen.id: current})
        try:
            for op_node in path[:-1]:
                value = interpreter.run_node(ahead, op_node)
                if not isinstance(value, PromptState):
                    raise ValueError("a chained text op gave no state")
                ahead._values[op_node.id] = current = value
        except Exception:  # a value not computed yet, a role error: the loop meets it for real
            break
        nxt = path[-1]
        if not current.text.startswith(anchor) or _MARK in current.text[len(anchor):]:
            break
        if nxt.op.max_tokens is None and defaults.max_new_tokens == 0:  # type: ignore[attr-defined]
            break
        try:
            role = current.open_role
            request = gen_request(nxt.op.attributes(), defaults, chat_format() if role else None, role, fsms)
        except ValueError:
            break
        planned.append((nxt, current.text[len(anchor):], request))
        current = _with_placeholder(current, nxt, len(planned))
        anchor = current.text
        gen = nxt
    if not planned:
        return None
    then: ChainedGen | None = None
    link: ChainLink | None = None
    for i in range(len(planned) - 1, -1, -1):
        nxt, forced, request = planned[i]
        then = ChainedGen(state.text if i == 0 else "", forced, request.params, request.options, request.constraint,
                          follow_up=i == len(planned) - 1, then=then)
        link = ChainLink(nxt, forced, link)
    assert then is not None and link is not None
    return then, link


def _with_placeholder(state: PromptState, gen: Node, index: int) -> PromptState:
    """The state after `gen`, with a placeholder for the text it will generate."""
    mark = f"{_MARK}{index}\x00"
    out = state.appended(mark)
    name = getattr(gen.op, "name", None)
    return out if name is None else out.with_var(name, mark)
