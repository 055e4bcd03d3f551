"""`HandleEvents`: the waiting side every request handle shares, in process or remote.

A handle is finished by one thread (the engine thread, or a client's worker thread) and read by
any other: `result()` waits on an event, `stream()` reads a queue of text deltas (streaming
requests only), and listeners hear each delta and the end once. The in-process handle
(`engine_handles.RequestHandle`) and the remote ones (`remote_handle.ThreadedHandle`) differ only in
where the result comes from and how a request is aborted.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from executor.runtime.runtime_client import Listener

logger = logging.getLogger("sgc.engine")


class HandleEvents:
    """Done event, delta queue and listeners of one request; subclasses give `rid` and `result()`."""

    def __init__(self, stream: bool) -> None:
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._deltas: queue.Queue | None = queue.Queue() if stream else None
        self._listeners: list[Listener] = []
        self._listener_lock = threading.Lock()  # orders listener registration and the end

    @property
    def rid(self) -> str:
        raise NotImplementedError

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def done(self) -> bool:
        return self._done.is_set()

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(delta, finished)` after each update of this request: `delta` is the newly
        streamed text (always "" unless submitted with stream=True), `finished` is True once, at the
        end (success or failure: `result()` then returns or raises without blocking).

        Listeners run on the thread that finishes the request (the engine thread in process): they
        must be quick and must not block (put the event on a queue). Registered after the request
        finished, the listener is called at once, on the caller's thread, with ("", True).
        """
        with self._listener_lock:
            if not self._done.is_set():
                self._listeners.append(listener)
                return
        listener("", True)

    def stream(self) -> Iterator[dict[str, Any]]:
        """Yields {"text": delta, "meta_info": ...}; the last chunk carries the final meta_info."""
        if self._deltas is None:
            raise ValueError("this request was not submitted with stream=True")
        while True:
            delta = self._deltas.get()
            if delta is None:
                break
            yield {"text": delta, "meta_info": {"id": self.rid}}
        yield {"text": "", "meta_info": self.result()["meta_info"]}

    def _wait(self, timeout: float | None) -> None:
        """Block until the request ended; raise its error, or TimeoutError after `timeout` s."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.rid} did not finish within {timeout} s")
        if self._error is not None:
            raise self._error

    # -- on the finishing thread ----------------------------------------------------------------
    def _set_done(self, settle: Callable[[], None] | None = None) -> bool:
        """Mark the request ended and close the delta queue; False (and nothing done) if it already
        had. `settle` records the outcome under the same lock, so whoever the event wakes sees it
        and a second finisher cannot overwrite it."""
        with self._listener_lock:
            if self._done.is_set():
                return False
            if settle is not None:
                settle()
            self._done.set()
        if self._deltas is not None:
            self._deltas.put(None)
        return True

    def _notify(self, delta: str, finished: bool) -> None:
        for listener in list(self._listeners):
            try:
                listener(delta, finished)
            except Exception:  # a listener's bug must not take the finishing thread down
                logger.exception("request %s: a listener raised", self.rid)
