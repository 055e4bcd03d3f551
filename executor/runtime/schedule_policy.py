"""In which order waiting requests are admitted.

`lpm` (longest prefix match) admits requests with the most cached tokens first, so their
prefixes are used before eviction can take them; ties go in lexicographic order of the token
ids, which is a depth-first walk of the prefix tree: requests that share a prefix run together.
`fcfs` admits in arrival order (the baseline the benchmarks compare against).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from executor.runtime.request import Request

POLICIES = ("lpm", "fcfs")
# Beyond this many waiting requests, prefix matching every request each step costs more than it
# saves; fall back to arrival order.
MAX_LPM_QUEUE = 1024
# Only the head of a prompt decides its place in the depth-first order.
DFS_KEY_TOKENS = 512


def order_waiting(
    waiting: Sequence[Request], policy: str, cached_len: Callable[[Request], int]
) -> list[Request]:
    """Requests in admission order. Partly prefilled (chunked) requests always go first."""
    started = [r for r in waiting if r.req_row is not None]
    fresh = [r for r in waiting if r.req_row is None]
    if policy == "fcfs" or len(fresh) > MAX_LPM_QUEUE:
        fresh.sort(key=lambda r: r.arrival)
    elif policy == "lpm":
        fresh.sort(key=lambda r: (-cached_len(r), r.fill_ids[:DFS_KEY_TOKENS], r.arrival))
    else:
        raise ValueError(f"unknown schedule policy {policy!r}; expected one of {POLICIES}")
    return started + fresh
