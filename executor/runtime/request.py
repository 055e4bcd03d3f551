"""A request's state as it moves through the scheduler.

One `Request` is created per prompt (and one per continuation of a `score` request). Its KV
bookkeeping follows one ownership rule: positions [0, num_tree_owned) of its slot row belong to
the radix cache (locked through `last_node`), positions [num_tree_owned, num_kv) belong to the
request and are freed or handed to the cache by the scheduler. Score continuations borrow their
parent's prompt slots instead: positions [0, num_borrowed) are never freed by the child.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch

from executor.runtime.constrained import ConstraintCursor
from executor.runtime.detokenizer import IncrementalDetokenizer
from executor.runtime.sampling_params import LogprobOptions, SamplingParams

__all__ = ["LogprobOptions", "Request", "RequestKind"]


class RequestKind(enum.Enum):
    GENERATE = "generate"
    SCORE = "score"  # prefill a prompt, then score continuations (children) against it
    SCORE_CHILD = "score_child"  # one continuation of a SCORE request: extend only, no sampling


@dataclass(eq=False)
class Request:
    rid: str
    input_ids: list[int]
    params: SamplingParams
    kind: RequestKind = RequestKind.GENERATE
    logprobs: LogprobOptions = field(default_factory=LogprobOptions)
    stop_token_ids: frozenset[int] = frozenset()
    detokenizer: IncrementalDetokenizer | None = None
    generator: torch.Generator | None = None
    constraint: ConstraintCursor | None = None
    arrival: int = 0
    prefix_group: str | None = None  # requests declared to share a prompt prefix (GenerateRequest.prefix_group)
    # A chained generation (GenerateRequest.then): `engine_chain.Chain`, run on this sequence when
    # this request finishes normally; `chained_into` is the request that took the sequence over.
    chain: Any = None
    chained_into: Request | None = None
    finished_at: float | None = None  # perf_counter when it finished (hop latency in benchmarks)
    first_token_at: float | None = None  # perf_counter of its first output token

    output_ids: list[int] = field(default_factory=list)
    # KV bookkeeping (see module docstring).
    req_row: int | None = None
    num_kv: int = 0
    num_tree_owned: int = 0
    num_borrowed: int = 0
    last_node: Any = None
    num_cached_tokens: int = 0
    admitted_once: bool = False
    num_retractions: int = 0

    # Results.
    finish_reason: dict | None = None
    error: BaseException | None = None  # why this request was aborted by its own failure (see Scheduler)
    input_token_logprobs: list = field(default_factory=list)
    input_top_logprobs: list = field(default_factory=list)
    output_token_logprobs: list = field(default_factory=list)
    output_top_logprobs: list = field(default_factory=list)

    # Score requests: the continuations and their per-token logprobs.
    continuations: list[list[int]] = field(default_factory=list)
    continuation_logprobs: list[list[float]] = field(default_factory=list)
    parent: Request | None = None
    child_index: int = 0
    num_children_pending: int = 0

    @property
    def fill_ids(self) -> list[int]:
        """Every token whose KV the model must have before it samples the next one."""
        return self.input_ids + self.output_ids if self.output_ids else self.input_ids

    @property
    def seq_len(self) -> int:
        return len(self.input_ids) + len(self.output_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def prefill_done(self) -> bool:
        return self.num_kv >= self.seq_len
