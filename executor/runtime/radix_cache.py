"""The radix prefix cache: a radix tree over token ids whose edges carry KV slot indices.

Every path from the root spells a token prefix that some earlier request computed; the slots along
the path hold that prefix's KV. A new request matches its longest cached prefix and only computes
the rest (the RadixAttention idea). Nodes on paths used by running requests are locked (reference
counted up to the root) and cannot be evicted; unlocked leaves are evicted least recently used
first when KV memory runs short.

The tree only records which slots hold which prefix; it never allocates or frees a slot. Eviction
and `reset` return the slots they dropped and the caller (`executor/runtime/kv_manager.py`, the one owner of
KV memory) gives them back to the allocator.

Access times are a monotonic counter, not wall time, so eviction order is deterministic.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from executor.runtime.memory import TokenSlotAllocator

__all__ = ["PrefixMatch", "RadixCache", "RadixCacheCorrupt", "RadixCacheError", "RadixNode"]

_EMPTY_SLOTS = torch.empty(0, dtype=torch.int64)


class RadixCacheError(RuntimeError):
    """Misuse of the radix cache (e.g. unlocking a node more often than it was locked)."""


class RadixCacheCorrupt(RadixCacheError):
    """`check_integrity` found a broken invariant; the message names the node."""


class RadixNode:
    """One edge of the tree: a run of tokens (`key`) and their KV slots (`value`, same length)."""

    __slots__ = ("id", "children", "parent", "key", "value", "lock_ref", "last_access")

    def __init__(
        self,
        node_id: int,
        key: list[int],
        value: torch.Tensor,
        parent: RadixNode | None,
        last_access: int,
    ) -> None:
        self.id = node_id
        self.children: dict[int, RadixNode] = {}  # keyed by the child's first token
        self.parent = parent
        self.key = key
        self.value = value
        self.lock_ref = 0
        self.last_access = last_access

    def __repr__(self) -> str:
        return f"RadixNode(id={self.id}, len={len(self.key)}, lock_ref={self.lock_ref})"


@dataclass(frozen=True, eq=False)
class PrefixMatch:
    """Result of `match_prefix`: the cached prefix's slots and the node that ends it.

    `last_node` is the root when nothing matched. Lock it for as long as `slots` are in use.
    """

    slots: torch.Tensor
    last_node: RadixNode
    num_cached_tokens: int


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists.

    Compares slices (C speed) and binary-searches the first mismatch, instead of a per-token loop.
    """
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _as_token_list(tokens: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(tokens, torch.Tensor):
        return tokens.reshape(-1).tolist()
    return tokens if isinstance(tokens, list) else list(tokens)


class RadixCache:
    """Radix tree from token prefixes to KV slots, with locks and LRU eviction of unlocked leaves."""

    def __init__(self) -> None:
        self._ids = itertools.count()
        self._clock = 0
        self.root = self._new_root()
        self._evictable_size = 0
        self._protected_size = 0

    def _new_root(self) -> RadixNode:
        root = RadixNode(next(self._ids), [], _EMPTY_SLOTS, None, self._clock)
        root.lock_ref = 1  # the root is never evicted; its count is not part of the lock invariant
        return root

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    # ------------------------------------------------------------------ sizes

    def evictable_size(self) -> int:
        """Tokens held by unlocked nodes (evictable once they become leaves)."""
        return self._evictable_size

    def protected_size(self) -> int:
        """Tokens held by locked nodes."""
        return self._protected_size

    def total_size(self) -> int:
        """Tokens (= KV slots) held by the tree."""
        return self._evictable_size + self._protected_size

    # ------------------------------------------------------------------ lookup

    def match_prefix(self, tokens: Sequence[int] | torch.Tensor) -> PrefixMatch:
        """Longest cached prefix of `tokens`.

        If the match ends inside a node, the node is split so that `last_node` ends exactly at the
        match. Every node on the matched path gets a fresh access time.
        """
        tokens = _as_token_list(tokens)
        now = self._tick()
        node = self.root
        node.last_access = now
        pieces: list[torch.Tensor] = []
        pos = 0
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None:
                break
            m = _common_prefix_len(child.key, tokens[pos : pos + len(child.key)])
            if m < len(child.key):
                child = self._split(child, m)
            child.last_access = now
            pieces.append(child.value)
            pos += m
            node = child
        slots = torch.cat(pieces) if pieces else _EMPTY_SLOTS.clone()
        return PrefixMatch(slots=slots, last_node=node, num_cached_tokens=pos)

    def cached_prefix_len(self, tokens: Sequence[int] | torch.Tensor) -> int:
        """How many leading tokens of `tokens` are cached: a pure check, unlike `match_prefix` it
        neither splits nodes nor refreshes access times (for schedulers ranking waiting requests)."""
        tokens = _as_token_list(tokens)
        node = self.root
        pos = 0
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None:
                break
            m = _common_prefix_len(child.key, tokens[pos : pos + len(child.key)])
            pos += m
            if m < len(child.key):
                break
            node = child
        return pos

    def _split(self, child: RadixNode, m: int) -> RadixNode:
        """Split `child` after its first `m` tokens; returns the new upper node.

        The existing node object keeps the tail, so anyone holding it (a request that locked it)
        still holds the same path end; the new upper node inherits its lock count and access time.
        """
        assert 0 < m < len(child.key)
        parent = child.parent
        assert parent is not None
        upper = RadixNode(next(self._ids), child.key[:m], child.value[:m], parent, child.last_access)
        upper.lock_ref = child.lock_ref
        upper.children[child.key[m]] = child
        parent.children[child.key[0]] = upper
        child.parent = upper
        child.key = child.key[m:]
        child.value = child.value[m:]
        return upper

    # ------------------------------------------------------------------ insert

    def insert(self, tokens: Sequence[int] | torch.Tensor, slots: torch.Tensor) -> int:
        """Cache `tokens` whose KV lives in `slots` (`slots[i]` holds token i).

        Returns `n`, the number of leading tokens that were ALREADY in the tree. Ownership contract:
        - positions `[n, len(tokens))`: the tree takes ownership of `slots[n:]`; the caller must no
          longer free them (they come back through `evict`);
        - positions `[0, n)`: the tree keeps its own slots and does not store `slots[:n]`. The caller
          still owns every slot in `slots[:n]` that it allocated itself and must free those
          duplicates. Slots it got from an earlier `match_prefix` belong to the tree: it must not
          free them. Typical use (`KVManager.cache_progress`): matched `k` tokens (and locked
          `last_node` so they stayed cached), allocated the rest, then `n = insert(...)`, and
          `allocator.free(slots[k:n])`.
        A slot is never stored twice: only `slots[n:]` enter the tree, and `n` covers everything
        already cached.
        """
        tokens = _as_token_list(tokens)
        if slots.dim() != 1 or slots.numel() != len(tokens):
            raise ValueError(f"insert: {len(tokens)} tokens but slots has shape {tuple(slots.shape)}")
        slots = slots.to(device="cpu", dtype=torch.int64)
        now = self._tick()
        node = self.root
        node.last_access = now
        pos = 0
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None:
                leaf = RadixNode(next(self._ids), tokens[pos:], slots[pos:].clone(), node, now)
                node.children[tokens[pos]] = leaf
                self._evictable_size += len(leaf.key)
                return pos
            m = _common_prefix_len(child.key, tokens[pos : pos + len(child.key)])
            if m < len(child.key):
                child = self._split(child, m)
            child.last_access = now
            pos += m
            node = child
        return pos

    # ------------------------------------------------------------------ locks

    def lock(self, node: RadixNode) -> None:
        """Protect the path root..node from eviction (one reference per call)."""
        while node is not self.root:
            if node.lock_ref == 0:
                self._evictable_size -= len(node.key)
                self._protected_size += len(node.key)
            node.lock_ref += 1
            assert node.parent is not None
            node = node.parent

    def unlock(self, node: RadixNode) -> None:
        """Drop one reference taken by `lock(node)`."""
        # Check first so a bad unlock changes nothing.
        walk = node
        while walk is not self.root:
            if walk.lock_ref <= 0:
                raise RadixCacheError(
                    f"unlock of node {walk.id}, which is not locked (lock_ref={walk.lock_ref})"
                )
            assert walk.parent is not None, f"node {walk.id} is detached from the tree"
            walk = walk.parent
        while node is not self.root:
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._protected_size -= len(node.key)
                self._evictable_size += len(node.key)
            assert node.parent is not None
            node = node.parent

    # ------------------------------------------------------------------ eviction

    def _nodes(self) -> Iterator[RadixNode]:
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def evict(self, num_tokens: int) -> torch.Tensor:
        """Drop least recently used unlocked leaves until `num_tokens` slots are dropped or nothing is
        evictable. Returns the dropped slots (may be more than `num_tokens`: leaves go whole), which
        the caller must free."""
        if num_tokens <= 0:
            return _EMPTY_SLOTS.clone()
        heap = [
            (n.last_access, n.id, n)
            for n in self._nodes()
            if not n.children and n.lock_ref == 0 and n is not self.root
        ]
        heapq.heapify(heap)
        dropped: list[torch.Tensor] = []
        num_dropped = 0
        while heap and num_dropped < num_tokens:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            assert parent is not None
            dropped.append(leaf.value)
            del parent.children[leaf.key[0]]
            leaf.parent = None
            num_dropped += len(leaf.key)
            self._evictable_size -= len(leaf.key)
            if not parent.children and parent.lock_ref == 0 and parent is not self.root:
                heapq.heappush(heap, (parent.last_access, parent.id, parent))
        return torch.cat(dropped) if dropped else _EMPTY_SLOTS.clone()

    def held_slots(self) -> torch.Tensor:
        """Every slot the tree holds (for ownership checks)."""
        held = [n.value for n in self._nodes() if n is not self.root]
        return torch.cat(held) if held else _EMPTY_SLOTS.clone()

    # ------------------------------------------------------------------ maintenance

    def reset(self) -> torch.Tensor:
        """Empty the tree; returns every slot it held (the caller must free them). Refuses while any
        node is locked."""
        if self._protected_size:
            raise RadixCacheError(
                f"reset with {self._protected_size} tokens still locked by running requests"
            )
        held = self.held_slots()
        self.root = self._new_root()
        self._evictable_size = 0
        self._protected_size = 0
        return held

    def check_integrity(self, allocator: TokenSlotAllocator | None = None) -> None:
        """Verify every invariant of the tree; raises `RadixCacheCorrupt` naming the bad node.

        With the `allocator` the slots come from, also checks that every slot in the tree is in its
        range and not marked free."""
        evictable = protected = 0
        held: list[torch.Tensor] = []
        for node in self._nodes():
            is_root = node is self.root
            where = f"node {node.id} (key starts {node.key[:8]})"
            if (
                not isinstance(node.value, torch.Tensor)
                or node.value.dtype != torch.int64
                or node.value.dim() != 1
            ):
                raise RadixCacheCorrupt(f"{where}: value is not a 1-D int64 tensor")
            if len(node.key) != node.value.numel():
                raise RadixCacheCorrupt(
                    f"{where}: key has {len(node.key)} tokens but value {node.value.numel()} slots"
                )
            if not is_root and not node.key:
                raise RadixCacheCorrupt(f"{where}: empty key on a non-root node")
            if node.lock_ref < 0:
                raise RadixCacheCorrupt(f"{where}: negative lock_ref {node.lock_ref}")
            for first, child in node.children.items():
                cwhere = f"node {child.id} (child of node {node.id})"
                if child.parent is not node:
                    raise RadixCacheCorrupt(f"{cwhere}: parent pointer does not point back")
                if not child.key or child.key[0] != first:
                    raise RadixCacheCorrupt(
                        f"{cwhere}: keyed by token {first} but its key starts {child.key[:1]}"
                    )
                if not is_root and node.lock_ref < child.lock_ref:
                    raise RadixCacheCorrupt(
                        f"{cwhere}: lock_ref {child.lock_ref} exceeds its parent's {node.lock_ref}"
                    )
            if is_root:
                continue
            held.append(node.value)
            if node.lock_ref:
                protected += len(node.key)
            else:
                evictable += len(node.key)
        if (evictable, protected) != (self._evictable_size, self._protected_size):
            raise RadixCacheCorrupt(
                f"sizes disagree: tree holds {evictable} evictable + {protected} protected tokens, "
                f"counters say {self._evictable_size} + {self._protected_size}"
            )
        if held:
            all_slots = torch.cat(held)
            uniq, counts = torch.unique(all_slots, return_counts=True)
            if uniq.numel() != all_slots.numel():
                dup = int(uniq[counts > 1][0])
                owners = [n.id for n in self._nodes() if n is not self.root and bool((n.value == dup).any())]
                raise RadixCacheCorrupt(f"slot {dup} is held twice (nodes {owners})")
            if allocator is None:
                return
            if int(uniq[0]) < 1 or int(uniq[-1]) > allocator.num_slots:
                raise RadixCacheCorrupt(f"slot out of range 1..{allocator.num_slots} in the tree")
            free = allocator.is_free(uniq)
            if bool(free.any()):
                bad = int(uniq[free][0])
                owners = [n.id for n in self._nodes() if n is not self.root and bool((n.value == bad).any())]
                raise RadixCacheCorrupt(f"slot {bad} (nodes {owners}) is in the tree but marked free")

    def pretty(self, max_tokens: int = 12) -> str:
        """Readable dump of the tree, one node per line, children indented under their parent."""
        lines = [
            f"RadixCache(total={self.total_size()}, evictable={self._evictable_size}, "
            f"protected={self._protected_size}, clock={self._clock})"
        ]

        def show(seq: list[int]) -> str:
            head = " ".join(str(t) for t in seq[:max_tokens])
            return head + (f" ... (+{len(seq) - max_tokens})" if len(seq) > max_tokens else "")

        stack = [(child, 1) for _, child in sorted(self.root.children.items(), reverse=True)]
        while stack:  # iterative: a long chain of splits must not hit the recursion limit
            node, depth = stack.pop()
            lines.append(
                f"{'  ' * depth}[{node.id}] tokens=[{show(node.key)}] slots=[{show(node.value.tolist())}] "
                f"lock={node.lock_ref} t={node.last_access}"
            )
            stack.extend((child, depth + 1) for _, child in sorted(node.children.items(), reverse=True))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"RadixCache(total={self.total_size()}, evictable={self._evictable_size}, protected={self._protected_size})"
