"""`ReplicaClient`: the runtime client interface over an `EngineReplica` actor (client-side proxy).

The program executor drives it exactly as it drives the in-process `Engine`
(`executor/runtime/runtime_client.py`): a graph run against a `ReplicaClient` gives the same result
as against a local engine. How each call crosses to the actor:

- `send` / `group(after=...)`: the requests are checked here (sampling parameters, logprob options,
  request type: `RequestError` from `send`, as in process), then one `submit` call per group carries
  them with the rids of the finished requests the group answers; `follow_up` keeps its meaning (the
  replica's engine waits for the answer as it would in process, up to its follow-up wait);
- results and stream deltas come back by **polling**: one thread per client long-polls the actor
  (`poll`, up to `poll_wait_s`, at most 512 events a call) while requests are in flight, and calls
  the handles' listeners on that thread (quick and non-blocking, as the interface asks);
- `abort`, `pin_prefix` / `unpin`, `stats`, `info`, `flush_cache` are actor calls; `is_alive` is a
  ping. A precompiled token FSM travels with its request (pickled once per request).

If the actor dies, every request in flight fails with `EngineError` naming the replica, and
`is_alive()` is False from then on.
"""

from __future__ import annotations

import dataclasses
import itertools
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from executor.runtime.remote_handle import CollectingGroup, ThreadedHandle
from executor.runtime.runtime_client import (
    ClientRequest,
    EngineError,
    GenerateRequest,
    Listener,
    RequestError,
    RequestTypeError,
    RuntimeInfo,
    SamplingParams,
    ScoreRequest,
    SimpleCalls,
)

__all__ = ["ReplicaClient", "ReplicaHandle"]

_ids = itertools.count()


class ReplicaHandle(ThreadedHandle):
    """A request sent to a replica (`runtime_client.RequestHandle`)."""

    def __init__(self, client: ReplicaClient, request: ClientRequest) -> None:
        stream = isinstance(request, GenerateRequest) and request.stream
        super().__init__(f"replica-{client.client_id[:8]}-{next(_ids)}", stream)
        self._client = client
        self.request = request

    def abort(self) -> None:
        if not self._done.is_set():
            self._client._abort(self._rid)

    def _finish(self, result: dict[str, Any] | None, error: BaseException | None = None) -> None:
        if result is not None:  # the replica's id for it is its own; the caller knows this one
            result = {**result, "meta_info": {**result.get("meta_info", {}), "id": self._rid}}
        super()._finish(result, error)


class _Pin:
    """A prefix pinned on the replica (`runtime_client.PrefixPin`)."""

    def __init__(self, pin_id: str | None, num_tokens: int) -> None:
        self.pin_id = pin_id
        self.num_tokens = num_tokens
        self.released = threading.Event()
        if pin_id is None:
            self.released.set()


class ReplicaClient(SimpleCalls):
    """`runtime_client.RuntimeClient` over an `EngineReplica` actor (see the module docstring)."""

    def __init__(self, actor: Any, *, poll_wait_s: float = 0.05, call_timeout_s: float = 120.0) -> None:
        import ray

        self._ray = ray
        self.actor = actor
        self.poll_wait_s = poll_wait_s
        self.call_timeout_s = call_timeout_s
        self.client_id: str = ray.get(actor.open_client.remote(), timeout=call_timeout_s)
        info: RuntimeInfo = ray.get(actor.info.remote(), timeout=call_timeout_s)
        if getattr(info, "chains", False):  # chained gens stay in process: this proxy sends each gen itself
            info = dataclasses.replace(info, chains=False)
        self._info = info
        self.model_path = self._info.model_path
        self.model_folder = Path(self.model_path)
        self._tokenizer = self._load_tokenizer()
        self._in_flight: dict[str, ReplicaHandle] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._dead: str | None = None
        self._closed = False
        self._poller = threading.Thread(target=self._poll_loop, name="sgc-replica-poll", daemon=True)
        self._poller.start()

    def _load_tokenizer(self) -> Any:
        from executor.runtime.tokenizer import Tokenizer

        if (self.model_folder / "tokenizer.json").is_file():
            return Tokenizer(self.model_folder)
        files = self._call(self.actor.tokenizer_files)
        folder = Path(tempfile.mkdtemp(prefix="sgc-tokenizer-"))
        for name, text in files.items():
            (folder / Path(name).name).write_text(text, encoding="utf-8")
        return Tokenizer(folder)

    def _call(self, method: Any, *args: Any, group: str | None = None) -> Any:
        from executor.cluster.replica import CONTROL_GROUP

        ref = (method.options(concurrency_group=CONTROL_GROUP) if group == "control" else method).remote(*args)
        try:
            return self._ray.get(ref, timeout=self.call_timeout_s)
        except self._ray.exceptions.RayActorError as exc:
            self._die(f"the replica died: {_short(exc)}")
            raise EngineError(self._dead) from None

    # -- the client interface ---------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def info(self) -> RuntimeInfo:
        return self._info

    def send(self, request: ClientRequest, listener: Listener | None = None) -> ReplicaHandle:
        handle = self._prepare(request, listener)
        self._submit([handle], [])
        return handle

    def group(self, after: Iterable[Any] = ()) -> CollectingGroup:
        after_rids = [h.rid for h in after]
        return CollectingGroup(self._prepare, lambda handles: self._submit(handles, after_rids))

    def pin_prefix(self, token_ids: Sequence[int]) -> _Pin:
        try:
            pin_id, num_tokens = self._call(self.actor.pin, list(token_ids), group="control")
        except Exception:
            return _Pin(None, 0)  # a pin is a hint: none is no error
        return _Pin(pin_id, num_tokens)

    def unpin(self, pin: Any) -> None:
        if pin.pin_id is None or pin.released.is_set():
            pin.released.set()
            return
        from executor.cluster.replica import CONTROL_GROUP

        ref = self.actor.unpin.options(concurrency_group=CONTROL_GROUP).remote(pin.pin_id)
        ref.future().add_done_callback(lambda _f: pin.released.set())

    def stats(self) -> dict[str, int]:
        return self._call(self.actor.stats)

    def flush_cache(self, timeout: float = 30.0) -> bool:
        return bool(self._call(self.actor.flush_cache, timeout))

    def is_alive(self) -> bool:
        if self._dead is not None or self._closed:
            return False
        try:
            return bool(self._ray.get(self.actor.ping.remote(), timeout=10)["alive"])
        except Exception:
            return False

    def close(self) -> None:
        """Stop polling and forget this client on the replica (the replica keeps running)."""
        self._closed = True
        self._wake.set()
        try:
            self.actor.close_client.remote(self.client_id)
        except Exception:
            pass

    shutdown = close

    # -- plumbing -------------------------------------------------------------------------------------
    def _prepare(self, request: ClientRequest, listener: Listener | None) -> ReplicaHandle:
        if self._closed:
            raise EngineError("this client was closed")
        if self._dead is not None:
            raise EngineError(self._dead)
        if isinstance(request, GenerateRequest):
            if getattr(request, "then", None) is not None:
                raise RequestError("a replica client does not take chained generations (GenerateRequest.then)")
            if request.params is not None and not isinstance(request.params, SamplingParams):
                SamplingParams.from_dict(request.params)  # raises RequestError naming the parameter
            elif request.params is not None:
                request.params.validate()
            request.options.validate()
        elif not isinstance(request, ScoreRequest):
            raise RequestTypeError(f"a request must be a GenerateRequest or a ScoreRequest, "
                                   f"not {type(request).__name__}")
        handle = ReplicaHandle(self, request)
        if listener is not None:
            handle.add_listener(listener)
        return handle

    def _submit(self, handles: list[ReplicaHandle], answer: list[str]) -> None:
        if not handles and not answer:
            return
        from executor.cluster.replica import CONTROL_GROUP

        with self._lock:
            for h in handles:
                self._in_flight[h.rid] = h
        if self._dead is not None:
            self._fail_all(self._dead)
            return
        items = [(h.rid, h.request) for h in handles]
        self.actor.submit.options(concurrency_group=CONTROL_GROUP).remote(self.client_id, items, answer)
        self._wake.set()

    def _abort(self, rid: str) -> None:
        from executor.cluster.replica import CONTROL_GROUP

        if self._dead is None:
            self.actor.abort.options(concurrency_group=CONTROL_GROUP).remote(self.client_id, rid)

    def _poll_loop(self) -> None:
        from executor.cluster.replica import POLL_GROUP

        while not self._closed:
            if not self._in_flight:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                ref = self.actor.poll.options(concurrency_group=POLL_GROUP).remote(self.client_id, self.poll_wait_s)
                events = self._ray.get(ref, timeout=self.call_timeout_s)
            except self._ray.exceptions.RayActorError as exc:
                self._die(f"the replica died: {_short(exc)}")
                return
            except Exception as exc:  # a timeout or a lost call: the requests cannot be heard from
                self._die(f"polling the replica failed: {_short(exc)}")
                return
            for event in events:
                handle = self._in_flight.get(event.rid)
                if handle is None:
                    continue
                if not event.finished:
                    handle._emit(event.delta)
                    continue
                if event.delta:
                    handle._emit(event.delta)
                with self._lock:
                    self._in_flight.pop(event.rid, None)
                error = EngineError(f"request {event.rid}: {event.error}") if event.error is not None else None
                handle._finish(event.result, error)

    def _die(self, message: str) -> None:
        if self._dead is None:
            self._dead = message
        self._fail_all(message)

    def _fail_all(self, message: str) -> None:
        with self._lock:
            handles = list(self._in_flight.values())
            self._in_flight.clear()
        for handle in handles:
            handle._finish(None, EngineError(f"request {handle.rid}: {message}"))

    def __repr__(self) -> str:
        return f"ReplicaClient({self.actor!r})"


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
