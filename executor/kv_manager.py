"""Who owns which KV slots: requests, the radix prefix cache, and the free pool.

Every transfer of KV ownership goes through here, so the invariants of the request module's
docstring hold in one place: a request's row [0, num_tree_owned) is cache-owned and locked,
[num_tree_owned, num_kv) is request-owned, and score continuations borrow [0, num_borrowed) from
their parent. With the radix cache disabled nothing is ever cache-owned and every finished
request's KV goes straight back to the pool.
"""

from __future__ import annotations

import torch

from executor.memory import ReqToTokenPool, TokenSlotAllocator
from executor.radix_cache import RadixCache
from executor.request import Request


class KVManager:
    def __init__(
        self, allocator: TokenSlotAllocator, req_to_token: ReqToTokenPool, radix_cache: RadixCache | None
    ):
        self.allocator = allocator
        self.req_to_token = req_to_token
        self.cache = radix_cache

    # -- checks (no mutation) -------------------------------------------------------------
    def cached_len(self, tokens: list[int]) -> int:
        """Tokens of `tokens` the cache holds now (0 without a cache)."""
        if self.cache is None or not tokens:
            return 0
        return self.cache.cached_prefix_len(tokens)

    def available_slots(self) -> int:
        """Free slots plus what eviction could free right now."""
        evictable = self.cache.evictable_size() if self.cache is not None else 0
        return self.allocator.num_free + evictable

    # -- mutations --------------------------------------------------------------------------
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
            self.req_to_token.req_to_token[req.req_row, :n] = match.slots
        req.num_kv = req.num_tree_owned = n

    def reserve(self, num_slots: int) -> bool:
        """Make `num_slots` free, evicting unlocked cache entries if needed. True on success."""
        shortfall = num_slots - self.allocator.num_free
        if shortfall > 0 and self.cache is not None:
            self.cache.evict(shortfall)
        return self.allocator.can_allocate(num_slots)

    def allocate(self, req: Request, num_slots: int) -> torch.Tensor:
        """Slots for the request's next `num_slots` tokens, recorded in its table row."""
        slots = self.allocator.allocate(num_slots)
        self.req_to_token.req_to_token[req.req_row, req.num_kv : req.num_kv + num_slots] = slots
        return slots

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
        row = self.req_to_token.req_to_token[req.req_row]
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
        row = self.req_to_token.req_to_token[req.req_row]
        owned_from = max(req.num_tree_owned, req.num_borrowed)
        if req.num_kv > owned_from:
            self.allocator.free(row[owned_from : req.num_kv].clone())
        if self.cache is not None and req.last_node is not None:
            self.cache.unlock(req.last_node)
        self.req_to_token.free(req.req_row)
        req.req_row = None
        req.last_node = None
        req.num_kv = req.num_tree_owned = req.num_borrowed = 0

    def begin_borrowed(self, child: Request, parent: Request, num_tokens: int) -> None:
        """Let a score continuation read its parent's first `num_tokens` KV slots without owning them."""
        assert child.req_row is None and parent.req_row is not None
        child.req_row = self.req_to_token.alloc()
        table = self.req_to_token.req_to_token
        table[child.req_row, :num_tokens] = table[parent.req_row, :num_tokens]
        child.num_kv = child.num_borrowed = num_tokens
        child.num_tree_owned = 0
        child.last_node = None
