"""Jump-forward: forced strings are exactly what the DFA forces, and never change the language."""

from __future__ import annotations

import random

import numpy as np
import pytest
from constraint_schemas import PERSON, SCHEMAS

from compiler.constraints import Vocabulary, compile_json_schema, compile_regex
from compiler.constraints.automaton import DFA
from compiler.constraints.json_schema import json_schema_to_node
from compiler.constraints.jump_forward import forced_bytes, jump_forward, mid_character
from compiler.constraints.regex_dfa import regex_to_byte_dfa


def _byte_vocab() -> Vocabulary:
    # all single bytes: enough to reach every DFA state
    return Vocabulary([None] + [bytes([b]) for b in range(256)], special_ids=[0], eos_token_id=0)


def _sample(dfa: DFA, state: int, rng: random.Random, max_len: int = 40) -> bytes | None:
    out = bytearray()
    s = state
    for _ in range(max_len):
        if dfa.accepting[s] and rng.random() < 0.3:
            return bytes(out)
        live = np.flatnonzero(dfa.transitions[s, dfa.symbol_class] >= 0)
        if not len(live):
            break
        b = int(live[rng.randrange(len(live))])
        out.append(b)
        s = int(dfa.transitions[s, dfa.symbol_class[b]])
    return bytes(out) if dfa.accepting[s] else None


def _check_language_unchanged(dfa: DFA, seed: int) -> int:
    rng = random.Random(seed)
    forced = forced_bytes(dfa)
    mid = mid_character(dfa)
    num_forced = 0
    states = list(range(dfa.num_states))
    rng.shuffle(states)
    for s in states[:150]:
        text, end = jump_forward(dfa, forced, mid, s)
        text.decode("utf-8")  # whole characters only
        assert dfa.walk(text, s) == end
        if not text:
            continue
        num_forced += 1
        # every completion from s starts with the forced text ...
        for _ in range(5):
            w = _sample(dfa, s, rng)
            if w is not None:
                assert w.startswith(text), (s, text, w)
        # ... and the forced text followed by any completion from `end` is a completion from s
        for _ in range(5):
            w = _sample(dfa, end, rng)
            if w is not None:
                assert _accepts_from(dfa, s, text + w)
        # nothing else: a different first byte is dead
        live = dfa.transitions[s, dfa.symbol_class] >= 0
        assert live.sum() == 1 and live[text[0]]
    return num_forced


def _accepts_from(dfa: DFA, state: int, data: bytes) -> bool:
    s = dfa.walk(data, state)
    return s >= 0 and bool(dfa.accepting[s])


@pytest.mark.parametrize(
    "name", ["person", "tree", "enum_const", "formats", "one_of_discriminated", "unicode_keys"]
)
def test_jump_forward_never_changes_the_language(name: str) -> None:
    from compiler.constraints.dfa_ops import byte_dfa

    dfa = byte_dfa(json_schema_to_node(SCHEMAS[name]), minimized=False)
    assert _check_language_unchanged(dfa, seed=len(name)) > 0


@pytest.mark.parametrize("pattern", [r"abc(d|e)f", r"(foo|bar)baz[0-9]", r"éé?x", r"日本(語|人)", r"a{3}b+c"])
def test_jump_forward_on_regexes(pattern: str) -> None:
    _check_language_unchanged(regex_to_byte_dfa(pattern), seed=1)


def test_person_schema_forced_strings() -> None:
    fsm = compile_json_schema(PERSON, _byte_vocab())
    s = fsm.initial_state
    assert fsm.jump_forward(s) == ('{"name":"', fsm.walk_bytes(s, b'{"name":"'))
    s = fsm.walk_bytes(s, b'{"name":"Ada"')
    text, end = fsm.jump_forward(s)
    assert text == ',"age":'
    assert fsm.forced_string(fsm.walk_bytes(end, b"1")) == ""  # another digit or a comma
    s = fsm.walk_bytes(end, b"36")
    assert fsm.forced_string(s) == ',"email":"'  # age <= 150: no third digit; email is required
    s = fsm.walk_bytes(s, b',"email":"')
    s = fsm.walk_bytes(s, b'x@y.zz",')
    assert fsm.forced_string(s) == '"'  # "phone" (optional) or "address"
    s = fsm.walk_bytes(s, b'"a')
    assert fsm.forced_string(s) == 'ddress":{"street":"'


def test_forced_text_is_whole_characters() -> None:
    fsm = compile_regex("日本", _byte_vocab())
    assert fsm.forced_string(fsm.initial_state) == "日本"
    s = fsm.walk_bytes(fsm.initial_state, "日".encode()[:1])
    assert fsm.forced_string(s) == ""  # inside 日
    fsm = compile_regex("x日(本|人)", _byte_vocab())
    # 本 and 人 share their first UTF-8 byte; the forced bytes stop at the last whole character
    assert fsm.forced_string(fsm.initial_state) == "x日"


def test_accepting_states_force_nothing() -> None:
    fsm = compile_regex("ab(cd)?", _byte_vocab())
    s = fsm.walk_bytes(fsm.initial_state, b"ab")
    assert fsm.is_accepting(s) and fsm.forced_string(s) == ""
    assert fsm.forced_string(fsm.walk_bytes(s, b"c")) == "d"


def test_docs_worked_example() -> None:
    schema = {
        "type": "object",
        "properties": {"id": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["id", "ok"],
    }
    fsm = compile_json_schema(schema, _byte_vocab())
    assert fsm.forced_string(fsm.initial_state) == '{"id":'
    s = fsm.walk_bytes(fsm.initial_state, b'{"id":7')
    assert fsm.forced_string(s) == ""
    s = fsm.walk_bytes(s, b",")
    assert fsm.jump_forward(s)[0] == '"ok":'
    s = fsm.walk_bytes(s, b'"ok":t')
    assert fsm.forced_string(s) == "rue}"


def test_forced_bytes_is_the_single_live_byte_per_state() -> None:
    """`forced_bytes` (live classes counted in blocks of rows) equals its definition, byte by
    byte, on random tables longer than a block with one-byte and wider classes."""
    from compiler.constraints import jump_forward as jf

    rng = np.random.default_rng(9)
    for n in [1, jf._BLOCK_ROWS + 37]:
        symbol_class = rng.integers(0, 12, size=256).astype(np.int32)
        symbol_class[rng.choice(256, 6, replace=False)] = np.arange(12, 18)  # six one-byte classes
        table = np.full((n, 18), -1, dtype=np.int32)
        for s in range(n):
            live = rng.choice(18, size=int(rng.integers(0, 3)), replace=False)
            table[s, live] = rng.integers(0, n, size=len(live))
        accepting = rng.random(n) < 0.2
        dfa = DFA(0, accepting, table, symbol_class)
        want = np.full(n, -1, dtype=np.int16)
        for s in range(n):
            live_bytes = np.flatnonzero(table[s, symbol_class] >= 0)
            if len(live_bytes) == 1 and not accepting[s]:
                want[s] = live_bytes[0]
        assert np.array_equal(jf.forced_bytes(dfa), want)
