"""Large automata without a subset construction: counted repetition, concatenation, alternation
and sets of literals assembled directly as numpy tables.

The subset construction (`automaton.determinize`) does Python work per DFA state: fine for the
few thousand states of a typical schema, far too slow for `[a-z]{40000}` (40k states), `.{100000}`
(900k: UTF-8 needs intermediate states) or a string with `maxLength: 100000` (1.5M). These shapes
are deterministic by construction, so their DFAs can be written down instead of discovered:

* `X{lo,hi}` where X is *prefix-free* (no accepted string extends another: a character, a quoted
  string, an escape): `hi` copies of X's table, copy k's accepting transitions leading to copy
  k+1's start, copy starts from `lo` on accepting. One vectorized tile, O(hi * |X|).
* `A B ...` when, at every accepting state of a part, the bytes that continue the part and the bytes
  that start the next part are disjoint: the parts' tables stacked, each part's accepting states
  given the next part's start transitions.
* `A | B | ...` when the options' first bytes are disjoint: the tables stacked under a new start
  state holding the union of their first transitions.
* a set of literal strings (a long `enum`): a byte trie, built from the sorted strings.

Each function returns None when its precondition fails; the caller falls back to the subset
construction (bounded by the time budget). Results are trimmed (every state can still reach an
accepting state) but may keep a few unreachable states (a part's old start state); that costs a
row, never correctness. Tables are checked against the state and memory budgets before they are
allocated.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable, Sequence

import numpy as np

from .automaton import (
    DEFAULT_MAX_STATES,
    DFA,
    MINIMIZE_AUTO_LIMIT,
    NFA,
    build_nfa,
    compact_classes,
    determinize,
    minimize,
    union,
    utf8_leaf,
)
from .limits import check_memory, check_positions, check_states, check_time, compile_memo
from .regex_ast import Alt, Automaton, Chars, Concat, Epsilon, Node, Repeat, concat, size


def _table_bytes(states: int, classes: int) -> int:
    return 4 * states * max(classes, 1)


_SMALL_PAGES_MIN_BYTES = 32 << 20
_MADV_NOHUGEPAGE = 15


@functools.cache
def _madvise() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def new_table(states: int, classes: int) -> np.ndarray:
    """An uninitialized int32 [states, classes] table. A large one asks the kernel for small pages:
    numpy advises huge pages for every large array, and on a VM a fresh 2 MiB page costs far more
    than 512 small ones (a 140 MB table written once: 0.36 s against 0.05 s), while the walks over
    these tables gain little from them."""
    table = np.empty((states, classes), dtype=np.int32)
    if table.nbytes >= _SMALL_PAGES_MIN_BYTES and sys.platform.startswith("linux"):
        madvise = _madvise()
        if madvise is not None:
            start = table.ctypes.data
            aligned = (start + 4095) & ~4095  # the whole pages inside the buffer (untouched yet)
            madvise(aligned, (start + table.nbytes - aligned) & ~4095, _MADV_NOHUGEPAGE)
    return table


def joint_classes(dfas: Sequence[DFA]) -> tuple[np.ndarray, list[np.ndarray]]:
    """A byte partition refining every DFA's classes, and per DFA the old class of each new one.

    The largest DFA's column is sorted first, so when the others do not split its classes its map
    is the identity and its table needs no widened copy (see `place`)."""
    big = max(range(len(dfas)), key=lambda i: dfas[i].num_states)
    order = [big] + [i for i in range(len(dfas)) if i != big]
    pairs = np.stack([dfas[i].symbol_class for i in order], axis=1)
    uniq, symbol_class = np.unique(pairs, axis=0, return_inverse=True)
    maps: list[np.ndarray] = [np.empty(0)] * len(dfas)
    for col, i in enumerate(order):
        maps[i] = uniq[:, col].astype(np.intp)
    return symbol_class.reshape(-1).astype(np.int32), maps


def _is_identity(cols: np.ndarray, width: int) -> bool:
    return len(cols) == width and bool((cols == np.arange(len(cols))).all())


# Cells per chunk of `place` (256 KiB of int32: the copy and its offset pass stay in cache)
_PLACE_CHUNK_CELLS = 1 << 16


def place(block: np.ndarray, table: np.ndarray, cols: np.ndarray, offset: int) -> None:
    """`block[:] = table[:, cols] + offset`, -1 (dead) staying -1, a chunk of rows at a time: each
    chunk is copied, then shifted while it is still in cache, so the table is read and written once.

    The shift is `(t + offset) | (t >> bits - 1)`: the sign shift is 0 for a state and all ones for
    -1, which the OR keeps at -1 (tables hold no other negative value). A masked add
    (`np.add(..., where=t >= 0)`) over the whole block was 4x slower on a 300k-state table, and the
    table is copied at each level of a large tree (concatenation, object members, alternation)."""
    if len(block) == 0:
        return
    identity = _is_identity(cols, table.shape[1])
    # mode="clip": the columns are in range (checked); "raise" buffers `out` (3x slower)
    by_take = (
        not identity and table.dtype == block.dtype and block.flags.c_contiguous
        and 0 < len(cols) and int(cols.max()) < table.shape[1]
    )
    step = max(1, _PLACE_CHUNK_CELLS // max(1, block.shape[1]))
    sign = np.empty((min(step, len(block)), block.shape[1]), dtype=block.dtype) if offset else None
    sign_bits = block.dtype.itemsize * 8 - 1
    for lo in range(0, len(block), step):
        part, src = block[lo : lo + step], table[lo : lo + step]
        if identity:
            part[...] = src
        elif by_take:
            np.take(src, cols, axis=1, out=part, mode="clip")
        else:
            part[...] = src[:, cols]
        if offset:
            neg = sign[: len(part)]
            np.right_shift(part, sign_bits, out=neg)
            np.add(part, offset, out=part, casting="unsafe")
            np.bitwise_or(part, neg, out=part)


def _widen_in_place(table: np.ndarray, rows: int, old_width: int, cols: np.ndarray) -> None:
    """Rows `0..rows` of `table`'s buffer hold a [rows, old_width] table (as `resize` left them):
    rewrite them as `table[:rows] = old[:, cols]` (`cols`: for each of the new columns, its old
    one; never fewer columns than before). Chunks go from the last row back: a chunk's new place
    begins at or after its old one, so it only overwrites old rows already rewritten."""
    flat = table.reshape(-1)
    width = table.shape[1]
    step = max(1, _PLACE_CHUNK_CELLS // max(1, width))
    for hi in range(rows, 0, -step):
        lo = max(0, hi - step)
        old = flat[lo * old_width : hi * old_width].reshape(hi - lo, old_width).copy()
        np.take(old, cols, axis=1, out=flat[lo * width : hi * width].reshape(hi - lo, width), mode="clip")


def is_prefix_free(dfa: DFA) -> bool:
    """No accepted string is a proper prefix of another: accepting states have no transitions
    (and so the empty string is not accepted unless it is all there is)."""
    if dfa.num_states == 0:
        return False
    acc = np.flatnonzero(dfa.accepting)
    return not bool((dfa.transitions[acc] >= 0).any()) and not bool(dfa.accepting[dfa.initial])


def _fresh_initial(dfa: DFA) -> DFA:
    """The same language with a start state that no transition enters (copied from the old one)."""
    if not bool((dfa.transitions == dfa.initial).any()):
        return dfa
    table = np.vstack([dfa.transitions, dfa.transitions[dfa.initial : dfa.initial + 1]])
    accepting = np.append(dfa.accepting, dfa.accepting[dfa.initial])
    return DFA(dfa.num_states, accepting, table, dfa.symbol_class, dfa.periods)


def _shifted(parts: Sequence[DFA], offsets: np.ndarray) -> tuple[tuple[int, int, int], ...]:
    """The parts' period hints, moved to where their states land in a stacked table."""
    return tuple((a + int(off), w, k) for p, off in zip(parts, offsets) for a, w, k in p.periods)


def _tile(body: np.ndarray, rel: np.ndarray, step: int) -> None:
    """`body[j] = rel + j * step` for every copy j, -1 (dead) staying -1: a cache-sized block of
    copies at a time, shifted as `place` does ((t + shift) | (t >> 31)); a broadcast add then a
    masked copy of -1 over all copies was 7x slower (the 300k-state string bodies of cfn Tags)."""
    rel32 = rel.astype(np.int32)
    dead = np.right_shift(rel32, 31)[None]  # -1 where dead, else 0
    per_block = max(1, _PLACE_CHUNK_CELLS // max(1, rel32.size))
    for j0 in range(0, len(body), per_block):
        part = body[j0 : j0 + per_block]
        shifts = (np.arange(j0, j0 + len(part), dtype=np.int64) * step).astype(np.int32)
        np.add(rel32[None], shifts[:, None, None], out=part)
        np.bitwise_or(part, dead, out=part)


def optional_dfa(x: DFA) -> DFA:
    """`X?`: X with a start state that also accepts."""
    x = _fresh_initial(x)
    accepting = x.accepting.copy()
    accepting[x.initial] = True
    return DFA(x.initial, accepting, x.transitions, x.symbol_class, x.periods)


def repeat_dfa(x: DFA, lo: int, hi: int | None, max_states: int | None = None) -> DFA | None:
    """`X{lo,hi}` by tiling copies of X (see the module docstring; `_repeat_joined` when X is not
    prefix-free but its copies still join deterministically); None when neither applies."""
    if not is_prefix_free(x):
        return _repeat_joined(x, lo, hi, max_states)
    x = _fresh_initial(x)
    acc = x.accepting
    inner = np.flatnonzero(~acc)  # X's states without its (edge-less) accepting ones
    local = np.full(x.num_states, -1, dtype=np.int64)
    # the start state becomes local state 0 of each copy
    order = np.concatenate([[x.initial], inner[inner != x.initial]])
    local[order] = np.arange(len(order))
    width = len(order)
    # relative target per (local state, class): a local id, `width` (= the next copy's start), or -1
    t = x.transitions[order]
    rel = np.where(t < 0, -1, np.where(acc[np.maximum(t, 0)], width, local[np.maximum(t, 0)]))
    copies = hi if hi is not None else lo + 1
    total = copies * width + (1 if hi is not None else 0)
    check_states(total, max_states)
    check_memory(_table_bytes(total, x.num_classes), "the repetition's transition table")
    check_time()
    table = new_table(total, x.num_classes)
    body = table[: copies * width].reshape(copies, width, x.num_classes)
    _tile(body, rel, width)
    accepting = np.zeros(total, dtype=bool)
    if hi is None:
        last = lo * width  # the looping copy: its accepting transitions return to its own start
        loop = body[lo]
        loop[rel == width] = last
        accepting[last] = True
    else:
        table[copies * width :] = -1
        accepting[np.arange(lo, hi + 1) * width] = True
    return DFA(0, accepting, table, np.asarray(x.symbol_class, dtype=np.int32), ((0, width, copies),))


_JOINED_MAX_BYTES = 32 << 20  # larger joined repetitions are left to the subset construction


def _repeat_joined(x: DFA, lo: int, hi: int | None, max_states: int | None = None) -> DFA | None:
    """`X{lo,hi}` for an X whose accepting states may continue (an integer, `,` then a number),
    when the bytes that continue X there and the bytes that start X are disjoint: then where one
    copy ends is never in doubt, and copy j's accepting states also take X's first transitions into
    copy j+1. Copies keep all of X's states (accepting ones included); the last copy of an unbounded
    repetition loops into itself. None when X accepts the empty string or the joint overlaps."""
    if x.num_states == 0 or bool(x.accepting[x.initial]) or hi == 0:
        return None
    x = _fresh_initial(x)
    n, k = x.num_states, x.num_classes
    t = x.transitions
    start_row = t[x.initial]
    live_cols = np.flatnonzero(start_row >= 0)
    acc = np.flatnonzero(x.accepting)
    if (t[acc][:, live_cols] >= 0).any():
        return None
    copies = hi if hi is not None else max(lo, 1)
    total = copies * n
    if _table_bytes(total, k) > _JOINED_MAX_BYTES:
        return None  # (600 copies of any JSON value: 166 MB whose token index is over budget anyway)
    check_states(total, max_states)
    check_memory(_table_bytes(total, k), "the repetition's transition table")
    check_time()
    table = new_table(total, k)
    body = table.reshape(copies, n, k)
    _tile(body, t, n)
    joined = np.arange(copies if hi is None else copies - 1)  # copies whose ends lead on
    nxt = joined + 1
    if hi is None:
        nxt[-1] = copies - 1  # the last copy starts itself again
    if len(joined) and len(live_cols) and len(acc):
        targets = start_row[live_cols].astype(np.int64)[None, :] + (nxt * n)[:, None]
        body[np.ix_(joined, acc, live_cols)] = targets[:, None, :]
    accepting = np.zeros(total, dtype=bool)
    done = np.flatnonzero(np.arange(copies) + 1 >= lo)  # copies that complete at least lo
    accepting.reshape(copies, n)[np.ix_(done, acc)] = True
    if lo == 0:
        accepting[x.initial] = True
    return DFA(
        int(x.initial), accepting, table, np.asarray(x.symbol_class, dtype=np.int32), ((0, n, copies),)
    )


def concat_dfas(
    parts: Sequence[DFA], max_states: int | None = None, owned: Sequence[bool] | None = None
) -> DFA | None:
    """`A B C ...` written down directly when deterministic (see the module docstring), else None.

    `owned[i]`: part i's table was made for this call and nothing else refers to it; the largest
    such part's table then becomes the result's (grown in place, its states first), instead of
    being copied: a 100 MB repetition is not held twice.
    """
    if owned is None:
        owned = [False] * len(parts)
    keep_parts = [i for i, p in enumerate(parts) if not _is_epsilon(p)]
    owned = [owned[i] for i in keep_parts]
    parts = [parts[i] for i in keep_parts]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    if any(p.num_states == 0 for p in parts):
        return None
    symbol_class, maps = joint_classes(parts)
    num_classes = len(maps[0])
    # entry[i]: the transitions on entering parts i.. (part i's start, and later parts' entries
    # while part i may be empty); entry_accepts[i]: whether the suffix from part i may be empty
    n = len(parts)
    # where each part's states go: in order, or the largest owned part first (its table reused)
    reuse = max((i for i in range(n) if owned[i]), key=lambda i: parts[i].num_states, default=None)
    if reuse is not None and (
        parts[reuse].num_states < 4096
        or not parts[reuse].transitions.flags.owndata
        or parts[reuse].transitions.dtype != np.int32
    ):
        reuse = None
    sizes = [p.num_states for p in parts]  # (a reused table grows: read the sizes first)
    reused_classes = parts[reuse].num_classes if reuse is not None else 0
    placement = list(range(n)) if reuse is None else [reuse] + [i for i in range(n) if i != reuse]
    offsets = np.zeros(n + 1, dtype=np.int64)
    start = 0
    for i in placement:
        offsets[i] = start
        start += sizes[i]
    offsets[n] = start
    entry: list[np.ndarray] = [np.empty(0)] * (n + 1)
    entry_accepts = [True] * (n + 1)
    entry[n] = np.full(num_classes, -1, dtype=np.int64)
    for i in range(n - 1, -1, -1):
        p = parts[i]
        start_row = p.transitions[p.initial][maps[i]]
        row = np.where(start_row >= 0, start_row.astype(np.int64) + offsets[i], -1)
        if p.accepting[p.initial]:
            if ((row >= 0) & (entry[i + 1] >= 0)).any():
                return None
            row = np.where(row >= 0, row, entry[i + 1])
            entry_accepts[i] = entry_accepts[i + 1]
        else:
            entry_accepts[i] = False
        entry[i] = row
    for i in range(n - 1):
        acc = np.flatnonzero(parts[i].accepting)
        nxt_live = entry[i + 1] >= 0
        if (parts[i].transitions[acc][:, maps[i][nxt_live]] >= 0).any():
            return None
    total = int(offsets[-1])
    check_states(total, max_states)
    check_memory(_table_bytes(total, num_classes), "the concatenation's transition table")
    check_time()
    if reuse is None:
        table = new_table(total, num_classes)
    else:
        table = parts[reuse].transitions
        # realloc: a large block is remapped, not copied; the part's DFA is not used again
        table.resize((total, num_classes), refcheck=False)
        if not _is_identity(maps[reuse], reused_classes):
            _widen_in_place(table, sizes[reuse], reused_classes, maps[reuse])
    accepting = np.zeros(total, dtype=bool)
    for i, p in enumerate(parts):
        block = table[offsets[i] : offsets[i] + sizes[i]]
        if i != reuse:
            place(block, p.transitions, maps[i], int(offsets[i]))
        acc = np.flatnonzero(p.accepting)
        live = np.flatnonzero(entry[i + 1] >= 0)
        if len(live):
            block[np.ix_(acc, live)] = entry[i + 1][live]
        accepting[offsets[i] + acc] = entry_accepts[i + 1]
        check_time()
    return DFA(int(offsets[0] + parts[0].initial), accepting, table, symbol_class, _shifted(parts, offsets))


def union_dfas(options: Sequence[DFA], max_states: int | None = None) -> DFA | None:
    """`A | B | ...` under a new start state, when the options' first bytes are disjoint; else None."""
    options = [o for o in options if o.num_states]
    if len(options) < 2:
        return options[0] if options else None
    symbol_class, maps = joint_classes(options)
    num_classes = len(maps[0])
    offsets = np.cumsum([1] + [o.num_states for o in options])
    start = np.full(num_classes, -1, dtype=np.int64)
    for i, o in enumerate(options):
        row = o.transitions[o.initial][maps[i]]
        live = row >= 0
        if (live & (start >= 0)).any():
            return None
        start[live] = row[live].astype(np.int64) + offsets[i]
    total = int(offsets[-1])
    check_states(total, max_states)
    check_memory(_table_bytes(total, num_classes), "the alternation's transition table")
    table = new_table(total, num_classes)
    accepting = np.zeros(total, dtype=bool)
    table[0] = start
    accepting[0] = any(bool(o.accepting[o.initial]) for o in options)
    for i, o in enumerate(options):
        place(table[offsets[i] : offsets[i + 1]], o.transitions, maps[i], int(offsets[i]))
        accepting[offsets[i] : offsets[i + 1]] = o.accepting
    return DFA(0, accepting, table, symbol_class, _shifted(options, offsets))


def union_product(options: Sequence[DFA], max_states: int | None = None) -> DFA:
    """`A | B | ...` by product constructions, for options whose first bytes overlap (alternative
    key orders of one object: the product runs the options side by side while they agree, and is
    about as large as their sum once they part)."""
    out = options[0]
    for o in options[1:]:
        out = union(out, o, max_states)
    return out


def literal_set_dfa(strings: Sequence[bytes], max_states: int | None = None) -> DFA:
    """The trie of a set of byte strings (a long enum): one state per distinct prefix.

    Built from the sorted strings: string i shares its first lcp(i-1, i) bytes with the one before,
    so only the nodes past that are new; each node is created once.
    """
    uniq = sorted(set(strings))
    parents: list[int] = []
    labels: list[int] = []
    ends: list[int] = []
    path = [0]  # node ids along the previous string (path[d] = node after d bytes)
    prev = b""
    count = 1
    for k, s in enumerate(uniq):
        if k & 4095 == 0:
            check_time()
            check_states(count, max_states)
        limit = min(len(prev), len(s))
        lcp = 0
        while lcp < limit and prev[lcp] == s[lcp]:
            lcp += 1
        del path[lcp + 1 :]
        for b in s[lcp:]:
            parents.append(path[-1])
            labels.append(b)
            path.append(count)
            count += 1
        ends.append(path[len(s)])
        prev = s
    check_states(count, max_states)
    used = np.unique(np.array(labels, dtype=np.int64)) if labels else np.zeros(0, np.int64)
    symbol_class = np.zeros(256, dtype=np.int32)  # class 0: bytes no string uses
    symbol_class[used] = np.arange(1, len(used) + 1)
    num_classes = len(used) + 1
    check_memory(_table_bytes(count, num_classes), "the literal set's transition table")
    table = np.full((count, num_classes), -1, dtype=np.int32)
    if labels:
        table[np.array(parents), symbol_class[np.array(labels)]] = np.arange(1, count, dtype=np.int32)
    accepting = np.zeros(count, dtype=bool)
    accepting[np.array(ends, dtype=np.int64)] = True
    return DFA(0, accepting, table, symbol_class)


def _is_epsilon(d: DFA) -> bool:
    return d.num_states == 1 and bool(d.accepting[d.initial]) and not bool((d.transitions >= 0).any())


# ---------------------------------------------------------------------------------------------
# Compiling a syntax tree: small subtrees by subset construction, large ones by the operations above

SMALL_POSITIONS = 4000  # subtrees up to this many positions go through the subset construction
NFA_BYTES_PER_POSITION = 400  # rough Python memory of the NFA per position (lists, tuples, ints)


def large_byte_dfa(node: Node, max_states: int | None = None) -> DFA:
    """A byte DFA for a syntax tree too large for one subset construction (see the module doc)."""
    return _build(node, max_states)[0]


def _build(node: Node, max_states: int | None) -> tuple[DFA, bool]:
    """The DFA of `node`, and whether its table is this call's own (not shared with a node)."""
    check_time()
    if size(node) <= SMALL_POSITIONS and not _splices_large(node):
        dfa, shared = _small_shared(node, max_states, None)
        return dfa, not shared
    if isinstance(node, Automaton):
        return node.dfa, False
    if isinstance(node, Repeat):
        x, x_owned = _build(node.node, max_states)
        if (node.min, node.max) == (0, 1):
            opt = optional_dfa(x)  # x's table, or a copy with a fresh start row: either is ours if x's was
            return opt, x_owned or opt.transitions is not x.transitions
        tiled = repeat_dfa(x, node.min, node.max, max_states)
        if tiled is not None:
            return tiled, True
    elif isinstance(node, Concat):
        built = [_build(p, max_states) for p in _runs(node.parts)]
        joined = concat_dfas([d for d, _ in built], max_states, [o for _, o in built])
        if joined is not None:
            return joined, len(built) > 1 or built[0][1]
    elif isinstance(node, Alt):
        strings = _literal_strings(node.options)
        if strings is not None:
            return literal_set_dfa(strings, max_states), True
        return _shared_alternation(node, max_states)
    if size(node) <= SMALL_POSITIONS:  # (a direct join failed: shared like other small automata)
        dfa, shared = _small_shared(node, max_states, None)
        return dfa, not shared
    return small_byte_dfa(node, max_states), True


def _shared_alternation(node: Alt, max_states: int | None) -> tuple[DFA, bool]:
    """A large alternation's DFA, shared within one compile between equal alternations (as
    `_small_shared` shares small automata): an object's alternative key orders written into two
    places were two identical product constructions (nbformat's cell schemas)."""
    memo = compile_memo()
    key = ("alternation", max_states, _structure_key(node))
    hit = memo.get(key) if memo is not None else None
    if hit is not None:
        return hit[0], False
    built = [_build(o, max_states)[0] for o in node.options]
    joined = union_dfas(built, max_states)
    if joined is None:
        joined = union_product(built, max_states)
    kept = memo is not None and _memo_keep(memo, key, joined, node)
    return joined, not kept


def _runs(parts: tuple[Node, ...]) -> list[Node]:
    """Consecutive small parts grouped into one node each (one subset construction per run); a
    part that is large, or splices a large automaton, stands alone (built the direct way)."""
    out: list[Node] = []
    run: list[Node] = []
    run_size = 0
    for p in parts:
        n = size(p)
        alone = n > SMALL_POSITIONS or _splices_large(p)
        if not alone and run_size + n <= SMALL_POSITIONS:
            run.append(p)
            run_size += n
            continue
        if run:
            out.append(concat(*run))
        run, run_size = ([], 0) if alone else ([p], n)
        if alone:
            out.append(p)
    if run:
        out.append(concat(*run))
    return out


def _literal_strings(options: tuple[Node, ...]) -> list[bytes] | None:
    """The UTF-8 strings of an alternation of plain literals, or None if an option is not one."""
    out = []
    for o in options:
        if isinstance(o, Chars):
            parts: tuple[Node, ...] = (o,)
        elif isinstance(o, Concat):
            parts = o.parts
        else:
            return None
        text = []
        for p in parts:
            ch = p.charset.single_char() if isinstance(p, Chars) else None
            if ch is None:
                return None
            text.append(ch)
        out.append("".join(text).encode("utf-8", "surrogatepass"))
    return out


def small_byte_dfa(node: Node, max_states: int | None = None, minimized: bool | None = None) -> DFA:
    """The subset construction over a Thompson NFA (memory estimated first: it is Python objects)."""
    check_memory(size(node) * NFA_BYTES_PER_POSITION, "the automaton's NFA")
    nfa = NFA()
    start, final = nfa.state(), nfa.state()
    build_nfa(node, nfa, start, final, utf8_leaf)
    dfa = determinize(nfa, start, final, 256, max_states)
    if minimized is None:
        minimized = dfa.num_states <= MINIMIZE_AUTO_LIMIT
    return minimize(dfa) if minimized else compact_classes(dfa)


def byte_dfa(node: Node, max_states: int | None = DEFAULT_MAX_STATES, minimized: bool | None = None) -> DFA:
    """Compile a syntax tree to a byte-level (UTF-8) DFA.

    `minimized` None: minimize when the subset construction gave at most `MINIMIZE_AUTO_LIMIT`
    states. Our Hopcroft is pure Python; the automata sgc builds from syntax trees are close to
    minimal already, so large ones skip it (a few redundant states cost less than minimizing).
    Trees with large counted repetitions, long literal sets or large spliced automata are written
    down directly (`dfa_ops`), never unrolled into an NFA. `max_states` None: the
    `constraint_states` budget.
    """
    positions = size(node)
    check_positions(positions)
    if positions > SMALL_POSITIONS or (minimized is not True and _splices_large(node)):
        return large_byte_dfa(node, max_states)
    return _small_shared(node, max_states, minimized)[0]


SPLICE_DIRECT_STATES = 256  # a spliced automaton this large is joined as a table, not re-determinized


def _splices_large(node: Node) -> bool:
    """Whether `node` holds a spliced automaton of at least `SPLICE_DIRECT_STATES` states. Such a
    tree goes the direct way (`_build`: its automata joined as tables, the small parts around them
    through the subset construction) even when it is small: the subset construction would unroll
    each spliced automaton into NFA states, in Python, and discover it again (a 2,000-state string
    body inside an object member: 10-40 ms each, a third of codecov's compile)."""
    if isinstance(node, Automaton):
        return node.dfa.num_states >= SPLICE_DIRECT_STATES
    if isinstance(node, Concat):
        return any(_splices_large(p) for p in node.parts)
    if isinstance(node, Alt):
        return any(_splices_large(o) for o in node.options)
    if isinstance(node, Repeat):
        return _splices_large(node.node)
    return False


_MEMO_MAX_ENTRIES = 4096
_MEMO_MAX_BYTES = 64 << 20  # tables the memo keeps alive past their use, per compile


def _small_shared(node: Node, max_states: int | None, minimized: bool | None) -> tuple[DFA, bool]:
    """`small_byte_dfa`, shared within one compile between equal subtrees (a schema writes one
    `$ref`'d definition, one member block, into many places: `schemastore-codecov` builds 135 small
    automata of 75 distinct trees); True when the DFA is in the memo (others may hold it: callers
    must not grow its table in place, see `concat_dfas`'s `owned`)."""
    memo = compile_memo()
    if memo is None:
        return small_byte_dfa(node, max_states, minimized), False
    key = ("small_byte_dfa", max_states, minimized, _structure_key(node))
    hit = memo.get(key)
    if hit is not None:
        return hit[0], True
    dfa = small_byte_dfa(node, max_states, minimized)
    return dfa, _memo_keep(memo, key, dfa, node)


def _memo_keep(memo: dict, key: object, dfa: DFA, node: Node) -> bool:
    """Keep `dfa` (built from `node`) in the compile memo under `key` while the memo's entry and
    byte bounds allow; True when kept (then others may get it: nobody may grow its table)."""
    held = memo.get("small_byte_dfa bytes", 0) + dfa.transitions.nbytes
    if len(memo) >= _MEMO_MAX_ENTRIES or held > _MEMO_MAX_BYTES:
        return False
    memo["small_byte_dfa bytes"] = held
    memo[key] = (dfa, node)  # the node keeps its spliced automata alive: their ids stay theirs
    return True


def _structure_key(node: Node) -> object:
    """Equal keys for equal syntax trees (a spliced automaton by identity), which compile to equal
    automata (the construction is deterministic)."""
    if isinstance(node, Chars):
        return ("c", node.charset.ranges)
    if isinstance(node, Concat):
        return ("+", *(_structure_key(p) for p in node.parts))
    if isinstance(node, Alt):
        return ("|", *(_structure_key(o) for o in node.options))
    if isinstance(node, Repeat):
        return ("*", node.min, node.max, _structure_key(node.node))
    if isinstance(node, Automaton):
        return ("a", id(node.dfa))
    if isinstance(node, Epsilon):
        return ("e",)
    return ("0", type(node).__name__)
