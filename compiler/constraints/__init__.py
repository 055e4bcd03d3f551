"""Constrained decoding, compiled ahead of time: regex / JSON schema -> token-level FSM.

The stages, each its own module and testable on a toy vocabulary:

    json_schema   schema -> regex syntax tree (fails closed: ConstraintError with a JSON pointer)
    regex_parser  regex text -> syntax tree (interegular parses; rejections carry a position)
    automaton     syntax tree -> byte-level DFA (Thompson NFA + subset construction, ours)
    regex_dfa     regex -> minimized character-level CharDFA (for inspection and tests)
    token_index   byte DFA x vocabulary -> allowed tokens per state
    jump_forward  forced text per state
    token_fsm     TokenFSM: the result as plain arrays, and the run-time API (masks, next state)

Entry points: `compile_regex`, `compile_json_schema`, `json_schema_to_regex`. `docs/constraints.md`
has the supported syntax, the keyword table, the whitespace policy and a jump-forward example.
"""

from __future__ import annotations

import json
from typing import Any

from .automaton import DEFAULT_MAX_STATES, DFA
from .dfa_ops import byte_dfa
from .errors import ConstraintError
from .json_schema import (
    COMPACT,
    FLEXIBLE,
    SchemaCompiler,
    SchemaOptions,
    Whitespace,
    json_schema_to_node,
    json_schema_to_regex,
    whitespace_policy,
)
from .json_structure import SUPERSET_DEPTH, recording
from .limits import compiling, describe_regex, over
from .regex_dfa import CharDFA, parse_fullmatch, regex_to_byte_dfa, regex_to_char_dfa
from .token_fsm import TokenFSM
from .unique_items import collect_unique_paths, deferring
from .vocabulary import Vocabulary

__all__ = [
    "COMPACT",
    "FLEXIBLE",
    "CharDFA",
    "ConstraintError",
    "DFA",
    "SchemaOptions",
    "TokenFSM",
    "Vocabulary",
    "Whitespace",
    "as_vocabulary",
    "compile_json_schema",
    "compile_regex",
    "json_schema_to_regex",
    "regex_to_byte_dfa",
    "regex_to_char_dfa",
]

_VOCAB_CACHE: dict[int, tuple[Any, Vocabulary]] = {}


def as_vocabulary(vocab: Any) -> Vocabulary:
    """A `Vocabulary` from itself, a `tokenizers.Tokenizer` or a transformers fast tokenizer
    (converted once per tokenizer object)."""
    if isinstance(vocab, Vocabulary):
        return vocab
    hit = _VOCAB_CACHE.get(id(vocab))
    if hit is not None and hit[0] is vocab:
        return hit[1]
    v = Vocabulary.from_tokenizer(vocab)
    if len(_VOCAB_CACHE) > 8:
        _VOCAB_CACHE.clear()
    _VOCAB_CACHE[id(vocab)] = (vocab, v)
    return v


def compile_regex(pattern: str, vocab: Any, max_states: int | None = DEFAULT_MAX_STATES) -> TokenFSM:
    """A token FSM whose accepted texts are exactly the strings `re.fullmatch(pattern, s)` accepts
    (ASCII shorthands; see `regex_parser` for the exact semantics).

    Bounded by the constraint budgets of `compiler.budgets` (time, states, positions, table memory,
    nesting, pattern length); anything over one ends in a `ConstraintError` naming it.
    `max_states` overrides the `constraint_states` budget.
    """
    with compiling(describe_regex(pattern) if isinstance(pattern, str) else "a regex"):
        try:
            node = parse_fullmatch(pattern)
            dfa = byte_dfa(node, max_states)
            if dfa.num_states == 0:
                raise ConstraintError("the regex matches no string", pattern=pattern)
            return TokenFSM.build(dfa, as_vocabulary(vocab))
        except RecursionError:
            raise over("constraint_nesting", None, "regex structure") from None


def compile_json_schema(
    schema: Any,
    vocab: Any,
    whitespace: str | int | Whitespace | None = "compact",
    max_recursion: int = 3,
    any_depth: int | None = None,
    max_states: int | None = DEFAULT_MAX_STATES,
) -> TokenFSM:
    """A token FSM whose accepted texts are JSON documents valid for `schema` (a dict or JSON text).

    `whitespace`: "compact" (none), "flexible" (a newline and up to 8 spaces between tokens), an
    int N (up to N spaces), or a `Whitespace`. `max_recursion`: how many times one `$ref` may be
    entered along a path. `any_depth`: nesting allowed inside unconstrained values (`{}`, `true`,
    `{"type": "object"}`), default `json_structure.SUPERSET_DEPTH`: such values compile to a
    bracket-counting superset automaton and the FSM is marked `json_structure`, whose decode-time
    check (`TokenFSM.structure_guard()`, applied by the runtime's cursor and by `accepts_text`)
    makes it exact. Raises `ConstraintError` (with a JSON pointer) for anything it cannot
    enforce exactly, or that is over a constraint budget (`compiler.budgets`).

    `uniqueItems` over items with too many values for an automaton is enforced at decode time: the
    FSM's `unique_paths` say where, and `TokenFSM.unique_guard()` / `accepts_text` apply it (see
    `unique_items`); the runtime's constraint cursor does so on every token.
    """
    options = SchemaOptions(
        whitespace=whitespace_policy(whitespace),
        max_recursion=max_recursion,
        any_depth=SUPERSET_DEPTH if any_depth is None else any_depth,
        max_states=max_states,
        decode_checks=True,
    )
    with compiling("JSON schema"):
        try:
            with deferring() as deferred, recording() as superset:
                node = json_schema_to_node(schema, options)
            paths: tuple = ()
            if deferred:
                root = json.loads(schema) if isinstance(schema, str) else schema
                paths = collect_unique_paths(root, deferred, max_recursion,
                                             SchemaCompiler(root, options).resolve)
            # The schema's automaton is determinized once and not minimized: built from minimized
            # leaves it is within a state or two of minimal, and Hopcroft would cost more than it saves.
            try:
                dfa = byte_dfa(node, max_states, minimized=False)
            except ConstraintError as e:
                raise (e if e.pointer is not None else e.with_pointer("")) from None
            return TokenFSM.build(dfa, as_vocabulary(vocab), unique_paths=paths, json_structure=superset[0])
        except RecursionError:
            raise over("constraint_nesting", None, "schema nesting", pointer="") from None
