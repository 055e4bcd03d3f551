"""The offline engine: load a model, run the scheduler in a background thread, serve requests.

The API mirrors SGLang's offline `Engine` (generate with sampling_params, logprob options and
streaming) plus `score`, which `select` uses: the logprobs of several continuations of one prompt,
computed in one batch on top of the prompt's cached KV. The engine is also the in-process
implementation of the runtime's client interface (`executor/runtime/runtime_client.py`: `send`, `group`,
`pin_prefix`, `stats`, `flush_cache`, ...), which is all the program executor uses.

The work is split by concern: `engine_config` (settings, device, dtype, KV budget),
`engine_runtime` (KV memory, model runner and scheduler, built and rebuilt as one unit),
`engine_intake` (every check on a request, on the caller's thread), `engine_loop` (the engine
thread, its inbox and the follow-up waits), `engine_handles` (results, streaming, abort, pins) and
`engine_stats` (counters). This module ties them together behind the public API.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from executor.runtime.constrained import ConstraintCache
from executor.runtime.engine_chain import Chain
from executor.runtime.engine_config import DEFAULT_CUDA_KV_FRACTION, EngineConfig, pick_dtype, resolve_device
from executor.runtime.engine_handles import PrefixPin, RequestHandle
from executor.runtime.engine_intake import RequestIntake
from executor.runtime.engine_loop import EngineLoop
from executor.runtime.engine_runtime import RuntimeParts, build_runtime
from executor.runtime.engine_stats import collect_stats
from executor.runtime.kv_manager import KVManager
from executor.runtime.memory import KVPool, ReqToTokenPool, TokenSlotAllocator
from executor.runtime.model_runner import ModelRunner
from executor.runtime.radix_cache import RadixCache
from executor.runtime.request import LogprobOptions, Request
from executor.runtime.runtime_client import (
    ChainedGen,
    ClientRequest,
    EngineError,
    GenerateRequest,
    Listener,
    RuntimeInfo,
    ScoreRequest,
)
from executor.runtime.sampling_params import RequestError, RequestTypeError
from executor.runtime.scheduler import Scheduler
from executor.runtime.tokenizer import Tokenizer

logger = logging.getLogger("sgc.engine")

__all__ = ["DEFAULT_CUDA_KV_FRACTION", "Engine", "EngineConfig", "EngineError", "PrefixPin", "RequestError",
           "RequestHandle", "RequestTypeError", "resolve_device"]


class Engine:
    """sgc's LLM runtime, as a library object.

    >>> with Engine(model_path="smollm2-135m-instruct") as engine:
    ...     out = engine.generate("The capital of France is", {"max_new_tokens": 8, "temperature": 0})
    """

    def __init__(self, model_path: str = "smollm2-135m-instruct", device: str = "auto", **kwargs: Any):
        self.config = EngineConfig(model_path=model_path, device=device, **kwargs)
        from models import load_model, resolve_model

        self.device = resolve_device(self.config.device)
        dtype = self._dtype = pick_dtype(self.config, self.device)
        started = time.perf_counter()
        folder: Path = resolve_model(self.config.model_path)
        self.model, self.model_config = load_model(folder, self.device, dtype)
        if self.config.null_model:
            from models.null import NullModel

            self.model = NullModel(self.model_config, self.device, dtype)
        self._tokenizer = Tokenizer(folder)
        self.constraints = ConstraintCache(self._tokenizer)
        self.model_folder = folder
        self.context_len = self.model_config.max_position_embeddings
        self._intake = RequestIntake(self._tokenizer, self.constraints, self.model_config.vocab_size,
                                     self.context_len, self.device)
        parts = self._build_runtime(dtype)
        logger.info("engine ready in %.2f s: %s on %s (%s), %d KV slots",
                    time.perf_counter() - started, folder.name, self.device, dtype, parts.num_kv_slots)
        # The rebuild looks `_build_runtime` up when it runs (tests replace it to inject faults).
        self._loop = EngineLoop(parts, lambda: self._build_runtime(self._dtype), self.config.follow_up_wait_s,
                                free_before_rebuild=torch.cuda.empty_cache if self.device.type == "cuda" else None)

    def _build_runtime(self, dtype: torch.dtype) -> RuntimeParts:
        return build_runtime(self.model, self.model_config, self.config, self.device, dtype, self.context_len,
                             self.constraints)

    # -- the runtime's parts (read-only views for tests, benchmarks and debugging) --------------------
    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def _parts(self) -> RuntimeParts:
        return self._loop.parts

    @property
    def scheduler(self) -> Scheduler:
        return self._parts.scheduler

    @property
    def runner(self) -> ModelRunner:
        return self._parts.runner

    @property
    def kv_pool(self) -> KVPool:
        return self._parts.kv_pool

    @property
    def kv_manager(self) -> KVManager:
        return self._parts.kv

    @property
    def allocator(self) -> TokenSlotAllocator:
        return self._parts.kv.allocator

    @property
    def req_to_token(self) -> ReqToTokenPool:
        return self._parts.kv.req_to_token

    @property
    def radix_cache(self) -> RadixCache | None:
        return self._parts.kv.cache

    @property
    def num_kv_slots(self) -> int:
        return self._parts.num_kv_slots

    @property
    def _thread(self) -> threading.Thread:
        return self._loop.thread

    # -- SGLang's offline API ---------------------------------------------------------------------
    def generate(
        self,
        prompt: str | Sequence[str] | None = None,
        sampling_params: dict | Sequence[dict] | None = None,
        input_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
        return_logprob: bool = False,
        logprob_start_len: int | None = None,
        top_logprobs_num: int | None = None,
        stream: bool = False,
    ) -> dict | list[dict] | Iterator[dict]:
        """Generate for one prompt (returns a dict) or a list of prompts (returns a list).

        Each result is {"text", "output_ids", "meta_info"}; meta_info has prompt_tokens,
        completion_tokens, cached_tokens, finish_reason and, with return_logprob, the logprob lists
        as (logprob, token_id, None) tuples. With stream=True (one prompt) an iterator of
        {"text": delta} chunks is returned instead.
        """
        prompts, batched = self._intake.normalize_prompts(prompt, input_ids)
        if not isinstance(stream, bool):
            raise RequestTypeError(f"invalid stream={stream!r}: must be a bool")
        if stream and batched:
            raise RequestError("stream=True takes a single prompt")
        if isinstance(sampling_params, Sequence) and not isinstance(sampling_params, (str, bytes)):
            if len(sampling_params) != len(prompts):
                raise RequestError(f"got {len(sampling_params)} sampling_params for {len(prompts)} prompts")
            params_list = list(sampling_params)
        else:
            params_list = [sampling_params] * len(prompts)
        options = LogprobOptions(
            return_logprob=return_logprob,
            logprob_start_len=-1 if logprob_start_len is None else logprob_start_len,
            top_logprobs_num=0 if top_logprobs_num is None else top_logprobs_num,
        )
        # Every request is checked before any is queued: a bad one refuses the whole call.
        handles = [self._prepare(GenerateRequest(ids, params, options, stream=stream))
                   for ids, params in zip(prompts, params_list)]
        self._loop.submit(handles)
        if stream:
            return handles[0].stream()
        results = [h.result() for h in handles]
        return results if batched else results[0]

    def score(self, prompt: str | Sequence[int], continuations: Sequence[str] | Sequence[Sequence[int]]) -> dict:
        """Logprobs of each continuation after the prompt, in one batch over the prompt's KV.

        Strings are tokenized separately (prompt with special tokens, continuations without), so
        callers that care about the token boundary should pass token ids. Returns
        {"logprobs": [[per-token logprob] per continuation], "meta_info": {...}}.
        """
        if isinstance(continuations, (str, bytes)) or not isinstance(continuations, Sequence):
            raise RequestTypeError("continuations must be a list of strings or of token-id lists, "
                                   f"not {type(continuations).__name__}")
        conts = [self._tokenizer.encode(c, add_special_tokens=False) if isinstance(c, str) else c
                 for c in continuations]
        return self.send(ScoreRequest(self._intake.encode_prompt(prompt), conts)).result()

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text)

    # -- the client interface (executor/runtime/runtime_client.py) ----------------------------------------
    def info(self) -> RuntimeInfo:
        return RuntimeInfo(model_path=str(self.model_folder), context_len=self.context_len,
                           vocab_size=self.model_config.vocab_size, num_kv_slots=self.num_kv_slots,
                           max_running_requests=self.config.max_running_requests,
                           schedule_policy=self.config.schedule_policy, chains=True)

    def send(self, request: ClientRequest, listener: Listener | None = None) -> RequestHandle:
        """Check one request (raises `RequestError` naming it) and queue it at once."""
        handle = self._prepare(request, listener)
        self._loop.submit([handle])
        return handle

    def group(self, after: Iterable[RequestHandle] = ()) -> RequestGroup:
        """Requests sent in the `with` block are queued together when it exits; then the finished
        follow_up handles `after` are answered (see runtime_client: this replaces the step holds)."""
        return RequestGroup(self, after)

    def pin_prefix(self, token_ids: Sequence[int]) -> PrefixPin:
        """Lock the cached part of `token_ids` in the radix cache so eviction cannot take it.

        For callers that know a prefix is about to be extended (the graph executor pins a prefilled
        prefix until the fork's branches have run). Called on the engine thread (from a request
        listener) it takes effect at once; from another thread it is queued with the requests, so it
        takes effect before any request submitted after it is scheduled. `pin.num_tokens` says how
        many tokens were cached and locked (0 without a radix cache). Pinned KV is unavailable to
        other requests: unpin as soon as possible.
        """
        pin = PrefixPin([int(t) for t in token_ids])
        self._loop.run_task(lambda: pin._apply(self._current_kv()))
        return pin

    def unpin(self, pin: PrefixPin) -> None:
        """Release a `pin_prefix` lock (idempotent; safe after a runtime rebuild). Like `pin_prefix`
        it may take effect later, in order with requests; `pin.released` is set when it has."""
        self._loop.run_task(lambda: pin._release(self._current_kv()))

    def stats(self) -> dict:
        """Counters for benchmarks and debugging (not synchronized with a running step)."""
        return collect_stats(self._parts, self._loop.totals)

    def flush_cache(self, timeout: float = 30.0) -> bool:
        """Evict every cached prefix that no running request or pin holds, on the engine thread
        between steps. False when the engine did not get to it within `timeout` seconds."""
        done = threading.Event()

        def flush() -> None:
            try:
                kv = self._current_kv()
                if kv is not None:
                    kv.flush()
            finally:
                done.set()

        self._loop.run_task(flush)
        return done.wait(timeout)

    def is_alive(self) -> bool:
        return self._loop.is_alive()

    # -- lifetime ---------------------------------------------------------------------------------
    def shutdown(self) -> None:
        loop = getattr(self, "_loop", None)  # None if __init__ failed
        if loop is not None:
            loop.stop()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __del__(self) -> None:  # best effort; explicit shutdown() is preferred
        try:
            self.shutdown()
        except Exception:
            pass

    # -- helpers ----------------------------------------------------------------------------------
    def _current_kv(self) -> KVManager | None:
        """The runtime's KV manager now (None while a failed rebuild left no runtime)."""
        parts = self._loop.parts
        return parts.kv if parts is not None else None

    def _prepare(self, request: ClientRequest, listener: Listener | None = None) -> RequestHandle:
        """A checked request's handle, its listener registered, not queued yet."""
        req: Request
        if isinstance(request, GenerateRequest):
            req = self._intake.generate(request, listener)
            stream = request.stream
        elif isinstance(request, ScoreRequest):
            req = self._intake.score(request, listener)
            stream = False
        else:
            raise RequestTypeError(f"a request must be a GenerateRequest or a ScoreRequest, "
                                   f"not {type(request).__name__}")
        handle = RequestHandle(req, stream, follow_up=request.follow_up, on_abort=self._loop.abort,
                               on_finish=self._loop.holds.expect)
        if isinstance(request, GenerateRequest) and request.then is not None:
            self._prepare_chain(req, handle, request.then)
        if listener is not None:
            handle.add_listener(listener)
        return handle

    def _prepare_chain(self, req: Request, handle: RequestHandle, then: object) -> None:
        """Build and check every chained request now (`GenerateRequest.then`), so a bad one refuses
        the send; each starts when the one before it finishes (`Scheduler._start_chain`)."""
        while then is not None:
            if not isinstance(then, ChainedGen):
                raise RequestTypeError(f"request {req.rid}: then must be a ChainedGen, not {type(then).__name__}")
            for name in ("prompt_text", "forced_text"):
                if not isinstance(getattr(then, name), str):
                    raise RequestTypeError(f"request {req.rid}: then.{name} must be a string")
            if req.logprobs.return_logprob and req.logprobs.logprob_start_len >= 0:
                raise RequestError(f"request {req.rid}: a chained request cannot return prompt logprobs")
            # The previous prompt stands in for the chained one's until it starts (checks need one).
            nxt = self._intake.generate(GenerateRequest(req.input_ids, then.params, then.options, then.constraint,
                                                        follow_up=then.follow_up))
            if nxt.logprobs.return_logprob and nxt.logprobs.logprob_start_len >= 0:
                raise RequestError(f"request {nxt.rid}: a chained request cannot return prompt logprobs")
            chained = RequestHandle(nxt, False, follow_up=then.follow_up, on_abort=self._loop.abort,
                                    on_finish=self._loop.holds.expect)
            req.chain = Chain(nxt, chained, then.prompt_text, then.forced_text)
            handle.chained = chained
            req, handle, then = nxt, chained, then.then


class RequestGroup:
    """`Engine.group`: requests queued together on exit, then `after` answered (see runtime_client)."""

    def __init__(self, engine: Engine, after: Iterable[RequestHandle]) -> None:
        self._engine = engine
        self._after = [h.rid for h in after]
        self._handles: list[RequestHandle] = []
        self._closed = False

    def send(self, request: ClientRequest, listener: Listener | None = None) -> RequestHandle:
        if self._closed:
            raise RuntimeError("this request group was already sent")
        if not self._engine.is_alive():
            raise EngineError("the engine has been shut down")
        handle = self._engine._prepare(request, listener)
        self._handles.append(handle)
        return handle

    def close(self) -> None:
        """Queue the requests (if any), then answer `after`; the handles fail if the engine stopped."""
        if self._closed:
            return
        self._closed = True
        loop = self._engine._loop
        if self._handles:
            try:
                loop.submit(self._handles)
            except EngineError as exc:
                for handle in self._handles:
                    handle._fail(exc)
        if self._after:
            loop.holds.answer(self._after)

    def __enter__(self) -> RequestGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
