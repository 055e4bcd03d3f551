"""Byte DFAs assembled from components that are each placed once and linked by their final states.

A syntax tree is a tree: a part that several alternatives continue with is copied into each of
them, and the DFA built from the tree holds every copy (the subset construction would merge them,
but it is too slow for large parts, and the direct tiling of `dfa_ops` copies). An object's
optional properties are the case that matters: the members after the first present one are the
same whichever member came first, so a tree writes member k into every alternative for the first
member before it (n optional members: ~n^2/2 member copies; 3 copies of 480k states for
`cfn-aws-kinesis-streamconsumer`). Here each component is placed once; a final state of a
component is *linked* to an entry (another component's start transitions, and whether stopping
there is accepted), which is how `dfa_ops.concat_dfas` joins parts, with the target chosen per
final state. The result is deterministic when every link's target starts with bytes its final
state does not continue with; `link` returns None otherwise (the caller falls back to the tree).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .automaton import DFA
from .dfa_ops import joint_classes, new_table, place
from .limits import check_memory, check_states, check_time


@dataclass(frozen=True)
class Entry:
    """Where a link leads: component `component`'s start transitions (None: no transitions), and
    whether the linked state accepts (the text may stop there). `also`: a second component whose
    start transitions are entered too, on its own first bytes (an object's closing brace next to
    its next key: the two must start with different bytes, or `link` refuses)."""

    component: int | None
    accepts: bool
    also: int | None = None


@dataclass(frozen=True)
class Link:
    """The final states `states` (local to their component) continue as `entry`."""

    states: np.ndarray
    entry: Entry


def link(
    components: Sequence[DFA],
    links: Sequence[Sequence[Link]],
    initial: Entry,
    max_states: int | None = None,
) -> DFA | None:
    """One DFA of `components` (each placed once), with the final states of component j continuing
    as `links[j]` says and the initial state entering `initial`. A final state with no link stays
    accepting and stops. None when some link would make the automaton nondeterministic."""
    if not components:
        return DFA(0, np.array([initial.accepts]), np.full((1, 1), -1, np.int32), np.zeros(256, np.int32))
    symbol_class, maps = joint_classes(components)
    num_classes = len(maps[0])
    sizes = [c.num_states for c in components]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    total = int(offsets[-1]) + 1  # + the initial state
    check_states(total, max_states)
    check_memory(4 * total * num_classes, "the linked automaton's transition table")
    table = new_table(total, num_classes)
    accepting = np.zeros(total, dtype=bool)
    starts: list[np.ndarray] = []
    for j, comp in enumerate(components):
        block = table[offsets[j] : offsets[j + 1]]
        place(block, comp.transitions, maps[j], int(offsets[j]))
        accepting[offsets[j] : offsets[j + 1]] = comp.accepting
        starts.append(block[comp.initial].copy())
        check_time()
    dead = np.full(num_classes, -1, dtype=np.int32)
    merged: dict[tuple[int, int], np.ndarray] = {}

    def entry_row(e: Entry) -> np.ndarray:
        row = dead if e.component is None else starts[e.component]
        if e.also is None:
            return row
        key = (-1 if e.component is None else e.component, e.also)
        if key not in merged:
            merged[key] = np.where(row >= 0, row, starts[e.also])
        return merged[key]

    for e in [initial] + [lk.entry for comp_links in links for lk in comp_links]:
        for c in (e.component, e.also):
            if c is not None and components[c].accepting[components[c].initial]:
                return None  # entering it could also stop or go on: links do not chain
        if e.component is not None and e.also is not None:
            if ((starts[e.component] >= 0) & (starts[e.also] >= 0)).any():
                return None  # the two components start with a common byte

    for j, comp_links in enumerate(links):
        for lk in comp_links:
            rows = np.asarray(lk.states, dtype=np.int64) + offsets[j]
            if not len(rows):
                continue
            if not accepting[rows].all():
                raise ValueError("a link starts from a state that is not final")
            row = entry_row(lk.entry)
            live = np.flatnonzero(row >= 0)
            if len(live):
                if (table[np.ix_(rows, live)] >= 0).any():
                    return None  # the final state continues with a byte the entry starts with
                table[np.ix_(rows, live)] = row[live]
            accepting[rows] = lk.entry.accepts
    table[-1] = entry_row(initial)
    accepting[-1] = initial.accepts
    periods = tuple(
        (a + int(offsets[j]), w, k) for j, comp in enumerate(components) for a, w, k in comp.periods
    )
    return DFA(total - 1, accepting, table, symbol_class, periods)
