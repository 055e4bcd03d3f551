"""hoist-prefix: text shared by all branches of a fork, or by all choices of a select, is computed once."""

from __future__ import annotations

import dataclasses

from compiler.ir import Append, Const, Fork, Graph, Node, Prefill, Score, Select, StateNew
from compiler.passes.base import Pass, register
from compiler.passes.chains import (
    VAR_OPS,
    branch_chain,
    branches_of,
    const_text,
    continuation,
    defined_before,
    sync_points,
)

__all__ = ["HoistPrefix", "safe_split"]


def _is_boundary(text: str, k: int) -> bool:
    """Whether cutting `text` at `k` keeps the tokenization of `text[:k]` a prefix of the tokenization
    of `text` for the usual tokenizers: right before a space that follows a non-space (byte-level BPE
    and SentencePiece both start a token at such a space), or right after a single newline between
    non-spaces (a newline is its own token there; a run of whitespace is not: at the end of a text
    GPT-2's pre-tokenizer keeps "\n\n" together, before a word it splits it)."""
    if not 0 < k < len(text):
        return False
    before, after = text[k - 1], text[k]
    if after == " ":
        return not before.isspace()
    return k > 1 and before == "\n" and not after.isspace() and not text[k - 2].isspace()


def safe_split(texts: list[str]) -> int:
    """The length of the longest common prefix of `texts` that ends at a token-safe boundary in every
    one of them (see `_is_boundary`), leaving each text non-empty; 0 if there is none."""
    if not texts:
        return 0
    common = 0
    shortest = min(len(t) for t in texts)
    while common < shortest and all(t[common] == texts[0][common] for t in texts):
        common += 1
    for k in range(min(common, shortest - 1), 0, -1):
        if all(_is_boundary(t, k) for t in texts):
            return k
    return 0


# A piece of a branch's leading text: a string (from text constants) or a value node (same in all).
Piece = str | Node


def _leading_pieces(graph: Graph, start: Node) -> list[Piece]:
    """The text a branch appends before it does anything else: consecutive constant strings merged,
    other values as their nodes."""
    pieces: list[Piece] = []
    for node in branch_chain(graph, start):
        if isinstance(node.op, (Prefill, *VAR_OPS)):
            continue  # the text is unchanged (e.g. the hint of a fork nested in this branch)
        if not isinstance(node.op, Append):
            break
        value = node.operands[1]
        text = const_text(value)
        if text is None:
            pieces.append(value)
        elif pieces and isinstance(pieces[-1], str):
            pieces[-1] += text
        elif text:
            pieces.append(text)
    return pieces


def _same_value(a: Node, b: Node) -> bool:
    if a is b:
        return True
    return (isinstance(a.op, Const) and isinstance(b.op, Const)
            and type(a.op.value) is type(b.op.value) and a.op.value == b.op.value)


@register
class HoistPrefix(Pass):
    """Compute shared prefixes once: a prefill hint before each fork, and the common text of choices.

    Why: the branches of a fork all start from the parent's text, and often append the same text
    first; select choices often share their first words. Without help each branch (each candidate)
    computes the KV of that shared text itself, and parallel requests scheduled together miss the
    radix cache.

    Forks: before a fork with at least two branches that call the model (or a host step, a
    switch), a `prefill` hint is inserted on the parent state; its value operands are the text every
    branch appends first (equal constant text, the same value node, and the longest common start of
    differing constant texts cut at a token-safe boundary, see `safe_split`; shared text that a branch
    follows with a value of unknown text also ends at such a boundary). The runtime computes that
    KV once and every branch hits the cache. The branches keep their appends: SGLang's parent state
    does not contain the branches' text (a join in either mode, and the parent's own later text,
    depend on that), so the shared text cannot be appended to the parent itself; the hint carries it
    instead. Only appends count (a branch that opens a role first shares just the parent's text).

    Selects and scores: the longest common prefix of all choices that ends at a token-safe boundary
    (right before a space that follows a non-space, or right after a single newline between
    non-spaces; cutting elsewhere could change how the candidates tokenize) is appended to the state before the
    select and recorded in its `prefix` attribute, which keeps the candidates `prefix + choice` for
    scoring and for the bound variable. No choice becomes empty.

    Guarantees: final texts and variables are unchanged (prefill is an identity hint; a select's
    `prefix` makes the split exact). Running the pass twice changes nothing the second time.
    """

    name = "hoist-prefix"

    def run(self, graph: Graph) -> bool:
        changed = False
        # Choices first: the text they hoist may start a branch, and so belong in its fork's hint.
        for node in list(graph.nodes()):
            if isinstance(node.op, (Select, Score)):
                changed |= self._hoist_choices(graph, node)
        for node in list(graph.nodes()):
            if isinstance(node.op, Fork):
                changed |= self._hint_fork(graph, node)
        return changed

    # -- forks -------------------------------------------------------------------------------------
    def _hint_fork(self, graph: Graph, fork: Node) -> bool:
        n = fork.op.n  # type: ignore[attr-defined]
        branches = branches_of(graph, fork)
        if n < 2 or len(branches) != n:
            return False
        chains = [branch_chain(graph, branches[i]) for i in range(n)]
        if sum(1 for chain in chains if sync_points(chain)) < 2:
            return False
        state = fork.operands[0]
        existing = state if isinstance(state.op, Prefill) else None
        anchor = existing if existing is not None else fork
        pieces = self._common_pieces(graph, [branches[i] for i in range(n)], anchor)
        if existing is not None:
            if self._matches(existing.operands[1:], pieces) or existing.operands[1:]:
                return False  # already hinted (maybe by the user): leave it
            graph.set_operands(existing, [existing.operands[0], *self._materialize(graph, pieces, existing)])
            return True
        if isinstance(state.op, StateNew) and not pieces:
            return False  # nothing to compute yet
        parent_next = continuation(graph, state)
        if parent_next is not None and not _is_after(parent_next, fork):
            return False
        values = self._materialize(graph, pieces, fork)
        prefill = graph.add(Prefill(), [state, *values], before=fork, loc=fork.loc)
        if parent_next is not None:
            graph.set_operands(parent_next, [prefill if o is state else o for o in parent_next.operands])
        graph.set_operands(fork, [prefill])
        return True

    @staticmethod
    def _common_pieces(graph: Graph, branches: list[Node], anchor: Node) -> list[Piece]:
        per_branch = [_leading_pieces(graph, b) for b in branches]
        common: list[Piece] = []
        for position in range(min(len(p) for p in per_branch)):
            column = [p[position] for p in per_branch]
            first = column[0]
            if isinstance(first, str) and all(isinstance(c, str) for c in column):
                if all(c == first for c in column):
                    common.append(first)
                    continue
                k = safe_split(column)  # type: ignore[arg-type]
                if k:
                    common.append(first[:k])
                return common
            if (isinstance(first, Node) and all(isinstance(c, Node) and _same_value(first, c) for c in column)
                    and (isinstance(first.op, Const) or defined_before(first, anchor))):
                common.append(first)
                continue
            break
        # A branch goes on with a value of unknown text right after shared text: end the hint at a
        # token-safe boundary inside that text (a branch that calls the model next is safe anyway).
        if common and isinstance(common[-1], str) and any(len(p) > len(common) for p in per_branch):
            last = common.pop()
            k = max((k for k in range(1, len(last)) if _is_boundary(last, k)), default=0)
            if k:
                common.append(last[:k])
        return common

    @staticmethod
    def _matches(values: tuple[Node, ...], pieces: list[Piece]) -> bool:
        if len(values) != len(pieces):
            return False
        for value, piece in zip(values, pieces):
            if isinstance(piece, str):
                if const_text(value) != piece:
                    return False
            elif not _same_value(value, piece):
                return False
        return True

    @staticmethod
    def _materialize(graph: Graph, pieces: list[Piece], before: Node) -> list[Node]:
        """The prefix as value nodes usable right before `before`: strings (and constants defined
        elsewhere) become new constants there."""
        values = []
        for piece in pieces:
            if isinstance(piece, str):
                values.append(graph.add(Const(piece), before=before))
            elif defined_before(piece, before):
                values.append(piece)
            else:
                values.append(graph.add(piece.op, before=before, loc=piece.loc))
        return values

    # -- selects -----------------------------------------------------------------------------------
    @staticmethod
    def _hoist_choices(graph: Graph, node: Node) -> bool:
        op = node.op
        choices = list(op.choices)  # type: ignore[attr-defined]
        if len(choices) < 2:
            return False
        k = safe_split(choices)
        if not k:
            return False
        shared = choices[0][:k]
        state = node.operands[0]
        text = graph.add(Const(shared), before=node, loc=node.loc)
        appended = graph.add(Append(), [state, text], before=node, loc=node.loc)
        graph.set_operands(node, [appended])
        graph.set_op(node, dataclasses.replace(op, choices=tuple(c[k:] for c in choices),
                                               prefix=op.prefix + shared))  # type: ignore[attr-defined]
        return True


def _is_after(node: Node, anchor: Node) -> bool:
    """Whether `node` comes after `anchor` in printing order."""
    graph = node.graph
    return graph.position(node) > graph.position(anchor)
