"""`ThreadedHandle`: the part of a `RequestHandle` that every client whose results arrive on a
thread of its own (an HTTP worker, a Ray poller) shares; `CollectingGroup`: their `RequestGroup`.

The in-process engine finishes handles on its engine thread (`engine_handles.py`); a remote client
learns of deltas and results on a worker thread and hands them over here. `result()` waits on an
event, `stream()` reads a queue of text deltas (streaming requests only), and listeners hear each
delta and the end once. Subclasses give the request id, `abort()`, and how a delta is passed on.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from executor.runtime.runtime_client import ClientRequest, Listener

__all__ = ["CollectingGroup", "ThreadedHandle"]


class ThreadedHandle:
    """A request handle finished from another thread (`runtime_client.RequestHandle`)."""

    def __init__(self, rid: str, stream: bool) -> None:
        self._rid = rid
        self._done = threading.Event()
        self._result: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._deltas: queue.Queue | None = queue.Queue() if stream else None

    @property
    def rid(self) -> str:
        return self._rid

    @property
    def chained(self) -> None:
        """Never a chain: remote clients refuse `GenerateRequest.then` (their `info().chains` is False)."""
        return None

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self._rid} did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def stream(self) -> Iterator[dict[str, Any]]:
        if self._deltas is None:
            raise ValueError("this request was not sent with stream=True")
        while True:
            delta = self._deltas.get()
            if delta is None:
                break
            yield {"text": delta, "meta_info": {"id": self._rid}}
        yield {"text": "", "meta_info": self.result()["meta_info"]}

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            if not self._done.is_set():
                self._listeners.append(listener)
                return
        listener("", True)

    # -- on the client's worker thread ------------------------------------------------------------
    def _emit(self, delta: str) -> None:
        """A text delta arrived: queue it for `stream()` and tell the listeners."""
        if self._deltas is not None and delta:
            self._deltas.put(delta)
        self._notify(delta, False)

    def _finish(self, result: dict[str, Any] | None, error: BaseException | None = None) -> None:
        """The request ended with `result` or `error` (the first call wins)."""
        with self._lock:
            if self._done.is_set():
                return
            self._result, self._error = result, error
            self._done.set()
        if self._deltas is not None:
            self._deltas.put(None)
        self._notify("", True)

    def _notify(self, delta: str, finished: bool) -> None:
        for listener in list(self._listeners):
            try:
                listener(delta, finished)
            except Exception:  # a listener's bug must not stop the thread that delivers results
                pass


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
