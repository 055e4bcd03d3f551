"""What every route of `sgc serve` shares: the server state, errors, sending requests through the
runtime client and waiting for them on the event loop, server-sent events.

Progress comes back through handle listeners (on the runtime's thread), bridged onto the event loop
with `call_soon_threadsafe`. A request whose HTTP client goes away is aborted: `run_requests` polls
for a disconnect while it waits, and `SSEResponse` runs its end action (aborting its requests) however the stream ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from executor.runtime.runtime_client import (
    EngineError,
    GenerateRequest,
    RequestError,
    RuntimeClient,
    ScoreRequest,
)
from sgc.serve.metrics import ServerMetrics

logger = logging.getLogger("sgc.serve")

__all__ = ["SSE_DONE", "ApiError", "BodyTooLarge", "ClientGone", "SSEResponse", "ServerState", "buffer_body",
           "error_response", "run_requests", "sse", "stream_requests"]

DEFAULT_MAX_QUEUED = 256
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
_POLL_S = 0.25  # how often a waiting request checks that its HTTP client is still there


class ApiError(Exception):
    """An error answered with `status` and OpenAI's error shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.headers = status, message, type_, param, headers


def error_response(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


class ClientGone(Exception):
    """The HTTP client disconnected while its request ran (the request was aborted)."""


@dataclass
class ServerState:
    """What the routes share: the runtime client, the model's names, the admission bound."""

    client: RuntimeClient
    model_name: str
    model_path: str
    tokenizer_path: str | None
    max_queued: int = DEFAULT_MAX_QUEUED
    api_key: str | None = None
    programs: dict[str, Any] = field(default_factory=dict)
    status: str = "starting"  # starting | ready | draining
    inflight: dict[str, Any] = field(default_factory=dict)  # rid -> handle
    aliases: dict[str, str] = field(default_factory=dict)  # rid -> the rid its HTTP client gave
    metrics: ServerMetrics | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def capacity(self) -> int:
        return self.client.info().max_running_requests + self.max_queued

    def check_ready(self) -> None:
        if self.status != "ready":
            raise ApiError(503, f"the server is {self.status}", "service_unavailable", headers={"Retry-After": "1"})

    # -- sending and waiting ------------------------------------------------------------------------
    def send_all(self, requests: Sequence[GenerateRequest | ScoreRequest],
                 listener: Callable[[int], Callable[[str, bool], None]],
                 client_rids: Sequence[str | None] = ()) -> list[Any]:
        """Check and queue `requests` together; a refused one refuses them all (400)."""
        self.check_ready()
        if len(self.inflight) + len(requests) > self.capacity:
            if self.metrics is not None:
                self.metrics.rejected.inc()
            raise ApiError(503, f"the server is at capacity ({self.capacity} requests in flight or queued); "
                                "retry later", "service_unavailable", headers={"Retry-After": "1"})
        handles: list[Any] = []
        try:
            with self.client.group() as group:
                for i, request in enumerate(requests):
                    handles.append(group.send(request, listener(i)))
        except RequestError as exc:
            for handle in handles:
                handle.abort()
            raise ApiError(400, str(exc)) from None
        except EngineError as exc:
            raise ApiError(503, str(exc), "service_unavailable") from None
        for i, handle in enumerate(handles):
            self.inflight[handle.rid] = handle
            alias = client_rids[i] if i < len(client_rids) else None
            if alias and alias not in self.inflight:  # the client's own id, for /abort_request
                self.aliases[handle.rid] = alias
        return handles

    def find(self, rid: str) -> Any:
        """The in-flight request with this id (the runtime's, or the one its client gave)."""
        if rid in self.inflight:
            return self.inflight[rid]
        for own, alias in list(self.aliases.items()):
            if alias == rid:
                return self.inflight.get(own)
        return None

    def forget(self, handles: Sequence[Any]) -> None:
        """Done with `handles`: abort those still running (their client left or the server is
        stopping; counted once as a disconnect). Idempotent."""
        cut = False
        for handle in handles:
            if self.inflight.pop(handle.rid, None) is not None and not handle.done():
                handle.abort()
                cut = True
            self.aliases.pop(handle.rid, None)
        if cut and self.metrics is not None:
            self.metrics.disconnects.inc()


class _Events:
    """Handle listeners (on the runtime's thread) put (index, delta, finished, time) on an asyncio queue."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, str, bool, float]] = asyncio.Queue()

    def listener(self, index: int) -> Callable[[str, bool], None]:
        def on_update(delta: str, finished: bool) -> None:
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, delta, finished, time.perf_counter()))
            except RuntimeError:  # the event loop closed (server shutting down): nobody is waiting
                pass

        return on_update

    async def next(self, request: Request | None) -> tuple[int, str, bool, float]:
        while True:
            try:
                return await asyncio.wait_for(self.queue.get(), _POLL_S)
            except asyncio.TimeoutError:
                if request is not None and await request.is_disconnected():
                    raise ClientGone() from None


async def run_requests(state: ServerState, requests: Sequence[GenerateRequest | ScoreRequest],
                       request: Request | None, route: str = "",
                       client_rids: Sequence[str | None] = ()) -> list[dict[str, Any]]:
    """Send `requests` together and wait for all their results (aborting them if the client leaves)."""
    events = _Events()
    started = time.perf_counter()
    handles = state.send_all(requests, events.listener, client_rids)
    try:
        remaining = len(handles)
        while remaining:
            _, _, finished, _ = await events.next(request)
            remaining -= finished
        results = []
        for handle in handles:
            try:
                results.append(handle.result(0))
            except EngineError as exc:
                raise ApiError(500, f"the runtime failed the request: {exc}", "internal_error") from None
        _log_results(route, results, time.perf_counter() - started)
        if state.metrics is not None:
            state.metrics.observe_results(route, results, time.perf_counter() - started)
        return results
    except ClientGone:
        logger.info("client disconnected: aborted %s", ", ".join(h.rid for h in handles))
        raise
    finally:
        state.forget(handles)


async def stream_requests(state: ServerState, requests: Sequence[GenerateRequest], request: Request | None,
                          handles_out: list[Any], route: str = "",
                          client_rids: Sequence[str | None] = ()) -> AsyncIterator[tuple[int, str, dict | None]]:
    """Send streaming `requests`; yield (index, delta, None) per text delta and (index, "", result) once
    each finishes. `handles_out` receives the handles (the response aborts them if it is cut)."""
    events = _Events()
    started = time.perf_counter()
    handles = state.send_all(requests, events.listener, client_rids)
    handles_out.extend(handles)
    last = [started] * len(handles)
    first = [True] * len(handles)
    try:
        remaining = len(handles)
        while remaining:
            index, delta, finished, at = await events.next(request)
            if delta:
                if state.metrics is not None:
                    state.metrics.observe_token(at - last[index], first[index])
                first[index] = False
                last[index] = at
                yield index, delta, None
            if finished:
                remaining -= 1
                try:
                    result = handles[index].result(0)
                except EngineError as exc:
                    result = {"error": str(exc), "text": "", "output_ids": [], "meta_info": {
                        "id": handles[index].rid, "finish_reason": {"type": "abort", "message": str(exc)}}}
                _log_results(route, [result], time.perf_counter() - started)
                if state.metrics is not None:
                    state.metrics.observe_results(route, [result], time.perf_counter() - started)
                yield index, "", result
    finally:
        state.forget(handles)


def _log_results(route: str, results: Sequence[dict[str, Any]], seconds: float) -> None:
    """One log line per finished request, with its runtime id."""
    if not logger.isEnabledFor(logging.INFO):
        return
    for result in results:
        meta = result.get("meta_info", {})
        reason = (meta.get("finish_reason") or {}).get("type")
        logger.info("%s %s: %s prompt (%s cached) + %s completion tokens, %s, %.3f s", meta.get("id"), route,
                    meta.get("prompt_tokens"), meta.get("cached_tokens"), meta.get("completion_tokens"), reason,
                    seconds)


class SSEResponse(StreamingResponse):
    """Server-sent events that call `on_end` however the response ends (a cut connection included:
    the generator may never be resumed, so its `finally` cannot be relied on). The generate routes
    pass `lambda: state.forget(handles)`, which aborts their requests; the program routes cancel
    their run."""

    def __init__(self, content: AsyncIterator[str], on_end: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._content, self._on_end = content, on_end

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_end()
            aclose = getattr(self._content, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except (Exception, asyncio.CancelledError):
                    pass


class BodyTooLarge(Exception):
    """A request body sent without Content-Length grew past the limit while it was read."""


async def buffer_body(receive: Any, max_bytes: int) -> Any:
    """Read a body sent without Content-Length (chunked), at most `max_bytes` of it; returns an ASGI
    receive that hands the body out first and then defers to `receive`, or None if the client left.
    Raises `BodyTooLarge` past the limit, before reading any further."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        body.extend(message.get("body", b""))
        if len(body) > max_bytes:
            raise BodyTooLarge
        if not message.get("more_body"):
            break
    replay = [{"type": "http.request", "body": bytes(body), "more_body": False}]

    async def replayed() -> Any:
        return replay.pop() if replay else await receive()

    return replayed


def sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"
