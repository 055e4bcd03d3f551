"""Who owns which KV slots: requests, the radix prefix cache, and the free pool.

This is the one module that allocates, frees and moves KV slots (and request-table rows). The
scheduler asks it for room and slots; the radix cache only records which slots hold which prefix
and hands back what it evicts; the engine pins prefixes and flushes the cache through it. So the
invariants of the request module's docstring hold in one place: a request's row
[0, num_tree_owned) is cache-owned and locked, [num_tree_owned, num_kv) is request-owned, and score
continuations borrow [0, num_borrowed) from their parent. With the radix cache disabled nothing is
ever cache-owned and every finished request's KV goes straight back to the pool.

Every slot is, at any time, exactly one of: free, held by the cache, or owned by one request
(`check_integrity` verifies it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from executor.runtime.memory import ReqToTokenPool, TokenSlotAllocator
from executor.runtime.radix_cache import RadixCache, RadixNode
from executor.runtime.request import Request

__all__ = ["KVManager", "KVOwnershipError"]


DECODE_RUN = 16  # decode slots a request takes at a time (see KVManager._spare)


class KVOwnershipError(AssertionError):
    """`check_integrity` found a slot owned twice, leaked, or in use and marked free."""


class KVManager:
    def __init__(
        self, allocator: TokenSlotAllocator, req_to_token: ReqToTokenPool, radix_cache: RadixCache | None
    ):
        self.allocator = allocator
        self.req_to_token = req_to_token
        self.cache = radix_cache
        self.reserved_rows: set[int] = set()  # table rows no request owns (CUDA graph padding)
        # Evictions that dropped something: a cached length measured before a change here is stale.
        self.num_evictions = 0
        # Decode slots handed to a request ahead of use, DECODE_RUN at a time, so its consecutive
        # positions get consecutive slots: a decode step allocates one slot per request, and taken
        # one by one from the free list the requests' slots interleave (request b's keys 32 slots
        # apart at batch 32), which defeats the CPU's prefetcher when attention walks a request's
        # keys. Spares are the request's own (freed with it) and always reclaimable: `reserve`
        # drops them before it evicts the cache. table row -> slots, the next one last.
        self._spare: dict[int, list[int]] = {}
        self.num_spare = 0

    @classmethod
    def build(cls, num_slots: int, max_requests: int, context_len: int, device: torch.device,
              enable_cache: bool = True) -> KVManager:
        """A manager over fresh memory: `num_slots` KV slots, a request table of `max_requests`
        rows of `context_len` positions (on `device`, where the attention kernels read it)."""
        return cls(TokenSlotAllocator(num_slots), ReqToTokenPool(max_requests, context_len, device),
                   RadixCache() if enable_cache else None)

    # -- checks and views (no mutation) -------------------------------------------------------------
    @property
    def table(self) -> torch.Tensor:
        """The request-to-slot table `[rows, positions]`, for reading (forward batches, kernels)."""
        return self.req_to_token.req_to_token

    @property
    def num_free_slots(self) -> int:
        return self.allocator.num_free

    @property
    def num_cached_tokens(self) -> int:
        """Slots the radix cache holds (locked or not)."""
        return self.cache.total_size() if self.cache is not None else 0

    def cached_len(self, tokens: list[int]) -> int:
        """Tokens of `tokens` the cache holds now (0 without a cache)."""
        if self.cache is None or not tokens:
            return 0
        return self.cache.cached_prefix_len(tokens)

    def available_slots(self) -> int:
        """Free slots plus what eviction and dropping decode spares could free right now."""
        evictable = self.cache.evictable_size() if self.cache is not None else 0
        return self.allocator.num_free + evictable + self.num_spare

    def can_begin(self) -> bool:
        """Whether a request can get a table row now."""
        return self.req_to_token.can_alloc()

    # -- requests -----------------------------------------------------------------------------------
    def begin(self, req: Request, max_cached: int) -> None:
        """Give a request a table row and reuse the longest cached prefix (at most max_cached)."""
        assert req.req_row is None
        req.req_row = self.req_to_token.alloc()
        req.num_kv = req.num_tree_owned = 0
        req.last_node = None
        if self.cache is None or max_cached <= 0:
            return
        match = self.cache.match_prefix(req.fill_ids[:max_cached])
        self.cache.lock(match.last_node)
        req.last_node = match.last_node
        n = match.num_cached_tokens
        if n:
            self.table[req.req_row, :n] = match.slots
        req.num_kv = req.num_tree_owned = n

    def reserve(self, num_slots: int) -> bool:
        """Make `num_slots` free, dropping decode spares and then evicting unlocked cache entries if
        needed. True on success."""
        if num_slots > self.allocator.num_free and self.num_spare:
            self._drop_spares()
        shortfall = num_slots - self.allocator.num_free
        if shortfall > 0:
            self.evict(shortfall)
        return self.allocator.can_allocate(num_slots)

    def allocate(self, req: Request, num_slots: int) -> torch.Tensor:
        """Slots for the request's next `num_slots` tokens, recorded in its table row."""
        slots = self.allocator.allocate(num_slots)
        self.table[req.req_row, req.num_kv : req.num_kv + num_slots] = slots
        return slots

    def allocate_decode(self, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One slot per decoding request (table row `rows[i]`, at `positions[i]`), recorded in the
        table; returns the slots on the table's device. `reserve(len(rows))` first.

        Each request takes its slots from its own run of DECODE_RUN consecutive slots (a new run
        when its spares are used up); when the free list cannot give every such request a whole
        run, they get one slot each, as before."""
        row_ids = rows.tolist()
        needy = [row for row in row_ids if not self._spare.get(row)]
        if needy:
            runs = len(needy) * DECODE_RUN
            if self.allocator.can_allocate(runs):
                fresh = np.sort(self.allocator.allocate(runs).numpy()).reshape(len(needy), DECODE_RUN)
                for row, run in zip(needy, fresh):
                    self._spare[row] = run[::-1].tolist()  # pop() hands out the lowest slot first
                self.num_spare += runs
            else:
                for row, slot in zip(needy, self.allocator.allocate(len(needy)).tolist()):
                    self._spare[row] = [slot]
                self.num_spare += len(needy)
        slots = torch.tensor([self._spare[row].pop() for row in row_ids], dtype=torch.int64)
        self.num_spare -= len(row_ids)
        slots = slots.to(self.table.device)
        self.table[rows, positions] = slots
        return slots

    def _free_spares_of(self, row: int) -> None:
        spare = self._spare.pop(row, None)
        if spare:
            self.allocator.free(torch.tensor(spare, dtype=torch.int64))
            self.num_spare -= len(spare)

    def _drop_spares(self) -> None:
        for row in list(self._spare):
            self._free_spares_of(row)

    def truncate(self, req: Request, num_tokens: int) -> None:
        """Free the request's KV past its first `num_tokens` tokens (jump-forward replaced them).
        Only request-owned KV may go: the cache's and a parent's slots are not the request's."""
        if req.num_kv <= num_tokens:
            return
        assert num_tokens >= max(req.num_tree_owned, req.num_borrowed), "truncating KV the request does not own"
        self.allocator.free(self.table[req.req_row, num_tokens : req.num_kv].clone())
        req.num_kv = num_tokens

    def cache_progress(self, req: Request) -> None:
        """Hand the request's computed KV to the radix cache so other requests can reuse it.

        The request keeps using the same KV, now cache-owned and locked by it. Where the cache
        already held some of these tokens (another request computed them meanwhile), our copies
        are freed and the row points at the cache's slots.
        """
        if self.cache is None or req.num_borrowed or req.num_kv <= req.num_tree_owned:
            return
        n = req.num_kv
        tokens = req.fill_ids[:n]
        row = self.table[req.req_row]
        already_cached = self.cache.insert(tokens, row[:n].clone())
        if already_cached > req.num_tree_owned:
            self.allocator.free(row[req.num_tree_owned : already_cached].clone())
        match = self.cache.match_prefix(tokens)
        assert match.num_cached_tokens == n, "radix cache lost tokens it was just given"
        row[:n] = match.slots
        self.cache.lock(match.last_node)
        if req.last_node is not None:
            self.cache.unlock(req.last_node)
        req.last_node = match.last_node
        req.num_tree_owned = n

    def release(self, req: Request, keep_in_cache: bool = True) -> None:
        """A request is done with its KV: keep it in the cache (if enabled and `keep_in_cache`) or
        free it. A failed request passes `keep_in_cache=False`: its own KV is freed, never cached."""
        if req.req_row is None:
            return
        if keep_in_cache:
            self.cache_progress(req)
        row = self.table[req.req_row]
        owned_from = max(req.num_tree_owned, req.num_borrowed)
        if req.num_kv > owned_from:
            self.allocator.free(row[owned_from : req.num_kv].clone())
        if self.cache is not None and req.last_node is not None:
            self.cache.unlock(req.last_node)
        self._free_spares_of(req.req_row)
        self.req_to_token.free(req.req_row)
        req.req_row = None
        req.last_node = None
        req.num_kv = req.num_tree_owned = req.num_borrowed = 0

    def begin_borrowed(self, child: Request, parent: Request, num_tokens: int) -> None:
        """Fork: let a score continuation read its parent's first `num_tokens` KV slots without
        owning them. Those slots must not move while the child lives: the parent has handed them to
        the cache already (`cache_progress`, or the cache is off), and it is released after the child."""
        assert child.req_row is None and parent.req_row is not None
        child.req_row = self.req_to_token.alloc()
        table = self.table
        table[child.req_row, :num_tokens] = table[parent.req_row, :num_tokens]
        child.num_kv = child.num_borrowed = num_tokens
        child.num_tree_owned = 0
        child.last_node = None

    # -- the cache ----------------------------------------------------------------------------------
    def evict(self, num_tokens: int) -> int:
        """Free at least `num_tokens` slots of unlocked cached prefixes, least recently used first
        (fewer if not that many are evictable). Returns how many were freed."""
        if self.cache is None or num_tokens <= 0:
            return 0
        dropped = self.cache.evict(num_tokens)
        self.allocator.free(dropped)
        if dropped.numel():
            self.num_evictions += 1
        return dropped.numel()

    def flush(self) -> int:
        """Free every cached prefix no request or pin holds; returns how many slots were freed."""
        return self.evict(self.cache.evictable_size()) if self.cache is not None else 0

    def lock_prefix(self, tokens: Sequence[int]) -> tuple[RadixNode | None, int]:
        """Lock the cached part of `tokens` against eviction: (the lock, how many tokens it holds);
        (None, 0) when none of it is cached. Give the lock back with `unlock_prefix`."""
        if self.cache is None or not tokens:
            return None, 0
        match = self.cache.match_prefix(list(tokens))
        if not match.num_cached_tokens:
            return None, 0
        self.cache.lock(match.last_node)
        return match.last_node, match.num_cached_tokens

    def unlock_prefix(self, lock: RadixNode) -> None:
        assert self.cache is not None
        self.cache.unlock(lock)

    def reserve_row(self) -> int:
        """A request-table row that no request will get, all padding slots (0): the row the CUDA
        graphs' padding entries of a decode batch point at. Give it back with `release_row`."""
        row = self.req_to_token.alloc()
        self.req_to_token.req_to_token[row].zero_()
        self.reserved_rows.add(row)
        return row

    def release_row(self, row: int) -> None:
        if row not in self.reserved_rows:
            raise KVOwnershipError(f"request-table row {row} was not reserved")
        self.reserved_rows.discard(row)
        self.req_to_token.free(row)

    # -- checking -----------------------------------------------------------------------------------
    def check_integrity(self, requests: Iterable[Request] = ()) -> None:
        """Verify that every slot is exactly one of free, cached, or owned by one of `requests`
        (all requests holding a table row must be given). Raises `KVOwnershipError`."""
        if self.cache is not None:
            self.cache.check_integrity(self.allocator)
        owned: list[torch.Tensor] = []
        rows = 0
        for req in requests:
            if req.req_row is None:
                continue
            rows += 1
            start = max(req.num_tree_owned, req.num_borrowed)
            owned.append(self.table[req.req_row, start : req.num_kv].cpu())
            owned.append(torch.tensor(self._spare.get(req.req_row, []), dtype=torch.int64))
        if sum(len(spare) for spare in self._spare.values()) != self.num_spare:
            raise KVOwnershipError("the count of decode spare slots does not match the spares held")
        mine = torch.cat(owned) if owned else torch.empty(0, dtype=torch.int64)
        if mine.numel():
            if int(mine.unique().numel()) != mine.numel():
                raise KVOwnershipError("a slot is owned by two requests (or twice by one)")
            if bool(self.allocator.is_free(mine).any()):
                raise KVOwnershipError("a slot a request owns is marked free")
            if self.cache is not None and bool(torch.isin(mine, self.cache.held_slots()).any()):
                raise KVOwnershipError("a slot is both cached and owned by a request")
        total = self.allocator.num_free + self.num_cached_tokens + mine.numel()
        if total != self.allocator.num_slots:
            raise KVOwnershipError(f"{self.allocator.num_free} free + {self.num_cached_tokens} cached + "
                                   f"{mine.numel()} request-owned slots != {self.allocator.num_slots} slots")
        if self.req_to_token.num_free + rows + len(self.reserved_rows) > self.req_to_token.max_requests:
            raise KVOwnershipError("more request rows in use than the table has")
