"""Jump-forward: the text a DFA state forces, so the runtime can append it in one extend step.

A state is *forced* when exactly one byte value keeps it alive and it is not accepting (an accepting
state always has a second continuation: stopping). Chains of forced states spell a forced string;
e.g. after `{"name":"Ada",` in a schema whose next property is required, `"age":` is forced.

Only the next byte per state is stored (`forced_byte`, -1 where not forced); the string is the walk
along it. That is linear in the number of states however long the chains are, and walking is as fast
as reading. Strings are cut at the last complete UTF-8 character (the runtime appends text), and a
state in the middle of a multi-byte character forces nothing (its text would not be a string).
"""

from __future__ import annotations

import numpy as np

from .automaton import DFA

_BLOCK_ROWS = 8192  # rows per block of `forced_bytes`' pass (its temporaries stay in cache)


def forced_bytes(dfa: DFA) -> np.ndarray:
    """int16[num_states]: the only byte that keeps each state alive, or -1."""
    n = dfa.num_states
    out = np.full(n, -1, dtype=np.int16)
    if n == 0:
        return out
    class_size = np.bincount(dfa.symbol_class, minlength=dfa.num_classes)
    # one live byte = one live class, of one byte (classes are never empty); classes counted per
    # block of rows in integers: a float32 product by class sizes went through multithreaded BLAS,
    # 2-4x slower on 300k-state corpus tables when the other core is busy
    live_classes = np.empty(n, dtype=np.int16)  # at most 256 classes
    for lo in range(0, n, _BLOCK_ROWS):
        live = dfa.transitions[lo : lo + _BLOCK_ROWS] >= 0
        np.add.reduce(live.view(np.uint8), axis=1, dtype=np.int16, out=live_classes[lo : lo + _BLOCK_ROWS])
    candidates = np.flatnonzero((live_classes == 1) & ~dfa.accepting)
    if len(candidates):
        # the one live class of each candidate; -1 unless it has exactly one byte
        cls = np.argmax(dfa.transitions[candidates] >= 0, axis=1)
        byte_of_class = np.full(dfa.num_classes, -1, dtype=np.int16)
        single_bytes = np.flatnonzero(class_size[dfa.symbol_class] == 1)
        byte_of_class[dfa.symbol_class[single_bytes]] = single_bytes
        out[candidates] = byte_of_class[cls]
    return out


def mid_character(dfa: DFA) -> np.ndarray:
    """bool[num_states]: states inside a multi-byte UTF-8 character (only continuation bytes live)."""
    # a class is "continuation only" if none of its bytes is outside 0x80..0xBF
    cont_only = np.ones(dfa.num_classes, dtype=bool)
    cont_only[dfa.symbol_class[np.r_[0:0x80, 0xC0:0x100]]] = False
    n = dfa.num_states
    out = np.empty(n, dtype=bool)
    for lo in range(0, n, 1 << 16):  # by chunks (a table can have millions of rows)
        live = dfa.transitions[lo : lo + (1 << 16)] >= 0
        out[lo : lo + (1 << 16)] = live.any(axis=1) & ~(live & ~cont_only[None, :]).any(axis=1)
    return out & ~dfa.accepting


def jump_forward(dfa: DFA, forced: np.ndarray, mid_char: np.ndarray, state: int) -> tuple[bytes, int]:
    """The forced bytes from `state` (cut at a character boundary) and the state they lead to."""
    if state < 0 or mid_char[state]:
        return b"", state
    out = bytearray()
    s = state
    boundary_len, boundary_state = 0, state
    table, symbol_class = dfa.transitions, dfa.symbol_class
    while True:
        b = int(forced[s])
        if b < 0:
            break
        out.append(b)
        s = int(table[s, symbol_class[b]])
        if not mid_char[s]:
            boundary_len, boundary_state = len(out), s
    return bytes(out[:boundary_len]), boundary_state
