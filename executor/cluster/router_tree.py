"""The router's approximate radix tree: which replica has seen which prompt prefixes.

A router cannot see its replicas' real KV caches, so it keeps its own picture (SGLang's cache-aware
router does the same): every prompt it routes is inserted under the replica it went to, and a new
prompt is matched against the tree to find the replica that saw the longest prefix of it. The picture
is approximate: a replica may have evicted a prefix the tree still lists.

One tree is shared by all replicas: a node holds a run of the key (characters of the prompt text, or
token ids) and, per replica that saw it, the time it was last used. A replica that owns a node owns
every node above it, so a replica's longest match is the deepest node on the path it owns.

Each replica's share is bounded (`max_size_per_replica` key elements): past it, the replica's least
recently used leaves are dropped, and nodes no replica owns any more leave the tree. Times are a
counter, not wall time, so the tree's behaviour is deterministic.

Keys are any sliceable sequence: `str` (the router matches prompt text) or a tuple of token ids.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable, Iterator
from typing import Any

__all__ = ["ApproxRadixTree"]

Key = Any  # str or tuple[int, ...]: anything sliceable whose slices compare by value


def _common_prefix_len(a: Key, b: Key) -> int:
    """Length of the longest common prefix of two sequences (slice compares, binary search)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class _Node:
    __slots__ = ("id", "key", "children", "parent", "owners")

    def __init__(self, node_id: int, key: Key, parent: _Node | None) -> None:
        self.id = node_id
        self.key = key
        self.children: dict[Hashable, _Node] = {}  # by the child's first key element
        self.parent = parent
        self.owners: dict[Hashable, int] = {}  # replica -> last access (counter)


class ApproxRadixTree:
    """A radix tree over prompt keys, each node tagged with the replicas that saw it."""

    def __init__(self, max_size_per_replica: int = 1 << 20) -> None:
        if not isinstance(max_size_per_replica, int) or max_size_per_replica < 1:
            raise ValueError(f"max_size_per_replica must be a positive integer, not {max_size_per_replica!r}")
        self.max_size_per_replica = max_size_per_replica
        self._ids = itertools.count()
        self._clock = 0
        self.root = _Node(next(self._ids), "", None)
        self._sizes: dict[Hashable, int] = {}  # replica -> key elements it owns
        self._owned: dict[Hashable, set[_Node]] = {}  # replica -> its nodes (for eviction)

    # -- queries ------------------------------------------------------------------------------------
    def size(self, replica: Hashable) -> int:
        """Key elements (characters or tokens) the tree lists under `replica`."""
        return self._sizes.get(replica, 0)

    def replicas(self) -> list[Hashable]:
        return list(self._sizes)

    def num_nodes(self) -> int:
        return sum(1 for _ in self._nodes()) - 1

    def total_size(self) -> int:
        """Key elements held by the tree's nodes (shared prefixes counted once)."""
        return sum(len(n.key) for n in self._nodes())

    def match(self, key: Key) -> dict[Hashable, int]:
        """For every replica that saw a prefix of `key`, the length of its longest one. A pure
        lookup: no access time changes (routing decides first, then `insert` records the choice)."""
        matched: dict[Hashable, int] = {}
        node, pos = self.root, 0
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                break
            m = _common_prefix_len(child.key, key[pos : pos + len(child.key)])
            for replica in child.owners:
                matched[replica] = pos + m
            pos += m
            if m < len(child.key):
                break
            node = child
        return matched

    # -- updates ------------------------------------------------------------------------------------
    def insert(self, key: Key, replica: Hashable) -> None:
        """Record that `replica` saw `key` (now), then trim the replica back under its bound."""
        if not key:
            return
        self._clock += 1
        now = self._clock
        owned = self._owned.setdefault(replica, set())
        self._sizes.setdefault(replica, 0)
        node, pos = self.root, 0
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                child = _Node(next(self._ids), key[pos:], node)
                node.children[key[pos]] = child
            else:
                m = _common_prefix_len(child.key, key[pos : pos + len(child.key)])
                if m < len(child.key):
                    child = self._split(child, m)
            if replica not in child.owners:
                self._sizes[replica] += len(child.key)
                owned.add(child)
            child.owners[replica] = now
            pos += len(child.key)
            node = child
        if self._sizes[replica] > self.max_size_per_replica:
            self._evict(replica, self._sizes[replica] - self.max_size_per_replica)

    def _split(self, child: _Node, m: int) -> _Node:
        """Split `child` after `m` elements; the new upper node keeps the owners (and their times)."""
        parent = child.parent
        assert parent is not None and 0 < m < len(child.key)
        upper = _Node(next(self._ids), child.key[:m], parent)
        upper.owners = dict(child.owners)
        for replica in upper.owners:
            self._owned[replica].add(upper)
        upper.children[child.key[m]] = child
        parent.children[child.key[0]] = upper
        child.parent = upper
        child.key = child.key[m:]
        return upper

    def _is_leaf_of(self, node: _Node, replica: Hashable) -> bool:
        return not any(replica in c.owners for c in node.children.values())

    def _drop(self, node: _Node, replica: Hashable) -> None:
        """Take `replica` off `node` (a leaf of its share); a node nobody owns leaves the tree."""
        del node.owners[replica]
        self._owned[replica].discard(node)
        self._sizes[replica] -= len(node.key)
        if not node.owners and not node.children:
            parent = node.parent
            assert parent is not None
            del parent.children[node.key[0]]
            node.parent = None

    def _evict(self, replica: Hashable, num: int) -> None:
        """Drop `replica`'s least recently used leaves until `num` key elements are gone."""
        heap = [(n.owners[replica], n.id, n) for n in self._owned[replica] if self._is_leaf_of(n, replica)]
        heapq.heapify(heap)
        dropped = 0
        while heap and dropped < num:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            dropped += len(leaf.key)
            self._drop(leaf, replica)
            if parent is not None and parent is not self.root and replica in parent.owners \
                    and self._is_leaf_of(parent, replica):
                heapq.heappush(heap, (parent.owners[replica], parent.id, parent))

    def remove_replica(self, replica: Hashable) -> None:
        """Forget everything `replica` saw (it died or left)."""
        for node in sorted(self._owned.get(replica, ()), key=self._depth, reverse=True):  # leaves first
            self._drop(node, replica)
        self._owned.pop(replica, None)
        self._sizes.pop(replica, None)

    # -- inspection ---------------------------------------------------------------------------------
    @staticmethod
    def _depth(node: _Node) -> int:
        depth = 0
        while node.parent is not None:
            node, depth = node.parent, depth + 1
        return depth

    def _nodes(self) -> Iterator[_Node]:
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def check_integrity(self) -> None:
        """Raise AssertionError naming the broken invariant (for tests)."""
        sizes: dict[Hashable, int] = {}
        for node in self._nodes():
            if node is self.root:
                continue
            assert node.key, f"node {node.id} has an empty key"
            assert node.owners or node.children, f"node {node.id} has no owner and no children"
            parent = node.parent
            assert parent is not None and parent.children.get(node.key[0]) is node, f"node {node.id} is detached"
            for replica in node.owners:
                sizes[replica] = sizes.get(replica, 0) + len(node.key)
                assert node in self._owned[replica], f"node {node.id} missing from {replica!r}'s nodes"
                if parent is not self.root:
                    assert replica in parent.owners, f"{replica!r} owns node {node.id} but not its parent"
        for replica, size in self._sizes.items():
            assert sizes.get(replica, 0) == size, f"{replica!r}: counted {sizes.get(replica, 0)}, recorded {size}"
            assert size <= self.max_size_per_replica, f"{replica!r} holds {size} > {self.max_size_per_replica}"
