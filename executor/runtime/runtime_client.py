"""The one seam between the program executor and the LLM runtime: a typed client interface.

The program executor (graph executor, host steps, later the server's program endpoints) needs to
submit requests, hear how they progress, score continuations, pin a prefix, and read a few facts
about the runtime. Everything it needs is declared here, with plain data in and out (token ids,
`SamplingParams`, `LogprobOptions`, a compiled `TokenFSM`, JSON-able result dicts), so that the
in-process `Engine` (executor/runtime/engine.py), an HTTP client of `sgc serve` and remote replicas can all
implement it, and the program executor never knows which one it has.

**Threads.** Every method may be called from any thread. A handle's listeners run on the runtime's
own thread (in process: the engine thread, between forward passes), so they must be quick and never
block: put the event on a queue. Listeners are the only callbacks; nothing else of the caller runs
on the runtime's thread.

**Groups and follow-ups** (one step's requests, and no pass lost between results). A client that
reacts to results with new requests (a node's result makes the next node ready) wants those
follow-ups in the very next forward pass, not one pass later because they arrived a few
microseconds after it started. So:

- a request sent with `follow_up=True` promises an answer: when it finishes, the runtime's next
  step waits (up to its follow-up wait, 50 ms by default) until the client answers it;
- `client.group(after=handles)` is the answer: the requests sent inside the `with` block are queued
  together when it exits (the runtime takes them in the same step, a hint, not a guarantee of one
  batch), and then the finished `handles` it names are answered. An empty group answers too: a
  result that makes nothing new ready is answered with `with client.group(after=[h]): pass`.

**Chains** (gen -> known text -> gen, kept inside one running request). A `GenerateRequest` may
carry `then=ChainedGen(...)`: when it finishes normally (stop or length), the runtime appends the
`forced_text` and runs the chained generation as a new request on the SAME sequence (its KV kept, the
forced text prefilled as an extend in the next step, mixed with other requests' decodes), with no
round trip through the client. The chained request has its own handle (`handle.chained`), result
and listeners; its prompt is exactly the tokenization of `prompt_text + generated text +
forced_text` (what a client tokenizing the whole text would send). A request that ends otherwise
(abort, failure) ends its chain with it (the chained handles finish aborted). Only runtimes whose
`info().chains` is True take chains (the others refuse a request with `then`); a chained request
that nobody wants is aborted like any other.

Answers are by handle and idempotent: naming a handle twice, one that was sent without `follow_up`,
or one whose wait already timed out is harmless.

**Errors.** A request the runtime refuses raises `RequestError` (a ValueError; `RequestTypeError` is
also a TypeError) from `send`, naming the request id, the parameter and its value; nothing is
queued. A request that fails inside the runtime makes its handle's `result()` raise `EngineError`
naming it and the cause. An aborted request (`handle.abort()`) finishes with
`finish_reason == {"type": "abort", ...}` and the output so far: `result()` returns it (an aborted
score request has no logprobs).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, runtime_checkable

from executor.runtime.sampling_params import LogprobOptions, RequestError, RequestTypeError, SamplingParams

if TYPE_CHECKING:
    from compiler.constraints import TokenFSM

__all__ = [
    "ChainedGen", "ClientRequest", "EngineError", "GenerateOutput", "GenerateRequest", "Listener", "LogprobOptions",
    "PrefixPin", "RequestError", "RequestGroup", "RequestHandle", "RequestTypeError", "RuntimeClient",
    "RuntimeInfo", "SamplingParams", "ScoreOutput", "ScoreRequest", "SimpleCalls",
]


class EngineError(RuntimeError):
    """A request failed inside the runtime; the message names the request id and the cause."""


# listener(delta, finished): `delta` is newly streamed text ("" unless the request streams),
# `finished` is True exactly once, at the end (success, failure or abort).
Listener = Callable[[str, bool], None]


@dataclass(frozen=True)
class ChainedGen:
    """A generation that continues a finished one inside the same running request (see "Chains").

    `prompt_text` is the text whose tokenization is the first request's `input_ids` (the runtime
    re-tokenizes only its tail after the last special token, with the generated and forced text);
    `forced_text` is what the client appends after the generated text before the next `gen`.
    `then` chains further. `follow_up` is the chained request's own (see the module docstring).
    """

    prompt_text: str
    forced_text: str
    params: SamplingParams | Mapping[str, Any] | None = None
    options: LogprobOptions = LogprobOptions()
    constraint: TokenFSM | None = None
    follow_up: bool = False
    then: ChainedGen | None = None


@dataclass(frozen=True)
class GenerateRequest:
    """Generate after `input_ids` (the prompt's tokens, the client tokenizes).

    `params` is a `SamplingParams` or a dict of SGLang sampling parameters (validated on `send`).
    `constraint` is a precompiled token FSM (from an artifact); without it `params.regex` /
    `params.json_schema` are compiled by the runtime. `stream` makes listeners and `stream()` see
    text deltas. Requests with the same `prefix_group` are declared to share a prompt prefix (a
    fork's branches), so the runtime may read that prefix's KV once per group; a wrong hint costs
    nothing. `follow_up`: see the module docstring.
    """

    input_ids: Sequence[int]
    params: SamplingParams | Mapping[str, Any] | None = None
    options: LogprobOptions = LogprobOptions()
    constraint: TokenFSM | None = None
    stream: bool = False
    prefix_group: str | None = None
    follow_up: bool = False
    then: ChainedGen | None = None  # a generation to run on the same sequence after this one (see "Chains")


@dataclass(frozen=True)
class ScoreRequest:
    """The logprob of every token of each continuation after `input_ids` (what `select` uses),
    computed in one batch over the prompt's KV. Token ids only: the client decides the boundary."""

    input_ids: Sequence[int]
    continuations: Sequence[Sequence[int]]
    follow_up: bool = False


ClientRequest = GenerateRequest | ScoreRequest


class GenerateOutput(TypedDict):
    """A generate request's result. `meta_info` has id, prompt_tokens, completion_tokens,
    cached_tokens, finish_reason, e2e_latency and, when asked for, the logprob lists."""

    text: str
    output_ids: list[int]
    meta_info: dict[str, Any]


class ScoreOutput(TypedDict):
    """A score request's result: per continuation, the logprob of each of its tokens."""

    logprobs: list[list[float]]
    meta_info: dict[str, Any]


@dataclass(frozen=True)
class RuntimeInfo:
    """What a client may need to know about the runtime behind it."""

    model_path: str
    context_len: int
    vocab_size: int
    num_kv_slots: int
    max_running_requests: int
    schedule_policy: str  # "lpm" (cache-aware) or "fcfs"
    chains: bool = False  # takes GenerateRequest.then (see "Chains")

    @property
    def cache_aware(self) -> bool:
        """Whether the runtime orders work by shared prefixes (clients should submit that way too)."""
        return self.schedule_policy != "fcfs"


@runtime_checkable
class RequestHandle(Protocol):
    """A sent request: its result, its stream, its abort."""

    @property
    def rid(self) -> str: ...

    @property
    def chained(self) -> RequestHandle | None:
        """The handle of the request chained after this one (`GenerateRequest.then`), else None."""
        ...

    def done(self) -> bool: ...

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until it finishes: a `GenerateOutput` or a `ScoreOutput`; raises `EngineError` if it
        failed, `TimeoutError` after `timeout` seconds."""
        ...

    def stream(self) -> Iterator[dict[str, Any]]:
        """{"text": delta, "meta_info": {"id"}} chunks, then one with the final meta_info
        (a request sent with stream=True only)."""
        ...

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(delta, finished)` on each update (see `Listener`); registered after the
        request finished, it is called at once with ("", True)."""
        ...

    def abort(self) -> None:
        """Stop the request (if it has not finished): its KV is freed or kept as cache, listeners
        get finished=True, `result()` returns the output so far. Returns without waiting."""
        ...


@runtime_checkable
class PrefixPin(Protocol):
    """A cached prefix locked against eviction (from `RuntimeClient.pin_prefix`)."""

    num_tokens: int  # how many leading tokens were cached and locked (0: none)
    released: threading.Event  # set once `unpin` has taken effect


@runtime_checkable
class RequestGroup(Protocol):
    """Requests to run in the same step, and the finished handles they answer (`client.group`)."""

    def send(self, request: ClientRequest, listener: Listener | None = None) -> RequestHandle:
        """Check the request now (raises `RequestError`); it is queued when the group closes.
        `listener` is registered before the request is queued, so it sees every update."""
        ...

    def __enter__(self) -> RequestGroup: ...

    def __exit__(self, *exc: object) -> None:
        """Queue every request sent (even if the block raised), then answer `after`."""
        ...


@runtime_checkable
class RuntimeClient(Protocol):
    """An LLM runtime as the program executor sees it (see the module docstring)."""

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (`executor.runtime.tokenizer.Tokenizer`): clients send token ids."""
        ...

    def info(self) -> RuntimeInfo: ...

    def send(self, request: ClientRequest, listener: Listener | None = None) -> RequestHandle:
        """Queue one request now (a group of one that answers nothing)."""
        ...

    def group(self, after: Iterable[RequestHandle] = ()) -> RequestGroup:
        """A group of requests to queue together, answering the finished handles `after`."""
        ...

    def pin_prefix(self, token_ids: Sequence[int]) -> PrefixPin:
        """Lock the cached part of `token_ids` against eviction until `unpin`. Called from a
        listener of the request that computed the prefix, it takes effect before the next step."""
        ...

    def unpin(self, pin: PrefixPin) -> None:
        """Release a pin (idempotent); it may take effect later, `pin.released` says when."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters (forward passes, tokens, cache use) for benchmarks and metrics."""
        ...

    def flush_cache(self, timeout: float = 30.0) -> bool:
        """Drop every cached prefix no running request or pin holds; False if not done in time."""
        ...

    def is_alive(self) -> bool:
        """False once the runtime stopped (shut down, or unreachable): waiting on it is pointless."""
        ...


class SimpleCalls:
    """`generate` and `score` in SGLang's offline-API shape, written once over `send` / `group`.

    The eager interpreter (`compiler/interpreter.py`, which may not import the runtime) runs programs
    through these two calls and the tokenizer; a client that inherits this class (the HTTP client,
    the Ray replica client) offers them on top of the interface above, so a host step that runs a
    function eagerly works on any runtime. The in-process `Engine` has its own, which also takes text.
    """

    def generate(self, prompt: Any = None, sampling_params: Any = None, input_ids: Any = None,
                 return_logprob: bool = False, logprob_start_len: int | None = None,
                 top_logprobs_num: int | None = None, stream: bool = False) -> Any:
        """One prompt (a dict result, or with stream=True an iterator of chunks) or a list of them."""
        if (prompt is None) == (input_ids is None):
            raise RequestError("pass exactly one of prompt= or input_ids=")
        tokenizer = self.tokenizer  # type: ignore[attr-defined]
        if prompt is not None:
            batched = not isinstance(prompt, str)
            prompts = [tokenizer.encode(p) for p in (prompt if batched else [prompt])]
        else:
            batched = bool(input_ids) and isinstance(input_ids[0], (list, tuple))
            prompts = [list(p) for p in input_ids] if batched else [list(input_ids)]
        if stream and batched:
            raise RequestError("stream=True takes a single prompt")
        options = LogprobOptions(return_logprob=return_logprob,
                                 logprob_start_len=-1 if logprob_start_len is None else logprob_start_len,
                                 top_logprobs_num=top_logprobs_num or 0)
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise RequestError(f"got {len(params)} sampling_params for {len(prompts)} prompts")
        with self.group() as group:  # type: ignore[attr-defined]
            handles = [group.send(GenerateRequest(ids, p, options, stream=stream)) for ids, p in zip(prompts, params)]
        if stream:
            return handles[0].stream()
        results = [h.result() for h in handles]
        return results if batched else results[0]

    def score(self, prompt: Any, continuations: Sequence[Any]) -> dict:
        """Logprobs of each continuation after the prompt (text or token ids), in one request."""
        if isinstance(continuations, (str, bytes)) or not isinstance(continuations, Sequence):
            raise RequestTypeError("continuations must be a list of strings or of token-id lists, "
                                   f"not {type(continuations).__name__}")
        tokenizer = self.tokenizer  # type: ignore[attr-defined]
        ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        conts = [tokenizer.encode(c, add_special_tokens=False) if isinstance(c, str) else list(c)
                 for c in continuations]
        return self.send(ScoreRequest(ids, conts)).result()  # type: ignore[attr-defined]
