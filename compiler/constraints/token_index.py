"""Token index: for every state of a byte-level DFA, the vocabulary tokens that keep it alive.

A token is allowed in state `s` iff walking its bytes from `s` never hits the dead state (the DFA is
trimmed, so alive means "is the prefix of some accepted string"). Special tokens are never allowed
(EOS is a run-time decision: allowed exactly in accepting states).

How it is fast enough for a 49k vocabulary and ~800 states (the "person" schema) in Python:

* The vocabulary becomes a byte trie once (cached on the `Vocabulary`): nodes are numbered level by
  level, children of a node are contiguous, so a level is a handful of numpy arrays.
* States are split by an estimate of how much of the trie stays alive from them (the sizes of the
  subtrees under their allowed first bytes). "Wide" states (string bodies: almost every token
  continues them) are walked *densely*: states that allow the same first bytes form a group, and a
  group advances level by level as one `[states, nodes]` gather through the transition table,
  dropping columns that died for every state of the group. "Narrow" states (keys, punctuation,
  digits, the middle of a UTF-8 character) are walked *sparsely*: a frontier of (state, node)
  pairs expanded to the children that stay alive.
* Results are per-state allowed sets: bit-packed dense masks (deduplicated) for wide states, sorted
  token-id lists for narrow ones. Next states are not tabulated (that would be one int per allowed
  (state, token) pair, ~2.5M for the person schema); `TokenFSM.next_state` walks the token's few
  bytes through the DFA instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import native
from .automaton import DFA
from .limits import check_memory, check_time
from .vocabulary import Vocabulary

DENSE_MIN_TOKENS = 2048  # a state allowing at least this many tokens stores a bitmask
_DENSE_WALK_MIN_NODES = 3000  # estimated live trie nodes above which a state is walked densely


@dataclass(frozen=True, eq=False)
class TokenTrie:
    """The vocabulary's tokens as a byte trie, nodes numbered level by level.

    Level d holds nodes `level_start[d]:level_start[d+1]`; node n reads byte `node_byte[n]`, has
    children `child_lo[n]:child_hi[n]`, and ends tokens `end_tokens[end_ptr[n]:end_ptr[n+1]]`.
    """

    node_byte: np.ndarray  # uint8[N]
    child_lo: np.ndarray  # int64[N]
    child_hi: np.ndarray  # int64[N]
    level_start: np.ndarray  # int64[D+1]
    end_ptr: np.ndarray  # int64[N+1]
    end_tokens: np.ndarray  # int64[...]
    subtree_size: np.ndarray  # int64[N], nodes in the subtree including the node
    vocab_size: int

    @property
    def num_nodes(self) -> int:
        return int(self.node_byte.shape[0])

    @property
    def depth(self) -> int:
        return int(self.level_start.shape[0]) - 1

    @staticmethod
    def build(vocab: Vocabulary) -> TokenTrie:
        flat, offsets = vocab.arrays
        lengths = np.diff(offsets)
        ids = np.flatnonzero(lengths > 0)
        lens = lengths[ids]
        max_len = int(lens.max()) if len(lens) else 0
        n = len(ids)
        # Padded rows of byte+1 as big-endian uint16: sorting the raw bytes of a row sorts tokens
        # lexicographically (0 is padding, never a byte).
        mat = np.zeros((n, max(max_len, 1)), dtype=">u2")
        row = np.repeat(np.arange(n), lens)
        starts = np.cumsum(lens) - lens
        col = np.arange(len(row)) - np.repeat(starts, lens)
        mat[row, col] = flat[np.repeat(offsets[ids], lens) + col].astype(np.uint16) + 1
        keys = np.ascontiguousarray(mat).view(f"S{2 * mat.shape[1]}").ravel()
        order = np.argsort(keys, kind="stable")
        mat = mat[order].astype(np.int32)
        ids = ids[order]
        lens = lens[order]

        node_bytes = []
        level_start = [0]
        parent_of_level = []
        end_nodes_per_level = []
        end_ids_per_level = []
        new = np.zeros(n, dtype=bool)
        prev_node_of_row = None
        for d in range(max_len):
            rows = np.flatnonzero(lens > d)
            changed = np.ones(n, dtype=bool)
            changed[1:] = (mat[1:, d] != mat[:-1, d]) | (lens[:-1] <= d)
            new |= changed
            is_new = new[rows]
            local = np.cumsum(is_new) - 1  # node (local to the level) of each row in `rows`
            node_of_row = np.full(n, -1, dtype=np.int64)
            node_of_row[rows] = local
            first_rows = rows[is_new]
            node_bytes.append((mat[first_rows, d] - 1).astype(np.uint8))
            if d > 0:
                parent_of_level.append(prev_node_of_row[first_rows] + level_start[-2])
            ends = rows[lens[rows] == d + 1]
            end_nodes_per_level.append(node_of_row[ends] + level_start[-1])
            end_ids_per_level.append(ids[ends])
            level_start.append(level_start[-1] + len(first_rows))
            prev_node_of_row = node_of_row
        num_nodes = level_start[-1]
        node_byte = np.concatenate(node_bytes) if node_bytes else np.zeros(0, np.uint8)
        child_lo = np.zeros(num_nodes, dtype=np.int64)
        child_hi = np.zeros(num_nodes, dtype=np.int64)
        for d, parents in enumerate(parent_of_level, start=1):
            first = level_start[d]
            counts = np.bincount(parents - level_start[d - 1], minlength=level_start[d] - level_start[d - 1])
            lo = first + np.cumsum(counts) - counts
            child_lo[level_start[d - 1] : level_start[d]] = lo
            child_hi[level_start[d - 1] : level_start[d]] = lo + counts
        end_nodes = np.concatenate(end_nodes_per_level) if end_nodes_per_level else np.zeros(0, np.int64)
        end_ids = np.concatenate(end_ids_per_level) if end_ids_per_level else np.zeros(0, np.int64)
        order = np.argsort(end_nodes, kind="stable")
        end_nodes, end_ids = end_nodes[order], end_ids[order]
        end_ptr = np.searchsorted(end_nodes, np.arange(num_nodes + 1)).astype(np.int64)
        subtree = np.ones(num_nodes, dtype=np.int64)
        for d in range(len(level_start) - 2, 0, -1):
            lo, hi = level_start[d], level_start[d + 1]
            parents = np.repeat(
                np.arange(level_start[d - 1], level_start[d]),
                child_hi[level_start[d - 1] : level_start[d]] - child_lo[level_start[d - 1] : level_start[d]],
            )
            np.add.at(subtree, parents, subtree[lo:hi])
        return TokenTrie(
            node_byte,
            child_lo,
            child_hi,
            np.array(level_start, dtype=np.int64),
            end_ptr,
            end_ids,
            subtree,
            vocab.size,
        )


def vocabulary_trie(vocab: Vocabulary) -> TokenTrie:
    trie = getattr(vocab, "_sgc_trie", None)
    if trie is None:
        trie = TokenTrie.build(vocab)
        vocab._sgc_trie = trie  # type: ignore[attr-defined]
    return trie


@dataclass(frozen=True, eq=False)
class TokenIndex:
    """Per DFA state, the allowed tokens, stored once per distinct row.

    `state_row[s]` is the row of state s; row r is a dense bitmask (`dense_id[r] >= 0`, a row of
    `dense_masks`, bit-packed little-endian) or a sorted id list `sparse_tokens[sparse_ptr[r]:
    sparse_ptr[r+1]]`. A counted repetition has thousands of states but a handful of rows.
    """

    vocab_size: int
    state_row: np.ndarray  # int32[S]
    dense_id: np.ndarray  # int32[R]
    dense_masks: np.ndarray  # uint8[D, ceil(V/8)]
    sparse_ptr: np.ndarray  # int64[R+1]
    sparse_tokens: np.ndarray  # int32[...]

    @property
    def num_rows(self) -> int:
        return int(self.dense_id.shape[0])

    def allowed(self, state: int) -> np.ndarray:
        r = int(self.state_row[state])
        d = int(self.dense_id[r])
        if d >= 0:
            bits = np.unpackbits(self.dense_masks[d], count=self.vocab_size, bitorder="little")
            return np.flatnonzero(bits).astype(np.int32)
        return self.sparse_tokens[self.sparse_ptr[r] : self.sparse_ptr[r + 1]]

    @property
    def nbytes(self) -> int:
        return int(
            self.state_row.nbytes
            + self.dense_id.nbytes
            + self.dense_masks.nbytes
            + self.sparse_ptr.nbytes
            + self.sparse_tokens.nbytes
        )


def build_token_index(dfa: DFA, vocab: Vocabulary) -> TokenIndex:
    """Allowed tokens per state: rows are computed once per class of `token_row_classes` (states
    that no token of the vocabulary can tell apart), by walking the vocabulary trie."""
    trie = vocabulary_trie(vocab)
    num_states = dfa.num_states
    vocab_size = vocab.size
    words = (vocab_size + 7) // 8
    if num_states == 0 or trie.num_nodes == 0:
        return TokenIndex(
            vocab_size,
            np.zeros(num_states, np.int32),
            np.full(1 if num_states else 0, -1, np.int32),
            np.zeros((0, words), np.uint8),
            np.zeros(2 if num_states else 1, np.int64),
            np.zeros(0, np.int32),
        )
    split = token_split(vocab) if num_states >= SPLIT_MIN_STATES else None
    if split is not None:  # rows from Moore's classes, short and long tokens walked apart
        moore = token_row_classes(dfa, trie.depth, moore_only=True)
        state_row, rows = _rows_from_moore(dfa, moore, split, vocab_size)
        return TokenIndex(vocab_size, state_row, *rows)
    state_row = token_row_classes(dfa, trie.depth, trie_level_bytes(trie))
    num_rows = int(state_row.max()) + 1
    _, reps = np.unique(state_row, return_index=True)  # one representative state per row
    check_memory(num_rows * 64, "the token index")
    check_time()
    rows = _rows_of(dfa, reps, trie, vocab_size)
    return TokenIndex(vocab_size, state_row, *rows)


# ---------------------------------------------------------------------------------------------
# Short and long tokens walked apart

SHORT_TOKEN_BYTES = 16  # tokens longer than this are walked apart (155 of SmolLM2's 49,152)
SPLIT_MIN_STATES = 4_000  # smaller automata have few rows: one walk over the whole trie is cheap


@dataclass(frozen=True, eq=False)
class TokenSplit:
    """The vocabulary as two tries: tokens of at most `SHORT_TOKEN_BYTES` bytes (real ids) and the
    longer ones (local ids 0..K-1, `long_ids[k]` the real id of local k)."""

    short: TokenTrie
    long: TokenTrie
    long_ids: np.ndarray  # int64[K]


class _TokenSubset:
    """What `TokenTrie.build` reads of a vocabulary: its tokens' bytes and how many ids there are."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray) -> None:
        self.arrays = (flat, offsets)
        self.size = len(offsets) - 1


def token_split(vocab: Vocabulary) -> TokenSplit | None:
    """The short/long split of `vocab` (cached on it), or None when no token is long."""
    cached = vocab.__dict__.get("_sgc_split", False)
    if cached is not False:
        return cached
    trie = vocabulary_trie(vocab)
    split: TokenSplit | None = None
    if trie.depth > SHORT_TOKEN_BYTES:
        flat, offsets = vocab.arrays
        lengths = np.diff(offsets)
        is_long = lengths > SHORT_TOKEN_BYTES
        short_flat = flat[np.repeat(~is_long, lengths)]
        short_offsets = np.concatenate([[0], np.cumsum(np.where(is_long, 0, lengths))]).astype(np.int64)
        long_ids = np.flatnonzero(is_long).astype(np.int64)
        long_flat = flat[np.repeat(is_long, lengths)]
        long_offsets = np.concatenate([[0], np.cumsum(lengths[long_ids])]).astype(np.int64)
        short = TokenTrie.build(_TokenSubset(short_flat, short_offsets))  # type: ignore[arg-type]
        long = TokenTrie.build(_TokenSubset(long_flat, long_offsets))  # type: ignore[arg-type]
        split = TokenSplit(short, long, long_ids)
    vocab._sgc_split = split  # type: ignore[attr-defined]
    return split


def _short_classes(dfa: DFA, labels: np.ndarray, reps: np.ndarray, split: TokenSplit) -> np.ndarray:
    """int64 per class of `labels` (`reps[i]` a state of class i): equal values allow the same
    short tokens (the positional refinement on the classes' quotient, the short trie's levels)."""
    ext = np.append(labels.astype(np.int32), np.int32(-1))  # index -1: the dead state
    quotient = ext[dfa.transitions[reps]]
    cols = [np.unique(dfa.symbol_class[b]) for b in trie_level_bytes(split.short)]
    return _positional_classes(quotient, cols).astype(np.int64)


def _rows_from_moore(
    dfa: DFA, moore: np.ndarray, split: TokenSplit, vocab_size: int
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(state_row, rows) of a large automaton from its Moore classes (`trie.depth` rounds): a row
    per distinct (short-token class, long tokens allowed) pair of a class's representative.

    Most rows of a large automaton differ only in long tokens: a string 40 characters from its
    `maxLength` allows every token but `"----...----"` (64 bytes) and a few more. So the short
    tokens' classes (the positional refinement on Moore's quotient, 16 levels) are walked over
    the short-token trie (99.7% of the nodes) once each, the long-token trie (155 tokens) once
    per Moore class, and a row is its short class's tokens plus its long ones (disjoint sets).

    Exact: Moore-equal states are alive on the same strings of up to `trie.depth` + 1 bytes, so
    they allow the same long tokens, and their successors are Moore-equal on the 16 bytes of a
    short token, which makes the short trie's positional classes on the Moore quotient exact
    (`_positional_on_quotient`'s argument). Rows used to be the positional classes over all 81
    levels first (rows 2-4x more, and that pass cost as much as Moore's)."""
    _, reps = np.unique(moore, return_index=True)  # one state per Moore class
    check_time()
    short_class = _short_classes(dfa, moore, reps, split)
    walk = _walk_table(dfa)  # shared by the two walks (a copy of the table)
    long_alive = _long_rows(dfa, reps, split.long, walk)  # bool[K, M]
    check_time()
    # a row per distinct pair: the class id and the long tokens' bits, as one byte string each
    pair = np.concatenate(
        [short_class[:, None].view(np.uint8).reshape(len(reps), 8), np.packbits(long_alive.T, axis=1)], axis=1
    )
    _, first, row_of_class = np.unique(
        np.ascontiguousarray(pair).view(np.dtype((np.void, pair.shape[1]))).reshape(-1),
        return_index=True, return_inverse=True,
    )
    row_of_class = row_of_class.reshape(-1)
    check_memory(len(first) * 64, "the token index")
    state_row = row_of_class[moore].astype(np.int32)
    rows = _assemble_split(dfa, reps[first], short_class[first], long_alive[:, first], split, vocab_size, walk)
    return state_row, rows


def _assemble_split(
    dfa: DFA, reps: np.ndarray, short_class: np.ndarray, long_alive: np.ndarray, split: TokenSplit,
    vocab_size: int, walk: tuple[np.ndarray, bool] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows (row i: state `reps[i]`) from their short-token classes and long tokens: the short
    trie walked once per class, a row the union of its class's tokens and its long ones."""
    num_rows = len(reps)
    _, short_reps, short_class = np.unique(short_class, return_index=True, return_inverse=True)
    short_class = short_class.reshape(-1)  # renumbered 0..C-1: row i of the walk is class i
    check_time()
    s_dense, s_masks, s_ptr, s_tokens = _rows_of(dfa, reps[short_reps], split.short, vocab_size, walk)
    # -- dense rows: the class's mask with the row's long tokens set (distinct pairs, distinct masks)
    words = (vocab_size + 7) // 8
    row_dense = s_dense[short_class]
    dense_id = np.full(num_rows, -1, dtype=np.int32)
    long_keys = np.packbits(long_alive.T, axis=1)
    seen: dict[tuple[int, bytes], int] = {}
    masks_out: list[np.ndarray] = []
    for r in np.flatnonzero(row_dense >= 0).tolist():
        key = (int(row_dense[r]), long_keys[r].tobytes())
        idx = seen.get(key)
        if idx is None:
            mask = s_masks[key[0]].copy()
            ids = split.long_ids[long_alive[:, r]]
            np.bitwise_or.at(mask, ids >> 3, (1 << (ids & 7)).astype(np.uint8))
            idx = seen[key] = len(masks_out)
            masks_out.append(mask)
            if len(masks_out) % 1024 == 0:
                check_memory(len(masks_out) * words, "the token index's masks")
                check_time()
        dense_id[r] = idx
    dense_masks = np.stack(masks_out) if masks_out else np.zeros((0, words), dtype=np.uint8)
    # -- sparse rows: the class's token list and the row's long tokens, sorted
    sparse = np.flatnonzero(row_dense < 0)
    cls = short_class[sparse]
    counts = s_ptr[cls + 1] - s_ptr[cls]
    base = np.cumsum(counts) - counts
    gather = np.repeat(s_ptr[cls] - base, counts) + np.arange(int(counts.sum()))
    pos, k = np.nonzero(long_alive[:, sparse].T)  # row-major: one sorted run of (row, token)
    pair_row = np.concatenate([np.repeat(sparse, counts), sparse[pos]])
    pair_token = np.concatenate([s_tokens[gather].astype(np.int64), split.long_ids[k]])
    sparse_ptr, sparse_tokens = _pairs_csr(pair_row, pair_token, num_rows, vocab_size)
    return dense_id, dense_masks, sparse_ptr, sparse_tokens


def _pairs_csr(
    pair_row: np.ndarray, pair_token: np.ndarray, num_rows: int, vocab_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(ptr int64[R+1], tokens int32) of the (row, token) pairs: each row's tokens sorted. One
    int64 key per pair sorted (the pairs come as a few sorted runs: timsort merges them), not a
    lexsort of two keys."""
    key = np.sort(pair_row.astype(np.int64) * vocab_size + pair_token, kind="stable")
    row = key // vocab_size
    ptr = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=num_rows), out=ptr[1:])
    return ptr, (key - row * vocab_size).astype(np.int32)


def _long_rows(
    dfa: DFA, reps: np.ndarray, trie: TokenTrie, walk: tuple[np.ndarray, bool] | None = None
) -> np.ndarray:
    """bool[K, R]: which of the trie's K tokens (local ids) each state of `reps` allows.

    Through `_rows_of`, whose frontier walk follows only live (state, node) pairs: most states
    die within a byte or two of a long token (runs of spaces, dashes), and a dense walk over
    every state kept their dead columns (2-4x slower on 8-20k representatives)."""
    num_tokens = trie.vocab_size
    out = np.zeros((num_tokens, len(reps)), dtype=bool)
    if trie.num_nodes == 0 or len(reps) == 0:
        return out
    dense_id, masks, ptr, tokens = _rows_of(dfa, reps, trie, num_tokens, walk)
    out[tokens, np.repeat(np.arange(len(reps)), np.diff(ptr))] = True
    dense = np.flatnonzero(dense_id >= 0)
    if len(dense):
        out[:, dense] = np.unpackbits(masks[dense_id[dense]], axis=1, count=num_tokens, bitorder="little").T
    return out


def _rows_of(
    dfa: DFA, reps: np.ndarray, trie: TokenTrie, vocab_size: int, walk: tuple[np.ndarray, bool] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(dense_id, dense_masks, sparse_ptr, sparse_tokens) for the states `reps`, row i = reps[i]
    (`walk`: the table as `_walk_table` gives it, when the caller has it already)."""
    num_rows = len(reps)
    num_classes = dfa.num_classes
    flat_table, dead_row = _walk_table(dfa) if walk is None else walk  # -1 is the dead state
    node_cls = dfa.symbol_class[trie.node_byte].astype(np.int32)
    roots = np.arange(trie.level_start[0], trie.level_start[1])
    first = dfa.transitions[reps][:, node_cls[roots]]  # [R, num_roots]
    first_alive = first >= 0
    estimate = first_alive @ trie.subtree_size[roots]
    wide = estimate >= _DENSE_WALK_MIN_NODES

    words = (vocab_size + 7) // 8
    pair_rows: list[np.ndarray] = []
    pair_tokens: list[np.ndarray] = []
    dense_rows: list[np.ndarray] = []
    dense_packed: list[np.ndarray] = []
    # -- dense walk, batched by the set of allowed first bytes ------------------------------
    widest_level = int(np.diff(trie.level_start).max()) if trie.depth else 0
    # a walk holds a few [level nodes, states] arrays (int32 targets, bools) at a time: cap the columns
    max_columns = max(1, _DENSE_WALK_BYTES // max(1, (widest_level * 12 + vocab_size)))
    batches = _dense_batches(np.flatnonzero(wide), first_alive, trie.subtree_size[roots])
    for members, start in (
        (m[i : i + max_columns], st) for m, st in batches for i in range(0, len(m), max_columns)
    ):
        check_memory(vocab_size * len(members), "the token index's dense walk")
        walked = native.dense_walk(dfa.transitions, node_cls, trie, roots[start], reps[members])
        if walked is None:
            walked = _dense_walk_packed(
                reps[members], roots[start], trie, flat_table, node_cls, num_classes, vocab_size, dead_row
            )
        rows_packed, counts = walked  # a row of packed token bits per state, and its token count
        is_dense = counts >= DENSE_MIN_TOKENS
        if is_dense.any():
            dense_rows.append(members[is_dense])
            dense_packed.append(np.ascontiguousarray(rows_packed if is_dense.all() else rows_packed[is_dense]))
        if not is_dense.all():
            col, tok = _packed_nonzero(rows_packed[~is_dense].T)
            pair_rows.append(members[~is_dense][col])
            pair_tokens.append(tok)
        check_time()
    # -- sparse walk for the other states ---------------------------------------------------
    s_row, s_token = _sparse_walk(
        np.flatnonzero(~wide), roots, first, trie, flat_table, node_cls, num_classes
    )
    counts = np.bincount(s_row, minlength=num_rows)
    heavy = counts[s_row] >= DENSE_MIN_TOKENS
    if heavy.any():
        heavy_rows = np.flatnonzero(counts >= DENSE_MIN_TOKENS)
        bits = np.zeros((len(heavy_rows), vocab_size), dtype=bool)
        bits[np.searchsorted(heavy_rows, s_row[heavy]), s_token[heavy]] = True
        dense_rows.append(heavy_rows)
        dense_packed.append(np.packbits(bits, axis=1, bitorder="little"))
    pair_rows.append(s_row[~heavy])
    pair_tokens.append(s_token[~heavy])
    # -- assemble: deduplicated bitmasks, and a CSR of sorted token ids ---------------------
    dense_id = np.full(num_rows, -1, dtype=np.int32)
    masks_out: list[np.ndarray] = []
    seen: dict[bytes, int] = {}
    for rows_part, packed in zip(dense_rows, dense_packed):
        for r, row in zip(rows_part.tolist(), packed):
            key = row.tobytes()
            idx = seen.get(key)
            if idx is None:
                idx = seen[key] = len(masks_out)
                masks_out.append(row)
            dense_id[r] = idx
    dense_masks = np.stack(masks_out) if masks_out else np.zeros((0, words), dtype=np.uint8)
    pair_row = np.concatenate(pair_rows)
    pair_token = np.concatenate(pair_tokens)
    sparse_ptr, sparse_tokens = _pairs_csr(pair_row, pair_token, num_rows, vocab_size)
    return dense_id, dense_masks, sparse_ptr, sparse_tokens


def _dense_walk_packed(
    states: np.ndarray, start_nodes: np.ndarray, trie: TokenTrie, flat_table: np.ndarray, node_cls: np.ndarray,
    num_classes: int, vocab_size: int, dead_row: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """`_dense_walk` as `native.dense_walk` returns it: (uint8[G, ceil(V/8)] rows of packed token
    bits, a view; int32[G] tokens per row). Packed along the token axis first: the rows are then
    picked and transposed 8x smaller."""
    masks = _dense_walk(states, start_nodes, trie, flat_table, node_cls, num_classes, vocab_size, dead_row)
    packed = _pack_token_axis(masks)  # [ceil(V/8), G]
    return packed.T, _column_popcounts(packed, masks)


def _column_popcounts(packed: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """int32[G]: tokens per column of `masks` (bool[V, G]), counted on its packing `packed` (8x
    fewer bytes: 6x less than summing the bools) where numpy has `bitwise_count` (2.0+)."""
    if hasattr(np, "bitwise_count"):
        return np.add.reduce(np.bitwise_count(packed), axis=0, dtype=np.int32)
    return np.add.reduce(masks.view(np.uint8), axis=0, dtype=np.int32)


def _pack_token_axis(masks: np.ndarray) -> np.ndarray:
    """`np.packbits(masks, axis=0, bitorder="little")` of a bool[V, G], 8x faster: eight shifted
    ORs of contiguous row blocks (numpy packs along a non-last axis one strided byte at a time)."""
    v, g = masks.shape
    words = (v + 7) // 8
    u = masks.view(np.uint8)
    if v % 8:
        u = np.concatenate([u, np.zeros((words * 8 - v, g), dtype=np.uint8)])
    u = u.reshape(words, 8, g)
    out = u[:, 0, :].copy()
    for k in range(1, 8):
        out |= u[:, k, :] << np.uint8(k)
    return out


def _packed_nonzero(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(column, token) of every set bit of `packed` (uint8[W, G], bit i of byte w is token
    8w + i), in no particular order: only the nonzero bytes are unpacked."""
    word, col = np.nonzero(packed)
    bit_row, bit = np.nonzero(np.unpackbits(packed[word, col][:, None], axis=1, bitorder="little"))
    return col[bit_row], word[bit_row] * 8 + bit


# Working memory of one dense walk; wider batches are split (the table the walk fills is kept apart).
_DENSE_WALK_BYTES = 96 << 20
# Tables up to this many cells are walked from a copy with a dead row appended (below)
_DEAD_ROW_MAX_CELLS = 1 << 25


def _walk_table(dfa: DFA) -> tuple[np.ndarray, bool]:
    """The flat transition table the trie walks read, `num_classes` cells longer than the table
    (all -1: the dead state's row) when the table is small enough to copy: then a target of -1
    reads, by numpy's negative indexing, the dead row and stays dead, and the dense walk needs no
    clamp and no re-kill per level (a third of its time on mid-size automata). Only the numpy
    dense walk reads the dead row: with the C walk (`native.dense_walk`) the table is not copied."""
    flat = dfa.transitions.reshape(-1)
    if flat.size > _DEAD_ROW_MAX_CELLS or native.library() is not None:  # (the C walk needs no copy)
        return flat, False
    out = np.empty(flat.size + dfa.num_classes, dtype=flat.dtype)
    out[: flat.size] = flat
    out[flat.size :] = -1
    return out, True


def _dense_batches(
    states: np.ndarray, first_alive: np.ndarray, root_sizes: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Batches of wide states to walk together, with the roots each batch starts from.

    States allowing the same first bytes share a batch; batches whose root sets nearly coincide
    merge (per-level numpy overhead dominates small batches; dead columns are pruned anyway).
    """
    if len(states) == 0:
        return []
    keys = np.packbits(first_alive[states], axis=1)
    _, group_of = np.unique(keys, axis=0, return_inverse=True)
    group_of = group_of.reshape(-1)
    groups = [states[group_of == g] for g in range(int(group_of.max()) + 1)]
    groups.sort(key=lambda m: -int(first_alive[m[0]] @ root_sizes))
    batches: list[tuple[list[np.ndarray], np.ndarray]] = []
    for members in groups:
        start = first_alive[members[0]]
        size = int(start @ root_sizes)
        for i, (parts, bstart) in enumerate(batches):
            union = bstart | start
            union_size = int(union @ root_sizes)
            if union_size <= 1.3 * int(bstart @ root_sizes) and union_size <= 1.3 * size:
                parts.append(members)
                batches[i] = (parts, union)
                break
        else:
            batches.append(([members], start.copy()))
    return [(np.concatenate(parts), start) for parts, start in batches]


def _expand(nodes: np.ndarray, trie: TokenTrie) -> tuple[np.ndarray, np.ndarray]:
    """Children of `nodes` (concatenated) and, for each child, the index of its parent in `nodes`."""
    lo = trie.child_lo[nodes]
    counts = trie.child_hi[nodes] - lo
    total = int(counts.sum())
    parent_pos = np.repeat(np.arange(len(nodes)), counts)
    base = np.cumsum(counts) - counts
    children = lo[parent_pos] + (np.arange(total) - base[parent_pos])
    return children, parent_pos


def _dense_walk(
    states: np.ndarray,
    start_nodes: np.ndarray,
    trie: TokenTrie,
    flat_table: np.ndarray,
    node_cls: np.ndarray,
    num_classes: int,
    vocab_size: int,
    dead_row: bool = False,
) -> np.ndarray:
    """Walk the subtrees under `start_nodes` from every state of `states` at once; bool[V, G].
    `dead_row`: `flat_table` ends with the dead state's row (`_walk_table`).

    Node-major layout (`cur[node, state]`) keeps the per-level gathers and scatters on contiguous
    rows.
    """
    masks_t = np.zeros((vocab_size, len(states)), dtype=bool)
    # with the dead row appended (`_walk_table`), -1 * num_classes + c reads it: dead stays dead
    index_type = np.int32 if dead_row and flat_table.size < 2**31 else np.int64
    nodes = start_nodes
    cur = flat_table[node_cls[nodes][:, None] + states[None, :].astype(np.int64) * num_classes]
    while len(nodes):
        check_time()  # one trie level per round: a wide table makes each round expensive
        alive = cur >= 0
        keep = alive.any(axis=1)
        if not keep.all():
            nodes, cur, alive = nodes[keep], cur[keep], alive[keep]
        lo = trie.end_ptr[nodes]
        cnt = trie.end_ptr[nodes + 1] - lo
        ends = np.flatnonzero(cnt)
        if len(ends):
            c = cnt[ends]
            if (c == 1).all():
                masks_t[trie.end_tokens[lo[ends]]] = alive[ends]
            else:
                pos = np.repeat(ends, c)
                base = np.cumsum(c) - c
                tokens = trie.end_tokens[lo[pos] + (np.arange(int(c.sum())) - np.repeat(base, c))]
                masks_t[tokens] = alive[pos]
        children, parent_pos = _expand(nodes, trie)
        if not len(children):
            break
        parent = cur[parent_pos]
        if dead_row:
            cur = flat_table[parent.astype(index_type, copy=False) * index_type(num_classes)
                             + node_cls[children][:, None]]
        else:
            cur = flat_table[np.maximum(parent, 0).astype(np.int64) * num_classes + node_cls[children][:, None]]
            cur[parent < 0] = -1  # the dead state stays dead
        nodes = children
    return masks_t


def _sparse_walk(
    states: np.ndarray,
    roots: np.ndarray,
    first: np.ndarray,
    trie: TokenTrie,
    flat_table: np.ndarray,
    node_cls: np.ndarray,
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Frontier walk of (state, node) pairs from the rows `states` of `first` (their first step);
    returns the allowed (row, token) pairs."""
    out_s: list[np.ndarray] = []
    out_t: list[np.ndarray] = []
    if len(states) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sub = first[states]
    si, ri = np.nonzero(sub >= 0)
    src = states[si]
    nodes = roots[ri]
    cur = sub[si, ri]
    while len(src):
        check_time()
        ptr_lo = trie.end_ptr[nodes]
        cnt = trie.end_ptr[nodes + 1] - ptr_lo
        ends = np.flatnonzero(cnt)
        if len(ends):
            c = cnt[ends]
            pos = np.repeat(ends, c)
            base = np.cumsum(c) - c
            offs = np.arange(int(c.sum())) - np.repeat(base, c)
            out_s.append(src[pos])
            out_t.append(trie.end_tokens[ptr_lo[pos] + offs])
        children, parent_pos = _expand(nodes, trie)
        if not len(children):
            break
        nxt = flat_table[cur[parent_pos].astype(np.int64) * num_classes + node_cls[children]]
        keep = nxt >= 0
        src = src[parent_pos[keep]]
        nodes = children[keep]
        cur = nxt[keep]
    if not out_s:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_s), np.concatenate(out_t)


# ---------------------------------------------------------------------------------------------
# Which states can share a row

_CHUNK = 1 << 16  # states per chunk when a pass touches the whole table (bounded temporaries)
_MULTIPLIERS = np.random.default_rng(0x5EC).integers(1, 2**63, size=1024, dtype=np.uint64) | np.uint64(1)


def trie_level_bytes(trie: TokenTrie) -> list[np.ndarray]:
    """Per trie level d, the bytes some token has at position d (cached on the trie)."""
    cached = trie.__dict__.get("_level_bytes")
    if cached is None:
        ls = trie.level_start
        cached = [np.unique(trie.node_byte[ls[d] : ls[d + 1]]) for d in range(trie.depth)]
        object.__setattr__(trie, "_level_bytes", cached)
    return cached


def token_row_classes(
    dfa: DFA, depth: int, level_bytes: list[np.ndarray] | None = None, moore_only: bool = False
) -> np.ndarray:
    """int32[S] labels 0..R-1 such that states with equal labels allow exactly the same tokens.

    A token of at most `depth` bytes is allowed in s iff its path from s stays alive, so s and s'
    need the same row when every string of at most `depth` bytes is alive from both or from neither:
    Moore's partition refinement stopped after `depth` rounds (every state of the trimmed DFA can
    still accept, so acceptance itself does not matter). In `[a-z]{40000}` that leaves `depth`+2
    classes: the states near the end, which see it, and all the others.

    Refinement is incremental: a round recomputes signatures only for predecessors of states whose
    label changed in the previous round (a class splits only if some member's successor moved), so
    the long uniform middle of a counted repetition costs nothing after the first round.

    `moore_only` (the split walk): Moore's classes as they are, whatever the size (not merged by
    the positional refinement on their quotient); finer than rows need, `_rows_from_moore` makes
    rows of them (30-40% less than the positional pass over every level on 4-10k-state corpus
    automata).
    """
    n = dfa.num_states
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    rep = _period_representatives(dfa, depth)
    if rep is None:
        return _row_classes(dfa.transitions, dfa.symbol_class, depth, level_bytes, moore_only)
    # Moore on the quotient: each state stands for the states it represents (see below)
    keep = np.flatnonzero(rep == np.arange(n))
    new_id = np.full(n + 1, -1, dtype=np.int64)  # new_id[-1] = -1: the dead state
    new_id[keep] = np.arange(len(keep))
    quotient = np.empty((len(keep), dfa.num_classes), dtype=np.int32)
    target_id = np.append(new_id[rep], -1).astype(np.int32)  # a target's new id; index -1: dead
    for lo in range(0, len(keep), _CHUNK):
        quotient[lo : lo + _CHUNK] = target_id[dfa.transitions[keep[lo : lo + _CHUNK]]]
    check_time()
    labels = _row_classes(quotient, dfa.symbol_class, depth, level_bytes, moore_only)
    return labels[new_id[rep]]


# Work (states x classes x levels) up to which rows are split by the positional refinement
_POSITIONAL_MAX_WORK = 12_000_000  # ~0.3 s; a 100k-value enum trie (43M) stays with Moore


# Work (Moore classes x classes x levels) up to which Moore's classes are merged further by the
# positional refinement run on their quotient (below)
_QUOTIENT_POSITIONAL_MAX_WORK = 60_000_000


def _row_classes(
    table: np.ndarray, symbol_class: np.ndarray, depth: int, level_bytes: list[np.ndarray] | None,
    moore_only: bool = False,
) -> np.ndarray:
    if moore_only:
        return _moore_classes(table, depth)
    cols = None
    if level_bytes is not None and len(level_bytes) == depth:
        cols = [np.unique(symbol_class[b]) for b in level_bytes]
        if table.shape[0] * sum(len(c) for c in cols) <= _POSITIONAL_MAX_WORK:
            return _positional_classes(table, cols)
    labels = _moore_classes(table, depth)
    if cols is None:
        return labels
    return _positional_on_quotient(table, labels, cols)


def _positional_on_quotient(table: np.ndarray, labels: np.ndarray, cols: list[np.ndarray]) -> np.ndarray:
    """Moore's classes merged further by `_positional_classes` run on their quotient (one
    representative state per class, its transitions read as classes).

    Exact: Moore's `depth` rounds make equal-labelled states alive on the same strings of up to
    depth + 1 bytes, so their successors on one byte agree on strings of up to depth bytes, and
    so lie in one class of every E_d (d >= 1), which looks at token tails of at most depth - 1
    bytes. E_d computed for a representative from its successors' classes is therefore E_d of
    every member. Rows are walked once per class, so fewer classes is less work (~2.5x fewer
    for an object of many bounded strings, where Moore tells apart copies no token reaches).
    """
    num = int(labels.max()) + 1 if len(labels) else 0
    if num * sum(len(c) for c in cols) > _QUOTIENT_POSITIONAL_MAX_WORK:
        return labels
    _, reps = np.unique(labels, return_index=True)
    ext = np.append(labels.astype(np.int32), np.int32(-1))  # index -1: the dead state
    quotient = ext[table[reps]]
    check_time()
    merged = _positional_classes(quotient, cols)
    return merged[labels]


def _positional_classes(table: np.ndarray, level_cols: list[np.ndarray]) -> np.ndarray:
    """`_positional_classes_numpy` (below, which says what it computes), by the C version in
    `native` when it is built; labels by first occurrence either way."""
    labels = native.positional_classes(table, level_cols)
    if labels is not None:
        return labels
    return native.first_occurrence_labels(_positional_classes_numpy(table, level_cols))


def _positional_classes_numpy(table: np.ndarray, level_cols: list[np.ndarray]) -> np.ndarray:
    """int32[S] labels such that states with equal labels allow the same tokens, from the bytes
    tokens have at each position (`level_cols[d]`: the DFA classes of the bytes at position d).

    Coarser than Moore's `depth` rounds, which tell states apart by any string: `"` is in no
    SmolLM2 token past its 5th byte, so the copies of an array's string items look alike once a
    difference would take a `","` deep inside a token. E_d (for positions d.. of a token) holds
    states with the same dead bytes among level d's and E_{d+1}-equal successors on the others;
    E_depth is one class (every state of the trimmed DFA is alive). By induction over the token,
    E_0-equal states are alive on the same token prefixes: a token's byte at position d is one
    of level d's. Computed backwards, one vectorized pass per level.
    """
    n = table.shape[0]
    label = np.zeros(n + 1, dtype=np.int32)  # int32: half the bytes per gather
    label[n] = -1  # index -1: the dead state
    rows = np.arange(n)
    sub, sub_cols = None, None
    for cols in reversed(level_cols):
        check_time()
        if n * len(cols) <= _WHOLE_PASS_CELLS:
            # one level at once: the table's columns are taken once per run of levels with the same
            # bytes, and the collision check reads the successor labels already gathered
            if sub_cols is None or not np.array_equal(sub_cols, cols):
                sub, sub_cols = table[:, cols], cols
            succ = label[sub]
            keys = _hash_rows(succ, _MULTIPLIERS[: len(cols)])
            _, group = np.unique(keys, return_inverse=True)
            label[:n] = _verify_split(group.reshape(-1).astype(np.int64), rows, None, matrix=succ)
            continue
        keys = np.empty(n, dtype=np.uint64)
        for lo in range(0, n, _CHUNK):
            succ = label[table[lo : lo + _CHUNK][:, cols]] + 2  # dead: 1
            keys[lo : lo + _CHUNK] = succ.astype(np.uint64) @ _MULTIPLIERS[: len(cols)]
        _, group = np.unique(keys, return_inverse=True)
        group = _verify_split(
            group.reshape(-1).astype(np.int64), rows, lambda r, cols=cols: label[table[r][:, cols]]
        )
        label[:n] = group
    return label[:n].astype(np.int32)


# Rows per block of the period check (whole copies, at least one) and of the predecessor lists:
# their temporaries per block stay in cache (blocks of 65536 rows were 1.7x slower for the period
# check on the 300k-state cfn Tags automata, 1.25x for the predecessors on a 140k-state one)
_CACHE_BLOCK_ROWS = 8192


def _period_representatives(dfa: DFA, depth: int) -> np.ndarray | None:
    """int64[S] mapping each state to a state no string of at most `depth` + 1 bytes can tell
    apart from it (itself for most), or None when the DFA's period hints do not help.

    A hint `(a, w, k)` says copy j+1 of a block (states `a + j*w ...`) may behave like copy j
    shifted by w. It is verified row by row: `ok[s]` iff row(s + w) is row(s) with every target
    inside the block moved by w (targets outside stay). If every state reachable from s within
    `depth` + 1 steps is ok, s and s + w are alive on the same strings of that length (induction
    over the path), so copy j can be merged into copy j+1. Targets move at most `jump` copies per
    byte, so that holds when copies j .. j + (depth + 1) * jump are all ok. Merged states point to
    the last copy of their run, whose own transitions are unchanged: Moore's `depth` rounds on the
    quotient give the same partition (a path from the representative stays equivalent to the path
    from the original, one byte less of lookahead per step).
    """
    n = dfa.num_states
    table = dfa.transitions
    rep: np.ndarray | None = None
    for a, w, count in dfa.periods:
        if w <= 0 or count < 8 or a < 0 or a + count * w > n:
            continue
        end = a + count * w
        ok_copy = np.ones(count - 1, dtype=bool)  # copy j ok: every state of j behaves as in j+1
        max_jump = 0
        min_jump = 0
        step = max(1, _CACHE_BLOCK_ROWS // w)
        for j0 in range(0, count - 1, step):
            j1 = min(count - 1, j0 + step)
            src = table[a + j0 * w : a + j1 * w]
            dst = table[a + (j0 + 1) * w : a + (j1 + 1) * w]
            inside = (src >= a) & (src < end)
            same = (dst == np.where(inside, src + w, src)).reshape(j1 - j0, -1).all(axis=1)
            ok_copy[j0:j1] = same
            check_time()
        # copies a byte can jump forward: a copy after an ok one jumps as that one does (or stays,
        # where a shifted target leaves the block), so only copy 0 and the copies after a non-ok
        # one are read
        fresh = np.flatnonzero(np.concatenate([[True], ~ok_copy[:-1]]))
        for f0 in range(0, len(fresh), step):
            copies = fresh[f0 : f0 + step]
            rows = (a + copies[:, None] * w + np.arange(w)[None, :]).reshape(-1)
            src = table[rows]
            inside = (src >= a) & (src < end)
            jumps = np.where(inside, (src - a) // w - ((rows - a) // w)[:, None], 0)
            max_jump = max(max_jump, int(np.abs(jumps).max()) if jumps.size else 0)
            min_jump = min(min_jump, int(jumps.min()) if jumps.size else 0)
            check_time()
        reach = (depth + 1) * max(max_jump, 1) + 1
        bad = np.concatenate([[0], np.cumsum(~ok_copy)])
        j = np.arange(count - 1)
        safe = _window_ok(bad, j, reach, count)
        run = _longest_run(ok_copy)
        if min_jump == 0 and max_jump <= 1 and run[1] - run[0] >= 2:
            # copies r0 .. r1 + 1 of the longest run of ok copies are one copy shifted: a byte
            # moves at most one copy on, and crossing a whole copy takes `inner` + 1 bytes, so
            # depth + 1 bytes cross at most 1 + depth // (inner + 1) copy boundaries (one more
            # for margin); windows inside that run may be that narrow
            inner = _copy_crossing_bytes(table, a, w, run[0] + 1, depth + 1)
            tight = 2 + depth // (inner + 1)
            if tight < reach:
                safe |= _window_ok(bad, j, tight, count) & (j >= run[0]) & (j <= run[1])
        if not safe.any():
            continue
        # each copy's representative: the first copy at or after it that is not safe
        target = np.arange(count)
        not_safe = np.flatnonzero(~np.append(safe, False))
        target = not_safe[np.searchsorted(not_safe, target)]
        if rep is None:
            rep = np.arange(n, dtype=np.int64)
        block = np.arange(a, end, dtype=np.int64)
        rep[a:end] = a + target[(block - a) // w] * w + (block - a) % w
    return rep


def _window_ok(bad: np.ndarray, j: np.ndarray, reach: int, count: int) -> np.ndarray:
    """Per copy j: copies j - reach .. j + reach are all ok (`bad`: prefix counts of non-ok copies)."""
    lo = np.maximum(j - reach, 0)
    hi = np.minimum(j + reach + 1, count - 1)
    return (bad[hi] - bad[lo] == 0) & (j + reach + 1 <= count - 1)


def _longest_run(ok: np.ndarray) -> tuple[int, int]:
    """(first, last) index of the longest run of True in `ok` ((0, -1) if none)."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], ok.astype(np.int8), [0]])))
    if not len(edges):
        return 0, -1
    starts, ends = edges[0::2], edges[1::2]
    k = int(np.argmax(ends - starts))
    return int(starts[k]), int(ends[k]) - 1


def _copy_crossing_bytes(table: np.ndarray, a: int, w: int, m: int, limit: int) -> int:
    """The fewest bytes read inside copy m of the block `(a, w, ...)` between entering it from
    copy m - 1 and the byte that leaves it for copy m + 1 (`limit` if that many or more), by a
    breadth-first search on copy m's own transitions. Copies m - 1 .. m + 1 must be one copy
    shifted; then this holds for every copy entered from an identical one."""
    lo, hi = a + m * w, a + (m + 1) * w
    prev = table[lo - w : lo]
    frontier = np.zeros(w, dtype=bool)
    entered = prev[(prev >= lo) & (prev < hi)] - lo
    frontier[entered] = True
    rows = table[lo:hi]
    exits = ((rows >= hi) & (rows < hi + w)).any(axis=1)
    inside = (rows >= lo) & (rows < hi)
    seen = frontier.copy()
    for steps in range(limit):
        if (frontier & exits).any():
            return steps
        targets = rows[frontier][inside[frontier]] - lo
        frontier = np.zeros(w, dtype=bool)
        frontier[targets] = True
        frontier &= ~seen
        seen |= frontier
        if not frontier.any():
            return limit
    return limit


def _moore_classes(table: np.ndarray, depth: int) -> np.ndarray:
    """Moore's `depth` rounds from the live-columns partition; labels by first occurrence (the C
    version in `native` when it is built, else the numpy passes below)."""
    labels = native.moore_classes(table, depth)
    return labels if labels is not None else native.first_occurrence_labels(_moore_classes_numpy(table, depth))


def _moore_classes_numpy(table: np.ndarray, depth: int) -> np.ndarray:
    n, c = table.shape
    # Round 0: the set of live classes (which bytes keep the state alive).
    live_key = np.zeros(n, dtype=np.uint64)
    for lo in range(0, n, _CHUNK):
        live = table[lo : lo + _CHUNK] >= 0
        live_key[lo : lo + _CHUNK] = _row_products(live, _MULTIPLIERS[:c])
    _, first = np.unique(live_key, return_inverse=True)
    first = _verify_split(first.reshape(-1).astype(np.int64), np.arange(n), lambda rows: table[rows] >= 0)
    # label[n] = -1 stays the dead state's label, so label[table[rows]] needs no special case
    label = np.append(first.astype(np.int32), np.int32(-1))  # int32: half the bytes per gather
    check_time()
    preds_ptr, preds = _predecessors(table)
    check_time()
    cand = np.arange(n)  # round 1 looks at every state
    sizes = np.bincount(first)  # members per label, kept up to date (labels only ever get added)
    for _ in range(depth):
        if len(cand) == 0:
            break
        label, sizes, changed = _refine(table, label, sizes, cand)
        check_time()
        if len(changed) == 0:
            break
        counts = preds_ptr[changed + 1] - preds_ptr[changed]
        gather = np.repeat(preds_ptr[changed] - np.cumsum(counts) + counts, counts) + np.arange(
            int(counts.sum())
        )
        cand = np.unique(preds[gather])
    _, dense = np.unique(label[:n], return_inverse=True)
    return dense.reshape(-1).astype(np.int32)


# Passes over at most this many cells (an int32 successor-label matrix of 64 MiB) run at once, not
# in chunks, and keep the matrix for the collision check
_WHOLE_PASS_CELLS = 1 << 24


# Rows per block of `_hash_rows` (a 64-bit copy of ~1000 rows stays in cache)
_HASH_BLOCK_ROWS = 1024


def _row_products(matrix: np.ndarray, multipliers: np.ndarray) -> np.ndarray:
    """`matrix @ multipliers` mod 2^64 (entries read as uint64: -1 wraps to 2^64 - 1), a block of
    rows at a time through one reused 64-bit buffer: widening the whole matrix first wrote and
    re-read 8 bytes per cell from memory (3x slower on a 140k x 64 round)."""
    n = len(matrix)
    keys = np.empty(n, dtype=np.uint64)
    wide = np.empty((min(n, _HASH_BLOCK_ROWS), matrix.shape[1]), dtype=np.uint64)
    for lo in range(0, n, _HASH_BLOCK_ROWS):
        part = matrix[lo : lo + _HASH_BLOCK_ROWS]
        block = wide[: len(part)]
        block[...] = part
        np.matmul(block, multipliers, out=keys[lo : lo + _HASH_BLOCK_ROWS])
    return keys


def _hash_rows(succ: np.ndarray, multipliers: np.ndarray) -> np.ndarray:
    """`(succ + 2) @ multipliers` mod 2^64 (the keys the chunked passes compute; dead, -1, counts
    as 1) without the shifted copy: the shift adds 2 * sum(multipliers) to every key."""
    shift = np.add.reduce(multipliers * np.uint64(2), dtype=np.uint64)  # array ops: wrap, no warning
    keys = _row_products(succ, multipliers)
    keys += shift
    return keys


def _signature_keys(table: np.ndarray, label: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A 64-bit hash of (label, successor labels) per state of `rows` (verified by the caller)."""
    c = table.shape[1]
    keys = np.empty(len(rows), dtype=np.uint64)
    for lo in range(0, len(rows), _CHUNK):
        part = rows[lo : lo + _CHUNK]
        succ = label[table[part]] + 2  # dead: index -1 -> label -1 -> 1
        k = succ.astype(np.uint64) @ _MULTIPLIERS[1 : c + 1]  # (wraps mod 2^64, one pass, no temporary)
        keys[lo : lo + _CHUNK] = k + (label[part] + 1).astype(np.uint64) * _MULTIPLIERS[0]
    return keys


def _refine(
    table: np.ndarray, label: np.ndarray, sizes: np.ndarray, cand: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One Moore round over the candidate states; returns the labels, the label sizes and the
    states that moved (`label` is updated in place).

    Candidates of one old class are grouped by their signature; the class's non-candidates keep the
    old label (their successors did not move, so they still agree). A class made only of
    candidates keeps its label for its largest group. Every other group gets a fresh label.
    """
    cand_label = label[cand]
    if len(cand) * table.shape[1] <= _WHOLE_PASS_CELLS:  # the matrix kept for the collision check
        succ = label[table if len(cand) == len(table) else table[cand]]  # round 1: no copy
        keys = _hash_rows(succ, _MULTIPLIERS[1 : table.shape[1] + 1])
        keys += (cand_label + 1).astype(np.uint64) * _MULTIPLIERS[0]
        _, group = np.unique(keys, return_inverse=True)
        group = _verify_split(group.reshape(-1).astype(np.int64), cand, None, key=cand_label, matrix=succ)
    else:
        keys = _signature_keys(table, label, cand)
        _, group = np.unique(keys, return_inverse=True)
        group = group.reshape(-1).astype(np.int64)
        group = _verify_split(group, cand, lambda rows: label[table[rows]], key=cand_label)
    num_groups = int(group.max()) + 1
    old = np.zeros(num_groups, dtype=np.int64)
    old[group] = label[cand]
    size = np.bincount(group, minlength=num_groups)
    num_labels = len(sizes)
    cand_per_label = np.bincount(label[cand], minlength=num_labels)
    only_candidates = sizes[old] == cand_per_label[old]
    # per old label, the largest group (ties: the lowest group id) keeps the label
    order = np.lexsort((np.arange(num_groups), -size, old))
    first_of_label = np.ones(num_groups, dtype=bool)
    first_of_label[1:] = old[order][1:] != old[order][:-1]
    keeps = np.zeros(num_groups, dtype=bool)
    keeps[order[first_of_label]] = True
    keeps &= only_candidates
    fresh = np.full(num_groups, -1, dtype=np.int64)
    movers = np.flatnonzero(~keeps)
    fresh[movers] = num_labels + np.arange(len(movers))
    moved = ~keeps[group]
    label[cand[moved]] = fresh[group[moved]]
    sizes = np.concatenate(
        [
            sizes - np.bincount(old[movers], weights=size[movers], minlength=num_labels).astype(np.int64),
            size[movers],
        ]
    )
    return label, sizes, cand[moved]


def _verify_split(
    group: np.ndarray,
    rows: np.ndarray,
    signature: Callable[[np.ndarray], np.ndarray] | None,
    key: np.ndarray | None = None,
    matrix: np.ndarray | None = None,
) -> np.ndarray:
    """Check that members of each hash group have equal signatures (`signature` of their rows, or
    row i of `matrix` for position i when the caller has them all, and `key`, one value per row,
    when given); split exactly if not (a 64-bit collision: astronomically rare, but a wrong merge
    would be a wrong mask). Only members other than their group's first are read (often most rows
    are alone in their group or are its first)."""
    if matrix is not None:
        def signature_at(pos: np.ndarray) -> np.ndarray:
            return matrix[pos]
    else:
        assert signature is not None

        def signature_at(pos: np.ndarray) -> np.ndarray:
            return signature(rows[pos])
    num_groups = int(group.max()) + 1 if len(group) else 0
    rep_pos = np.full(num_groups, -1, dtype=np.int64)
    rep_pos[group[::-1]] = np.arange(len(group))[::-1]  # first member of each group
    their_pos = rep_pos[group]
    bad = np.zeros(len(group), dtype=bool) if key is None else key != key[their_pos]
    members = np.flatnonzero(their_pos != np.arange(len(group)))
    for lo in range(0, len(members), _CACHE_BLOCK_ROWS):
        idx = members[lo : lo + _CACHE_BLOCK_ROWS]
        mine = signature_at(idx)
        theirs = signature_at(their_pos[idx])
        bad[idx] |= (mine != theirs).reshape(len(idx), -1).any(axis=1)
    if not bad.any():
        return group
    # exact grouping by the full signature (rows are small for the states involved)
    parts = [group[:, None], signature_at(np.arange(len(rows))).reshape(len(rows), -1)]
    if key is not None:
        parts.append(key[:, None])
    _, exact = np.unique(np.hstack([p.astype(np.int64) for p in parts]), axis=0, return_inverse=True)
    return exact.reshape(-1).astype(np.int64)


def _predecessors(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR of predecessors: `preds[ptr[t]:ptr[t+1]]` are the states with a transition into t."""
    n = table.shape[0]
    srcs: list[np.ndarray] = []
    dsts: list[np.ndarray] = []
    total = 0
    for lo in range(0, n, _CACHE_BLOCK_ROWS):
        # one edge per (source, target): a string body's dozens of classes lead to a few states
        part = np.sort(table[lo : lo + _CACHE_BLOCK_ROWS], axis=1)
        keep = part >= 0
        keep[:, 1:] &= part[:, 1:] != part[:, :-1]
        s, k = np.nonzero(keep)
        total += len(s)
        check_memory(12 * total, "the automaton's predecessor lists")
        srcs.append((s + lo).astype(np.int32))
        dsts.append(part[s, k])
        check_time()
    src = np.concatenate(srcs) if srcs else np.zeros(0, np.int32)
    dst = np.concatenate(dsts) if dsts else np.zeros(0, np.int32)
    order = np.argsort(dst, kind="stable")  # nearly sorted for tiled automata: timsort runs
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(dst, minlength=n), out=ptr[1:])
    return ptr, src[order]
