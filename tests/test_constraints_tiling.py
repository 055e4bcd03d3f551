"""Products and large-automaton fallbacks keep languages exactly: the vectorized `intersect`,
`union` and `trim` against their definitions, and a large alternation whose options overlap
(alternative key orders of an object) built by products equals the subset construction's DFA."""

from __future__ import annotations

import re

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.constraints import automaton as A
from compiler.constraints import dfa_ops
from compiler.constraints.regex_dfa import parse_fullmatch, regex_to_byte_dfa
from tests.tiers import examples

ATOMS = ["a", "b", "c", "[ab]", "[^a]", ".", "é", "(ab|ba)", "(a|bc)"]
QUANTS = ["", "", "*", "+", "?", "{1,3}", "{0,4}", "{2}"]


@st.composite
def patterns(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.tuples(st.sampled_from(ATOMS), st.sampled_from(QUANTS)), min_size=1, max_size=4))
    text = "".join(a + q for a, q in parts)
    if draw(st.booleans()):
        text += "|" + draw(st.sampled_from(ATOMS)) + draw(st.sampled_from(QUANTS))
    return text


def accepts(d: A.DFA, data: bytes) -> bool:
    if d.num_states == 0:
        return False
    q = d.initial
    for byte in data:
        q = int(d.transitions[q, d.symbol_class[byte]])
        if q < 0:
            return False
    return bool(d.accepting[q])


def is_trimmed(d: A.DFA, unreachable_ok: bool = False) -> bool:
    """Every state is reachable from the start (unless `unreachable_ok`: the large path may keep a
    part's old start state) and reaches an accepting state."""
    if d.num_states == 0:
        return True
    n = d.num_states
    reach = {d.initial}
    stack = [d.initial]
    while stack:
        for t in d.transitions[stack.pop()].tolist():
            if t >= 0 and t not in reach:
                reach.add(t)
                stack.append(t)
    alive = set(np.flatnonzero(d.accepting).tolist())
    changed = True
    while changed:
        changed = False
        for s in range(n):
            if s not in alive and any(t in alive for t in d.transitions[s].tolist() if t >= 0):
                alive.add(s)
                changed = True
    return reach <= alive and (unreachable_ok or len(reach) == n)


TEXTS = st.lists(st.text(alphabet="abcé", max_size=7), min_size=30, max_size=30)


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(patterns(), patterns(), TEXTS)
def test_products_accept_exactly_the_intersection_and_the_union(p: str, q: str, texts: list[str]) -> None:
    a, b = regex_to_byte_dfa(p), regex_to_byte_dfa(q)
    both, either = A.intersect(a, b), A.union(a, b)
    assert is_trimmed(both) and is_trimmed(either)
    # the same products with pairs numbered through a dict (large pair spaces)
    dense = A._DENSE_PAIR_IDS
    A._DENSE_PAIR_IDS = 0
    try:
        both_d, either_d = A.intersect(a, b), A.union(a, b)
    finally:
        A._DENSE_PAIR_IDS = dense
    for x, y in ((both, both_d), (either, either_d)):
        assert x.initial == y.initial and (x.accepting == y.accepting).all()
        assert (x.transitions == y.transitions).all()
    for t in texts:
        in_p, in_q = re.fullmatch(p, t) is not None, re.fullmatch(q, t) is not None
        assert accepts(both, t.encode()) == (in_p and in_q), (p, q, t)
        assert accepts(either, t.encode()) == (in_p or in_q), (p, q, t)


def test_trim_drops_exactly_the_useless_states() -> None:
    # 0 -a-> 1 (accepting), 0 -b-> 2 (dead end), 3 unreachable -> 1, 1 -a-> 4 -> 5 (accepting), a chain
    n = 200
    table = np.full((n, 2), -1, dtype=np.int32)
    table[0] = [1, 2]
    table[3] = [1, -1]
    table[1, 0] = 4
    for s in range(4, n - 1):
        table[s, 0] = s + 1
    accepting = np.zeros(n, dtype=bool)
    accepting[[1, n - 1]] = True
    symbol_class = np.zeros(256, dtype=np.int32)
    symbol_class[ord("b")] = 1
    d = A.trim(A.DFA(0, accepting, table, symbol_class))
    assert d.num_states == n - 2  # 2 (dead end) and 3 (unreachable) go
    assert is_trimmed(d)
    assert accepts(d, b"a") and accepts(d, b"a" * (n - 3)) and not accepts(d, b"b")
    assert not accepts(d, b"a" * 5)


def test_large_alternation_with_overlapping_options_equals_the_subset_construction(monkeypatch) -> None:
    # Two "key orders" of one object: the options share their first bytes, so they cannot be
    # stacked under a new start state; the product runs them side by side.
    pattern = '\\{("k":"[a-z]{0,30}","v":"[a-z]{0,20}"|"v":"[a-z]{0,20}","k":"[a-z]{0,30}")\\}'
    node = parse_fullmatch(pattern)
    slow = A.minimize(dfa_ops.small_byte_dfa(node, minimized=False))
    monkeypatch.setattr(dfa_ops, "SMALL_POSITIONS", 20)  # force the large path on every subtree
    fast = dfa_ops.large_byte_dfa(node)
    assert is_trimmed(fast, unreachable_ok=True)
    fast_min = A.minimize(fast)
    assert fast_min.num_states == slow.num_states
    for t in [
        '{"k":"ab","v":""}',
        '{"v":"x","k":"abc"}',
        '{"k":"","k":""}',
        '{"v":"' + "a" * 21 + '","k":""}',
    ]:
        assert (
            accepts(fast, t.encode()) == accepts(slow, t.encode()) == (re.fullmatch(pattern, t) is not None)
        )
    rng = np.random.default_rng(3)
    for _ in range(300):
        k = "".join(rng.choice(list("ab"), size=int(rng.integers(0, 33))))
        v = "".join(rng.choice(list("ab"), size=int(rng.integers(0, 23))))
        for t in (f'{{"k":"{k}","v":"{v}"}}', f'{{"v":"{v}","k":"{k}"}}'):
            assert accepts(fast, t.encode()) == (re.fullmatch(pattern, t) is not None), t


REPEATS = [
    ("(,-?[0-9]+)", 0, 5),
    ("(,-?[0-9]+)", 2, None),
    ("(a|ab)", 2, 4),
    ("(a|ab)", 0, None),
    ("(ab*)", 3, 3),
    ("(ab*)", 1, None),
    ("(,(a|b[ab]?))", 1, 6),
]


def test_repetitions_of_items_that_are_not_prefix_free_tile_exactly() -> None:
    # an item may continue where it could end (a number, `ab*`): copies still join without doubt
    # when the bytes that continue it there and the bytes that start it are disjoint
    rng = np.random.default_rng(7)
    for item, lo, hi in REPEATS:
        x = regex_to_byte_dfa(item)
        assert not dfa_ops.is_prefix_free(x)
        tiled = dfa_ops.repeat_dfa(x, lo, hi)
        assert tiled is not None and is_trimmed(tiled, unreachable_ok=True)
        pattern = f"{item}{{{lo},{'' if hi is None else hi}}}"
        slow = A.minimize(dfa_ops.small_byte_dfa(parse_fullmatch(pattern), minimized=False))
        assert A.minimize(tiled).num_states == slow.num_states
        for _ in range(2000):
            t = "".join(rng.choice(list(",-0123ab"), size=int(rng.integers(0, 14))))
            assert accepts(tiled, t.encode()) == (re.fullmatch(pattern, t) is not None), (pattern, t)
    # the joint overlaps: no tiling (the subset construction decides)
    assert dfa_ops.repeat_dfa(regex_to_byte_dfa("(a+)"), 0, 3) is None
    assert dfa_ops.repeat_dfa(regex_to_byte_dfa("([0-9]+x?)"), 1, 3) is None


def test_equal_small_subtrees_share_one_automaton_per_compile(monkeypatch) -> None:
    """Within one compile, equal small subtrees are determinized once and the automaton is shared;
    a shared automaton's table is never grown in place by a concatenation (it is not the caller's
    own), so the result equals the one built without sharing, and the shared part is unchanged."""
    from compiler.constraints.charset import CharSet
    from compiler.constraints.limits import compiling
    from compiler.constraints.regex_ast import Chars, Repeat, concat

    monkeypatch.setattr(dfa_ops, "SMALL_POSITIONS", 4200)

    def letters(lo: str, hi: str) -> Repeat:  # 4,101 states: a table concat_dfas could grow in place
        return Repeat(Chars(CharSet.range(lo, hi)), 0, 4100)

    node = concat(letters("a", "z"), letters("0", "9"))
    with compiling("test"):
        first = dfa_ops.byte_dfa(letters("a", "z"))
        shape = first.transitions.shape
        shared = dfa_ops.byte_dfa(node)
        again = dfa_ops.byte_dfa(letters("a", "z"))
        # what the large-tree builder gets: the shared automaton, never as its own to grow
        assert dfa_ops._build(letters("a", "z"), None) == (first, False)
    assert again is first and first.transitions.shape == shape and shape[0] > 4096
    monkeypatch.setattr(dfa_ops, "_MEMO_MAX_ENTRIES", 0)
    with compiling("test"):
        alone = dfa_ops.byte_dfa(node)
    assert np.array_equal(shared.transitions, alone.transitions)
    assert np.array_equal(shared.accepting, alone.accepting)
    for text in ["", "ab", "x" * 4100 + "7" * 4100, "9"]:
        assert shared.accepts(text.encode())
    assert not shared.accepts(b"x" * 4101) and not shared.accepts(b"1a")


def test_place_copies_columns_and_shifts_states_keeping_dead_cells() -> None:
    """`place` (chunked copy, then `(t + offset) | (t >> 31)`) equals its definition, across chunk
    boundaries, for identity and widened column maps, int32 and int64 sources, offset 0 or not."""
    rng = np.random.default_rng(7)
    chunk_rows = dfa_ops._PLACE_CHUNK_CELLS // 40
    for trial in range(24):
        n = [0, 1, chunk_rows - 1, chunk_rows, 2 * chunk_rows + 3][trial % 5]
        c = int(rng.integers(1, 40))
        dtype = np.int64 if trial % 4 == 3 else np.int32
        table = rng.integers(0, 2**31 - 2**21, size=(n, c)).astype(dtype)
        table[rng.random((n, c)) < 0.4] = -1
        extra = rng.integers(0, c, size=40 - c) if trial % 3 else np.zeros(0, np.int64)
        cols = np.sort(np.concatenate([np.arange(c), extra])).astype(np.intp)
        offset = int(rng.integers(1, 2**20)) if trial % 2 else 0
        want = table[:, cols].astype(np.int64)
        want[want >= 0] += offset
        block = np.full((n, len(cols)), 7, dtype=np.int32)
        dfa_ops.place(block, table, cols, offset)
        assert np.array_equal(block, want), (trial, n, c, offset)


def test_tile_writes_shifted_copies_keeping_dead_cells() -> None:
    """`_tile` (blocks of copies, each `(t + j * step) | (t >> 31)`) equals the broadcast
    definition, for one wide copy, many narrow ones (several per block) and a single cell."""
    rng = np.random.default_rng(11)
    for width, copies, classes in [(3000, 5, 30), (2, 50_000, 5), (1, 3, 1)]:
        rel = rng.integers(-1, width + 1, size=(width, classes)).astype(np.int64)
        rel[rng.random(rel.shape) < 0.5] = -1
        want = rel[None] + (np.arange(copies) * width)[:, None, None]
        want[:, rel < 0] = -1
        body = np.full((copies, width, classes), 7, dtype=np.int32)
        dfa_ops._tile(body, rel, width)
        assert np.array_equal(body, want)


@settings(max_examples=examples(60), deadline=None)
@given(st.integers(1, 5000), st.integers(1, 30), st.integers(0, 20), st.integers(0, 50), st.integers(0, 2**32))
def test_widening_a_table_in_place_equals_gathering_its_columns(rows, width, added, extra, seed) -> None:
    rng = np.random.default_rng(seed)
    old = rng.integers(-1, 1000, size=(rows, width), dtype=np.int32)
    cols = np.sort(np.concatenate([np.arange(width), rng.integers(0, width, size=added)]))
    table = old.copy()
    table.resize((rows + extra, width + added), refcheck=False)  # as concat_dfas grows an owned part
    dfa_ops._widen_in_place(table, rows, width, cols)
    np.testing.assert_array_equal(table[:rows], old[:, cols])


def test_an_owned_part_with_fewer_classes_is_grown_in_place_exactly() -> None:
    """`[` + a 5000-state tiled repetition + `]`: the brackets add byte classes, so the reused
    repetition's table is widened in place; the result equals the concatenation built by copying."""
    body = dfa_ops.byte_dfa(parse_fullmatch("[a-z0-9]{5000}"))
    brackets = [dfa_ops.byte_dfa(parse_fullmatch(re.escape(c))) for c in "[]"]

    def fresh_body() -> A.DFA:
        return A.DFA(body.initial, body.accepting.copy(), body.transitions.copy(), body.symbol_class.copy(), body.periods)

    copied = dfa_ops.concat_dfas([brackets[0], fresh_body(), brackets[1]])
    owned = fresh_body()
    grown = dfa_ops.concat_dfas([brackets[0], owned, brackets[1]], owned=[False, True, False])
    assert grown.transitions is owned.transitions  # the owned table became the result's
    assert copied.num_classes > body.num_classes
    assert accepts(grown, b"[" + b"a1" * 2500 + b"]") and not accepts(grown, b"[" + b"a" * 4999 + b"]")
    assert grown.num_states == copied.num_states
    assert not A.difference(grown, copied).accepting.any() and not A.difference(copied, grown).accepting.any()


def test_equal_large_alternations_are_built_once_per_compile(monkeypatch) -> None:
    """Two equal alternations whose options overlap (alternative orders of two long keys) in one
    compile: one product construction, the second place gets the shared automaton (never its own
    to grow), and the whole equals the tree built without sharing."""
    from compiler.constraints.limits import compiling
    from compiler.constraints.regex_ast import alt, concat

    monkeypatch.setattr(dfa_ops, "SMALL_POSITIONS", 8)
    a, b = parse_fullmatch("k[a-z]{0,3}"), parse_fullmatch("k[0-9]{0,3}")
    orders = alt(concat(a, b), concat(b, a))  # both options start with "k": a product
    node = concat(orders, parse_fullmatch(";"), orders)
    products = []
    real = dfa_ops.union_product
    monkeypatch.setattr(dfa_ops, "union_product", lambda *a, **k: products.append(1) or real(*a, **k))
    with compiling("test"):
        shared = dfa_ops.byte_dfa(node)
        assert dfa_ops._build(orders, None)[1] is False  # what a later place gets: not its own
    assert len(products) == 1
    monkeypatch.setattr(dfa_ops, "_MEMO_MAX_ENTRIES", 0)
    with compiling("test"):
        alone = dfa_ops.byte_dfa(node)
    assert len(products) == 3
    assert not A.difference(shared, alone).accepting.any() and not A.difference(alone, shared).accepting.any()
    assert accepts(shared, b"kab" + b"k12" + b";" + b"k9" + b"kz") and not accepts(shared, b"kab;k1")
