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

from executor.constrained import ConstraintCursor
from executor.detokenizer import IncrementalDetokenizer
from executor.sampling import RequestError, RequestTypeError, SamplingParams

# More alternatives per token than this would make one request's results (and the step computing
# them) huge: with a long prompt and input logprobs, K tuples per prompt token.
MAX_TOP_LOGPROBS = 128


class RequestKind(enum.Enum):
    GENERATE = "generate"
    SCORE = "score"  # prefill a prompt, then score continuations (children) against it
    SCORE_CHILD = "score_child"  # one continuation of a SCORE request: extend only, no sampling


@dataclass(frozen=True)
class LogprobOptions:
    return_logprob: bool = False
    logprob_start_len: int = -1  # -1: no prompt logprobs (SGLang's default)
    top_logprobs_num: int = 0

    def validate(self) -> None:
        """Raise `RequestError` naming the first bad option and its value (prompt-dependent checks,
        such as logprob_start_len inside the prompt, are the engine's)."""
        if not isinstance(self.return_logprob, bool):
            raise RequestTypeError(f"invalid return_logprob={self.return_logprob!r}: must be a bool")
        for name, low in (("logprob_start_len", -1), ("top_logprobs_num", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise RequestTypeError(f"invalid {name}={value!r}: must be an integer")
            if value < low:
                raise RequestError(f"invalid {name}={value!r}: must be >= {low}")
        if self.top_logprobs_num > MAX_TOP_LOGPROBS:
            raise RequestError(f"invalid top_logprobs_num={self.top_logprobs_num!r}: at most "
                               f"{MAX_TOP_LOGPROBS} alternatives per token are returned")


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
    prefix_group: str | None = None  # requests declared to share a prompt prefix (see Engine.submit)

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
