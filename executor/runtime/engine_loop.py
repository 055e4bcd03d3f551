"""The engine thread: requests in, one scheduler step at a time, results out.

Callers never touch the scheduler. They put work on the inbox (a queue): a `Submission` (one
request, or a group taken in the same step), or an `EngineTask` (a pin, an unpin, an abort, a cache
flush: anything that must run between steps). The thread takes everything queued, runs one step,
and publishes each advanced request to its handle. It never dies of an error: a request's own
failure fails that request (the scheduler isolates it); anything else (the forward pass) fails
every request in flight and rebuilds the runtime, so callers never hang.

Before a step the thread may wait for follow-ups (`StepHolds`): when a request sent with
`follow_up=True` finishes, its client is about to send the requests its result made ready, and a
step started a few microseconds earlier would cost them a whole pass.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from executor.runtime.engine_chain import Chain
from executor.runtime.engine_handles import RequestHandle
from executor.runtime.engine_runtime import RuntimeParts
from executor.runtime.engine_stats import TokenTotals
from executor.runtime.request import Request
from executor.runtime.runtime_client import EngineError

__all__ = ["EngineLoop", "StepHolds"]

logger = logging.getLogger("sgc.engine")


class StepHolds:
    """What the next step waits for: unanswered follow_up requests (by id, answered by a client's
    group). The wait is bounded by `wait_s`; past it they are dropped, so a client that never answers
    only delays one step.
    """

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self._unanswered: set[str] = set()
        self._changed = threading.Condition()

    def expect(self, rid: str) -> None:
        """A follow_up request finished (engine thread, before its listeners hear of it)."""
        with self._changed:
            self._unanswered.add(rid)

    def answer(self, rids: Iterable[str]) -> None:
        """The client sent what these finished requests made ready (ids not waited for are ignored)."""
        with self._changed:
            self._unanswered.difference_update(rids)
            self._changed.notify_all()

    def active(self) -> bool:
        return bool(self._unanswered)

    def wait(self) -> None:
        """Block the engine thread until nothing holds the step, or `wait_s` has passed."""
        with self._changed:
            if not self._changed.wait_for(lambda: not self.active(), self.wait_s):
                logger.debug("step held past %.3f s; running without the follow-ups", self.wait_s)
                self._unanswered.clear()


@dataclass(frozen=True)
class EngineTask:
    """A function to run on the engine thread between steps (queued in the inbox with requests)."""

    fn: Callable[[], None]

    def run(self) -> None:
        try:
            self.fn()
        except Exception:
            logger.exception("an engine task failed")


@dataclass(frozen=True)
class Submission:
    """Requests taken into the scheduler together (one inbox item, so one step sees them all)."""

    handles: tuple[RequestHandle, ...]


class EngineLoop:
    """The engine thread and its inbox, over a runtime it can rebuild (`build()`)."""

    def __init__(self, parts: RuntimeParts, build: Callable[[], RuntimeParts], follow_up_wait_s: float,
                 free_before_rebuild: Callable[[], None] | None = None) -> None:
        self.parts: RuntimeParts | None = parts
        self._build = build
        # On CUDA the old pool and graphs must go before a new pool is sized from free memory.
        self._free_before_rebuild = free_before_rebuild
        self.holds = StepHolds(follow_up_wait_s)
        self.totals = TokenTotals()
        self._inbox: queue.Queue = queue.Queue()
        self._handles: dict[str, RequestHandle] = {}  # taken into the scheduler, not finished
        self._arrivals = itertools.count()
        self._stopping = False
        self._broken: BaseException | None = None  # set while the runtime cannot be rebuilt
        self.thread = threading.Thread(target=self._run, name="sgc-engine", daemon=True)
        self.thread.start()

    # -- the callers' side ----------------------------------------------------------------------------
    def submit(self, handles: Sequence[RequestHandle]) -> None:
        """Queue requests to be taken in the same step; EngineError if the engine stopped."""
        if self._stopping:
            raise EngineError("the engine has been shut down")
        if not self.thread.is_alive():
            raise EngineError("the engine thread is not running")
        self._inbox.put(Submission(tuple(handles)))

    def run_task(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the engine thread between steps: at once if called there (a listener) or if
        the thread has stopped (nothing else touches the runtime then), else in order with requests."""
        if threading.current_thread() is self.thread or self._stopping or not self.thread.is_alive():
            fn()
        else:
            self._inbox.put(EngineTask(fn))

    def abort(self, handle: RequestHandle) -> None:
        """Abort a request at its client's wish: always queued (never run inside a listener, where
        the step's results are still being published), so it takes effect before the next step."""
        if self._stopping or not self.thread.is_alive():
            return  # shutting down fails every request anyway
        self._inbox.put(EngineTask(lambda: self._abort(handle)))

    def is_alive(self) -> bool:
        return not self._stopping and self.thread.is_alive()

    def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._inbox.put(None)
        self.thread.join(timeout=30)

    # -- the engine thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        """It never dies of an error: a request's own failure fails that request (the scheduler
        isolates it), anything else fails what is in flight and rebuilds the runtime."""
        while True:
            try:
                if not self._serve_once():
                    return
            except Exception as exc:
                logger.exception("engine step failed")
                self._recover(exc)

    def _serve_once(self) -> bool:
        """Take new requests, run one step, publish its results; False once shut down."""
        if self._broken is not None:  # no runtime: try again to build one when requests come
            items = self._drain_inbox(block=True)
            self._rebuild()
            return self._take_inbox(items)  # refuses them if it is still broken
        if not self._take_inbox(self._drain_inbox(block=not self.parts.scheduler.has_work())):
            return False
        if self.holds.active():
            self.holds.wait()
            if not self._take_inbox(self._drain_inbox(block=False)):
                return False
        for req in self.parts.scheduler.step():
            # A step that neither ended a request nor has text to stream changes nothing its
            # caller can see (listeners hear "" deltas only from streaming requests): skip it.
            if req.finish_reason is None and req.error is None:
                handle = self._handles.get(req.rid)
                if handle is not None and handle.streams:
                    self._publish(handle)
                continue
            handle = self._handles.get(req.rid)
            if handle is not None:
                self._publish(handle)
        return True

    def _publish(self, handle: RequestHandle) -> None:
        req = handle.req
        if req.chain is not None and (req.finished or req.error is not None):
            self._settle_chain(req)  # before the request's listeners hear it finished
        if req.error is None:
            try:
                handle._publish()
            except Exception as exc:  # e.g. detokenizing this request's output
                logger.exception("request %s: publishing its output failed", req.rid)
                self.parts.scheduler.fail_request(req, exc, report=False)
        if req.error is not None:
            del self._handles[req.rid]
            handle._fail(EngineError(f"request {req.rid} failed: {req.error!r}"))
        elif req.finished:
            del self._handles[req.rid]
            self.totals.count(req)

    def _settle_chain(self, req: Request) -> None:
        """A request with a chain ended: take its chained request in (the scheduler started it on
        the same sequence), or end the chain when it did not start."""
        chain, req.chain = req.chain, None
        nxt, handle = chain.request, chain.handle
        if req.chained_into is not nxt:
            reason = "failed" if req.error is not None else f"ended ({(req.finish_reason or {}).get('type')})"
            _end_chain(chain, f"request {nxt.rid} was not run: the request it continues, {req.rid}, {reason}")
            return
        self._handles[nxt.rid] = handle
        if handle.abort_requested:  # aborted while it waited for its predecessor
            self.parts.scheduler.abort_request(nxt, f"request {nxt.rid} was aborted by the client")
            del self._handles[nxt.rid]
            handle.aborted = True
            if nxt.chain is not None:
                self._settle_chain(nxt)
            handle._publish()

    def _abort(self, handle: RequestHandle) -> None:
        if self._handles.get(handle.rid) is not handle:
            return  # finished, or not taken yet (then `_take` sees abort_requested)
        if not self.parts.scheduler.abort_request(handle.req, f"request {handle.rid} was aborted by the client"):
            return  # it finished already and is published after the next step
        del self._handles[handle.rid]
        handle.aborted = True
        if handle.req.chain is not None:
            self._settle_chain(handle.req)
        handle._publish()

    def _recover(self, exc: BaseException) -> None:
        """After an error no request can be blamed for: fail every request in flight, start clean."""
        self._fail_all(exc)
        self._rebuild()

    def _rebuild(self) -> None:
        if self._free_before_rebuild is not None and self.parts is not None:
            self.parts = None
            self._free_before_rebuild()
        try:
            self.parts = self._build()
            self._broken = None
        except Exception as exc:  # keep the thread alive; requests are refused until a rebuild works
            logger.exception("rebuilding the runtime failed")
            self._broken = exc

    def _take_inbox(self, items: list) -> bool:
        """Queue new requests and run engine tasks; False on the shutdown sentinel."""
        for item in items:
            if item is None:
                self._fail_all(EngineError("the engine was shut down before this request finished"))
                return False
            if isinstance(item, EngineTask):
                item.run()
                continue
            for handle in item.handles:
                self._take(handle)
        return True

    def _take(self, handle: RequestHandle) -> None:
        req = handle.req
        if self._broken is not None:
            if req.chain is not None:
                _end_chain(req.chain, f"request {req.rid}, which it continues, failed")
            handle._fail(EngineError(f"request {req.rid} failed: the engine's runtime could not be "
                                     f"rebuilt after an error ({self._broken!r})"))
        elif handle.abort_requested:  # aborted before the engine saw it
            req.finish_reason = {"type": "abort", "message": f"request {req.rid} was aborted by the client"}
            handle.aborted = True
            if req.chain is not None:
                self._settle_chain(req)
            handle._publish()
        else:
            req.arrival = next(self._arrivals)
            self._handles[req.rid] = handle
            self.parts.scheduler.add(req)

    def _drain_inbox(self, block: bool) -> list:
        items = [self._inbox.get()] if block else []
        while True:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                return items

    def _fail_all(self, exc: BaseException) -> None:
        for rid, handle in list(self._handles.items()):
            if handle.req.chain is not None:
                _end_chain(handle.req.chain, f"request {rid}, which it continues, failed")
                handle.req.chain = None
            error = exc if isinstance(exc, EngineError) else EngineError(f"request {rid} failed: {exc!r}")
            handle._fail(error)
        self._handles.clear()


def _end_chain(chain: Chain, message: str) -> None:
    """Finish every request of a chain that will not run, as aborted (their handles return the
    empty output with finish_reason "abort"; a client may then send the gen itself)."""
    while chain is not None:
        nxt = chain.request
        nxt.finish_reason = {"type": "abort", "message": message}
        chain.handle.aborted = True
        chain.handle._on_finish = None  # nobody answers a request that never ran: do not hold a step
        chain.handle._publish()
        chain, nxt.chain = nxt.chain, None
