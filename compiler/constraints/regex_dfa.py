"""Regex -> minimized DFA, at the character level (`CharDFA`) or the byte level (`DFA` over UTF-8).

Parsing is interegular's (through `regex_parser`, which adds positions to every rejection); the
automaton is ours (`automaton`): Thompson NFA, subset construction, Hopcroft minimization.

Character level: the alphabet is the partition of all code points by the classes the regex mentions,
so a DFA over `[a-z]+@[^@]+` has four classes (a-z, @, other chars the second class allows, and the
"anything else" class), not 1.1 million symbols. `bounds`/`interval_class` map any code point to its
class (a sorted list of interval starts, like a run-length map).

Byte level: every character class is expanded into the UTF-8 byte sequences that encode it, so a
token ending in the middle of a multi-byte character lands in a real intermediate state. Token
indexes walk byte-level DFAs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .automaton import DEFAULT_MAX_STATES, DFA, NFA, build_nfa, determinize, minimize
from .charset import MAX_CODE_POINT, CharSet
from .dfa_ops import byte_dfa
from .errors import ConstraintError
from .limits import check_positions, describe_regex
from .regex_ast import Alt, Automaton, Chars, Concat, Node, Repeat, size
from .regex_parser import parse_fullmatch_node


@dataclass(frozen=True, eq=False)
class CharDFA:
    """A minimized DFA over character classes; plain arrays.

    `transitions[state, cls]` is the next state or -1 (dead). A code point `c` has class
    `interval_class[searchsorted(bounds, c, "right") - 1]`; `anything_else` is the class of the
    characters the regex never names (those above every range it spells out, e.g. `日` in
    `[a-z]+@[^@]+`).
    """

    initial: int
    accepting: np.ndarray  # bool[num_states]
    transitions: np.ndarray  # int32[num_states, num_classes]
    bounds: np.ndarray  # int32[num_intervals], bounds[0] == 0
    interval_class: np.ndarray  # int32[num_intervals]
    anything_else: int

    @property
    def num_states(self) -> int:
        return int(self.transitions.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.transitions.shape[1])

    @property
    def accepting_states(self) -> frozenset[int]:
        return frozenset(np.flatnonzero(self.accepting).tolist())

    def class_of(self, ch: str) -> int:
        return int(self.interval_class[np.searchsorted(self.bounds, ord(ch), side="right") - 1])

    def class_chars(self, cls: int) -> CharSet:
        """The characters of a class (for display and tests)."""
        ranges = []
        ends = list(self.bounds[1:].tolist()) + [MAX_CODE_POINT + 1]
        for lo, hi, c in zip(self.bounds.tolist(), ends, self.interval_class.tolist()):
            if c == cls:
                ranges.append((lo, hi - 1))
        return CharSet.from_ranges(ranges)

    def accepts(self, text: str) -> bool:
        if self.num_states == 0:
            return False
        s = self.initial
        for ch in text:
            s = int(self.transitions[s, self.class_of(ch)])
            if s < 0:
                return False
        return bool(self.accepting[s])


def _collect_charsets(node: Node, out: set[CharSet]) -> None:
    if isinstance(node, Chars):
        out.add(node.charset)
    elif isinstance(node, Concat):
        for p in node.parts:
            _collect_charsets(p, out)
    elif isinstance(node, Alt):
        for o in node.options:
            _collect_charsets(o, out)
    elif isinstance(node, Repeat):
        _collect_charsets(node.node, out)
    elif isinstance(node, Automaton):
        raise ConstraintError("a precompiled byte automaton has no character-level form")


def node_to_char_dfa(node: Node, max_states: int | None = DEFAULT_MAX_STATES) -> CharDFA:
    """Compile a syntax tree over the partition of code points its classes induce."""
    sets: set[CharSet] = set()
    _collect_charsets(node, sets)
    set_list = sorted(sets, key=lambda cs: cs.ranges)
    points = {0, MAX_CODE_POINT + 1}
    for cs in set_list:
        for lo, hi in cs.ranges:
            points.add(lo)
            points.add(hi + 1)
    bp = np.array(sorted(points), dtype=np.int64)
    num_intervals = len(bp) - 1
    signature = [0] * num_intervals
    for k, cs in enumerate(set_list):
        for lo, hi in cs.ranges:
            a = int(np.searchsorted(bp, lo))
            b = int(np.searchsorted(bp, hi + 1))
            for iv in range(a, b):
                signature[iv] |= 1 << k
    symbol_of_sig: dict[int, int] = {}
    interval_symbol = np.empty(num_intervals, dtype=np.int32)
    for iv, sig in enumerate(signature):
        interval_symbol[iv] = symbol_of_sig.setdefault(sig, len(symbol_of_sig))
    num_symbols = len(symbol_of_sig)
    mask_of: dict[CharSet, int] = {}
    for k, cs in enumerate(set_list):
        m = 0
        for sig, sym in symbol_of_sig.items():
            if sig >> k & 1:
                m |= 1 << sym
        mask_of[cs] = m

    def leaf(nfa: NFA, cs: CharSet, start: int, end: int) -> None:
        nfa.edges[start].append((mask_of[cs], end))

    nfa = NFA()
    start, final = nfa.state(), nfa.state()
    build_nfa(node, nfa, start, final, leaf)
    dfa = minimize(determinize(nfa, start, final, num_symbols, max_states))
    if dfa.num_states == 0:
        dfa = DFA(0, np.zeros(0, bool), np.zeros((0, 1), np.int32), np.zeros(num_symbols, np.int32))
    interval_class = dfa.symbol_class[interval_symbol]
    # Merge adjacent intervals of the same class.
    keep = np.ones(num_intervals, dtype=bool)
    keep[1:] = interval_class[1:] != interval_class[:-1]
    bounds = bp[:-1][keep].astype(np.int32)
    interval_class = interval_class[keep].astype(np.int32)
    # The class of characters the regex never names: the one holding the highest code points,
    # past every range any class spells out (negated classes included, by their complement).
    anything_else = int(interval_class[-1]) if dfa.num_states else -1
    return CharDFA(dfa.initial, dfa.accepting, dfa.transitions, bounds, interval_class, anything_else)


def parse_fullmatch(pattern: str) -> Node:
    """The syntax tree of `pattern` under `re.fullmatch` semantics (anchors at the ends are no-ops);
    over the `constraint_positions` budget once unrolled, a `ConstraintError`."""
    node = parse_fullmatch_node(pattern)
    n = size(node)
    try:
        check_positions(n)
    except ConstraintError as e:
        raise ConstraintError(f"{describe_regex(pattern)}: {e.message}") from None
    return node


def regex_to_char_dfa(pattern: str, max_states: int | None = DEFAULT_MAX_STATES) -> CharDFA:
    """The minimized character DFA accepting exactly the strings `re.fullmatch(pattern, s, re.ASCII)` matches."""
    return node_to_char_dfa(parse_fullmatch(pattern), max_states)


def regex_to_byte_dfa(pattern: str, max_states: int | None = DEFAULT_MAX_STATES) -> DFA:
    """The minimized byte DFA accepting exactly the UTF-8 encodings of the strings `pattern` fullmatches."""
    return byte_dfa(parse_fullmatch(pattern), max_states)
