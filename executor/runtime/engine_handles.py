"""What the engine hands back to callers: request handles (results, streaming, listeners, abort)
and prefix pins.

A handle is written by the engine thread (`_publish` after each step that advanced the request,
`_fail` when it failed) and read by any other thread. Per step it costs one queue put for a
streaming request and one call per listener: no other per-token work, so a client layer built on
handles (the graph executor, a server) adds nothing to the step time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from executor.runtime.handle_events import HandleEvents
from executor.runtime.kv_manager import KVManager
from executor.runtime.request import Request, RequestKind
from executor.runtime.runtime_client import EngineError

__all__ = ["PrefixPin", "RequestHandle", "make_output"]


class RequestHandle(HandleEvents):
    """A submitted request: wait for its result, iterate over its streamed text, or abort it
    (the in-process implementation of `runtime_client.RequestHandle`). Listeners run on the
    engine thread, between forward passes."""

    def __init__(self, req: Request, stream: bool, follow_up: bool = False,
                 on_abort: Callable[[RequestHandle], None] | None = None,
                 on_finish: Callable[[str], None] | None = None):
        super().__init__(stream)
        self.req = req
        self.follow_up = follow_up
        self._on_abort = on_abort
        # Called on the engine thread just before a follow_up request reports finished (the
        # engine's next step then waits for the client's answer; see runtime_client).
        self._on_finish = on_finish if follow_up else None
        self.abort_requested = False  # abort() was called (it takes effect on the engine thread)
        self.chained: RequestHandle | None = None  # the request chained after this one (GenerateRequest.then)
        self.aborted = False  # the engine aborted it at the client's request
        self.submitted_at = time.perf_counter()
        self.finished_at: float | None = None

    @property
    def rid(self) -> str:
        return self.req.rid

    @property
    def streams(self) -> bool:
        """Submitted with stream=True: each step's new text is published (else only the end is)."""
        return self._deltas is not None

    # Called from the engine thread.
    def _publish(self) -> None:
        detok = self.req.detokenizer
        delta = ""
        if self._deltas is not None and detok is not None:
            if self.req.finished:
                detok.finish()
            delta = detok.pop_delta()
            if delta or self.req.finished:
                self._deltas.put(delta)
        if self.req.finished:
            self.finished_at = time.perf_counter()
            if self._on_finish is not None:
                self._on_finish(self.rid)
            self._set_done()
        if delta or self.req.finished:
            self._notify(delta, self.req.finished)

    def _fail(self, error: BaseException) -> None:
        self._error = error
        if self._on_finish is not None:
            self._on_finish(self.rid)
        self._set_done()
        self._notify("", True)

    def result(self, timeout: float | None = None) -> dict:
        self._wait(timeout)
        return make_output(self)

    def abort(self) -> None:
        """Stop this request if it has not finished (see `runtime_client.RequestHandle.abort`)."""
        if self._done.is_set() or self.abort_requested:
            return
        self.abort_requested = True
        if self._on_abort is not None:
            self._on_abort(self)


def make_output(handle: RequestHandle) -> dict[str, Any]:
    """A finished request's result dict (`GenerateOutput` or `ScoreOutput`); raises `EngineError`
    for a request the runtime aborted (one the client aborted returns its output so far)."""
    req = handle.req
    meta: dict[str, Any] = {
        "id": req.rid,
        "prompt_tokens": len(req.input_ids),
        "completion_tokens": len(req.output_ids),
        "cached_tokens": req.num_cached_tokens,
        "finish_reason": req.finish_reason,
        "e2e_latency": (handle.finished_at or time.perf_counter()) - handle.submitted_at,
    }
    if req.kind is RequestKind.SCORE:
        if handle.aborted:
            return {"logprobs": [], "meta_info": meta}
        return {"logprobs": req.continuation_logprobs, "meta_info": meta}
    if req.logprobs.return_logprob:
        meta["input_token_logprobs"] = req.input_token_logprobs
        meta["output_token_logprobs"] = req.output_token_logprobs
        if req.logprobs.top_logprobs_num:
            meta["input_top_logprobs"] = req.input_top_logprobs
            meta["output_top_logprobs"] = req.output_top_logprobs
    if req.finish_reason and req.finish_reason.get("type") == "abort" and not handle.aborted:
        raise EngineError(req.finish_reason["message"])
    text = ""
    if req.detokenizer is not None:
        try:
            req.detokenizer.finish()
            text = req.detokenizer.text
        except Exception as exc:
            raise EngineError(f"request {req.rid} failed while detokenizing its output: {exc!r}") from exc
    return {"text": text, "output_ids": list(req.output_ids), "meta_info": meta}


class PrefixPin:
    """A lock on a cached token prefix, from `Engine.pin_prefix`; release it with `Engine.unpin`."""

    def __init__(self, token_ids: list[int]) -> None:
        self.token_ids = token_ids
        self.num_tokens = 0  # how many leading tokens were cached and locked (set once applied)
        self.applied = threading.Event()
        self.released = threading.Event()  # set once `unpin` has taken effect
        self._kv: KVManager | None = None
        self._lock: Any = None
        self._released = False

    # Both run on the engine thread (or after it stopped), with the runtime's current KV manager.
    def _apply(self, kv: KVManager | None) -> None:
        if not self._released and kv is not None:
            self._kv = kv
            self._lock, self.num_tokens = kv.lock_prefix(self.token_ids)
        self.applied.set()

    def _release(self, kv: KVManager | None) -> None:
        self._released = True
        # After a failed step the runtime (and its cache) is rebuilt: the old lock went with it.
        if self._lock is not None and kv is not None and self._kv is kv:
            kv.unlock_prefix(self._lock)
        self._kv = self._lock = None
        self.released.set()

    def __repr__(self) -> str:
        return f"PrefixPin({len(self.token_ids)} tokens, {self.num_tokens} locked)"
