"""Our own regex -> NFA -> DFA: Thompson construction over symbol sets, subset construction, Hopcroft.

Why not interegular's FSM: it builds the product automaton of every operation eagerly and its
minimization is quadratic-ish; on the regex of a 6-property JSON schema it needs 1 s to build and 6.7 s
to minimize. Here the syntax tree (`regex_ast`) becomes an NFA in one linear pass and one subset
construction determinizes it, which is fast on the shapes JSON schemas produce: long deterministic
chains (keys, punctuation) with small nondeterministic joints (optional properties, alternatives).

Symbols are small integers: bytes (0..255) for the byte-level automata that token indexes walk, or
character classes for the character-level `CharDFA`. An edge carries a *set* of symbols as an int
bitmask, so `[^"\\]` is one edge, not a million. After determinization the symbols are grouped into
classes (symbols that no edge tells apart) and the DFA is a dense `int32[num_states, num_classes]`
table with -1 for the dead state.

Thompson's rule that keeps state sharing safe: a fragment built from `start` to `end` adds only
out-edges to `start` and only in-edges to `end`. So concatenation shares the joint state, alternation
shares both ends, and loops live on private states.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import native
from .charset import CharSet, utf8_sequences
from .dfa import DFA
from .errors import ConstraintError
from .limits import check_states, check_time
from .limits import max_states as limit_of_states
from .regex_ast import Alt, Automaton, Chars, Concat, Empty, Epsilon, Node, Repeat

# None: the `constraint_states` budget (compiler.budgets). Kept as a name for callers that pass it.
DEFAULT_MAX_STATES: int | None = None


class NFA:
    """An epsilon-NFA with symbol-set edges: `edges[state]` lists (mask, target), `eps[state]` targets."""

    __slots__ = ("edges", "eps")

    def __init__(self) -> None:
        self.edges: list[list[tuple[int, int]]] = []
        self.eps: list[list[int]] = []

    def state(self) -> int:
        self.edges.append([])
        self.eps.append([])
        return len(self.edges) - 1

    @property
    def num_states(self) -> int:
        return len(self.edges)


LeafBuilder = Callable[[NFA, CharSet, int, int], None]


def _range_mask(lo: int, hi: int) -> int:
    return (1 << (hi + 1)) - (1 << lo)


def utf8_leaf(nfa: NFA, cs: CharSet, start: int, end: int) -> None:
    """Edges from `start` to `end` that read exactly the UTF-8 encodings of `cs`'s characters.

    Sequences that share a tail (e.g. "two more continuation bytes") share its states.
    """
    tails: dict[tuple[tuple[int, int], ...], int] = {}

    def tail_state(rest: tuple[tuple[int, int], ...]) -> int:
        if not rest:
            return end
        q = tails.get(rest)
        if q is None:
            q = nfa.state()
            nfa.edges[q].append((_range_mask(*rest[0]), tail_state(rest[1:])))
            tails[rest] = q
        return q

    by_target: dict[int, int] = {}
    for seq in utf8_sequences(cs):
        t = tail_state(seq[1:])
        by_target[t] = by_target.get(t, 0) | _range_mask(*seq[0])
    edges = nfa.edges[start]
    for t, m in by_target.items():
        edges.append((m, t))


def build_nfa(node: Node, nfa: NFA, start: int, end: int, leaf: LeafBuilder) -> None:
    """Add a fragment for `node` between `start` and `end` (see the module docstring's rule)."""
    if isinstance(node, Empty):
        return
    if isinstance(node, Epsilon):
        nfa.eps[start].append(end)
    elif isinstance(node, Chars):
        leaf(nfa, node.charset, start, end)
    elif isinstance(node, Concat):
        cur = start
        last = len(node.parts) - 1
        for i, part in enumerate(node.parts):
            nxt = end if i == last else nfa.state()
            build_nfa(part, nfa, cur, nxt, leaf)
            cur = nxt
    elif isinstance(node, Alt):
        for option in node.options:
            build_nfa(option, nfa, start, end, leaf)
    elif isinstance(node, Repeat):
        _build_repeat(node, nfa, start, end, leaf)
    elif isinstance(node, Automaton):
        embed_dfa(node.dfa, nfa, start, end)
    else:
        raise TypeError(node)


def _build_repeat(node: Repeat, nfa: NFA, start: int, end: int, leaf: LeafBuilder) -> None:
    lo, hi = node.min, node.max
    cur = start
    for _ in range(lo):
        nxt = end if (hi == lo and _ == lo - 1) else nfa.state()
        build_nfa(node.node, nfa, cur, nxt, leaf)
        cur = nxt
    if hi == lo:
        if lo == 0:
            nfa.eps[start].append(end)
        return
    if hi is None:
        loop = nfa.state()
        nfa.eps[cur].append(loop)
        back = nfa.state()
        build_nfa(node.node, nfa, loop, back, leaf)
        nfa.eps[back].append(loop)
        nfa.eps[loop].append(end)
        return
    # Optional copies as a chain with an exit after each: (x(x(x)?)?)? without quadratic edges.
    for k in range(lo, hi):
        nfa.eps[cur].append(end)
        nxt = end if k == hi - 1 else nfa.state()
        build_nfa(node.node, nfa, cur, nxt, leaf)
        cur = nxt


def embed_dfa(dfa: DFA, nfa: NFA, start: int, end: int) -> None:
    """Splice a byte-level DFA in between `start` and `end`."""
    if dfa.is_empty():
        return
    base = nfa.num_states
    for _ in range(dfa.num_states):
        nfa.state()
    check_time()  # a repetition may splice the same large automaton hundreds of times
    rows, accepting = _nfa_edges(dfa)
    edges = nfa.edges
    for s, row in enumerate(rows):
        if s & 4095 == 4095:
            check_time()
        edges[base + s] = [(m, base + t) for m, t in row]
    for s in accepting:
        nfa.eps[base + s].append(end)
    nfa.eps[start].append(base + dfa.initial)


_EDGES_CACHE_MAX_STATES = 50_000  # larger automata are not kept as Python edge lists


def _nfa_edges(dfa: DFA) -> tuple[list[list[tuple[int, int]]], list[int]]:
    """Per state, its edges as (byte mask, target), and the accepting states: what `embed_dfa`
    splices, cached on the DFA (a schema splices one leaf automaton into many places; grouping 70
    classes by target per state, in Python, was most of the cost)."""
    cached = dfa.__dict__.get("_nfa_edges")
    if cached is not None:
        return cached
    masks = dfa.class_masks()
    rows: list[list[tuple[int, int]]] = []
    for s, row in enumerate(dfa.transitions.tolist()):
        if s & 4095 == 4095:
            check_time()
        by_target: dict[int, int] = {}
        for c, t in enumerate(row):
            if t >= 0:
                by_target[t] = by_target.get(t, 0) | masks[c]
        rows.append([(m, t) for t, m in by_target.items()])
    out = (rows, np.flatnonzero(dfa.accepting).tolist())
    if dfa.num_states <= _EDGES_CACHE_MAX_STATES:
        object.__setattr__(dfa, "_nfa_edges", out)
    return out


# ---------------------------------------------------------------------------------------------
# Determinization


def determinize(
    nfa: NFA, start: int, final: int, num_symbols: int, max_states: int | None = DEFAULT_MAX_STATES
) -> DFA:
    """Subset construction; the result is trimmed (every state can reach acceptance)."""
    edges, eps = nfa.edges, nfa.eps
    kernel_memo: dict[int, frozenset[int]] = {}

    def kernel(s: int) -> frozenset[int]:
        # The epsilon closure of s, keeping only states that matter: those with edges, and `final`.
        k = kernel_memo.get(s)
        if k is not None:
            return k
        seen = {s}
        stack = [s]
        while stack:
            if len(seen) & 4095 == 0:
                check_time()
            q = stack.pop()
            for t in eps[q]:
                if t not in seen:
                    seen.add(t)
                    stack.append(t)
        k = frozenset(q for q in seen if edges[q] or q == final)
        kernel_memo[s] = k
        return k

    first = kernel(start)
    disjoint_memo: dict[int, bool] = {}
    state_limit = limit_of_states(max_states)
    ids: dict[frozenset[int], int] = {first: 0}
    keys = [first]
    rows: list[list[tuple[int, int]]] = []
    i = 0
    while i < len(keys):
        key = keys[i]
        i += 1
        check_time()  # every state: one state's subset can hold thousands of NFA states
        regions: list[tuple[int, set[int]]] | list[tuple[int, tuple[int]]]
        if len(key) == 1 and _disjoint_edges(next(iter(key)), edges, disjoint_memo):
            # one NFA state whose edges read disjoint sets (a spliced DFA's state, a chain): its
            # edges are the regions, in the order the general case below would give them
            regions = [(m, (t,)) for m, t in edges[next(iter(key))]]
        else:
            by_mask: dict[int, set[int]] = {}
            for q in key:
                for m, t in edges[q]:
                    ts = by_mask.get(m)
                    if ts is None:
                        by_mask[m] = {t}
                    else:
                        ts.add(t)
            regions = _disjoint_regions(by_mask)
        row = []
        for m, ts in regions:
            if len(ts) == 1:
                (t,) = ts
                tkey = kernel(t)
            else:
                tkey = frozenset().union(*(kernel(t) for t in ts))
            if not tkey:
                continue
            tid = ids.get(tkey)
            if tid is None:
                tid = len(keys)
                if tid >= state_limit:  # the budget is read once: this loop runs per new state
                    check_states(tid + 1, max_states)
                ids[tkey] = tid
                keys.append(tkey)
            row.append((m, tid))
        rows.append(row)
    accepting = np.fromiter((final in k for k in keys), dtype=bool, count=len(keys))
    return _tabulate(rows, accepting, 0, num_symbols)


def _disjoint_edges(q: int, edges: list[list[tuple[int, int]]], memo: dict[int, bool]) -> bool:
    """Whether NFA state q's edges read pairwise disjoint, nonempty symbol sets (memoized)."""
    ok = memo.get(q)
    if ok is None:
        seen = 0
        ok = True
        for m, _ in edges[q]:
            if not m or seen & m:
                ok = False
                break
            seen |= m
        memo[q] = ok
    return ok


def _disjoint_regions(by_mask: dict[int, set[int]]) -> list[tuple[int, set[int]]]:
    if len(by_mask) <= 1:
        return list(by_mask.items())
    seen = 0
    overlap = False
    for m in by_mask:
        if seen & m:
            overlap = True
            break
        seen |= m
    if not overlap:
        return list(by_mask.items())
    regions: list[tuple[int, set[int]]] = []
    for m, ts in by_mask.items():
        rest = m
        new_regions = []
        for rm, rts in regions:
            inter = rm & m
            if inter:
                new_regions.append((inter, rts | ts))
                if rm & ~m:
                    new_regions.append((rm & ~m, rts))
                rest &= ~rm
            else:
                new_regions.append((rm, rts))
        if rest:
            new_regions.append((rest, set(ts)))
        regions = new_regions
    return regions


def _tabulate(
    rows: list[list[tuple[int, int]]], accepting: np.ndarray, initial: int, num_symbols: int
) -> DFA:
    """Group symbols into classes, build the dense table, and trim states that cannot accept."""
    unique_masks = {m for row in rows for m, _ in row}
    classes = [(1 << num_symbols) - 1]
    for m in unique_masks:
        nxt = []
        for c in classes:
            a = c & m
            if a and a != c:
                nxt.append(a)
                nxt.append(c & ~m)
            else:
                nxt.append(c)
        classes = nxt
    symbol_class = np.zeros(num_symbols, dtype=np.int32)
    class_ids = {}
    for ci, c in enumerate(classes):
        class_ids[c] = ci
        x = c
        while x:
            low = x & -x
            symbol_class[low.bit_length() - 1] = ci
            x ^= low
    # one vectorized scatter: edge e writes target t_e into the classes of its mask (a row's masks
    # are disjoint, so no cell is written twice)
    mask_index = {m: i for i, m in enumerate(unique_masks)}
    members = [[ci for ci, c in enumerate(classes) if c & m] for m in unique_masks]
    member_count = np.array([len(x) for x in members], dtype=np.int64)
    member_flat = np.array([ci for x in members for ci in x], dtype=np.int64)
    member_start = np.cumsum(member_count) - member_count
    edge_state = np.array([s for s, row in enumerate(rows) for _ in row], dtype=np.int64)
    edge_mask = np.array([mask_index[m] for row in rows for m, _ in row], dtype=np.int64)
    edge_target = np.array([t for row in rows for _, t in row], dtype=np.int32)
    counts = member_count[edge_mask]
    base = np.repeat(member_start[edge_mask] - (np.cumsum(counts) - counts), counts)
    table = np.full((len(rows), len(classes)), -1, dtype=np.int32)
    table[np.repeat(edge_state, counts), member_flat[base + np.arange(int(counts.sum()))]] = np.repeat(
        edge_target, counts
    )
    return trim(DFA(initial, accepting, table, symbol_class))


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """`np.unique` of an int array by sorting (numpy's hash-based unique is slower on these)."""
    a = np.sort(a)
    if len(a) > 1:
        a = a[np.concatenate([[True], a[1:] != a[:-1]])]
    return a


def _reach(
    ptr: np.ndarray, nbr: np.ndarray, seeds: np.ndarray, allowed: np.ndarray | None = None
) -> np.ndarray:
    """bool[n]: the states reachable from `seeds` along the CSR graph (`nbr[ptr[q]:ptr[q+1]]`),
    through `allowed` states only; breadth-first, one numpy step per level."""
    n = len(ptr) - 1
    seen = np.zeros(n, dtype=bool)
    seen[seeds] = True
    frontier = np.asarray(seeds, dtype=np.int64)
    while len(frontier):
        if len(frontier) < 16:  # a chain: a Python walk until the frontier is wide again
            stack = frontier.tolist()
            steps = 0
            while stack and len(stack) < 64:
                steps += 1
                if steps & 4095 == 0:
                    check_time()
                q = stack.pop()
                for p in nbr[ptr[q] : ptr[q + 1]].tolist():
                    if not seen[p] and (allowed is None or allowed[p]):
                        seen[p] = True
                        stack.append(p)
            frontier = np.array(stack, dtype=np.int64)
            continue
        check_time()
        counts = ptr[frontier + 1] - ptr[frontier]
        total = int(counts.sum())
        if total == 0:
            break
        base = np.repeat(ptr[frontier] - (np.cumsum(counts) - counts), counts)
        nxt = nbr[base + np.arange(total)]
        nxt = nxt[~seen[nxt]]
        if allowed is not None:
            nxt = nxt[allowed[nxt]]
        frontier = _sorted_unique(nxt)
        seen[frontier] = True
    return seen


def trim(dfa: DFA) -> DFA:
    """Drop states that are unreachable or cannot reach an accepting state; renumber the rest."""
    n = dfa.num_states
    if n == 0:
        return dfa
    table = dfa.transitions
    check_time()
    keep = native.trim_keep(table, dfa.accepting, dfa.initial)
    if keep is None:
        keep = _trim_keep_numpy(dfa)
    if keep is None or not keep[dfa.initial]:  # the initial state cannot accept anything
        return DFA(0, np.zeros(0, bool), np.zeros((0, dfa.num_classes), np.int32), dfa.symbol_class)
    if keep.all():
        return dfa
    new_id = np.full(n + 1, -1, dtype=np.int32)  # index n maps dead (-1) to -1
    new_id[np.flatnonzero(keep)] = np.arange(int(keep.sum()), dtype=np.int32)
    new_table = new_id[table[keep]]
    return DFA(int(new_id[dfa.initial]), dfa.accepting[keep].copy(), new_table, dfa.symbol_class)


def _trim_keep_numpy(dfa: DFA) -> np.ndarray | None:
    """bool[n]: the states `trim` keeps, or None when the initial state cannot accept anything."""
    n = dfa.num_states
    table = dfa.transitions
    src, cls = np.nonzero(table >= 0)
    dst = table[src, cls].astype(np.int64)
    # one edge per (source, target) pair: a string body's dozens of classes lead to one state
    pair = _sorted_unique(src.astype(np.int64) * n + dst)
    src, dst = pair // n, pair % n
    check_time()
    # Backward reachability from accepting states.
    order = np.argsort(dst, kind="stable")
    back_ptr = np.searchsorted(dst[order], np.arange(n + 1))
    alive = _reach(back_ptr, src[order], np.flatnonzero(dfa.accepting))
    if not alive[dfa.initial]:
        return None
    # Forward reachability through alive states (src is sorted: np.nonzero is row-major).
    fwd_ptr = np.searchsorted(src, np.arange(n + 1))
    return _reach(fwd_ptr, dst, np.array([dfa.initial]), alive)


def compact_classes(dfa: DFA) -> DFA:
    """Merge classes whose table columns are identical (after trimming some may have become so).

    The columns are told apart by a 64-bit hash first (distinct hashes: distinct columns, the usual
    case, done); columns with equal hashes are compared in full, and the merged classes come in the
    order `np.unique(table.T, axis=0)` gives (lexicographic by signed entries), which costs 10-30x
    more than hashing (it sorts structured rows of `num_states` fields)."""
    if dfa.num_states == 0:
        return dfa
    table = dfa.transitions
    _, first, inverse = np.unique(_column_hashes(table), return_index=True, return_inverse=True)
    if len(first) == dfa.num_classes:
        return dfa
    inverse = inverse.reshape(-1)
    if not np.array_equal(table, table[:, first[inverse]]):  # a hash collision: sort exactly
        cols, inverse = np.unique(table.T, axis=0, return_inverse=True)
        if cols.shape[0] == dfa.num_classes:
            return dfa
        inverse = inverse.reshape(-1)
        new_table = np.ascontiguousarray(cols.T)
    else:
        # big-endian, offset to unsigned: byte order is signed numeric order, column by column
        sortable = (table[:, first].astype(np.int64) + 2**31).astype(">u4")
        order = sorted(range(len(first)), key=lambda i: sortable[:, i].tobytes())
        rank = np.empty(len(first), dtype=np.int64)
        rank[order] = np.arange(len(first))
        new_table = np.ascontiguousarray(table[:, first[order]])
        inverse = rank[inverse]
    return DFA(dfa.initial, dfa.accepting, new_table, inverse[dfa.symbol_class].astype(np.int32))


def _column_hashes(table: np.ndarray) -> np.ndarray:
    """uint64 per column of an int table: sum over rows of entry * a per-row odd multiplier
    (mod 2^64), in chunks of rows (bounded temporaries)."""
    n, c = table.shape
    keys = np.zeros(c, dtype=np.uint64)
    for lo in range(0, n, 1 << 16):
        rows = np.arange(lo, min(n, lo + (1 << 16)), dtype=np.uint64)
        mult = (rows + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        mult ^= mult >> np.uint64(29)
        mult *= np.uint64(0xBF58476D1CE4E5B9)
        mult |= np.uint64(1)
        keys += mult @ table[lo : lo + (1 << 16)].astype(np.uint64)
    return keys


# ---------------------------------------------------------------------------------------------
# Minimization


def minimize(dfa: DFA) -> DFA:
    """Hopcroft's partition refinement over the classes; the result is trimmed and compacted."""
    n = dfa.num_states
    if n <= 1:
        return compact_classes(dfa)
    num_classes = dfa.num_classes
    dead = n
    table = np.where(dfa.transitions >= 0, dfa.transitions, dead)
    table = np.vstack([table, np.full((1, num_classes), dead, dtype=table.dtype)])
    total = n + 1
    # inverse[c][q] = predecessors of q on class c
    inverse: list[list[list[int]]] = []
    for c in range(num_classes):
        col = table[:, c]
        order = np.argsort(col, kind="stable")
        bounds = np.searchsorted(col[order], np.arange(total + 1))
        srcs = order.tolist()
        b = bounds.tolist()
        inverse.append([srcs[b[q] : b[q + 1]] for q in range(total)])
    accepting = set(np.flatnonzero(dfa.accepting).tolist())
    rejecting = set(range(total)) - accepting
    blocks: list[set[int]] = [blk for blk in (accepting, rejecting) if blk]
    block_of = [0] * total
    for bi, blk in enumerate(blocks):
        for q in blk:
            block_of[q] = bi
    smaller = 0 if len(blocks) == 1 or len(blocks[0]) <= len(blocks[1]) else 1
    work = {(smaller, c) for c in range(num_classes)}
    while work:
        bi, c = work.pop()
        inv_c = inverse[c]
        pred: set[int] = set()
        for q in blocks[bi]:
            pred.update(inv_c[q])
        if not pred:
            continue
        touched: dict[int, list[int]] = {}
        for p in pred:
            touched.setdefault(block_of[p], []).append(p)
        for yi, inside in touched.items():
            y = blocks[yi]
            if len(inside) == len(y):
                continue
            new_block = set(inside)
            y -= new_block
            ni = len(blocks)
            blocks.append(new_block)
            for p in inside:
                block_of[p] = ni
            for cc in range(num_classes):
                if (yi, cc) in work:
                    work.add((ni, cc))
                else:
                    work.add((ni, cc) if len(new_block) <= len(y) else (yi, cc))
    # Build the quotient automaton; the block of the dead state disappears.
    dead_block = block_of[dead]
    block_ids = np.array(block_of, dtype=np.int64)
    reps = {}
    for q in range(n):
        reps.setdefault(block_of[q], q)
    order = sorted(reps)
    remap = np.full(len(blocks), -1, dtype=np.int32)
    k = 0
    for blk in order:
        if blk != dead_block:
            remap[blk] = k
            k += 1
    rows = [reps[blk] for blk in order if blk != dead_block]
    new_table = remap[block_ids[table[rows]]]
    new_acc = dfa.accepting[rows].copy()
    initial = int(remap[block_of[dfa.initial]])
    if initial < 0:
        return DFA(0, np.zeros(0, bool), np.zeros((0, num_classes), np.int32), dfa.symbol_class)
    return compact_classes(trim(DFA(initial, new_acc, new_table.astype(np.int32), dfa.symbol_class)))


# ---------------------------------------------------------------------------------------------
# Products and whole-node compilation


def intersect(a: DFA, b: DFA, max_states: int | None = DEFAULT_MAX_STATES) -> DFA:
    """The product automaton accepting strings both accept (same symbol space)."""
    if a.is_empty() or b.is_empty():
        return DFA(0, np.zeros(0, bool), np.zeros((0, 1), np.int32), np.zeros_like(a.symbol_class))
    return _product(a, b, max_states, "and")


def difference(a: DFA, b: DFA, max_states: int | None = DEFAULT_MAX_STATES) -> DFA:
    """The product automaton accepting strings `a` accepts and `b` does not (same symbol space)."""
    if a.is_empty() or b.is_empty():
        return a
    return _product(a, b, max_states, "minus")


def union(a: DFA, b: DFA, max_states: int | None = DEFAULT_MAX_STATES) -> DFA:
    """The product automaton accepting strings either accepts (same symbol space); `a` and `b`
    must be trimmed (every state reaches acceptance), as every automaton sgc builds is."""
    if a.is_empty():
        return b
    if b.is_empty():
        return a
    return _product(a, b, max_states, "or")


_DENSE_PAIR_IDS = 1 << 24  # pair spaces up to this size number their pairs in an array (64 MiB)


def _product(a: DFA, b: DFA, max_states: int | None, mode: str) -> DFA:
    """Pairs of states reachable together: `mode` "and" (both alive), "or" (either alive: union)
    or "minus" (`a` alive, `b` alive or dead: difference, accepting where `b` does not).

    Breadth-first, one numpy step per level (a pattern intersected with a `maxLength: 2048`
    counter has ~100k pairs: a Python loop per pair took seconds). States are numbered in
    discovery order, level by level; a pair is the key `(sa + 1) * (|B| + 1) + (sb + 1)` (0: dead)."""
    pairs, symbol_class = np.unique(
        np.stack([a.symbol_class, b.symbol_class], axis=1), axis=0, return_inverse=True
    )
    symbol_class = symbol_class.reshape(-1).astype(np.int32)
    ca, cb = pairs[:, 0], pairs[:, 1]
    dead_row = np.full((1, len(pairs)), -1, dtype=np.int64)
    ta = np.vstack([dead_row, a.transitions[:, ca]]) + 1  # shifted: 0 is the dead state
    tb = np.vstack([dead_row, b.transitions[:, cb]]) + 1
    acc_a = np.append(False, a.accepting)
    acc_b = np.append(False, b.accepting)
    width = np.int64(b.num_states + 1)
    start = (a.initial + 1) * int(width) + (b.initial + 1)
    built = native.product(ta, tb, start, mode, max_states)
    if built is not None:  # the same search in C (one pass per level, no numpy temporaries)
        rows_c, key = built
        return _product_dfa(rows_c, key, width, acc_a, acc_b, symbol_class, mode)
    space = int(width) * (a.num_states + 1)
    # pair -> state id: a dense array when the pair space is small enough, else a dict
    dense = np.full(space, -1, dtype=np.int32) if space <= _DENSE_PAIR_IDS else None
    ids: dict[int, int] = {}
    if dense is not None:
        dense[start] = 0
    else:
        ids[start] = 0
    frontier = np.array([start], dtype=np.int64)
    keys = [frontier]
    rows: list[np.ndarray] = []
    count = 1
    while len(frontier):
        check_time()
        na = ta[frontier // width]
        nb = tb[frontier % width]
        live = {"and": (na > 0) & (nb > 0), "or": (na > 0) | (nb > 0), "minus": na > 0}[mode]
        succ = (na * width + nb)[live]
        row = np.full(live.shape, -1, dtype=np.int32)
        if dense is not None:
            found = dense[succ]
            new = _sorted_unique(succ[found < 0])
            if len(new):
                check_states(count + len(new), max_states)
                dense[new] = np.arange(count, count + len(new))
            row[live] = dense[succ]
        else:
            uniq = _sorted_unique(succ)
            got = np.fromiter((ids.get(k, -1) for k in uniq.tolist()), dtype=np.int64, count=len(uniq))
            new = uniq[got < 0]
            got[got < 0] = np.arange(count, count + len(new))
            if len(new):
                check_states(count + len(new), max_states)
                ids.update(zip(new.tolist(), range(count, count + len(new))))
            row[live] = got[np.searchsorted(uniq, succ)]
        if len(new):
            count += len(new)
            keys.append(new)
        rows.append(row)
        frontier = new
    return _product_dfa(np.concatenate(rows).reshape(count, len(pairs)), np.concatenate(keys), width,
                        acc_a, acc_b, symbol_class, mode)


def _product_dfa(
    table: np.ndarray, key: np.ndarray, width: np.int64, acc_a: np.ndarray, acc_b: np.ndarray,
    symbol_class: np.ndarray, mode: str,
) -> DFA:
    """The product's DFA from its table and its states' pair keys."""
    ka, kb = acc_a[key // width], acc_b[key % width]
    accepting = {"and": ka & kb, "or": ka | kb, "minus": ka & ~kb}[mode]
    out = DFA(0, accepting, table, symbol_class)
    # A union of trimmed automata is trimmed: every pair was reached, and its live side still
    # reaches acceptance (the other may die on the way: that is a pair too).
    return out if mode == "or" else trim(out)


MINIMIZE_AUTO_LIMIT = 400


def ascii_dfa_to_regex(dfa: DFA, max_chars: int = 200_000) -> str:
    """A Python regex for a DFA over ASCII bytes, by state elimination (for printing small leaves
    such as a range intersected with a divisibility automaton). Raises `ConstraintError` when the
    text would exceed `max_chars` (state elimination can blow up)."""
    from .charset import CharSet

    if dfa.num_states == 0:
        return "[^\\x00-\\U0010ffff]"
    masks = dfa.class_masks()
    live = (dfa.transitions >= 0).any(axis=0)
    if any(masks[c] >> 128 for c in np.flatnonzero(live).tolist()):
        raise ConstraintError("only ASCII automata can be printed as a regex")
    n = dfa.num_states
    start, final = n, n + 1
    edges: dict[tuple[int, int], str] = {}

    def add(i: int, j: int, text: str) -> None:
        old = edges.get((i, j))
        edges[(i, j)] = text if old is None else (old if old == text else f"(?:{old}|{text})")

    for s, row in enumerate(dfa.transitions.tolist()):
        by_target: dict[int, int] = {}
        for c, t in enumerate(row):
            if t >= 0:
                by_target[t] = by_target.get(t, 0) | masks[c]
        for t, m in by_target.items():
            cs = CharSet.from_ranges((b, b) for b in range(128) if m >> b & 1)
            add(s, t, cs.to_regex())
        if dfa.accepting[s]:
            add(s, final, "")
    add(start, dfa.initial, "")
    remaining = set(range(n))
    while remaining:
        k = min(
            remaining,
            key=lambda q: (
                sum(1 for (a, b) in edges if b == q and a != q)
                * sum(1 for (a, b) in edges if a == q and b != q)
            ),
        )
        remaining.discard(k)
        loop = edges.pop((k, k), None)
        star = f"(?:{loop})*" if loop else ""
        ins = [(a, t) for (a, b), t in edges.items() if b == k]
        outs = [(b, t) for (a, b), t in edges.items() if a == k]
        for a, _ in ins:
            edges.pop((a, k))
        for b, _ in outs:
            edges.pop((k, b))
        for a, t_in in ins:
            for b, t_out in outs:
                add(a, b, f"(?:{t_in}{star}{t_out})" if (t_in or star or t_out) else "")
        if sum(len(t) for t in edges.values()) > max_chars:
            raise ConstraintError(f"this automaton has no regex text under {max_chars} characters")
    return edges.get((start, final), "[^\\x00-\\U0010ffff]")
