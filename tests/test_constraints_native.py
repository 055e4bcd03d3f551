"""The token index's partition refinements in C (`compiler.constraints.native`) equal the numpy
code they replace, label for label; bad input and the time budget are handled; without the library
the index is built by numpy and is identical."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from constraint_schemas import SMOLLM2_EOS, load_smollm2_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.budgets import budget_overrides
from compiler.constraints import ConstraintError, Vocabulary, compile_json_schema, native
from compiler.constraints import token_index as ti
from compiler.constraints.limits import compiling

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
