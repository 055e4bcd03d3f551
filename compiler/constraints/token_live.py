"""Dead ends at the token level: states no token sequence of the vocabulary can finish from.

The byte DFA is trimmed: every state can reach acceptance through *some* bytes. A vocabulary may
lack bytes entirely (SmolLM2 has no token containing 0x04, 0x06, 0xF1, 0xF2, ...), so a state whose
every completion needs such a byte is a dead end for the model: `{"enum": ["\\U00040000"]}` would
let it write `"` and then allow nothing. `prune_dead_ends` removes those states from the DFA before
the token index is built, so a token leading only into them is masked, and forced text (computed from
the pruned table) never leads into one. A constraint whose initial state is such a state is refused.

Exactness: the pass works on bytes a token can produce. When every such byte is also a token by
itself (true for byte-level BPE vocabularies), a state is alive for tokens iff it is alive for those
bytes, so the pruning is exact. Otherwise (a byte that only occurs inside longer tokens) the pass
still removes every state no token sequence can finish from, but it may keep a state that only a
longer token could finish through a missing split (see docs/constraints.md).

Cost: one pass over the table when no transition uses a byte the vocabulary lacks (the common case);
else a few passes that strip chains of states left without a way out, plus an exact backward search
for tables of up to `EXACT_STATES` states (a dead *cycle* in a larger table is not detected).
"""

from __future__ import annotations

import numpy as np

from .automaton import DFA
from .errors import ConstraintError
from .limits import check_memory, check_time

EXACT_STATES = 200_000
_CHUNK = 1 << 16


def producible_bytes(vocab_bytes: np.ndarray) -> np.ndarray:
    """bool[256]: the bytes that occur in at least one (non-special) token."""
    out = np.zeros(256, dtype=bool)
    out[np.unique(vocab_bytes)] = True
    return out


def _alive_rows(table: np.ndarray, kept: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """bool[S]: states with a transition on a kept class to a state not in `dead`."""
    n = table.shape[0]
    out = np.zeros(n, dtype=bool)
    dead_ext = np.append(dead, True)  # index -1: the dead state
    for lo in range(0, n, _CHUNK):
        part = table[lo : lo + _CHUNK][:, kept]
        out[lo : lo + _CHUNK] = (~dead_ext[part]).any(axis=1)
        check_time()
    return out


def _exact_live(table: np.ndarray, kept: np.ndarray, accepting: np.ndarray) -> np.ndarray:
    """Backward search from the accepting states over kept transitions (one numpy step per level)."""
    n = table.shape[0]
    sub = table[:, kept]
    src, col = np.nonzero(sub >= 0)
    dst = sub[src, col]
    check_memory(16 * len(src), "the dead-end search's edge list")
    order = np.argsort(dst, kind="stable")
    src, dst = src[order], dst[order]
    ptr = np.searchsorted(dst, np.arange(n + 1))
    live = accepting.copy()
    frontier = np.flatnonzero(live)
    while len(frontier):
        counts = ptr[frontier + 1] - ptr[frontier]
        idx = np.repeat(ptr[frontier] - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
        preds = np.unique(src[idx])
        frontier = preds[~live[preds]]
        live[frontier] = True
        check_time()
    return live


def prune_dead_ends(dfa: DFA, producible: np.ndarray) -> DFA:
    """`dfa` without the states from which no string of producible bytes is accepted (see the module
    docstring); raises `ConstraintError` if that is the initial state. Returns `dfa` itself when
    nothing is dead."""
    n = dfa.num_states
    if n == 0:
        return dfa
    # a class is kept when some byte of it is producible (all its bytes move alike)
    kept = np.zeros(dfa.num_classes, dtype=bool)
    kept[dfa.symbol_class[producible]] = True
    table = dfa.transitions
    if kept.all():
        return dfa
    lost = np.flatnonzero(~kept)
    uses_lost = False
    for lo in range(0, n, _CHUNK):
        if (table[lo : lo + _CHUNK][:, lost] >= 0).any():
            uses_lost = True
            break
    if not uses_lost:
        return dfa
    kept_cols = np.flatnonzero(kept)
    if n <= EXACT_STATES:
        dead = ~_exact_live(table, kept_cols, dfa.accepting)
    else:
        # strip chains of states left without a transition to a state not known dead
        dead = np.zeros(n, dtype=bool)
        while True:
            fresh = ~dfa.accepting & ~dead & ~_alive_rows(table, kept_cols, dead)
            if not fresh.any():
                break
            dead |= fresh
    if not dead.any():
        return dfa
    if dead[dfa.initial]:
        missing = np.flatnonzero(~producible)
        shown = " ".join(f"{b:02X}" for b in missing[:24]) + (" ..." if len(missing) > 24 else "")
        raise ConstraintError(
            "no token sequence of this vocabulary can produce a string that matches the constraint "
            f"(every match needs a byte that no token contains; missing bytes: {shown})"
        )
    check_memory(table.nbytes, "the transition table without dead ends")
    out = np.empty_like(table)
    dead_ext = np.append(dead, True)
    for lo in range(0, n, _CHUNK):
        part = table[lo : lo + _CHUNK]
        out[lo : lo + _CHUNK] = np.where(dead_ext[part], -1, part)
        check_time()
    out[dead] = -1
    accepting = dfa.accepting & ~dead
    return DFA(dfa.initial, accepting, out, dfa.symbol_class, dfa.periods)
