"""The engine's counters, for benchmarks, metrics and debugging."""

from __future__ import annotations

from typing import TYPE_CHECKING

from executor.runtime.request import Request, RequestKind

if TYPE_CHECKING:
    from executor.runtime.engine_runtime import RuntimeParts

__all__ = ["TokenTotals", "collect_stats"]


class TokenTotals:
    """Totals over every request finished so far (benchmarks take differences; cache hit rate =
    cached / prompt tokens). A score request's prompt counts its continuations too. Written by the
    engine thread only."""

    def __init__(self) -> None:
        self.num_finished_requests = 0
        self.num_prompt_tokens = 0
        self.num_cached_prompt_tokens = 0
        self.num_generated_tokens = 0

    def count(self, req: Request) -> None:
        self.num_finished_requests += 1
        self.num_prompt_tokens += len(req.input_ids) + sum(len(c) for c in req.continuations)
        self.num_cached_prompt_tokens += req.num_cached_tokens
        if req.kind is not RequestKind.SCORE:
            self.num_generated_tokens += len(req.output_ids)

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


def collect_stats(parts: RuntimeParts, totals: TokenTotals) -> dict[str, int]:
    """Counters of the runtime and the token totals (not synchronized with a running step)."""
    s = parts.scheduler
    return {
        "num_forward_passes": parts.runner.num_forward_passes,
        "num_extend_steps": s.num_extend_steps,
        "num_decode_steps": s.num_decode_steps,
        "num_retractions": s.num_retractions,
        "num_jump_forward_tokens": s.num_jump_forward_tokens,
        "num_shared_prefix_tokens": s.num_shared_prefix_tokens,
        **totals.as_dict(),
        "num_free_kv_slots": parts.kv.num_free_slots,
        "num_cached_kv_tokens": parts.kv.num_cached_tokens,
    }
