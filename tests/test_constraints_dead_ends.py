"""No dead ends at the token level: every state reachable through allowed tokens is accepting or
allows a token (compiler/constraints/token_live.py)."""

from __future__ import annotations

import pytest
from constraint_schemas import load_smollm2_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.constraints import ConstraintError, TokenFSM, Vocabulary, compile_json_schema, compile_regex
from tests.tiers import examples


def _reachable_dead_ends(fsm: TokenFSM, vocab: Vocabulary, limit: int = 5000) -> list[int]:
    """Walk every state reachable from the initial one through allowed tokens (up to `limit`)."""
    seen = {fsm.initial_state}
    todo = [fsm.initial_state]
    dead = []
    while todo and len(seen) < limit:
        s = todo.pop()
        allowed = fsm.allowed_tokens(s)
        if len(allowed) == 0 and not fsm.is_accepting(s):
            dead.append(s)
        for t in allowed.tolist():
            nxt = fsm.next_state(s, t)
            assert nxt >= 0
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
        # forced text never leads into a dead end
        text, end = fsm.jump_forward(s)
        assert end >= 0 and (fsm.is_accepting(end) or len(fsm.allowed_tokens(end)) > 0)
    return dead


TOY = ["a", "b", "c", "ab", "bc", '"', "{", "}", ":", ",", "1", "2", "x", "é"]  # no "d", no "\x04"


@pytest.fixture(scope="module")
def toy() -> Vocabulary:
    return Vocabulary.from_strings(TOY)


@pytest.fixture(scope="module")
def smol() -> Vocabulary:
    return Vocabulary.from_tokenizer(load_smollm2_tokenizer())


def test_regex_needing_a_missing_byte_is_refused(toy: Vocabulary) -> None:
    with pytest.raises(ConstraintError, match="no token sequence of this vocabulary"):
        compile_regex("ad", toy)
    with pytest.raises(ConstraintError, match="no token sequence"):
        compile_regex("[a-c]*d", toy)  # a dead cycle: letters loop, only "d" ends


def test_missing_byte_branches_are_masked(toy: Vocabulary) -> None:
    fsm = compile_regex("a(d|b)c?|xd", toy)
    allowed = {toy.token_bytes[t] for t in fsm.allowed_tokens(fsm.initial_state)}
    assert b"x" not in allowed and b"a" in allowed and b"ab" in allowed
    assert _reachable_dead_ends(fsm, toy) == []


def test_smollm2_enum_of_an_unspellable_character(smol: Vocabulary) -> None:
    with pytest.raises(ConstraintError, match="no token sequence"):
        compile_json_schema({"enum": ["\U00040000"]}, smol)
    fsm = compile_json_schema({"enum": ["\U00040000", "ok", "\U00040001x"]}, smol)
    assert _reachable_dead_ends(fsm, smol) == []
    # transitions on bytes no token contains stay in the table (no token takes them), so after `"`
    # two bytes are still alive and jump-forward stops there
    assert fsm.jump_forward(fsm.initial_state)[0] == '"'


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"k": {"enum": ["\U00040000", "a\x04", "b"]}}, "required": ["k"]},
        {"type": "string", "maxLength": 3},
        {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
    ],
)
def test_smollm2_schemas_have_no_reachable_dead_end(smol: Vocabulary, schema: dict) -> None:
    fsm = compile_json_schema(schema, smol)
    assert _reachable_dead_ends(fsm, smol, limit=3000) == []


ATOMS = st.sampled_from(["a", "b", "d", "ab", "é", ".", "[a-d]", "[^a]", "x?", "(a|d)"])


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pattern=st.recursive(
        ATOMS,
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["*", "+", "?", "{2}", "{0,3}"])).map(lambda t: f"(?:{t[0]}){t[1]}"),
            st.lists(inner, min_size=2, max_size=3).map("".join),
            st.lists(inner, min_size=2, max_size=3).map(lambda xs: "(" + "|".join(xs) + ")"),
        ),
        max_leaves=6,
    )
)
def test_random_regexes_have_no_reachable_dead_end(toy: Vocabulary, pattern: str) -> None:
    try:
        fsm = compile_regex(pattern, toy)
    except ConstraintError:
        return
    assert _reachable_dead_ends(fsm, toy, limit=2000) == []
