"""Constrained decoding at run time: per-request FSM cursors, batch masks, and jump-forward.

The expensive part (regex / JSON schema to a token-level FSM over the vocabulary) happens once, in
`compiler.constraints`, ahead of time or on first use; here we only look tables up. A cursor knows
its FSM state; before sampling, each constrained row of the batch gets the allowed-token mask of
its state (EOS only where the state accepts). After a token, the cursor advances. When the FSM
forces the next characters (a JSON key, `":"`, a closing brace), jump-forward appends them without
decoding them one token at a time: the output's last tokens and the forced text are re-tokenized
the way the tokenizer would, minus a held-back last token that a longer token could still absorb,
and the request is extended by all of them in one pass.

A JSON schema's `uniqueItems` over items with too many values for the automaton is checked here too:
the cursor feeds its output bytes to the FSM's `unique_guard()`, which after the FSM's mask clears the
tokens that would repeat an item of a unique array (see `compiler.constraints.unique_items`). A
repeat that cannot be avoided (every allowed token, or forced text, repeats an item) is a
`ConstraintDeadEnd`.

An unconstrained JSON value compiles to a bracket-counting superset automaton (FSM flag
`json_structure`); the cursor then also follows its output with the FSM's `structure_guard()`, which
after the mask clears the tokens that would break JSON structure (a closer of the wrong kind, a
`:` outside a key, a non-string key, ...; see `compiler.constraints.json_structure`). Forced text
that would break it is a `ConstraintDeadEnd`.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from compiler.constraints import ConstraintError, TokenFSM, as_vocabulary, compile_json_schema, compile_regex

# At most this many trailing output tokens are re-tokenized together with forced text.
RETOKENIZE_TAIL_TOKENS = 2


class ConstraintCursor:
    """Where one request is in its FSM; `history[i]` is the state before output token i."""

    def __init__(self, fsm: TokenFSM, eos_ids: frozenset[int]):
        self.fsm = fsm
        self.eos_ids = eos_ids
        self.state = fsm.initial_state
        self.history: list[int] = []
        self.output: list[int] = []  # the tokens advanced over (what `unique` has seen)
        self.unique = fsm.unique_guard()  # None unless the schema has unique arrays to watch
        self.structure = fsm.structure_guard()  # None unless the automaton needs the JSON structure check

    def fill_mask(self, row: torch.Tensor) -> None:
        """Allowed tokens of the current state into a bool row (EOS only in accepting states).

        Raises `ConstraintDeadEnd` rather than hand the sampler a row with nothing allowed: sampling
        from it would pick an arbitrary token (a greedy argmax of all -inf is token 0), and the
        output would end invalid. Compiled tables prune such states; a hand-made one may not.
        """
        if self.state < 0:
            raise ConstraintDeadEnd(f"the constraint has no state to continue from (state {self.state})")
        self.fsm.fill_mask(self.state, row)
        structure = self.structure
        cut = self._filter_structure(row) if structure is not None else False
        cleared = self._filter_unique(row) if self.unique is not None and self.unique.active else 0
        if self.fsm.is_accepting(self.state) and (structure is None or structure.complete):
            for eos in self.eos_ids:
                row[eos] = True
        if not bool(row.any()):
            if cut and not cleared:
                raise ConstraintDeadEnd(f"every token the constraint allows here would break JSON structure "
                                        f"({structure.where()})")
            if cleared:
                raise ConstraintDeadEnd(
                    f"every token the constraint allows here would repeat an earlier item of the array at "
                    f"{self.unique.where()}, whose items must be unique (uniqueItems): no continuation "
                    "keeps them distinct")
            raise ConstraintDeadEnd(f"the constraint allows no token in state {self.state}, which is not "
                                    "accepting (a dead end in its table)")

    def _filter_unique(self, row: torch.Tensor) -> int:
        """Clear the tokens that would repeat an item of a unique array (after the FSM's mask)."""
        v = min(self.fsm.vocab_size, row.shape[0])
        if row.device.type == "cpu" and row.is_contiguous():
            return self.unique.filter(self.state, row[:v].numpy())
        mask = row[:v].cpu().numpy().copy()
        before = mask.copy()
        cleared = self.unique.filter(self.state, mask)
        if cleared:
            ids = torch.from_numpy((before & ~mask).nonzero()[0]).to(row.device)
            row[ids] = False
        return cleared

    def _filter_structure(self, row: torch.Tensor) -> bool:
        """Clear the tokens that would break JSON structure (after the FSM's mask)."""
        v = min(self.fsm.vocab_size, row.shape[0])
        if row.device.type == "cpu" and row.is_contiguous():
            return self.structure.filter(row[:v].numpy(), self.state)
        return self.structure.filter_torch(row[:v])

    def advance(self, token: int) -> None:
        self.history.append(self.state)
        self.output.append(token)
        self.state = -1 if token in self.eos_ids else self.fsm.next_state(self.state, token)
        if self.state >= 0 and self.structure is not None and not self.structure.feed_token(token):
            self.state = -1  # the token broke JSON structure (it was not in the mask): out of the language
        if self.state >= 0 and self.unique is not None and self.unique.feed(self.fsm.token_text(token)):
            self.state = -1  # the token repeated an item (it was not in the mask): out of the language

    @property
    def complete(self) -> bool:
        """Accepting with nothing more allowed: the output is done whatever the model wants."""
        return self.fsm.is_accepting(self.state) and len(self.fsm.allowed_tokens(self.state)) == 0

    def walk(self, state: int, tokens: Sequence[int]) -> list[int] | None:
        """States before each token and the final one, or None if a token is not allowed."""
        states = [state]
        for t in tokens:
            state = self.fsm.next_state(state, t)
            if state < 0:
                return None
            states.append(state)
        return states


class ConstraintDeadEnd(RuntimeError):
    """A request's constraint reached a state from which no allowed token continues."""


@dataclass(frozen=True)
class JumpPlan:
    """Replace the last `num_replaced` output tokens with `new_tokens` (their text plus forced text)."""

    num_replaced: int
    new_tokens: list[int]
    states: list[int]  # FSM state before each new token, then the final state


class TokenPrefixIndex:
    """Token byte strings in sorted order, to find every token that extends a given one."""

    def __init__(self, vocab: Any):
        entries = sorted((b, i) for i, b in enumerate(vocab.token_bytes) if b)
        self._bytes = [b for b, _ in entries]
        self._ids = [i for _, i in entries]

    def extensions(self, prefix: bytes) -> list[int]:
        """Ids of tokens strictly longer than `prefix` that start with it."""
        lo = bisect.bisect_right(self._bytes, prefix)
        out = []
        for k in range(lo, len(self._bytes)):
            if not self._bytes[k].startswith(prefix):
                break
            out.append(self._ids[k])
        return out


def plan_jump_forward(cursor: ConstraintCursor, output_ids: list[int], tokenizer: Any,
                      prefix_index: TokenPrefixIndex, min_kept_output: int) -> JumpPlan | None:
    """A jump-forward for the cursor's current state, or None when nothing is worth forcing.

    `min_kept_output`: output tokens before this index must not change (their KV is shared).
    """
    fsm = cursor.fsm
    forced, end_state = fsm.jump_forward(cursor.state)
    if not forced:
        return None
    if cursor.structure is not None:
        probe = cursor.structure.scanner.copy()
        if not probe.feed(forced.encode("utf-8")):
            raise ConstraintDeadEnd(f"the constraint forces {forced[:40]!r}, which breaks JSON structure: "
                                    f"{probe.violation}")
    if cursor.unique is not None and cursor.unique.completes_duplicate(forced.encode("utf-8")):
        raise ConstraintDeadEnd(
            f"the constraint forces {forced[:40]!r}, which repeats an earlier item of the array at "
            f"{cursor.unique.where()}, whose items must be unique (uniqueItems)")
    num_tail = max(min(RETOKENIZE_TAIL_TOKENS, len(output_ids) - min_kept_output), 0)
    vocab = as_vocabulary(tokenizer.backend)
    try:
        text = vocab.decode_bytes(output_ids[len(output_ids) - num_tail:]).decode("utf-8") + forced
    except UnicodeDecodeError:  # the tail starts inside a character: not worth the trouble
        return None
    retokenized = tokenizer.encode(text, add_special_tokens=False)
    start_state = cursor.history[-num_tail] if num_tail else cursor.state
    states = cursor.walk(start_state, retokenized)
    if states is None:
        return None
    # Hold back the last token if the model could continue it into a longer allowed token (e.g. `"`
    # followed by a name may be tokenized as `"John`): a tokenizer would not have split there.
    last_state = states[-2]
    last_bytes = vocab.token_text(retokenized[-1])
    if any(fsm.next_state(last_state, t) >= 0 for t in prefix_index.extensions(last_bytes)):
        retokenized, states = retokenized[:-1], states[:-1]
    if len(retokenized) <= num_tail:
        return None
    return JumpPlan(num_replaced=num_tail, new_tokens=retokenized, states=states)


def apply_jump(cursor: ConstraintCursor, plan: JumpPlan) -> None:
    keep = len(cursor.history) - plan.num_replaced
    if cursor.structure is not None:
        text = cursor.fsm.token_text
        old = b"".join(text(t) for t in cursor.output[keep:])
        new = b"".join(text(t) for t in plan.new_tokens)
        if new.startswith(old):
            ok = cursor.structure.feed(new[len(old):])
        else:
            ok = cursor.structure.reset(b"".join(text(t) for t in cursor.output[:keep] + plan.new_tokens))
        if not ok:
            raise ConstraintDeadEnd(f"forced text breaks JSON structure: {cursor.structure.violation}")
    if cursor.unique is not None:
        text = cursor.fsm.token_text
        old = b"".join(text(t) for t in cursor.output[keep:])
        new = b"".join(text(t) for t in plan.new_tokens)
        if new.startswith(old):  # the usual case: the replaced tokens' text, then forced text
            repeated = cursor.unique.feed(new[len(old):])
        else:  # retokenized into less text than was replaced: follow the output again
            repeated = cursor.unique.reset(b"".join(text(t) for t in cursor.output[:keep] + plan.new_tokens))
        if repeated:
            raise ConstraintDeadEnd(f"forced text repeats an item: {cursor.unique.violation}")
    cursor.output = cursor.output[:keep] + list(plan.new_tokens)
    cursor.history = cursor.history[:keep] + plan.states[:-1]
    cursor.state = plan.states[-1]


class ConstraintCache:
    """Compiled FSMs of one tokenizer, keyed by the constraint, so each is compiled once."""

    def __init__(self, tokenizer: Any, max_entries: int = 256):
        self.tokenizer = tokenizer
        self.max_entries = max_entries
        self._fsms: dict[tuple[str, str], TokenFSM] = {}
        self._prefix_index: TokenPrefixIndex | None = None

    @property
    def prefix_index(self) -> TokenPrefixIndex:
        if self._prefix_index is None:
            self._prefix_index = TokenPrefixIndex(as_vocabulary(self.tokenizer.backend))
        return self._prefix_index

    @property
    def fingerprint(self) -> str:
        """The vocabulary fingerprint compiled FSMs of this tokenizer carry."""
        return as_vocabulary(self.tokenizer.backend).fingerprint

    def get(self, regex: str | None, json_schema: str | dict | None) -> TokenFSM:
        if regex is not None:
            key = ("regex", regex)
        else:
            key = ("json", json_schema if isinstance(json_schema, str) else json.dumps(json_schema, sort_keys=True))
        fsm = self._fsms.get(key)
        if fsm is None:
            vocab = as_vocabulary(self.tokenizer.backend)
            try:
                if regex is not None:
                    fsm = compile_regex(regex, vocab)
                else:
                    schema = json.loads(json_schema) if isinstance(json_schema, str) else json_schema
                    fsm = compile_json_schema(schema, vocab)
            except json.JSONDecodeError as exc:
                raise ConstraintError(f"json_schema is not valid JSON: {exc}") from None
            if len(self._fsms) >= self.max_entries:
                self._fsms.pop(next(iter(self._fsms)))
            self._fsms[key] = fsm
        return fsm
