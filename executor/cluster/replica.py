"""An engine replica as a Ray actor: one engine per GPU (or per N CPU cores) in its own process.

`start_replicas(n, backend_factory, ...)` starts `n` actors of `EngineReplica`. Each builds its
backend with `backend_factory()` (picklable: `functools.partial(Engine, model_path=...)`, or an
`sgc.Runtime`, whose `.engine` is used) and offers two kinds of methods:

- **the runtime client interface, as plain calls** for `ReplicaClient` (`remote_client.py`), the
  client-side proxy: `submit` a group of requests (and answer finished ones), `poll` for events
  (stream deltas and results), `abort`, `pin` / `unpin`, `info`, `stats`, `flush_cache`, `ping`;
- **batch jobs**: `prepare(job)` binds a job (a compiled program and how to run a row, see
  `batch.RowJob`) to the backend once, then `run_rows(key, rows)` runs rows through it, every
  row's outcome (result or error) in the answer.

The actor is threaded (`max_concurrency`): several `run_rows` calls run at once on the one engine,
which batches their requests together, while `poll` waits on its own threads. Calls that must keep
their order (submit, abort, pins) go to the `control` concurrency group, one at a time in order.
torch in the actor uses as many threads as the cores it was given (`num_cpus`).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from executor.runtime.runtime_client import ClientRequest, RuntimeInfo

__all__ = ["EngineReplica", "ReplicaEvent", "start_replicas"]

MAX_EVENTS_PER_POLL = 512
CONTROL_GROUP = "control"  # ordered calls: submit, abort, pin, unpin
POLL_GROUP = "poll"  # long-polls of the proxies, apart from the work


@dataclass(frozen=True)
class ReplicaEvent:
    """What a proxy hears about one request: a streamed `delta`, or its end (`finished`) with the
    result or the error message."""

    rid: str
    delta: str
    finished: bool
    result: dict[str, Any] | None = None
    error: str | None = None


class _Outbox:
    """One proxy's undelivered events (filled by listeners on the engine thread: quick, no blocking)."""

    def __init__(self) -> None:
        self.events: deque[ReplicaEvent] = deque()
        self.ready = threading.Condition()
        self.handles: dict[str, Any] = {}  # rid -> engine handle, until finished and answered
        self.follow_ups: set[str] = set()  # rids sent with follow_up (kept until answered)
        self.aborted_early: set[str] = set()  # aborts that arrived before their submit

    def put(self, event: ReplicaEvent) -> None:
        with self.ready:
            self.events.append(event)
            self.ready.notify_all()


class EngineReplica:
    """The actor's body (see the module docstring); `start_replicas` wraps it with `ray.remote`."""

    def __init__(self, backend_factory: Callable[[], Any], num_threads: int | None = None) -> None:
        if num_threads:
            import torch

            torch.set_num_threads(num_threads)
            os.environ["OMP_NUM_THREADS"] = str(num_threads)
        self.backend = backend_factory()
        self.engine = getattr(self.backend, "engine", self.backend)
        self._jobs: dict[str, Any] = {}
        self._jobs_lock = threading.Lock()
        self._outboxes: dict[str, _Outbox] = {}
        self._pins: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- health and facts ------------------------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        """The replica's process, whether its engine runs (a health check) and the CPU seconds its
        process has used (benchmarks: work done, whatever else runs on the machine)."""
        return {"pid": os.getpid(), "alive": bool(self.engine.is_alive()),
                "torch_threads": _torch_threads(), "cpu_s": time.process_time()}

    def info(self) -> RuntimeInfo:
        return self.engine.info()

    def tokenizer_files(self) -> dict[str, str]:
        """The model's tokenizer files (a proxy on another machine builds the same tokenizer)."""
        folder = getattr(self.engine, "model_folder", None) or getattr(getattr(self.engine, "config", None),
                                                                        "model_path", None)
        files = {}
        if folder:
            from pathlib import Path

            for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"):
                path = Path(folder) / name
                if path.is_file():
                    files[name] = path.read_text(encoding="utf-8")
        return files

    def stats(self) -> dict[str, int]:
        return self.engine.stats()

    def flush_cache(self, timeout: float = 30.0) -> bool:
        return self.engine.flush_cache(timeout)

    # -- batch jobs -------------------------------------------------------------------------------
    def prepare(self, job: Any) -> str:
        """Bind `job` to this replica's backend (once per key); returns its key."""
        with self._jobs_lock:
            if job.key not in self._jobs:
                self._jobs[job.key] = job.bind(self.backend)
        return job.key

    def run_rows(self, key: str, rows: Sequence[tuple[int, dict[str, Any]]]) -> list[tuple[int, dict[str, Any]]]:
        """Run rows (index, arguments) of a prepared job: (index, record) for each, errors included."""
        runner = self._jobs.get(key)
        if runner is None:
            raise KeyError(f"job {key} was not prepared on this replica")
        return runner.run(list(rows))

    # -- the runtime client interface, for ReplicaClient ------------------------------------------
    def open_client(self) -> str:
        client = uuid.uuid4().hex
        with self._lock:
            self._outboxes[client] = _Outbox()
        return client

    def close_client(self, client: str) -> None:
        with self._lock:
            box = self._outboxes.pop(client, None)
        if box is not None:
            for handle in list(box.handles.values()):
                handle.abort()

    def _box(self, client: str) -> _Outbox:
        box = self._outboxes.get(client)
        if box is None:
            raise KeyError(f"unknown client {client} (closed, or the replica restarted)")
        return box

    def submit(self, client: str, items: Sequence[tuple[str, ClientRequest]], answer: Sequence[str] = ()) -> None:
        """Queue `items` (rid, request) as one group that answers the finished requests `answer`.
        A request the engine refuses finishes at once with its error (the proxy checked it first)."""
        box = self._box(client)
        after = [box.handles[rid] for rid in answer if rid in box.handles]
        for rid in answer:
            handle = box.handles.get(rid)
            if handle is not None and handle.done():
                del box.handles[rid]
                box.follow_ups.discard(rid)
        with self.engine.group(after=after) as group:
            for rid, request in items:
                try:
                    handle = group.send(request, _listener(box, rid))
                except Exception as exc:  # RequestError and anything else: that request's error
                    box.put(ReplicaEvent(rid, "", True, error=f"{type(exc).__name__}: {exc}"))
                    continue
                box.handles[rid] = handle
                if getattr(request, "follow_up", False):
                    box.follow_ups.add(rid)
                if rid in box.aborted_early:
                    box.aborted_early.discard(rid)
                    handle.abort()

    def abort(self, client: str, rid: str) -> None:
        box = self._box(client)
        handle = box.handles.get(rid)
        if handle is None:
            box.aborted_early.add(rid)
        else:
            handle.abort()

    def poll(self, client: str, wait_s: float = 0.05) -> list[ReplicaEvent]:
        """The client's events so far, waiting up to `wait_s` for one (at most MAX_EVENTS_PER_POLL)."""
        box = self._box(client)
        with box.ready:
            if not box.events:
                box.ready.wait(timeout=max(0.0, min(wait_s, 5.0)))
            out = []
            while box.events and len(out) < MAX_EVENTS_PER_POLL:
                out.append(box.events.popleft())
        for event in out:  # finished requests sent without follow_up are never answered: drop them
            if event.finished and event.rid not in box.follow_ups:
                box.handles.pop(event.rid, None)
        return out

    def pin(self, token_ids: Sequence[int]) -> tuple[str, int]:
        pin = self.engine.pin_prefix(list(token_ids))
        pin_id = uuid.uuid4().hex
        with self._lock:
            self._pins[pin_id] = pin
        return pin_id, int(pin.num_tokens)

    def unpin(self, pin_id: str, timeout: float = 10.0) -> bool:
        with self._lock:
            pin = self._pins.pop(pin_id, None)
        if pin is None:
            return True
        self.engine.unpin(pin)
        return pin.released.wait(timeout)

    def shutdown(self) -> None:
        shutdown = getattr(self.backend, "shutdown", None)
        if shutdown is not None:
            shutdown()


def _listener(box: _Outbox, rid: str) -> Callable[[str, bool], None]:
    """Engine listener: forward deltas, and on the end the result or error (on the engine thread)."""

    def listen(delta: str, finished: bool) -> None:
        if not finished:
            if delta:
                box.put(ReplicaEvent(rid, delta, False))
            return
        handle = box.handles.get(rid)
        result = error = None
        if handle is not None:
            try:
                result = handle.result(timeout=0)
            except Exception as exc:
                error = str(exc)
        box.put(ReplicaEvent(rid, delta, True, result=result, error=error))

    return listen


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def start_replicas(num_replicas: int, backend_factory: Callable[[], Any], *, num_cpus: float = 1,
                   num_gpus: float = 0, max_concurrency: int = 32, name_prefix: str | None = None) -> list[Any]:
    """Start `num_replicas` `EngineReplica` actors (one per GPU with `num_gpus=1`, else `num_cpus`
    cores each, torch threads = cores) and wait until each engine is up; returns their handles.

    Raises `RuntimeError` naming the replica whose engine failed to start."""
    import ray

    if num_replicas < 1:
        raise ValueError(f"--replicas must be at least 1, got {num_replicas}")
    if num_cpus <= 0 and num_gpus <= 0:
        raise ValueError("a replica needs at least one CPU core or GPU (num_cpus / num_gpus)")
    actor_class = ray.remote(max_concurrency=max_concurrency,
                             concurrency_groups={CONTROL_GROUP: 1, POLL_GROUP: 8})(EngineReplica)
    threads = max(1, int(num_cpus)) if not num_gpus else None
    actors = []
    for i in range(num_replicas):
        options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_restarts": 0}
        if name_prefix:
            options["name"] = f"{name_prefix}-{i}"
        actors.append(actor_class.options(**options).remote(backend_factory, threads))
    for i, actor in enumerate(actors):
        try:
            ray.get(actor.ping.remote())
        except Exception as exc:
            for a in actors:
                ray.kill(a)
            raise RuntimeError(f"replica {i} failed to start its engine: {_short(exc)}") from None
    return actors


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
