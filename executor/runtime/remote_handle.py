"""`ThreadedHandle`: the part of a `RequestHandle` that every client whose results arrive on a
thread of its own (an HTTP worker, a Ray poller) shares; `CollectingGroup`: their `RequestGroup`.

The in-process engine finishes handles on its engine thread (`engine_handles.py`); a remote client
learns of deltas and results on a worker thread and hands them over here; the waiting side
(`result()`, `stream()`, listeners) is `handle_events.HandleEvents`, shared with the in-process
handle. Subclasses give `abort()` and how a delta is passed on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from executor.runtime.handle_events import HandleEvents
from executor.runtime.runtime_client import ClientRequest, Listener

__all__ = ["CollectingGroup", "ThreadedHandle"]


class ThreadedHandle(HandleEvents):
    """A request handle finished from another thread (`runtime_client.RequestHandle`)."""

    def __init__(self, rid: str, stream: bool) -> None:
        super().__init__(stream)
        self._rid = rid
        self._result: dict[str, Any] | None = None

    @property
    def rid(self) -> str:
        return self._rid

    @property
    def chained(self) -> None:
        """Never a chain: remote clients refuse `GenerateRequest.then` (their `info().chains` is False)."""
        return None

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        self._wait(timeout)
        assert self._result is not None
        return self._result

    # -- on the client's worker thread ------------------------------------------------------------
    def _emit(self, delta: str) -> None:
        """A text delta arrived: queue it for `stream()` and tell the listeners."""
        if self._deltas is not None and delta:
            self._deltas.put(delta)
        self._notify(delta, False)

    def _finish(self, result: dict[str, Any] | None, error: BaseException | None = None) -> None:
        """The request ended with `result` or `error` (the first call wins)."""

        def settle() -> None:
            self._result, self._error = result, error

        if self._set_done(settle):
            self._notify("", True)


class CollectingGroup:
    """A `RequestGroup` that checks each request as it is sent (`prepare`) and hands them all to
    `dispatch` when the block exits, even if it raised."""

    def __init__(self, prepare: Callable[[ClientRequest, Listener | None], ThreadedHandle],
                 dispatch: Callable[[list[ThreadedHandle]], None]) -> None:
        self._prepare = prepare
        self._dispatch = dispatch
        self._handles: list[ThreadedHandle] = []
        self._closed = False

    def send(self, request: ClientRequest, listener: Listener | None = None) -> ThreadedHandle:
        if self._closed:
            raise RuntimeError("this request group was already sent")
        handle = self._prepare(request, listener)
        self._handles.append(handle)
        return handle

    def __enter__(self) -> CollectingGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self._dispatch(self._handles)
