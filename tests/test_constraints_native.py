"""The token index's partition refinements in C (`compiler.constraints.native`) equal the numpy
code they replace, label for label; bad input and the time budget are handled; without the library
the index is built by numpy and is identical."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
from constraint_schemas import SMOLLM2_EOS, load_smollm2_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.budgets import budget_overrides
from compiler.constraints import (
    ConstraintError,
    Vocabulary,
    automaton,
    compile_json_schema,
    compile_regex,
    dfa_ops,
    native,
)
from compiler.constraints import token_index as ti
from compiler.constraints.dfa import DFA
from compiler.constraints.limits import compiling
from compiler.constraints.regex_dfa import regex_to_byte_dfa

needs_library = pytest.mark.skipif(native.library() is None, reason="no C compiler: numpy path only")


@st.composite
def tables(draw: st.DrawFn) -> np.ndarray:
    """A random transition table: n states, c columns, entries -1 (dead) or a state; few distinct
    targets, so that states share rows and classes actually merge and split."""
    n = draw(st.integers(1, 40))
    c = draw(st.integers(1, 6))
    targets = draw(st.lists(st.integers(-1, n - 1), min_size=1, max_size=6))
    cells = draw(st.lists(st.sampled_from(targets), min_size=n * c, max_size=n * c))
    return np.array(cells, dtype=np.int32).reshape(n, c)


@needs_library
@settings(max_examples=300, deadline=None)
@given(tables(), st.integers(0, 12))
def test_moore_classes_equal_the_numpy_rounds(table: np.ndarray, rounds: int) -> None:
    expected = native.first_occurrence_labels(ti._moore_classes_numpy(table, rounds))
    got = native.moore_classes(table, rounds)
    assert got is not None
    np.testing.assert_array_equal(got, expected)


@needs_library
@settings(max_examples=300, deadline=None)
@given(tables(), st.data())
def test_positional_classes_equal_the_numpy_levels(table: np.ndarray, data: st.DataObject) -> None:
    c = table.shape[1]
    levels = data.draw(st.lists(st.lists(st.integers(0, c - 1), min_size=1, max_size=c, unique=True),
                                max_size=6))
    cols = [np.array(sorted(level), dtype=np.int64) for level in levels]
    expected = native.first_occurrence_labels(ti._positional_classes_numpy(table, cols))
    got = native.positional_classes(table, cols)
    assert got is not None
    np.testing.assert_array_equal(got, expected)


def test_first_occurrence_labels_keep_the_partition() -> None:
    labels = np.array([7, 7, 3, 9, 3, 7, 1])
    np.testing.assert_array_equal(native.first_occurrence_labels(labels), [0, 0, 1, 2, 1, 0, 3])


@needs_library
def test_a_table_entry_out_of_range_falls_back_to_numpy(caplog: pytest.LogCaptureFixture) -> None:
    bad = np.array([[0, 5], [1, -1]], dtype=np.int32)  # 5: no such state
    with caplog.at_level(logging.WARNING, logger="compiler.constraints.native"):
        assert native.moore_classes(bad, 3) is None
        assert native.positional_classes(bad, [np.array([0, 1])]) is None
        assert native.positional_classes(np.zeros((2, 2), np.int32), [np.array([2])]) is None  # no column 2
    assert "refused its input" in caplog.text


@needs_library
def test_the_time_budget_stops_the_c_rounds() -> None:
    rng = np.random.default_rng(0)
    table = rng.integers(-1, 200_000, size=(200_000, 32), dtype=np.int32)
    with budget_overrides(constraint_seconds=1e-9), compiling("JSON schema"):
        with pytest.raises(ConstraintError, match="constraint_seconds"):
            native.moore_classes(table, 50)


def person(name_length: int, tag_length: int) -> dict:
    return {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": name_length},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": tag_length}, "maxItems": 6},
            "kind": {"enum": ["alpha", "beta", "gamma"]},
            "size": {"type": "integer", "minimum": 0, "maximum": 5000},
        },
        "required": ["name"],
    }


@pytest.mark.parametrize(
    ("schema", "split"),
    [(person(40, 12), False), (person(300, 64), True)],
    ids=["positional-path", "moore-split-path"],
)
def test_the_index_without_the_library_is_identical(monkeypatch: pytest.MonkeyPatch, schema: dict, split: bool) -> None:
    vocab = Vocabulary.from_tokenizer(load_smollm2_tokenizer(), eos_token_id=SMOLLM2_EOS)
    with_native = compile_json_schema(schema, vocab)
    monkeypatch.setattr(native, "library", lambda: None)
    without = compile_json_schema(schema, vocab)
    assert with_native.num_states == without.num_states
    assert (without.num_states >= ti.SPLIT_MIN_STATES) == split  # which path of build_token_index ran
    for field in ("state_row", "dense_id", "dense_masks", "sparse_ptr", "sparse_tokens"):
        np.testing.assert_array_equal(getattr(with_native.index, field), getattr(without.index, field))


PRODUCT_PATTERNS = ["[a-c]{0,5}", "a+b*", "(ab|ba)*c?", "[0-9]{2,4}", "x|y|z", "[a-z]*q[a-z]*", "(a|b)(c|d)*",
                    "[^a]{0,3}", "é+|[α-ω]{1,3}"]


@needs_library
@pytest.mark.parametrize("operation", [automaton.union, automaton.intersect, automaton.difference],
                         ids=["union", "intersect", "difference"])
def test_products_in_c_equal_the_numpy_search(monkeypatch: pytest.MonkeyPatch, operation) -> None:
    dfas = [regex_to_byte_dfa(p) for p in PRODUCT_PATTERNS]
    with_native = [operation(a, b) for a in dfas for b in dfas]
    monkeypatch.setattr(native, "library", lambda: None)
    without = [operation(a, b) for a in dfas for b in dfas]
    for x, y in zip(with_native, without):
        assert (x.initial, x.num_states) == (y.initial, y.num_states)
        for field in ("transitions", "accepting", "symbol_class"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field))


@pytest.mark.parametrize(
    ("max_states", "budget", "named"),
    [(20, 4_000_000, "20 states"), (None, 20, "constraint_states")],
    ids=["explicit-limit", "states-budget"],
)
def test_a_product_over_its_state_limit_names_it(
    monkeypatch: pytest.MonkeyPatch, max_states: int | None, budget: int, named: str
) -> None:
    """The C product raises what the numpy one raises: the explicit limit's message, or the
    `constraint_states` budget's."""
    a, b = regex_to_byte_dfa("[a-z]{0,30}"), regex_to_byte_dfa("[a-y]*z?[a-z]{0,3}")
    messages = []
    for use_native in (True, False):
        if not use_native:
            monkeypatch.setattr(native, "library", lambda: None)
        with budget_overrides(constraint_states=budget), pytest.raises(ConstraintError) as info:
            automaton.intersect(a, b, max_states=max_states)
        messages.append(str(info.value))
    assert messages[0] == messages[1] and named in messages[0]


@needs_library
def test_the_dense_walk_refuses_states_or_targets_outside_the_table(caplog: pytest.LogCaptureFixture) -> None:
    vocab = Vocabulary.from_tokenizer(load_smollm2_tokenizer(), eos_token_id=SMOLLM2_EOS)
    trie = ti.vocabulary_trie(vocab)
    table = np.zeros((3, 1), dtype=np.int32)  # every byte loops in its state
    node_cls = np.zeros(trie.num_nodes, dtype=np.int32)
    roots = np.arange(trie.level_start[0], trie.level_start[1])
    masks, counts = native.dense_walk(table, node_cls, trie, roots, np.array([0, 2]))
    assert (counts == vocab.size - len(vocab.special_ids)).all()  # every non-special token allowed
    with caplog.at_level(logging.WARNING, logger="compiler.constraints.native"):
        assert native.dense_walk(table, node_cls, trie, roots, np.array([3])) is None  # no state 3
        assert native.dense_walk(np.full((3, 1), 7, np.int32), node_cls, trie, roots, np.array([0])) is None
        assert native.dense_walk(table, node_cls + 1, trie, roots, np.array([0])) is None  # no class 1
    assert "refused its input" in caplog.text


@needs_library
@settings(max_examples=300, deadline=None)
@given(tables(), st.data())
def test_trim_in_c_keeps_the_states_numpy_keeps(table: np.ndarray, data: st.DataObject) -> None:
    n = table.shape[0]
    accepting = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    initial = data.draw(st.integers(0, n - 1))
    dfa = DFA(initial, accepting, table, np.zeros(256, np.int32))
    expected = automaton._trim_keep_numpy(dfa)
    got = native.trim_keep(table, accepting, initial)
    assert got is not None
    if expected is None:
        assert not got.any()
    else:
        np.testing.assert_array_equal(got, expected)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_large_dfa_tables_ask_for_small_pages() -> None:
    table = dfa_ops.new_table(300_000, 40)  # 48 MB: over the small-pages threshold
    assert table.shape == (300_000, 40) and table.dtype == np.int32
    inside = (table.ctypes.data + 4095) & ~4095
    flags = None
    current = None
    for line in open("/proc/self/smaps").read().splitlines():
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(x, 16) for x in head.split("-"))
            current = lo <= inside < hi
        elif line.startswith("VmFlags:") and current:
            flags = line.split()[1:]
    assert flags is not None and "nh" in flags


@needs_library
def test_moore_classes_over_the_memory_budget_raise_before_allocating() -> None:
    table = np.tile(np.arange(64, dtype=np.int32), (4096, 1)) % 4096  # 64 distinct targets per row
    with budget_overrides(constraint_memory_bytes=1_000_000), pytest.raises(ConstraintError, match="constraint_memory"):
        native.moore_classes(table, 5)  # 4096 states x 148 B fit; their 262k edges do not
    assert native.moore_classes(table, 5) is not None


def test_a_vocabulary_with_a_very_long_token_is_walked_by_numpy() -> None:
    """The C walk recurses once per byte: a token longer than `MAX_WALK_DEPTH` bytes (a hostile
    vocabulary) sends the walk to numpy, and the index is still exact."""
    long_token = b"a" * (native.MAX_WALK_DEPTH + 5)
    vocab = Vocabulary([None, b"a", b"b", long_token], special_ids=[0], eos_token_id=0)
    trie = ti.vocabulary_trie(vocab)
    assert trie.depth > native.MAX_WALK_DEPTH
    table = np.zeros((1, 1), dtype=np.int32)
    assert native.dense_walk(table, np.zeros(trie.num_nodes, np.int32), trie, np.array([0]), np.array([0])) is None
    fsm = compile_regex("a*", vocab)
    assert set(fsm.allowed_tokens(fsm.initial_state).tolist()) == {1, 3}


@needs_library
def test_a_product_whose_rows_would_grow_over_the_memory_budget_is_refused() -> None:
    a, b = regex_to_byte_dfa("[a-z]{0,3000}"), regex_to_byte_dfa("[a-y]{0,3000}z?")
    with budget_overrides(constraint_memory_bytes=20_000), pytest.raises(ConstraintError) as info:
        automaton.intersect(a, b)  # ~3,000 states: their rows need ~60 kB
    assert "constraint_memory_bytes" in str(info.value) and "product automaton's table" in str(info.value)
    assert automaton.intersect(a, b).num_states > 3000
