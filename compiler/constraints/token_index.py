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

from dataclasses import dataclass

import numpy as np

from .automaton import DFA
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
    """Per DFA state, the allowed tokens: a dense bitmask (`dense_id[s] >= 0`, a row of
    `dense_masks`, bit-packed little-endian) or a sorted id list `sparse_tokens[sparse_ptr[s]:
    sparse_ptr[s+1]]`."""

    vocab_size: int
    dense_id: np.ndarray  # int32[S]
    dense_masks: np.ndarray  # uint8[D, ceil(V/8)]
    sparse_ptr: np.ndarray  # int64[S+1]
    sparse_tokens: np.ndarray  # int32[...]

    def allowed(self, state: int) -> np.ndarray:
        d = int(self.dense_id[state])
        if d >= 0:
            bits = np.unpackbits(self.dense_masks[d], count=self.vocab_size, bitorder="little")
            return np.flatnonzero(bits).astype(np.int32)
        return self.sparse_tokens[self.sparse_ptr[state] : self.sparse_ptr[state + 1]]

    @property
    def nbytes(self) -> int:
        return int(
            self.dense_id.nbytes
            + self.dense_masks.nbytes
            + self.sparse_ptr.nbytes
            + self.sparse_tokens.nbytes
        )


def build_token_index(dfa: DFA, vocab: Vocabulary) -> TokenIndex:
    trie = vocabulary_trie(vocab)
    num_states = dfa.num_states
    vocab_size = vocab.size
    if num_states == 0 or trie.num_nodes == 0:
        return TokenIndex(
            vocab_size,
            np.full(num_states, -1, np.int32),
            np.zeros((0, (vocab_size + 7) // 8), np.uint8),
            np.zeros(num_states + 1, np.int64),
            np.zeros(0, np.int32),
        )
    num_classes = dfa.num_classes
    dead = num_states
    # Transition table with an explicit dead state, flattened for 1-D gathers.
    table = np.empty((num_states + 1, num_classes), dtype=np.int32)
    table[:num_states] = np.where(dfa.transitions >= 0, dfa.transitions, dead)
    table[dead] = dead
    flat_table = table.ravel()
    node_cls = dfa.symbol_class[trie.node_byte].astype(np.int32)
    roots = np.arange(trie.level_start[0], trie.level_start[1])
    first = table[:num_states][:, node_cls[roots]]  # [S, num_roots]
    first_alive = first != dead
    estimate = first_alive @ trie.subtree_size[roots]
    wide = estimate >= _DENSE_WALK_MIN_NODES

    words = (vocab_size + 7) // 8
    pair_states: list[np.ndarray] = []
    pair_tokens: list[np.ndarray] = []
    dense_states: list[np.ndarray] = []
    dense_packed: list[np.ndarray] = []
    # -- dense walk, batched by the set of allowed first bytes ------------------------------
    for members, start in _dense_batches(np.flatnonzero(wide), first_alive, trie.subtree_size[roots]):
        masks = _dense_walk(members, roots[start], trie, flat_table, node_cls, num_classes, dead, vocab_size)
        is_dense = np.count_nonzero(masks, axis=0) >= DENSE_MIN_TOKENS
        if is_dense.any():
            dense_states.append(members[is_dense])
            dense_packed.append(
                np.packbits(np.ascontiguousarray(masks[:, is_dense].T), axis=1, bitorder="little")
            )
        if not is_dense.all():
            col, tok = np.nonzero(np.ascontiguousarray(masks[:, ~is_dense].T))
            pair_states.append(members[~is_dense][col])
            pair_tokens.append(tok)
    # -- sparse walk for the other states ---------------------------------------------------
    s_state, s_token = _sparse_walk(
        np.flatnonzero(~wide), roots, first, trie, flat_table, node_cls, num_classes, dead
    )
    counts = np.bincount(s_state, minlength=num_states)
    heavy = counts[s_state] >= DENSE_MIN_TOKENS
    if heavy.any():
        heavy_states = np.flatnonzero(counts >= DENSE_MIN_TOKENS)
        bits = np.zeros((len(heavy_states), vocab_size), dtype=bool)
        bits[np.searchsorted(heavy_states, s_state[heavy]), s_token[heavy]] = True
        dense_states.append(heavy_states)
        dense_packed.append(np.packbits(bits, axis=1, bitorder="little"))
    pair_states.append(s_state[~heavy])
    pair_tokens.append(s_token[~heavy])
    # -- assemble: deduplicated bitmasks, and a CSR of sorted token ids ---------------------
    dense_id = np.full(num_states, -1, dtype=np.int32)
    rows: list[np.ndarray] = []
    seen: dict[bytes, int] = {}
    for states_part, packed in zip(dense_states, dense_packed):
        for s, row in zip(states_part.tolist(), packed):
            key = row.tobytes()
            idx = seen.get(key)
            if idx is None:
                idx = seen[key] = len(rows)
                rows.append(row)
            dense_id[s] = idx
    dense_masks = np.stack(rows) if rows else np.zeros((0, words), dtype=np.uint8)
    pair_state = np.concatenate(pair_states)
    pair_token = np.concatenate(pair_tokens)
    order = np.lexsort((pair_token, pair_state))
    pair_state, pair_token = pair_state[order], pair_token[order]
    sparse_ptr = np.searchsorted(pair_state, np.arange(num_states + 1)).astype(np.int64)
    return TokenIndex(vocab_size, dense_id, dense_masks, sparse_ptr, pair_token.astype(np.int32))


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
    dead: int,
    vocab_size: int,
) -> np.ndarray:
    """Walk the subtrees under `start_nodes` from every state of `states` at once; bool[V, G].

    Node-major layout (`cur[node, state]`) keeps the per-level gathers and scatters on contiguous
    rows.
    """
    masks_t = np.zeros((vocab_size, len(states)), dtype=bool)
    nodes = start_nodes
    cur = flat_table[node_cls[nodes][:, None] + states[None, :] * num_classes]
    while len(nodes):
        alive = cur != dead
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
        cur = flat_table[cur[parent_pos] * num_classes + node_cls[children][:, None]]
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
    dead: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Frontier walk of (state, node) pairs; returns the allowed (state, token) pairs."""
    out_s: list[np.ndarray] = []
    out_t: list[np.ndarray] = []
    if len(states) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sub = first[states]
    si, ri = np.nonzero(sub != dead)
    src = states[si]
    nodes = roots[ri]
    cur = sub[si, ri]
    while len(src):
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
        nxt = flat_table[cur[parent_pos] * num_classes + node_cls[children]]
        keep = nxt != dead
        src = src[parent_pos[keep]]
        nodes = children[keep]
        cur = nxt[keep]
    if not out_s:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_s), np.concatenate(out_t)
