"""Tests of the radix prefix cache: unit tests, then a hypothesis state machine over the whole API."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from executor.runtime.memory import TokenSlotAllocator
from executor.runtime.radix_cache import (
    RadixCache,
    RadixCacheCorrupt,
    RadixCacheError,
    RadixNode,
    _common_prefix_len,
)
from tests.tiers import examples


def make_cache(num_slots: int = 64) -> tuple[TokenSlotAllocator, RadixCache]:
    """A cache and the allocator its slots come from (the test plays the KV manager's part)."""
    alloc = TokenSlotAllocator(num_slots)
    return alloc, RadixCache()


def evict(alloc: TokenSlotAllocator, cache: RadixCache, num_tokens: int) -> int:
    """Evict and free what the cache dropped (as `KVManager.evict` does); how many slots."""
    dropped = cache.evict(num_tokens)
    alloc.free(dropped)
    return dropped.numel()


def cache_fresh(alloc: TokenSlotAllocator, cache: RadixCache, tokens: list[int]) -> torch.Tensor:
    """What a finished request does: match, allocate the uncached rest, insert, free duplicates.

    Returns the slots the tree holds for `tokens` afterwards.
    """
    match = cache.match_prefix(tokens)
    cache.lock(match.last_node)
    k = match.num_cached_tokens
    own = alloc.allocate(len(tokens) - k)
    n = cache.insert(tokens, torch.cat([match.slots, own]))
    assert n >= k
    alloc.free(own[: n - k])
    cache.unlock(match.last_node)
    return cache.match_prefix(tokens).slots


def num_nodes(cache: RadixCache) -> int:
    return sum(1 for _ in cache._nodes()) - 1


# ---------------------------------------------------------------------------- unit tests


def test_common_prefix_len_matches_naive() -> None:
    rng = random.Random(0)
    for _ in range(500):
        a = [rng.randrange(3) for _ in range(rng.randrange(40))]
        b = [rng.randrange(3) for _ in range(rng.randrange(40))]
        if rng.random() < 0.5:
            b = a[: rng.randrange(len(a) + 1)] + b
        naive = 0
        while naive < min(len(a), len(b)) and a[naive] == b[naive]:
            naive += 1
        assert _common_prefix_len(a, b) == naive


def test_empty_cache_matches_nothing() -> None:
    _, cache = make_cache()
    m = cache.match_prefix([1, 2, 3])
    assert m.num_cached_tokens == 0 and m.slots.numel() == 0 and m.slots.dtype == torch.int64
    assert m.last_node is cache.root
    assert cache.match_prefix([]).num_cached_tokens == 0


def test_insert_then_match_full_and_partial_splits_node() -> None:
    alloc, cache = make_cache()
    slots = alloc.allocate(5)
    assert cache.insert([1, 2, 3, 4, 5], slots) == 0
    assert cache.total_size() == 5 and num_nodes(cache) == 1
    full = cache.match_prefix([1, 2, 3, 4, 5, 6])
    assert full.num_cached_tokens == 5 and torch.equal(full.slots, slots)

    part = cache.match_prefix([1, 2, 3, 9])
    assert part.num_cached_tokens == 3 and torch.equal(part.slots, slots[:3])
    assert num_nodes(cache) == 2  # split at 3
    assert part.last_node.key == [1, 2, 3]
    assert list(part.last_node.children) == [4]
    assert cache.total_size() == 5
    cache.check_integrity(alloc)


def test_cached_prefix_len_is_pure() -> None:
    alloc, cache = make_cache()
    cache.insert([1, 2, 3, 4], alloc.allocate(4))
    before = cache.pretty()
    assert cache.cached_prefix_len([1, 2, 9]) == 2
    assert cache.cached_prefix_len(torch.tensor([1, 2, 3, 4, 5])) == 4
    assert cache.cached_prefix_len([7]) == 0
    assert cache.pretty() == before  # no split, no access-time change
    assert cache.match_prefix([1, 2, 9]).num_cached_tokens == 2


def test_match_ending_inside_node_at_end_of_tokens_splits() -> None:
    alloc, cache = make_cache()
    cache.insert([7, 8, 9], alloc.allocate(3))
    m = cache.match_prefix([7, 8])
    assert m.num_cached_tokens == 2 and m.last_node.key == [7, 8]
    cache.check_integrity(alloc)


def test_insert_returns_already_cached_length_and_never_stores_twice() -> None:
    alloc, cache = make_cache(32)
    first = alloc.allocate(4)
    assert cache.insert([1, 2, 3, 4], first) == 0
    # A second request computed the same first 3 tokens in parallel, then diverged.
    second = alloc.allocate(6)
    n = cache.insert([1, 2, 3, 7, 8, 9], second)
    assert n == 3
    alloc.free(second[:n])  # the caller's duplicates, per the contract
    assert cache.total_size() == 7
    assert alloc.num_free == 32 - 7
    got = cache.match_prefix([1, 2, 3, 7, 8, 9]).slots
    assert torch.equal(got, torch.cat([first[:3], second[3:]]))
    # Inserting something fully cached stores nothing.
    dup = alloc.allocate(2)
    assert cache.insert([1, 2], dup) == 2
    alloc.free(dup)
    assert cache.total_size() == 7
    cache.check_integrity(alloc)


def test_insert_rejects_length_mismatch() -> None:
    alloc, cache = make_cache()
    with pytest.raises(ValueError, match="slots"):
        cache.insert([1, 2, 3], alloc.allocate(2))


def test_insert_copies_slots() -> None:
    alloc, cache = make_cache()
    slots = alloc.allocate(3)
    kept = slots.clone()
    cache.insert([1, 2, 3], slots)
    slots.fill_(0)  # the caller reuses its buffer
    assert torch.equal(cache.match_prefix([1, 2, 3]).slots, kept)


def test_shared_system_prompt_across_requests() -> None:
    alloc, cache = make_cache(128)
    system = list(range(100, 120))
    a = cache_fresh(alloc, cache, system + [1, 2, 3])
    b = cache_fresh(alloc, cache, system + [4, 5])
    assert torch.equal(a[:20], b[:20])
    assert cache.total_size() == 25
    m = cache.match_prefix(system + [6])
    assert m.num_cached_tokens == 20
    assert len(cache.root.children) == 1
    (sys_node,) = cache.root.children.values()
    assert sys_node.key == system and set(sys_node.children) == {1, 4}
    cache.check_integrity(alloc)


def test_chat_turns_reuse_the_whole_previous_conversation() -> None:
    alloc, cache = make_cache(128)
    turn1 = [1, 10, 11, 12, 2, 20, 21]  # user turn, then the assistant's answer
    cache_fresh(alloc, cache, turn1)
    turn2 = turn1 + [1, 13, 14, 2]
    m = cache.match_prefix(turn2)
    assert m.num_cached_tokens == len(turn1)
    cache_fresh(alloc, cache, turn2 + [22, 23])
    turn3 = turn2 + [22, 23, 1, 15]
    assert cache.match_prefix(turn3).num_cached_tokens == len(turn2) + 2
    assert num_nodes(cache) == 2  # one chain: the first turn, then its extension
    cache.check_integrity(alloc)


def test_fork_branches_share_the_prefix_node() -> None:
    alloc, cache = make_cache(128)
    prefix = [5, 6, 7, 8, 9]
    cache_fresh(alloc, cache, prefix)
    for branch in range(4):
        cache_fresh(alloc, cache, prefix + [50 + branch, 60 + branch])
    node = cache.match_prefix(prefix).last_node
    assert node.key == prefix and len(node.children) == 4
    assert cache.total_size() == 5 + 4 * 2
    cache.check_integrity(alloc)


def test_eviction_is_lru_over_leaves() -> None:
    alloc, cache = make_cache(32)
    cache_fresh(alloc, cache, [1, 1, 1])
    cache_fresh(alloc, cache, [2, 2, 2])
    cache_fresh(alloc, cache, [3, 3, 3])
    cache.match_prefix([1, 1, 1])  # touch: [2,2,2] is now the least recently used
    assert evict(alloc, cache, 1) == 3  # leaves go whole
    assert cache.match_prefix([2, 2, 2]).num_cached_tokens == 0
    assert cache.match_prefix([3, 3, 3]).num_cached_tokens == 3
    # A match ending inside [1,1,1] splits it and touches only [1,1]: the untouched tail [1] is now
    # the oldest leaf, older than [3,3,3].
    cache.match_prefix([1, 1])
    assert evict(alloc, cache, 1) == 1
    assert cache.match_prefix([1, 1, 1]).num_cached_tokens == 2
    assert cache.match_prefix([3, 3, 3]).num_cached_tokens == 3
    assert alloc.num_free == 32 - 5
    cache.check_integrity(alloc)


def test_evicting_children_makes_parent_a_leaf_candidate() -> None:
    alloc, cache = make_cache(32)
    cache_fresh(alloc, cache, [1, 2, 3, 4])
    cache_fresh(alloc, cache, [1, 2, 5, 6])
    assert num_nodes(cache) == 3
    assert evict(alloc, cache, 100) == 6
    assert cache.total_size() == 0 and num_nodes(cache) == 0
    assert alloc.num_free == 32
    cache.check_integrity(alloc)


def test_locked_nodes_survive_eviction() -> None:
    alloc, cache = make_cache(32)
    held = cache_fresh(alloc, cache, [1, 2, 3, 4])
    cache_fresh(alloc, cache, [1, 2, 9, 9])
    cache_fresh(alloc, cache, [5, 5])
    m = cache.match_prefix([1, 2, 3, 4])
    cache.lock(m.last_node)
    assert cache.protected_size() == 4 and cache.evictable_size() == 4
    freed = evict(alloc, cache, 100)
    assert freed == 4  # [9, 9] and [5, 5]; the locked path stays
    after = cache.match_prefix([1, 2, 3, 4])
    assert after.num_cached_tokens == 4 and torch.equal(after.slots, held)
    cache.unlock(m.last_node)
    assert cache.protected_size() == 0
    assert evict(alloc, cache, 100) == 4
    cache.check_integrity(alloc)


def test_lock_survives_split_of_the_locked_node() -> None:
    alloc, cache = make_cache(32)
    cache_fresh(alloc, cache, [1, 2, 3, 4])
    m = cache.match_prefix([1, 2, 3, 4])
    cache.lock(m.last_node)
    cache.match_prefix([1, 2])  # splits the locked node
    cache.check_integrity(alloc)
    assert cache.protected_size() == 4
    cache.unlock(m.last_node)
    assert cache.protected_size() == 0 and cache.evictable_size() == 4
    cache.check_integrity(alloc)


def test_unlock_without_lock_raises_and_changes_nothing() -> None:
    alloc, cache = make_cache()
    cache_fresh(alloc, cache, [1, 2])
    node = cache.match_prefix([1, 2]).last_node
    with pytest.raises(RadixCacheError, match="not locked"):
        cache.unlock(node)
    cache.check_integrity(alloc)


def test_lock_root_is_a_noop() -> None:
    alloc, cache = make_cache()
    cache.lock(cache.root)
    cache.unlock(cache.root)
    assert cache.protected_size() == 0
    cache.check_integrity(alloc)


def test_reset_frees_everything_and_refuses_while_locked() -> None:
    alloc, cache = make_cache(32)
    cache_fresh(alloc, cache, [1, 2, 3])
    cache_fresh(alloc, cache, [1, 4])
    node = cache.match_prefix([1, 4]).last_node
    cache.lock(node)
    with pytest.raises(RadixCacheError, match="locked"):
        cache.reset()
    cache.unlock(node)
    alloc.free(cache.reset())
    assert alloc.num_free == 32 and cache.total_size() == 0
    assert cache.match_prefix([1, 2, 3]).num_cached_tokens == 0
    cache.check_integrity(alloc)


def test_pretty_shows_tokens_locks_and_slots() -> None:
    alloc, cache = make_cache()
    cache_fresh(alloc, cache, [1, 2, 3])
    cache_fresh(alloc, cache, [1, 2, 4])
    cache.lock(cache.match_prefix([1, 2, 4]).last_node)
    text = cache.pretty()
    assert "total=4" in text
    assert "tokens=[1 2]" in text and "tokens=[4]" in text and "lock=1" in text
    assert len(text.splitlines()) == 4


def test_long_prompts_many_times() -> None:
    """1k-token prompts sharing a long prefix: matching must stay cheap (slice comparisons)."""
    alloc, cache = make_cache(4096)
    system = list(range(1000))
    for i in range(20):
        cache_fresh(alloc, cache, system + [5000 + i] * 10)
    for i in range(200):
        m = cache.match_prefix(system + [5000 + i % 20] * 10 + [1])
        assert m.num_cached_tokens == 1010
    assert cache.total_size() == 1000 + 20 * 10
    cache.check_integrity(alloc)


# ---------------------------------------------------------------------------- integrity checks


def corrupted(mutate) -> tuple[TokenSlotAllocator, RadixCache]:
    alloc, cache = make_cache(32)
    cache_fresh(alloc, cache, [1, 2, 3, 4])
    cache_fresh(alloc, cache, [1, 2, 5])
    mutate(alloc, cache)
    return alloc, cache


def _child(cache: RadixCache, *path: int) -> RadixNode:
    node = cache.root
    for t in path:
        node = node.children[t]
    return node


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a, c: setattr(c, "_evictable_size", 99), "sizes disagree"),
        (lambda a, c: setattr(_child(c, 1, 5), "value", _child(c, 1, 3).value[:1].clone()), "held twice"),
        (lambda a, c: setattr(_child(c, 1, 5), "lock_ref", -1), "negative lock_ref"),
        (lambda a, c: setattr(_child(c, 1, 3), "lock_ref", 1), "exceeds its parent"),
        (lambda a, c: setattr(_child(c, 1, 3), "key", [3, 4, 4]), "key has 3 tokens"),
        (lambda a, c: setattr(_child(c, 1, 3), "key", [6, 4]), "keyed by token 3"),
        (lambda a, c: a.free(_child(c, 1, 5).value), "marked free"),
        (lambda a, c: setattr(_child(c, 1, 5), "parent", c.root), "parent pointer"),
    ],
)
def test_check_integrity_detects_corruption(mutate, message: str) -> None:
    alloc, cache = corrupted(mutate)
    with pytest.raises(RadixCacheCorrupt, match=message) as info:
        cache.check_integrity(alloc)
    assert isinstance(info.value, RuntimeError)


# ---------------------------------------------------------------------------- stateful test

NUM_SLOTS = 40
ALPHABET = 3  # tiny, so random sequences share prefixes and split nodes often
token_seqs = st.lists(st.integers(0, ALPHABET - 1), min_size=0, max_size=12)


class RadixCacheMachine(RuleBasedStateMachine):
    """Drives the cache the way the scheduler will: requests match, lock, allocate, insert, free
    duplicates and unlock; independent locks come and go; memory pressure evicts."""

    def __init__(self) -> None:
        super().__init__()
        self.alloc = TokenSlotAllocator(NUM_SLOTS)
        self.cache = RadixCache()
        # Model: the slot first inserted for each cached prefix (tuple of tokens -> slot).
        self.model: dict[tuple[int, ...], int] = {}
        # In-flight requests: (tokens, locked node, matched slots, own slots).
        self.requests: list[tuple[list[int], RadixNode, torch.Tensor, torch.Tensor]] = []
        # Independent locks: (tokens, node, slots at lock time).
        self.locks: list[tuple[list[int], RadixNode, torch.Tensor]] = []

    # -- helpers

    def _alloc_with_eviction(self, n: int) -> torch.Tensor | None:
        if not self.alloc.can_allocate(n):
            self.alloc.free(self.cache.evict(n - self.alloc.num_free))
            self._forget_evicted()
        if not self.alloc.can_allocate(n):
            return None
        return self.alloc.allocate(n)

    def _record_insert(self, tokens: list[int], slots: torch.Tensor, n: int) -> None:
        values = slots.tolist()
        for i in range(len(tokens)):
            key = tuple(tokens[: i + 1])
            if i < n:
                assert key in self.model, f"insert says {key} was cached but the model never saw it"
            else:
                assert key not in self.model, f"insert stored {key} a second time"
                self.model[key] = values[i]

    def _tree_prefixes(self) -> dict[tuple[int, ...], int]:
        """Every cached prefix and its slot, read from the tree without touching it."""
        out: dict[tuple[int, ...], int] = {}
        stack = [(self.cache.root, ())]
        while stack:
            node, prefix = stack.pop()
            for child in node.children.values():
                key = prefix
                for tok, slot in zip(child.key, child.value.tolist(), strict=True):
                    key = key + (tok,)
                    out[key] = slot
                stack.append((child, key))
        return out

    def _forget_evicted(self) -> None:
        """Drop evicted prefixes from the model so a later re-insert may use new slots."""
        tree = self._tree_prefixes()
        for key in [k for k in self.model if k not in tree]:
            del self.model[key]

    def _slots_of(self, tokens: list[int]) -> list[int]:
        return [self.model[tuple(tokens[: i + 1])] for i in range(len(tokens))]

    # -- rules

    @rule(tokens=token_seqs)
    def insert_fresh(self, tokens: list[int]) -> None:
        """Insert with freshly allocated slots for every position (no match first)."""
        slots = self._alloc_with_eviction(len(tokens))
        if slots is None:
            return
        n = self.cache.insert(tokens, slots)
        self._record_insert(tokens, slots, n)
        self.alloc.free(slots[:n])  # our duplicates: the tree kept its own slots

    @rule(tokens=token_seqs)
    def start_request(self, tokens: list[int]) -> None:
        m = self.cache.match_prefix(tokens)
        self.cache.lock(m.last_node)
        own = self._alloc_with_eviction(len(tokens) - m.num_cached_tokens)
        if own is None:
            self.cache.unlock(m.last_node)
            return
        self.requests.append((tokens, m.last_node, m.slots, own))

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def finish_request(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.requests) - 1))
        tokens, node, matched, own = self.requests.pop(i)
        k = matched.numel()
        slots = torch.cat([matched, own])
        n = self.cache.insert(tokens, slots)
        assert n >= k, "a locked prefix must still be cached at insert time"
        self._record_insert(tokens, slots, n)
        self.alloc.free(own[: n - k])
        self.cache.unlock(node)

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def abort_request(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.requests) - 1))
        _, node, _, own = self.requests.pop(i)
        self.alloc.free(own)
        self.cache.unlock(node)

    @rule(tokens=token_seqs)
    def match(self, tokens: list[int]) -> None:
        shape_before = self.cache.pretty()
        peeked = self.cache.cached_prefix_len(tokens)
        assert self.cache.pretty() == shape_before, "cached_prefix_len must not change the tree"
        m = self.cache.match_prefix(tokens)
        k = m.num_cached_tokens
        assert peeked == k
        assert m.slots.tolist() == self._slots_of(tokens[:k])
        assert k == len(tokens) or tuple(tokens[: k + 1]) not in self._tree_prefixes()

    @rule(tokens=token_seqs)
    def lock_match(self, tokens: list[int]) -> None:
        m = self.cache.match_prefix(tokens)
        self.cache.lock(m.last_node)
        self.locks.append((tokens[: m.num_cached_tokens], m.last_node, m.slots))

    @precondition(lambda self: self.locks)
    @rule(data=st.data())
    def unlock_one(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.locks) - 1))
        _, node, _ = self.locks.pop(i)
        self.cache.unlock(node)

    @rule(num_tokens=st.integers(0, NUM_SLOTS))
    def evict(self, num_tokens: int) -> None:
        before = self.cache.total_size()
        evictable = self.cache.evictable_size()
        dropped = self.cache.evict(num_tokens)
        self.alloc.free(dropped)
        freed = dropped.numel()
        assert freed == before - self.cache.total_size()
        assert freed <= evictable
        if freed < num_tokens:
            # Stopped short: nothing evictable may remain (unlocked nodes sit only above locked ones).
            assert all(n.lock_ref > 0 or n.children for n in self.cache._nodes() if n is not self.cache.root)

    # -- invariants

    @invariant()
    def integrity(self) -> None:
        self.cache.check_integrity(self.alloc)

    @invariant()
    def slot_accounting(self) -> None:
        tree = self._tree_prefixes()
        tree_slots = list(tree.values())
        held = [s for *_, own in self.requests for s in own.tolist()]
        assert len(tree_slots) == self.cache.total_size()
        assert len(set(tree_slots)) == len(tree_slots), "a slot is held twice by the tree"
        assert not set(tree_slots) & set(held), "a slot is in the tree and held by a request"
        everything = tree_slots + held
        if everything:
            assert not bool(self.alloc.is_free(everything).any()), "a slot in use is marked free"
        assert self.alloc.num_free + len(tree_slots) + len(held) == NUM_SLOTS

    @invariant()
    def cached_prefixes_keep_their_first_slots(self) -> None:
        tree = self._tree_prefixes()
        for key, slot in tree.items():
            first = self.model.get(key)
            assert first == slot, f"prefix {key} maps to slot {slot}, first inserted as {first}"
        self._forget_evicted()

    @invariant()
    def locked_paths_survive(self) -> None:
        tree = self._tree_prefixes()
        for tokens, _, matched, _ in self.requests:
            prefix = tokens[: matched.numel()]
            assert [tree[tuple(prefix[: i + 1])] for i in range(len(prefix))] == matched.tolist()
        for tokens, node, slots in self.locks:
            assert node.lock_ref > 0
            assert [tree[tuple(tokens[: i + 1])] for i in range(len(tokens))] == slots.tolist()
        assert self.cache.protected_size() >= max(
            [len(t) for t, *_ in self.locks] + [m.numel() for _, _, m, _ in self.requests] + [0]
        )

    def teardown(self) -> None:
        for _, node, _, own in self.requests:
            self.alloc.free(own)
            self.cache.unlock(node)
        for _, node, _ in self.locks:
            self.cache.unlock(node)
        self.cache.check_integrity(self.alloc)
        assert self.cache.protected_size() == 0
        self.alloc.free(self.cache.reset())
        assert self.alloc.num_free == NUM_SLOTS


RadixCacheMachine.TestCase.settings = settings(
    max_examples=examples(60),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRadixCacheStateful = RadixCacheMachine.TestCase
