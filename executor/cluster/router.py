"""Routing policies: which replica gets a request (pure Python; the HTTP router and the simulator
both drive these same classes).

Every policy answers `choose(key, loads)`: `key` is the prompt (text, or a tuple of token ids),
`loads` maps each replica that may take the request to its load (requests in flight there). The
answer is a `Decision` (the replica, and why, for metrics). After the request was sent, the caller
reports it with `record(key, replica)` (the cache-aware policy remembers what each replica saw), and
`remove_replica` when a replica dies.

- `round_robin`: replicas in turn (the baseline).
- `least_loaded`: the replica with the fewest requests in flight.
- `cache_aware`: SGLang's router idea. If the load is imbalanced (max - min > `balance_abs_threshold`
  and max > `balance_rel_threshold` * min) the least-loaded replica gets it. Otherwise the replica
  whose seen prompts share the longest prefix with this one gets it if that prefix covers at least
  `cache_threshold` of the prompt; else the replica with the least cached (the most room), so new
  prefixes spread over the replicas.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from executor.cluster.router_tree import ApproxRadixTree

__all__ = ["POLICIES", "CacheAwarePolicy", "Decision", "LeastLoadedPolicy", "RoundRobinPolicy", "RoutingPolicy",
           "make_policy"]


@dataclass(frozen=True)
class Decision:
    """The chosen replica; `reason` is one of `round_robin`, `least_loaded`, `cache_hit`, `cache_miss`,
    `imbalance`; `matched` is the prefix length the cache-aware tree saw for it (0 otherwise)."""

    replica: Hashable
    reason: str
    matched: int = 0


def _check_loads(loads: Mapping[Hashable, int]) -> None:
    if not loads:
        raise ValueError("no replica to route to (all are down or none was given)")


def _least_loaded(loads: Mapping[Hashable, int], order: list[Hashable]) -> Hashable:
    """The least-loaded replica; ties go to the earliest in `order` (deterministic)."""
    rank = {r: i for i, r in enumerate(order)}
    return min(loads, key=lambda r: (loads[r], rank.get(r, len(rank)), str(r)))


class RoutingPolicy:
    """The interface; subclasses override `choose` (and `record` if they learn)."""

    name = "base"

    def __init__(self) -> None:
        self._order: list[Hashable] = []  # replicas in the order first seen: deterministic tie-breaks

    def _note(self, loads: Mapping[Hashable, int]) -> None:
        for replica in loads:
            if replica not in self._order:
                self._order.append(replica)

    def choose(self, key: Any, loads: Mapping[Hashable, int]) -> Decision:
        raise NotImplementedError

    def record(self, key: Any, replica: Hashable) -> None:
        """The request with `key` was sent to `replica`."""

    def remove_replica(self, replica: Hashable) -> None:
        """`replica` is gone: forget what it saw."""


class RoundRobinPolicy(RoutingPolicy):
    name = "round_robin"

    def __init__(self) -> None:
        super().__init__()
        self._next = 0

    def choose(self, key: Any, loads: Mapping[Hashable, int]) -> Decision:
        _check_loads(loads)
        self._note(loads)
        live = [r for r in self._order if r in loads]
        replica = live[self._next % len(live)]
        self._next += 1
        return Decision(replica, "round_robin")


class LeastLoadedPolicy(RoutingPolicy):
    name = "least_loaded"

    def choose(self, key: Any, loads: Mapping[Hashable, int]) -> Decision:
        _check_loads(loads)
        self._note(loads)
        return Decision(_least_loaded(loads, self._order), "least_loaded")


class CacheAwarePolicy(RoutingPolicy):
    """Prefix affinity with a load-balance fallback (see the module's docstring)."""

    name = "cache_aware"

    def __init__(self, cache_threshold: float = 0.5, balance_abs_threshold: int = 32,
                 balance_rel_threshold: float = 1.5, max_tree_size: int = 1 << 20) -> None:
        super().__init__()
        if not 0.0 <= cache_threshold <= 1.0:
            raise ValueError(f"cache_threshold must be in [0, 1], not {cache_threshold!r}")
        if balance_abs_threshold < 0:
            raise ValueError(f"balance_abs_threshold must be >= 0, not {balance_abs_threshold!r}")
        if balance_rel_threshold < 1.0:
            raise ValueError(f"balance_rel_threshold must be >= 1, not {balance_rel_threshold!r}")
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self.tree = ApproxRadixTree(max_tree_size)

    def is_imbalanced(self, loads: Mapping[Hashable, int]) -> bool:
        high, low = max(loads.values()), min(loads.values())
        return high - low > self.balance_abs_threshold and high > self.balance_rel_threshold * low

    def choose(self, key: Any, loads: Mapping[Hashable, int]) -> Decision:
        _check_loads(loads)
        self._note(loads)
        if self.is_imbalanced(loads):
            return Decision(_least_loaded(loads, self._order), "imbalance")
        matched = {r: n for r, n in self.tree.match(key).items() if r in loads}
        if matched and key:
            rank = {r: i for i, r in enumerate(self._order)}
            # The longest match; among equal matches the less loaded, then the earlier replica.
            best = min(matched, key=lambda r: (-matched[r], loads[r], rank[r]))
            if matched[best] / len(key) >= self.cache_threshold:
                return Decision(best, "cache_hit", matched[best])
        # A new prefix: the replica with the most room (least seen), then the least loaded.
        rank = {r: i for i, r in enumerate(self._order)}
        replica = min(loads, key=lambda r: (self.tree.size(r), loads[r], rank[r]))
        return Decision(replica, "cache_miss", matched.get(replica, 0))

    def record(self, key: Any, replica: Hashable) -> None:
        self.tree.insert(key, replica)

    def remove_replica(self, replica: Hashable) -> None:
        self.tree.remove_replica(replica)


POLICIES: dict[str, type[RoutingPolicy]] = {
    "round_robin": RoundRobinPolicy,
    "least_loaded": LeastLoadedPolicy,
    "cache_aware": CacheAwarePolicy,
}


def make_policy(name: str, **options: Any) -> RoutingPolicy:
    """A policy by name (`round_robin`, `least_loaded`, `cache_aware`); options go to cache_aware."""
    if name not in POLICIES:
        raise ValueError(f"unknown routing policy {name!r} (known: {', '.join(POLICIES)})")
    if name != "cache_aware":
        return POLICIES[name]()
    return CacheAwarePolicy(**options)
