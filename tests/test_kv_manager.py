"""KV ownership (executor/runtime/kv_manager.py): unit tests, then a hypothesis state machine that drives
the manager the way the scheduler and the engine do (begin with a cached prefix, compute, hand to
the cache, fork score continuations, truncate after jump-forward, release, pin, evict, flush).

A shadow of the KV pool records which token each slot was computed for, so the machine checks the
meaning of the bookkeeping, not just its counts: every position a request has computed, and every
cached prefix, must map to a slot holding that very token.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from executor.runtime.kv_manager import DECODE_RUN, KVManager, KVOwnershipError
from executor.runtime.radix_cache import RadixNode
from executor.runtime.request import Request, RequestKind
from executor.runtime.sampling_params import SamplingParams
from tests.tiers import examples

CPU = torch.device("cpu")


def request(rid: str, tokens: list[int], kind: RequestKind = RequestKind.GENERATE) -> Request:
    return Request(rid=rid, input_ids=list(tokens), params=SamplingParams(), kind=kind)


def compute(kv: KVManager, req: Request, n: int | None = None) -> torch.Tensor:
    """What the scheduler does for an extend: reserve, allocate, then the forward fills the KV."""
    n = req.seq_len - req.num_kv if n is None else n
    assert kv.reserve(n)
    slots = kv.allocate(req, n)
    req.num_kv += n
    return slots


# -- unit tests -------------------------------------------------------------------------------------
def test_alloc_cache_reuse_and_free():
    kv = KVManager.build(32, 4, 64, CPU)
    a = request("a", [1, 2, 3, 4, 5])
    kv.begin(a, max_cached=4)
    assert a.num_kv == 0 and a.req_row is not None
    compute(kv, a)
    kv.cache_progress(a)
    assert a.num_tree_owned == 5 and kv.num_cached_tokens == 5
    kv.check_integrity([a])
    b = request("b", [1, 2, 3, 9])
    kv.begin(b, max_cached=3)
    assert b.num_kv == b.num_tree_owned == 3
    assert torch.equal(kv.table[b.req_row, :3], kv.table[a.req_row, :3])  # shared, not copied
    compute(kv, b)
    kv.release(a)
    kv.release(b)
    kv.check_integrity()
    assert kv.num_free_slots + kv.num_cached_tokens == 32 and kv.cache.protected_size() == 0
    assert kv.flush() == 6 and kv.num_free_slots == 32


def test_a_duplicate_computed_meanwhile_is_freed_and_the_row_points_at_the_cache():
    kv = KVManager.build(32, 4, 64, CPU)
    a, b = request("a", [7, 7, 7, 7]), request("b", [7, 7, 7, 7, 8])
    kv.begin(a, 3)
    kv.begin(b, 4)  # nothing cached yet: both compute the same tokens
    compute(kv, a)
    compute(kv, b)
    kv.cache_progress(a)
    free_before = kv.num_free_slots
    kv.cache_progress(b)
    assert kv.num_free_slots == free_before + 4  # b's 4 duplicates freed, its 5th token cached
    assert torch.equal(kv.table[b.req_row, :4], kv.table[a.req_row, :4])
    kv.check_integrity([a, b])
    kv.release(b)
    kv.release(a)
    kv.check_integrity()


def test_release_without_keeping_frees_everything_the_request_owns():
    kv = KVManager.build(16, 4, 64, CPU, enable_cache=True)
    a = request("a", [1, 2, 3])
    kv.begin(a, 2)
    compute(kv, a)
    kv.release(a, keep_in_cache=False)
    assert kv.num_free_slots == 16 and kv.num_cached_tokens == 0 and kv.req_to_token.num_free == 4


def test_fork_borrows_the_parents_prompt_and_frees_only_its_own():
    kv = KVManager.build(32, 4, 64, CPU)
    parent = request("p", [1, 2, 3, 4], RequestKind.SCORE)
    kv.begin(parent, 3)
    compute(kv, parent)
    kv.cache_progress(parent)
    child = request("p/0", [1, 2, 3, 4, 5, 6], RequestKind.SCORE_CHILD)
    kv.begin_borrowed(child, parent, 4)
    assert child.num_kv == child.num_borrowed == 4 and child.num_tree_owned == 0
    compute(kv, child)
    kv.cache_progress(child)  # a continuation is never cached
    assert kv.num_cached_tokens == 4
    kv.check_integrity([parent, child])
    kv.release(child)
    kv.release(parent)
    kv.check_integrity()
    assert kv.num_free_slots == 28


def test_truncate_frees_the_replaced_tail_only():
    kv = KVManager.build(32, 4, 64, CPU)
    a = request("a", [1, 2, 3])
    kv.begin(a, 2)
    compute(kv, a)
    kv.cache_progress(a)
    a.output_ids = [4, 5, 6]
    compute(kv, a)
    free = kv.num_free_slots
    kv.truncate(a, 4)
    assert a.num_kv == 4 and kv.num_free_slots == free + 2
    kv.truncate(a, 5)  # nothing past 4 to free
    assert a.num_kv == 4
    with pytest.raises(AssertionError, match="does not own"):
        kv.truncate(a, 2)  # the cache's tokens are not the request's
    a.output_ids = [4]
    kv.check_integrity([a])


def test_pins_survive_flush_and_refcount_with_requests():
    kv = KVManager.build(32, 4, 64, CPU)
    a = request("a", [1, 2, 3, 4])
    kv.begin(a, 3)
    compute(kv, a)
    kv.release(a)
    lock, n = kv.lock_prefix([1, 2, 3, 4, 9])
    assert n == 4 and lock is not None
    b = request("b", [1, 2, 3, 4, 5])
    kv.begin(b, 4)
    assert lock.lock_ref == 2  # the pin and the request
    kv.release(b, keep_in_cache=False)
    assert kv.flush() == 0 and kv.num_cached_tokens == 4
    kv.unlock_prefix(lock)
    assert kv.flush() == 4
    assert kv.lock_prefix([5, 6]) == (None, 0)


def test_eviction_makes_room_lru_first():
    kv = KVManager.build(10, 4, 64, CPU)
    for i, tokens in enumerate(([1, 1, 1], [2, 2, 2], [3, 3, 3])):
        r = request(str(i), tokens)
        kv.begin(r, 2)
        compute(kv, r)
        kv.release(r)
    kv.cached_len([1, 1, 1])  # a pure check: no access time changes
    assert kv.available_slots() == 10 and kv.num_free_slots == 1
    assert kv.reserve(3)  # evicts the least recently used leaf: [1, 1, 1]
    assert kv.cached_len([1, 1, 1]) == 0 and kv.cached_len([3, 3, 3]) == 3


def test_decode_slots_come_in_runs_and_go_back_with_the_request():
    """Each request's consecutive decode positions get consecutive ascending slots (not slots
    interleaved with the other requests'), its unused spares go back with it, and `reserve` drops
    spares before it would fail."""
    kv = KVManager.build(4 * DECODE_RUN + 8, 4, 64, CPU)
    reqs = [request(f"r{i}", [1, 2, 3]) for i in range(2)]
    for req in reqs:
        kv.begin(req, max_cached=0)
        compute(kv, req)
    rows = torch.tensor([r.req_row for r in reqs])
    taken = []
    for step in range(3):
        assert kv.reserve(len(reqs))
        taken.append(kv.allocate_decode(rows, torch.tensor([3 + step] * 2)).tolist())
        for req in reqs:
            req.num_kv += 1
    for i in range(2):
        own = [slots[i] for slots in taken]
        assert own == list(range(own[0], own[0] + 3))
    assert kv.num_spare == 2 * (DECODE_RUN - 3)
    kv.check_integrity(reqs)
    kv.release(reqs[0], keep_in_cache=False)
    assert kv.num_spare == DECODE_RUN - 3
    kv.check_integrity(reqs[1:])
    assert kv.reserve(kv.num_free_slots + DECODE_RUN - 3)  # only possible by dropping the spares
    assert kv.num_spare == 0
    kv.check_integrity(reqs[1:])


def test_decode_falls_back_to_single_slots_when_runs_do_not_fit():
    kv = KVManager.build(DECODE_RUN + 4, 3, 64, CPU)
    reqs = [request(f"r{i}", [1]) for i in range(3)]
    for req in reqs:
        kv.begin(req, max_cached=0)
        compute(kv, req)
    assert kv.reserve(3)
    slots = kv.allocate_decode(torch.tensor([r.req_row for r in reqs]), torch.tensor([1, 1, 1]))
    assert len(set(slots.tolist())) == 3 and kv.num_spare == 0
    for req in reqs:
        req.num_kv += 1
    kv.check_integrity(reqs)


def test_check_integrity_finds_a_leak_and_a_double_owner():
    kv = KVManager.build(16, 4, 64, CPU)
    a = request("a", [1, 2, 3])
    kv.begin(a, 2)
    compute(kv, a)
    with pytest.raises(KVOwnershipError, match="!= 16 slots"):
        kv.check_integrity()  # a's slots are owned by a request nobody mentioned
    b = request("b", [1, 2, 3])
    kv.begin(b, 2)
    kv.table[b.req_row, :3] = kv.table[a.req_row, :3]
    b.num_kv = 3
    with pytest.raises(KVOwnershipError, match="two requests"):
        kv.check_integrity([a, b])


# -- the state machine ------------------------------------------------------------------------------
NUM_SLOTS = 48
ROWS = 6
ALPHABET = 3  # tiny: prompts share prefixes and split cache nodes often
token_lists = st.lists(st.integers(0, ALPHABET - 1), min_size=1, max_size=10)


class KVManagerMachine(RuleBasedStateMachine):
    enable_cache = True

    def __init__(self) -> None:
        super().__init__()
        self.kv = KVManager.build(NUM_SLOTS, ROWS, 64, CPU, enable_cache=self.enable_cache)
        self.written = [-1] * (NUM_SLOTS + 1)  # the token each slot's KV was computed for
        self.live: list[Request] = []
        self.pins: list[tuple[RadixNode, list[int]]] = []  # (lock, the tokens it holds)
        self.ids = 0

    def _new(self, tokens: list[int], kind: RequestKind = RequestKind.GENERATE) -> Request:
        self.ids += 1
        return request(f"r{self.ids}", tokens, kind)

    def _pick(self, data: st.DataObject, candidates: list[Request]) -> Request:
        return candidates[data.draw(st.integers(0, len(candidates) - 1))]

    def _children(self, parent: Request) -> list[Request]:
        return [r for r in self.live if r.parent is parent]

    # -- rules: the scheduler's moves
    @precondition(lambda self: self.kv.can_begin())
    @rule(tokens=token_lists, cached=st.integers(0, 10))
    def begin(self, tokens: list[int], cached: int) -> None:
        req = self._new(tokens)
        self.kv.begin(req, min(cached, len(tokens) - 1))
        self.live.append(req)

    @precondition(lambda self: any(r.num_kv < r.seq_len for r in self.live))
    @rule(data=st.data(), n=st.integers(1, 8))
    def compute(self, data: st.DataObject, n: int) -> None:
        req = self._pick(data, [r for r in self.live if r.num_kv < r.seq_len])
        n = min(n, req.seq_len - req.num_kv)
        if not self.kv.reserve(n):
            return
        slots = self.kv.allocate(req, n).tolist()
        for slot, token in zip(slots, req.fill_ids[req.num_kv : req.num_kv + n], strict=True):
            self.written[slot] = token  # the forward pass writes this token's KV there
        req.num_kv += n

    @precondition(lambda self: any(r.parent is None and r.output_ids and r.num_kv == r.seq_len - 1
                                   for r in self.live))
    @rule(data=st.data(), token=st.integers(0, ALPHABET - 1))
    def decode(self, data: st.DataObject, token: int) -> None:
        """A decode step for some of the requests whose KV covers all but their newest token: one
        slot each through `allocate_decode` (runs of spare slots), then the next token sampled."""
        ready = [r for r in self.live if r.parent is None and r.output_ids and r.num_kv == r.seq_len - 1]
        batch = [r for r in ready if data.draw(st.booleans())] or ready[:1]
        if not self.kv.reserve(len(batch)):
            return
        rows = torch.tensor([r.req_row for r in batch])
        positions = torch.tensor([r.num_kv for r in batch])
        slots = self.kv.allocate_decode(rows, positions).tolist()
        for req, slot in zip(batch, slots, strict=True):
            self.written[slot] = req.fill_ids[req.num_kv]
            req.num_kv += 1
            req.output_ids.append(token)

    @precondition(lambda self: any(r.parent is None for r in self.live))
    @rule(data=st.data())
    def cache_progress(self, data: st.DataObject) -> None:
        self.kv.cache_progress(self._pick(data, [r for r in self.live if r.parent is None]))

    @precondition(lambda self: any(r.parent is None and r.prefill_done for r in self.live))
    @rule(data=st.data(), token=st.integers(0, ALPHABET - 1))
    def sample(self, data: st.DataObject, token: int) -> None:
        req = self._pick(data, [r for r in self.live if r.parent is None and r.prefill_done])
        req.output_ids.append(token)

    @precondition(lambda self: any(r.output_ids and r.parent is None for r in self.live))
    @rule(data=st.data(), new=st.lists(st.integers(0, ALPHABET - 1), max_size=3))
    def jump_forward(self, data: st.DataObject, new: list[int]) -> None:
        """Replace some outputs with forced tokens; their KV (request-owned) goes back."""
        req = self._pick(data, [r for r in self.live if r.output_ids and r.parent is None])
        fixed = max(req.num_tree_owned - len(req.input_ids), 0)
        keep = data.draw(st.integers(fixed, len(req.output_ids)))
        self.kv.truncate(req, len(req.input_ids) + keep)
        req.output_ids = req.output_ids[:keep] + new

    @precondition(lambda self: self.kv.can_begin() and any(self._can_fork(r) for r in self.live))
    @rule(data=st.data(), cont=token_lists)
    def fork(self, data: st.DataObject, cont: list[int]) -> None:
        """A score continuation borrowing its parent's prompt (cached first, as the scheduler does)."""
        parent = self._pick(data, [r for r in self.live if self._can_fork(r)])
        child = self._new(parent.input_ids + cont, RequestKind.SCORE_CHILD)
        child.parent = parent
        self.kv.begin_borrowed(child, parent, len(parent.input_ids))
        self.live.append(child)

    def _can_fork(self, r: Request) -> bool:
        prompt_done = r.num_kv >= len(r.input_ids)
        owned = r.num_tree_owned >= len(r.input_ids) if self.enable_cache else True
        return r.parent is None and prompt_done and owned

    @precondition(lambda self: self.live)
    @rule(data=st.data(), keep=st.booleans())
    def release(self, data: st.DataObject, keep: bool) -> None:
        """Finish, retract, abort (keep) or fail (not keep); children go before their parent."""
        req = self._pick(data, [r for r in self.live if not self._children(r)])
        self.kv.release(req, keep_in_cache=keep)
        self.live.remove(req)
        assert req.req_row is None and req.num_kv == 0

    @rule(tokens=token_lists)
    def pin(self, tokens: list[int]) -> None:
        lock, n = self.kv.lock_prefix(tokens)
        if lock is not None:
            self.pins.append((lock, tokens[:n]))
        else:
            assert n == 0

    @precondition(lambda self: self.pins)
    @rule(data=st.data())
    def unpin(self, data: st.DataObject) -> None:
        lock, _ = self.pins.pop(data.draw(st.integers(0, len(self.pins) - 1)))
        self.kv.unlock_prefix(lock)

    @rule(n=st.integers(0, NUM_SLOTS))
    def evict(self, n: int) -> None:
        free = self.kv.num_free_slots
        freed = self.kv.evict(n)
        assert self.kv.num_free_slots == free + freed

    @rule()
    def flush(self) -> None:
        self.kv.flush()
        if self.kv.cache is not None:
            assert self.kv.cache.evictable_size() == 0

    # -- invariants
    @invariant()
    def every_slot_has_one_owner(self) -> None:
        self.kv.check_integrity(self.live)
        assert self.kv.req_to_token.num_free == ROWS - len(self.live)

    @invariant()
    def computed_positions_hold_their_tokens(self) -> None:
        for req in self.live:
            slots = self.kv.table[req.req_row, : req.num_kv].tolist()
            assert [self.written[s] for s in slots] == req.fill_ids[: req.num_kv], req.rid

    @invariant()
    def cached_prefixes_hold_their_tokens(self) -> None:
        if self.kv.cache is None:
            return
        stack = [self.kv.cache.root]
        while stack:
            node = stack.pop()
            assert [self.written[s] for s in node.value.tolist()] == node.key
            stack.extend(node.children.values())

    @invariant()
    def lock_counts_are_the_requests_and_pins_holding_each_node(self) -> None:
        if self.kv.cache is None:
            return
        expected: dict[int, int] = {}
        holders = [r.last_node for r in self.live if r.last_node is not None] + [lock for lock, _ in self.pins]
        for node in holders:
            while node is not self.kv.cache.root:
                expected[node.id] = expected.get(node.id, 0) + 1
                node = node.parent
        stack = list(self.kv.cache.root.children.values())
        while stack:
            node = stack.pop()
            assert node.lock_ref == expected.get(node.id, 0), node
            stack.extend(node.children.values())

    @invariant()
    def pinned_prefixes_stay_cached(self) -> None:
        for _, tokens in self.pins:
            assert self.kv.cache.cached_prefix_len(tokens) == len(tokens)

    def teardown(self) -> None:
        for req in sorted(self.live, key=lambda r: r.parent is None):  # children first
            self.kv.release(req)
        for lock, _ in self.pins:
            self.kv.unlock_prefix(lock)
        self.kv.flush()
        assert self.kv.num_free_slots == NUM_SLOTS and self.kv.req_to_token.num_free == ROWS


class KVManagerWithoutCacheMachine(KVManagerMachine):
    enable_cache = False


_SETTINGS = settings(max_examples=examples(100), stateful_step_count=40, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
KVManagerMachine.TestCase.settings = _SETTINGS
KVManagerWithoutCacheMachine.TestCase.settings = _SETTINGS
TestKVManagerStateful = KVManagerMachine.TestCase
TestKVManagerWithoutCacheStateful = KVManagerWithoutCacheMachine.TestCase
