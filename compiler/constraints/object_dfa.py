"""An object's members as a linked DFA: each member's value placed once, not once per choice of the
members before it (see `linked_dfa`).

`SchemaCompiler.members_node` decides, member by member, whether each one is present; its memo is a
graph of decisions `(i, c, ...)` -> present (member i, then a decision) / absent (a decision) / the
end. Two decisions that reach the same later decision share it in the graph but not in the syntax
tree it returns; this module turns the graph into a DFA:

* a decision's *dispatch* reads the next member's key (a comma first when a member came before),
  out of the members it may write next (the present edges along its chain of absent edges), or
  stops (the chain reaches an accepting end). Keys are distinct JSON string literals, so the key
  trie is deterministic and its leaves say which member it is;
* a member's *block* reads `ws ":" ws value ws` and links to the dispatch of the decision after it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

from .automaton import DFA
from .dfa_ops import byte_dfa, literal_set_dfa
from .linked_dfa import Entry, Link, link
from .regex_ast import Node


@dataclass(frozen=True)
class Decision:
    """One node of `members_node`'s graph: member `index` present (then `present`), absent (then
    `absent`), or, at the end (`index` = number of members), accepted iff `end`. `comma`: a member
    came before, so the next one is written after a comma."""

    index: int
    comma: bool
    present: Hashable | None
    absent: Hashable | None
    end: bool = False


def members_dfa(
    graph: dict[Hashable, Decision],
    root: Hashable,
    keys: list[bytes],
    block: Callable[[int], Node],
    sep: Node,
    max_states: int | None,
) -> DFA | None:
    """The DFA of the members' text from decision `root` (see the module docstring); `keys[i]` is
    member i's key as JSON text, `block(i)` its `ws ":" ws value ws`, `sep` the comma and its
    whitespace. None when the pieces do not link deterministically (the caller keeps the tree)."""
    components: list[DFA] = []
    links: list[list[Link]] = []
    block_dfas: dict[int, DFA] = {}
    entries: dict[Hashable, Entry] = {}
    placed_blocks: dict[tuple[int, Hashable], int] = {}
    sep_dfa = byte_dfa(sep, max_states)
    pending: list[tuple[int, int, Hashable]] = []  # (component, member, decision after it)

    def add(dfa: DFA) -> int:
        components.append(dfa)
        links.append([])
        return len(components) - 1

    def entry(d: Hashable) -> Entry:
        got = entries.get(d)
        if got is not None:
            return got
        options: list[tuple[int, Hashable]] = []
        end = False
        comma = graph[d].comma
        x: Hashable | None = d
        while x is not None:
            node = graph[x]
            if node.present is None and node.absent is None:
                end = node.end
                break
            if node.present is not None:
                options.append((node.index, node.present))
            x = node.absent
        if not options:
            got = Entry(None, end)
        else:
            trie = literal_set_dfa([keys[i] for i, _ in options], max_states)
            t = add(trie)
            for i, after in options:
                b = placed_blocks.get((i, after))
                if b is None:
                    if i not in block_dfas:
                        block_dfas[i] = byte_dfa(block(i), max_states)
                    b = placed_blocks[(i, after)] = add(block_dfas[i])
                    pending.append((b, i, after))
                leaf = trie.walk(keys[i])
                links[t].append(Link(np.array([leaf]), Entry(b, False)))
            if comma:
                s = add(sep_dfa)
                links[s].append(Link(np.flatnonzero(sep_dfa.accepting), Entry(t, False)))
                got = Entry(s, end)
            else:
                got = Entry(t, end)
        entries[d] = got
        return got

    initial = entry(root)
    while pending:
        b, i, after = pending.pop()
        links[b].append(Link(np.flatnonzero(components[b].accepting), entry(after)))
    return link(components, links, initial, max_states)
