"""The compile-time shortcuts of issue 13's last round give exactly what the plain code gives: Moore's
classes made into rows directly, the hashed class compaction, the vectorized table fill, the
singleton fast path of the subset construction, the packed mask helpers (state by state, or array
by array)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from constraint_schemas import BOUNDED_STRING_SCHEMAS, SMOLLM2_EOS, load_smollm2_tokenizer

from compiler.constraints import Vocabulary, automaton, compile_json_schema, compile_regex, token_index
from compiler.constraints.dfa import DFA

CORPUS = Path(__file__).resolve().parent / "data" / "schemas"


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.from_tokenizer(load_smollm2_tokenizer(), eos_token_id=SMOLLM2_EOS)


def _state_rows(index: token_index.TokenIndex) -> list[bytes]:
    """Per state, its allowed token ids as bytes (comparable across differently numbered rows)."""
    rows = [index.allowed(s).astype(np.int32).tobytes() for s in np.unique(index.state_row, return_index=True)[1]]
    by_row = dict(zip(np.unique(index.state_row).tolist(), rows, strict=True))
    return [by_row[r] for r in index.state_row.tolist()]


def _same_tokens(a: token_index.TokenIndex, b: token_index.TokenIndex) -> None:
    assert a.state_row.shape == b.state_row.shape
    ra, rb = _state_rows(a), _state_rows(b)
    bad = [s for s in range(len(ra)) if ra[s] != rb[s]]
    assert not bad, f"{len(bad)} states differ, first {bad[:5]}"


@pytest.mark.parametrize("schema", BOUNDED_STRING_SCHEMAS)
def test_rows_from_moore_classes_allow_the_same_tokens(
    vocab: Vocabulary, schema: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows made from Moore's classes (short-token classes on their quotient plus each class's long
    tokens) against the whole trie walked per positional row, state by state."""
    fsm = compile_json_schema(schema, vocab)
    used = []
    original = token_index._rows_from_moore
    monkeypatch.setattr(token_index, "_rows_from_moore", lambda *a: used.append(1) or original(*a))
    monkeypatch.setattr(token_index, "SPLIT_MIN_STATES", 0)
    monkeypatch.setattr(token_index, "_POSITIONAL_MAX_WORK", -1)  # Moore's classes, whatever the size
    from_moore = token_index.build_token_index(fsm.dfa, vocab)
    assert used
    monkeypatch.setattr(token_index, "SPLIT_MIN_STATES", 10**12)
    monkeypatch.setattr(token_index, "_POSITIONAL_MAX_WORK", 12_000_000)
    whole = token_index.build_token_index(fsm.dfa, vocab)
    _same_tokens(from_moore, whole)
    assert from_moore.num_rows <= whole.num_rows


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cfn-aws-redshift-snapshot", "cfn-aws-amazonmq-broker"])
def test_corpus_schema_rows_equal_the_whole_trie_walk(
    vocab: Vocabulary, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mid-size corpus schema (10-23k states, Moore's classes, split walk): every state allows the
    tokens the plain whole-trie walk over positional rows allows."""
    doc = json.loads((CORPUS / f"{name}.json").read_text(encoding="utf-8"))
    fsm = compile_json_schema(doc["schema"], vocab)
    assert fsm.num_states >= token_index.SPLIT_MIN_STATES
    monkeypatch.setattr(token_index, "SPLIT_MIN_STATES", 10**12)
    _same_tokens(fsm.index, token_index.build_token_index(fsm.dfa, vocab))


# -- automata ----------------------------------------------------------------------------------


def _random_dfa(rng: np.random.Generator) -> DFA:
    n, c = int(rng.integers(1, 60)), int(rng.integers(1, 12))
    table = rng.integers(-1, min(n, 3), size=(n, c)).astype(np.int32)
    symbol_class = rng.integers(0, c, size=256).astype(np.int32)
    symbol_class[:c] = np.arange(c)
    return DFA(0, np.zeros(n, bool), table, symbol_class)


def _check_compaction(dfa: DFA) -> None:
    out = automaton.compact_classes(dfa)
    cols, inverse = np.unique(dfa.transitions.T, axis=0, return_inverse=True)
    if cols.shape[0] == dfa.num_classes:
        assert out is dfa
        return
    assert np.array_equal(out.transitions, cols.T)
    assert np.array_equal(out.symbol_class, inverse.reshape(-1)[dfa.symbol_class])


def test_compact_classes_matches_np_unique_over_columns() -> None:
    rng = np.random.default_rng(7)
    for _ in range(300):
        _check_compaction(_random_dfa(rng))


def test_compact_classes_survives_hash_collisions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every column hashing alike: equal columns still merge, different ones are told apart."""
    monkeypatch.setattr(automaton, "_column_hashes", lambda table: np.zeros(table.shape[1], np.uint64))
    rng = np.random.default_rng(8)
    for _ in range(200):
        _check_compaction(_random_dfa(rng))


def test_tabulate_fills_each_edge_into_its_classes() -> None:
    """Every edge's symbols lead to its target, every other symbol to the dead state (before trim)."""
    rng = np.random.default_rng(9)
    for _ in range(200):
        n, k = int(rng.integers(1, 12)), 16
        rows = []
        for _s in range(n):
            owner = rng.integers(-1, 3, size=k)  # symbol -> edge of this row (-1: none)
            row = []
            for e in range(3):
                mask = sum(1 << int(b) for b in np.flatnonzero(owner == e))
                if mask:
                    row.append((mask, int(rng.integers(0, n))))
            rows.append(row)
        accepting = np.ones(n, dtype=bool)  # every state accepting: trim keeps what is reachable
        dfa = automaton._tabulate(rows, accepting, 0, k)
        # walk: from state 0, each reachable state's edges agree with the rows
        reach, seen = [0], {0: 0}
        while reach:
            s = reach.pop()
            for sym in range(k):
                want = next((t for m, t in rows[s] if m >> sym & 1), -1)
                got = int(dfa.transitions[seen[s], dfa.symbol_class[sym]])
                if want < 0:
                    assert got == -1
                    continue
                if want not in seen:
                    seen[want] = got
                    reach.append(want)
                assert got == seen[want]


@pytest.mark.parametrize(
    "pattern",
    [r"[a-z]{3,9}@(foo|bar)\.com", r"(ab|a)*c?", r"[\u0100-\u07ff]{2}x|y+", r"(\d{1,3}\.){3}\d{1,3}"],
)
def test_determinize_singleton_fast_path_gives_the_same_dfa(
    vocab: Vocabulary, pattern: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = compile_regex(pattern, vocab).dfa
    monkeypatch.setattr(automaton, "_disjoint_edges", lambda q, edges, memo: False)
    plain = compile_regex(pattern, vocab).dfa
    assert fast.initial == plain.initial
    assert np.array_equal(fast.transitions, plain.transitions)
    assert np.array_equal(fast.symbol_class, plain.symbol_class)
    assert np.array_equal(fast.accepting, plain.accepting)


# -- packed masks --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (8, 5), (49_155, 4), (1000, 1)])
def test_pack_token_axis_and_packed_nonzero(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0])
    masks = rng.random(shape) < 0.1
    packed = token_index._pack_token_axis(masks)
    assert np.array_equal(packed, np.packbits(masks, axis=0, bitorder="little"))
    col, tok = token_index._packed_nonzero(packed)
    want_tok, want_col = np.nonzero(masks)
    assert sorted(zip(col.tolist(), tok.tolist())) == sorted(zip(want_col.tolist(), want_tok.tolist()))


def test_pairs_csr_sorts_tokens_within_rows() -> None:
    rng = np.random.default_rng(3)
    rows = rng.integers(0, 50, size=2000)
    tokens = rng.permutation(100_000)[:2000]
    ptr, out = token_index._pairs_csr(rows, tokens, 60, 100_000)
    assert ptr[0] == 0 and ptr[-1] == 2000 and out.dtype == np.int32
    for r in range(60):
        assert out[ptr[r] : ptr[r + 1]].tolist() == sorted(tokens[rows == r].tolist())


def test_long_rows_agree_whether_rows_are_dense_or_sparse(vocab: Vocabulary, monkeypatch: pytest.MonkeyPatch) -> None:
    """`_long_rows` reads `_rows_of`'s sparse lists and its bitmasks alike (SmolLM2's 155 long
    tokens never make a dense row, so one is forced here)."""
    split = token_index.token_split(vocab)
    fsm = compile_json_schema({"type": "string", "pattern": '^[ a-z"#=?*-]{0,100}$'}, vocab)
    reps = np.arange(fsm.num_states)
    sparse = token_index._long_rows(fsm.dfa, reps, split.long)
    monkeypatch.setattr(token_index, "DENSE_MIN_TOKENS", 1)
    monkeypatch.setattr(token_index, "_DENSE_WALK_MIN_NODES", 0)
    dense = token_index._long_rows(fsm.dfa, reps, split.long)
    assert sparse.any() and np.array_equal(sparse, dense)


def test_jump_forward_tables_match_their_boolean_definitions() -> None:
    """`forced_bytes` and `mid_character` (float32 products) against the plain boolean reading."""
    from compiler.constraints.jump_forward import forced_bytes, mid_character

    rng = np.random.default_rng(11)
    for _ in range(100):
        n, c = int(rng.integers(1, 40)), int(rng.integers(1, 9))
        table = np.where(rng.random((n, c)) < 0.7, -1, rng.integers(0, n, size=(n, c))).astype(np.int32)
        symbol_class = rng.integers(0, c, size=256).astype(np.int32)
        symbol_class[rng.permutation(256)[:c]] = np.arange(c)
        dfa = DFA(0, rng.random(n) < 0.2, table, symbol_class)
        live = table >= 0
        live_bytes = np.array([sum(int((symbol_class == k).sum()) for k in np.flatnonzero(row)) for row in live])
        want_forced = np.full(n, -1)
        for s in np.flatnonzero((live_bytes == 1) & ~dfa.accepting):
            want_forced[s] = int(np.flatnonzero(symbol_class == np.flatnonzero(live[s])[0])[0])
        assert np.array_equal(forced_bytes(dfa), want_forced)
        cont = np.zeros(256, dtype=bool)
        cont[0x80:0xC0] = True
        cont_only = np.array([bool(cont[symbol_class == k].all()) for k in range(c)])
        want_mid = live.any(axis=1) & ~(live & ~cont_only).any(axis=1) & ~dfa.accepting
        assert np.array_equal(mid_character(dfa), want_mid)
