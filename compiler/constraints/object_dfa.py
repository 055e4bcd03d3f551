"""An object's members as a linked DFA: each member's value placed once, not once per choice of the
members before it (see `linked_dfa`).

`SchemaCompiler.members_node` decides, member by member, whether each one is present; its memo is a
graph of decisions `(i, c, ...)` -> present (member i, then a decision) / absent (a decision) / the
end. Two decisions that reach the same later decision share it in the graph but not in the syntax
tree it returns; this module turns the graph into a DFA:

* a decision's *dispatch* reads the next member's key (a comma first when a member came before),
  out of the members it may write next (the present edges along its chain of absent edges), or
  the closing brace (when the chain reaches an accepting end). Keys are distinct JSON string
  literals, so the key trie is deterministic and its leaves say which member it is;
* a member is its key's `ws ":" ws` (`pre`), then its value and the whitespace after it, each a
  component: the value's automaton is placed as it is, not first copied into a block with the
  text around it (a 300k-state `Tags` array was copied once per level of nesting);
* the object's braces are components too, so the whole object is one placement.
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
    pre: Node,
    value: Callable[[int], Node],
    sep: Node,
    braces: tuple[Node, Node],
    max_states: int | None,
) -> DFA | None:
    """The DFA of the object's text from decision `root` (see the module docstring); `keys[i]` is
    member i's key as JSON text, `pre` the `ws ":" ws` after a key, `value(i)` member i's value and
    the whitespace after it, `sep` the comma and its whitespace, `braces` the opening brace with
    its whitespace and the closing brace. None when the pieces do not link deterministically (the
    caller keeps the tree)."""
    components: list[DFA] = []
    links: list[list[Link]] = []
    value_dfas: dict[int, DFA] = {}
    entries: dict[Hashable, Entry] = {}
    placed_members: dict[tuple[int, Hashable], int] = {}
    sep_dfa = byte_dfa(sep, max_states)
    pre_dfa = byte_dfa(pre, max_states)
    open_dfa, close_dfa = (byte_dfa(b, max_states) for b in braces)
    pending: list[tuple[int, int, Hashable]] = []  # (value component, member, decision after it)

    def add(dfa: DFA) -> int:
        components.append(dfa)
        links.append([])
        return len(components) - 1

    def finals(c: int) -> np.ndarray:
        return np.flatnonzero(components[c].accepting)

    close = add(close_dfa)  # its final states end the object: no links

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
        closing = close if end else None
        if not options:
            got = Entry(closing, False)
        else:
            trie = literal_set_dfa([keys[i] for i, _ in options], max_states)
            t = add(trie)
            for i, after in options:
                m = placed_members.get((i, after))
                if m is None:
                    if i not in value_dfas:
                        value_dfas[i] = byte_dfa(value(i), max_states)
                    m = placed_members[(i, after)] = add(pre_dfa)
                    v = add(value_dfas[i])
                    links[m].append(Link(finals(m), Entry(v, False)))
                    pending.append((v, i, after))
                leaf = trie.walk(keys[i])
                links[t].append(Link(np.array([leaf]), Entry(m, False)))
            if comma:
                s = add(sep_dfa)
                links[s].append(Link(finals(s), Entry(t, False)))
                got = Entry(s, False, also=closing)
            else:
                got = Entry(t, False, also=closing)
        entries[d] = got
        return got

    opening = add(open_dfa)
    links[opening].append(Link(finals(opening), entry(root)))
    while pending:
        v, i, after = pending.pop()
        links[v].append(Link(finals(v), entry(after)))
    return link(components, links, Entry(opening, False), max_states)
