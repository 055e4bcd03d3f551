"""`DFA`: the plain-array deterministic automaton every constraint stage shares.

A leaf module (numpy only), so the syntax tree (`regex_ast`, whose `Automaton` node splices a DFA
in), the builders (`automaton`, `dfa_ops`) and the token level can all name it without importing
each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class DFA:
    """A trimmed deterministic automaton: plain arrays.

    `transitions[state, class]` is the next state or -1 (dead); `symbol_class[symbol]` is the class of
    a symbol (a byte for byte-level automata). Every state can reach an accepting state, so "not
    dead" means "is a prefix of some accepted string".
    """

    initial: int
    accepting: np.ndarray  # bool[num_states]
    transitions: np.ndarray  # int32[num_states, num_classes]
    symbol_class: np.ndarray  # int32[num_symbols]
    # Hints (never trusted, always verified by their users): blocks `(start, width, count)` of
    # `count` consecutive copies of `width` states, copy k+1 behaving like copy k shifted by `width`
    # (counted repetitions). `token_index.token_row_classes` uses them to skip the long middle.
    periods: tuple[tuple[int, int, int], ...] = ()

    @property
    def num_states(self) -> int:
        return int(self.transitions.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.transitions.shape[1])

    def is_empty(self) -> bool:
        return self.num_states == 0

    def walk(self, symbols: bytes | list[int], state: int | None = None) -> int:
        """The state after reading `symbols` (-1 once dead)."""
        s = self.initial if state is None else state
        if s < 0:
            return -1
        t, sc = self.transitions, self.symbol_class
        for b in symbols:
            s = int(t[s, sc[b]])
            if s < 0:
                return -1
        return s

    def accepts(self, symbols: bytes | list[int]) -> bool:
        s = self.walk(symbols)
        return s >= 0 and bool(self.accepting[s])

    def class_masks(self) -> list[int]:
        """Per class, the int bitmask of its symbols."""
        masks = [0] * self.num_classes
        for sym, c in enumerate(self.symbol_class.tolist()):
            masks[c] |= 1 << sym
        return masks
