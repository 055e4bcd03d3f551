"""The dataflow loop of the graph executor: frames, readiness, batched requests, pins, streaming, failures.

One `Run` executes many instances of one entry graph on one engine (see `executor/program/graph_executor.py`
for the model). It lives on one thread: it evaluates every ready node of every instance, submits
the new engine requests together in prompt-token order, then waits for request events (put on its
queue by listeners on the engine thread) and completes the nodes they finish.

What a node *means* is not here: every node is evaluated by the IR interpreter
(`compiler.ir_interpreter.Interpreter`) on the executor's domain (`executor/program/graph_domain.py`). The
loop owns what is its own: when a node is ready, that an LLM node's `Pending` requests are
submitted with every other instance's (cache-aware order, shared-prefix pins), that a switch's
region runs as a child frame, that a failing node fails only its instance, and the stats.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from compiler.errors import ProgramError
from compiler.ir import Graph, Node, Region
from compiler.ir_interpreter import EnterRegion, Interpreter, Pending
from compiler.lang_sampling import RunDefaults
from compiler.prompt_state import PromptState
from executor.program.graph_chain import CHAIN_META, Adoptable, ChainLink, plan_chain
from executor.program.graph_domain import ExecutorDomain, HostJob, ModelRequest
from executor.program.graph_frames import Instance, Pin, RunFrame, Sink
from executor.program.graph_host import HostPolicy
from executor.program.graph_plan import PlanCache
from executor.program.graph_results import BatchResult, GraphExecutionError, InstanceResult, merge_stats
from executor.runtime.runtime_client import (
    ChainedGen,
    ClientRequest,
    GenerateRequest,
    RequestHandle,
    RuntimeClient,
    ScoreRequest,
)

__all__ = ["CANCELLED", "Cancellation", "Run", "RunContext"]

_ENGINE_POLL_S = 1.0  # how often a waiting loop checks that the engine thread is alive
_UNPIN_WAIT_S = 10.0
_HOST_WORKERS = 8  # threads for host steps that run whole functions eagerly
_ABORT_WAIT_S = 5.0  # how long a cancelled run waits for its aborted requests to end (they free their KV)
CANCELLED = "the run was cancelled"  # the start of a cancelled instance's error message


class Cancellation:
    """A switch another thread flips to cancel runs (an HTTP handler whose client left, say).

    Pass it to `GraphExecutor.run_batch` / `start` (`cancel=`); `cancel()` then cancels every run
    it was given to, one already started or one that starts later (it starts cancelled).
    Thread-safe and idempotent.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: list[Run] = []
        self.reason: str | None = None

    @property
    def cancelled(self) -> bool:
        return self.reason is not None

    def cancel(self, reason: str = "cancelled by the caller") -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
            runs, reason = list(self._runs), self.reason
        for run in runs:
            run.cancel(reason)

    def attach(self, run: Run) -> None:
        with self._lock:
            self._runs.append(run)
            reason = self.reason
        if reason is not None:
            run.cancel(reason)


class _Wake:
    """Put on a run's event queue by `Run.cancel` so a waiting loop notices at once."""


@dataclass(frozen=True)
class RunContext:
    """What a run needs from its `GraphExecutor` (handed down, so this module does not import it)."""

    engine: RuntimeClient
    plans: PlanCache
    host_policy: HostPolicy
    fsms: Mapping[str, Any] | None
    pin_budget: float
    chat_format: Callable[[], Any]  # derived from the engine's tokenizer on first use
    chains: bool = True  # send gens marked by chain-gens with what follows them (graph_chain)


@dataclass(frozen=True)
class _HostDone:
    """A host step that ran on a worker thread has finished (an event for the loop)."""

    frame: RunFrame
    node: Node
    pending: Pending
    started: float
    value: Any
    error: ProgramError | None


@dataclass(eq=False)
class _Req:
    """One engine request of an LLM node in flight: what the domain asked (`spec`) and its progress."""

    call: _Call
    spec: ModelRequest
    stream: bool = False
    pin: Pin | None = None
    handle: Any = None
    streamed: str = ""
    result: dict | None = None
    num_pinned: int = 0
    then: ChainedGen | None = None  # the gens the runtime runs after this one (graph_chain)
    link: ChainLink | None = None  # the executor's side of `then` (or of an adopted request's chain)

    @property
    def prompt(self) -> list[int]:
        return self.spec.prompt

    def client_request(self) -> ClientRequest:
        """What to send. Every request is a follow_up one: its result may make nodes ready, and the
        runtime's next step waits for the group that answers it (see `Run._submit`)."""
        spec = self.spec
        if spec.params is None:
            return ScoreRequest(spec.prompt, spec.continuations, follow_up=True)
        # A chained request's follow-up is the next gen, which the runtime starts itself.
        return GenerateRequest(spec.prompt, spec.params, spec.options, spec.constraint, stream=self.stream,
                               prefix_group=spec.prefix_group, follow_up=self.then is None, then=self.then)


@dataclass(eq=False)
class _Call:
    """An LLM node in flight: its requests and how to turn their results into the node's value (the
    interpreter's `Pending.finish`)."""

    frame: RunFrame
    node: Node
    finish: Callable[[list[dict]], Any]
    requests: list[_Req] = field(default_factory=list)
    pending: int = 0
    started: float = 0.0


class Run:
    """One execution of many instances: the dataflow loop."""

    def __init__(self, context: RunContext, graph: Graph, arguments: list[dict[str, Any]],
                 defaults: RunDefaults, sinks: bool, progress_bar: bool) -> None:
        self.context = context
        self.engine = context.engine
        self.interpreter = Interpreter(ExecutorDomain(context.engine, context.chat_format, defaults, context.fsms,
                                                      context.host_policy))
        self.graph = graph
        self.defaults = defaults
        self.instances = [Instance(i, a, Sink() if sinks else None) for i, a in enumerate(arguments)]
        self.progress_bar = progress_bar
        self.ready: deque[tuple[RunFrame, Node]] = deque()
        self.to_submit: list[_Req] = []
        self.events: queue.Queue = queue.Queue()
        self.num_in_flight = 0
        self.num_unfinished = len(self.instances)
        self.pinned_tokens = 0
        # Submit depth-first over shared prefixes unless the engine was asked for arrival order.
        info = context.engine.info()
        self.cache_aware_order = info.cache_aware
        # Finished requests whose results this loop has handled: the next group answers them (the
        # runtime's next step waits for that, so their follow-ups join it).
        self.handled: list[RequestHandle] = []
        self.pin_limit = int(info.num_kv_slots * context.pin_budget)
        # Chains (graph_chain): when the runtime takes them and nothing streams (a chained request's
        # text is not streamed).
        self.chains = bool(getattr(info, "chains", False)) and context.chains and not sinks
        self.adoptable: dict[tuple[RunFrame, int], Adoptable] = {}
        self.chained_handles: dict[int, list[RequestHandle]] = {}  # per instance, to abort when it ends
        self.bar: Any = None
        self.pool: ThreadPoolExecutor | None = None
        self.live: set[_Req] = set()  # engine requests sent and not yet finished (aborted on cancel)
        self.aborted: list[RequestHandle] = []  # what a cancel aborted: waited for at the end
        self.cancel_reason: str | None = None  # set from another thread by `cancel`
        self.cancelled = False  # the loop has acted on it

    def cancel(self, reason: str = "cancelled by the caller") -> None:
        """Cancel the run from any thread: its unfinished instances end with a `CANCELLED` error,
        their engine requests are aborted, their pins released, and no further node runs.
        Idempotent; a no-op once the run has finished."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self.events.put(_Wake())

    # -- the loop ---------------------------------------------------------------------------------
    def execute(self) -> BatchResult:
        started = time.perf_counter()
        if self.progress_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(self.instances), desc=f"@{self.graph.name}", unit="instance")
        try:
            for inst in self.instances:
                self._start_instance(inst)
            while self.num_unfinished:
                if self.cancel_reason is not None and not self.cancelled:
                    self._cancel_everything(self.cancel_reason)
                    break
                self._drain_ready()
                if self.cancel_reason is not None:
                    continue  # cancelled while nodes ran: send nothing more
                self._submit()
                if not self.num_unfinished:
                    break
                if not self.num_in_flight and not self.ready:
                    self._fail_stalled()
                    continue
                self._wait_for_events()
        finally:
            for handles in self.chained_handles.values():
                for handle in handles:
                    handle.abort()
            self._wait_aborted()
            self._answer_unhandled()
            for inst in self.instances:
                self._release_pins(inst.pins)
                # Unpins take effect on the engine thread; wait, so the run leaves the cache as it
                # found it (a prefill still in flight finds its pin released and takes none).
                for pin in inst.pins:
                    if pin.engine_pin is not None:
                        pin.engine_pin.released.wait(_UNPIN_WAIT_S)
            if self.bar is not None:
                self.bar.close()
            if self.pool is not None:  # a host step already running finishes (it cannot be stopped)
                self.pool.shutdown(wait=True, cancel_futures=self.cancelled)
        results = [InstanceResult(i.index, i.state, i.error, i.stats, i.finished - i.started)
                   for i in self.instances]
        total: dict = {}
        for r in results:
            merge_stats(total, r.stats)
        return BatchResult(results, total, time.perf_counter() - started)

    def _start_instance(self, inst: Instance) -> None:
        inst.started = time.perf_counter()
        graph = self.graph
        params = {n.op.name for n in graph.args}  # type: ignore[attr-defined]
        unknown = sorted(set(inst.arguments) - params)
        if unknown:
            entry = graph.entry or graph.output
            assert entry is not None
            self._fail(inst, GraphExecutionError(
                f"unknown argument(s) {unknown}; @{graph.name} takes {sorted(params)}", function=graph.name,
                node_id=entry.id, opname=entry.op.opname, loc=entry.loc, instance=inst.index))
            return
        frame = self._new_frame(inst, graph, graph.body, PromptState(), inst.arguments, None, True,
                                lambda state: self._finish_instance(inst, state), ())
        self._start_frame(frame)

    def _drain_ready(self) -> None:
        while self.ready:
            frame, node = self.ready.popleft()
            if not frame.inst.done:
                self._execute(frame, node)

    def _submit(self) -> None:
        """Send the ready requests as one group, answering the results handled so far."""
        if not self.to_submit and not self.handled:
            return
        batch, self.to_submit = self.to_submit, []
        answered, self.handled = self.handled, []
        if self.cache_aware_order:
            batch.sort(key=lambda r: r.prompt)  # depth-first over shared prefixes
        with self.engine.group(after=answered) as group:
            for req in batch:
                inst = req.call.frame.inst
                if inst.done:
                    continue
                if self.chains:
                    self._plan_chain(req)
                self.num_in_flight += 1
                try:
                    req.handle = group.send(req.client_request(), self._listener(req))
                except Exception as exc:
                    self.num_in_flight -= 1
                    self._fail_node(req.call.frame, req.call.node, f"the engine rejected the request: {exc}")
                    continue
                self.live.add(req)
                chained = req.handle.chained if req.then is not None else None
                while chained is not None:
                    self.chained_handles.setdefault(inst.index, []).append(chained)
                    chained = chained.chained

    def _plan_chain(self, req: _Req) -> None:
        """Send a gen marked by chain-gens with the gens that follow it (see graph_chain)."""
        call, spec = req.call, req.spec
        # Only the chain-gens pass sets the mark, and only on `gen`s (plan_chain checks the path again).
        if (spec.params is None or spec.prompt_text is None or len(call.requests) != 1 or req.stream
                or CHAIN_META not in call.node.meta):
            return
        frame = call.frame
        try:
            state = frame.lookup(call.node.operands[0])
        except AssertionError:
            return
        planned = plan_chain(self.interpreter, frame, call.node, state, self.defaults, self.context.chat_format,
                             self.context.fsms)
        if planned is not None:
            req.then, req.link = planned

    def _listener(self, req: _Req) -> Callable[[str, bool], None]:
        events = self.events
        engine = self.engine

        def listen(delta: str, finished: bool) -> None:
            # On the engine thread, right after the step that finished the request: a pin taken
            # here cannot lose the race with eviction by a later step.
            if finished and req.pin is not None:
                req.pin.take(engine, req.prompt)
                pinned = req.pin.engine_pin
                req.num_pinned = pinned.num_tokens if pinned is not None else 0
            events.put((req, delta, finished))

        return listen

    def _answer_unhandled(self) -> None:
        """At the end of the run: answer every finished request, handled or not, so the runtime
        does not wait for follow-ups that will never come."""
        while True:
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, tuple) and item[2] and item[0].handle is not None:
                self.handled.append(item[0].handle)
        if self.handled:
            answered, self.handled = self.handled, []
            with self.engine.group(after=answered):
                pass

    def _wait_for_events(self) -> None:
        while True:
            try:
                item = self.events.get(timeout=_ENGINE_POLL_S)
                break
            except queue.Empty:
                if not self.engine.is_alive():
                    self._fail_everything("the engine thread stopped (was the engine shut down?)")
                    return
        items = [item]
        while True:
            try:
                items.append(self.events.get_nowait())
            except queue.Empty:
                break
        for item in items:
            if isinstance(item, _Wake):
                continue  # the loop checks `cancel_reason` itself
            if isinstance(item, _HostDone):
                self._on_host_done(item)
            else:
                req, delta, finished = item
                self._on_event(req, delta, finished)
                if finished and req.handle is not None:  # the next group answers it
                    self.handled.append(req.handle)

    def _on_event(self, req: _Req, delta: str, finished: bool) -> None:
        inst = req.call.frame.inst
        if delta and req.stream and not inst.done:
            req.streamed += delta
            assert inst.sink is not None
            inst.sink.emit(req.spec.stream_var, delta)
        if not finished:
            return
        self.live.discard(req)
        self.num_in_flight -= 1
        if inst.done:
            if req.pin is not None:
                self._release_pins([req.pin])
            return
        if req.pin is not None:
            inst.record(req.call.node, pinned_tokens=req.num_pinned)
        try:
            req.result = req.handle.result()
        except Exception as exc:
            self._fail_node(req.call.frame, req.call.node, f"the request failed: {exc}")
            return
        call = req.call
        if req.link is not None and req.handle.chained is not None and req.spec.prompt_text is not None:
            # The runtime runs the next gen on this sequence: the loop adopts it when it gets there.
            link = req.link
            self.adoptable[(call.frame, link.node.id)] = Adoptable(
                link.node, req.spec.prompt_text + req.result["text"] + link.forced_text, req.handle.chained,
                link.then)
        call.pending -= 1
        if call.pending:
            return
        results = [r.result for r in call.requests]
        inst.record(call.node, time_s=time.perf_counter() - call.started, num_runs=1)
        for r in call.requests:
            meta = r.result["meta_info"]
            prompt_tokens = meta.get("prompt_tokens", 0)
            cached = meta.get("cached_tokens", 0)
            inst.record(call.node, num_requests=1, prompt_tokens=prompt_tokens, cached_tokens=cached,
                        computed_tokens=prompt_tokens - cached,
                        completion_tokens=meta.get("completion_tokens", 0))
        try:
            value = call.finish(results)
        except ProgramError as exc:
            self._fail_node(call.frame, call.node, str(exc))
            return
        except Exception as exc:
            self._fail_node(call.frame, call.node, _describe(exc))
            return
        self._complete(call.frame, call.node, value, timed=False, streamed=call.requests[0].streamed)

    # -- frames -------------------------------------------------------------------------------------
    def _new_frame(self, inst: Instance, graph: Graph, region: Region, incoming: PromptState,
                   arguments: Mapping[str, Any], parent: RunFrame | None, main: bool,
                   on_done: Callable[[PromptState], None], path: tuple[str, ...]) -> RunFrame:
        return RunFrame(inst, graph, region, self.context.plans.plan(region), incoming, arguments, parent, main,
                      on_done, path)

    def _start_frame(self, frame: RunFrame) -> None:
        for node in frame.plan.nodes:
            if frame.waiting[node.id] == 0:
                self.ready.append((frame, node))

    def _complete(self, frame: RunFrame, node: Node, value: Any, timed: bool = True, started: float = 0.0,
                  streamed: str = "") -> None:
        inst = frame.inst
        if inst.done:
            return
        if timed:
            inst.record(node, time_s=time.perf_counter() - started, num_runs=1)
        frame.values[node.id] = value
        if node is frame.region.output:
            frame.output = value
        if inst.sink is not None and frame.main and node.id in frame.plan.main_line:
            self._stream_text(frame, node, value, streamed)
        for user in frame.plan.users[node.id]:
            frame.waiting[user.id] -= 1
            if frame.waiting[user.id] == 0:
                self.ready.append((frame, user))
        for pin in frame.pins:
            pin.waiting_for.discard(node.id)
        if any(not p.waiting_for for p in frame.pins):
            self._release_pins([p for p in frame.pins if not p.waiting_for])
            frame.pins = [p for p in frame.pins if p.waiting_for]
        frame.remaining -= 1
        if frame.remaining == 0:
            self._release_pins(frame.pins)
            frame.pins = []
            assert frame.output is not None, "a region without output passed verification"
            frame.on_done(frame.output)

    def _stream_text(self, frame: RunFrame, node: Node, value: Any, streamed: str) -> None:
        """Emit the text a main-line node added (a streamed gen: what its deltas did not cover)."""
        if node.regions or not node.operands or not isinstance(value, PromptState):
            return  # child frames stream their own text; entries add nothing
        before = frame.lookup(node.operands[0])
        if not isinstance(before, PromptState) or not value.text.startswith(before.text):
            return  # a host step rewrote the text: what was streamed stands
        new = value.text[len(before.text):]
        new = new[len(streamed):] if new.startswith(streamed) else ""
        assert frame.inst.sink is not None
        var = getattr(node.op, "name", None) if node.op.category == "llm" else None  # the variable it fills
        frame.inst.sink.emit(var, new)

    # -- failing ------------------------------------------------------------------------------------
    def _fail_node(self, frame: RunFrame, node: Node, message: str) -> None:
        self._fail(frame.inst, GraphExecutionError(
            message, function=node.graph.name, node_id=node.id, opname=node.op.opname, loc=node.loc,
            path=frame.path, instance=frame.inst.index))

    def _fail(self, inst: Instance, error: GraphExecutionError) -> None:
        if inst.done:
            return
        inst.error = error
        self._end_instance(inst)

    def _finish_instance(self, inst: Instance, state: PromptState) -> None:
        inst.state = state
        self._end_instance(inst)

    def _end_instance(self, inst: Instance) -> None:
        inst.done = True
        for handle in self.chained_handles.pop(inst.index, []):
            handle.abort()  # no-op for those that finished
        inst.finished = time.perf_counter()
        self._release_pins(inst.pins)
        self.num_unfinished -= 1
        if inst.sink is not None:
            inst.sink.close()
        if self.bar is not None:
            self.bar.update(1)

    def _fail_stalled(self) -> None:
        for inst in self.instances:
            if not inst.done:
                entry = self.graph.entry or self.graph.output
                assert entry is not None
                self._fail(inst, GraphExecutionError(
                    "the executor stalled: no node is ready and no request is in flight (an executor bug)",
                    function=self.graph.name, node_id=entry.id, opname=entry.op.opname, loc=entry.loc,
                    instance=inst.index))

    def _fail_everything(self, message: str) -> None:
        for inst in self.instances:
            if not inst.done:
                entry = self.graph.entry or self.graph.output
                assert entry is not None
                self._fail(inst, GraphExecutionError(message, function=self.graph.name, node_id=entry.id,
                                                     opname=entry.op.opname, loc=entry.loc, instance=inst.index))
        self.num_in_flight = 0

    def _cancel_everything(self, reason: str) -> None:
        """Act on `cancel` (on the loop's thread): abort every request in flight, end every instance."""
        self.cancelled = True
        for req in list(self.live):
            if req.handle is not None:
                req.handle.abort()
                self.aborted.append(req.handle)
        for handles in self.chained_handles.values():
            self.aborted.extend(handles)  # _end_instance aborts them
        self._fail_everything(f"{CANCELLED}: {reason}")

    def _wait_aborted(self) -> None:
        """Wait (bounded) until the requests a cancel aborted have ended, so their KV is free when the
        run returns; those that sent a follow-up promise are answered by `_answer_unhandled`."""
        deadline = time.monotonic() + _ABORT_WAIT_S
        for handle in self.aborted:
            left = deadline - time.monotonic()
            if left <= 0 or not self.engine.is_alive():
                break
            try:
                handle.result(timeout=left)
            except Exception:  # a failed or timed-out request: nothing more to wait for
                pass

    def _release_pins(self, pins: list[Pin]) -> None:
        for pin in pins:
            if pin.release(self.engine):
                self.pinned_tokens -= pin.reserved

    # -- nodes ----------------------------------------------------------------------------------------
    def _execute(self, frame: RunFrame, node: Node) -> None:
        """Evaluate a ready node with the interpreter; then complete it, enter its region, or wait."""
        started = time.perf_counter()
        adopt = self.adoptable.pop((frame, node.id), None) if self.adoptable else None
        if adopt is not None and _ended_unrun(adopt.handle):
            adopt = None  # the runtime did not start it: send the gen as usual
        try:
            self.interpreter.domain.adopting = adopt
            try:
                result = self.interpreter.run_node(frame, node)
            finally:
                self.interpreter.domain.adopting = None
                if adopt is not None and not adopt.used:
                    adopt.handle.abort()  # the text differs from what the runtime was told
            if isinstance(result, EnterRegion):
                self._enter(frame, node, result, started)
            elif isinstance(result, Pending):
                self._wait_for(frame, node, result, started)
            else:
                self._complete(frame, node, result, started=started)
        except ProgramError as exc:  # the program failed here (a StateError among them)
            self._fail_node(frame, node, str(exc))
        except Exception as exc:  # an unexpected error still fails only this instance, loudly
            self._fail_node(frame, node, _describe(exc))

    def _enter(self, frame: RunFrame, node: Node, enter: EnterRegion, started: float) -> None:
        """A switch took a region: run it as a child frame; its output completes the switch."""
        region = enter.region
        main = frame.main and node.id in frame.plan.main_line
        where = f"@{node.graph.name} %{node.id} case {region.index}"
        frame.inst.record(node, time_s=time.perf_counter() - started, num_runs=1)

        def on_done(out: PromptState) -> None:
            frame.inst.record(node, inclusive_time_s=time.perf_counter() - started)
            self._complete(frame, node, out, timed=False)

        child = self._new_frame(frame.inst, frame.graph, region, enter.state, {}, frame, main, on_done,
                                (where, *frame.path))
        self._start_frame(child)

    def _wait_for(self, frame: RunFrame, node: Node, pending: Pending, started: float) -> None:
        """The node waits for outside work: a host job on a worker thread, or engine requests that
        are queued with every other instance's and submitted together."""
        first = pending.requests[0]
        if isinstance(first, HostJob):
            self._host_async(frame, node, pending, first, started)
            return
        call = _Call(frame, node, pending.finish, started=started)
        stream = frame.inst.sink is not None and frame.main and node.id in frame.plan.main_line
        adopted: list[_Req] = []
        for spec in pending.requests:
            req = _Req(call, spec, stream=stream and spec.streamable and spec.adopted is None)
            if spec.is_prefill:
                self._pin_for_consumers(frame, node, req)
            call.requests.append(req)
            if spec.adopted is not None:
                req.handle, req.link = spec.adopted.handle, spec.adopted.link
                adopted.append(req)
            else:
                self.to_submit.append(req)
        call.pending = len(call.requests)
        for req in adopted:  # already running: just listen (called at once if it has finished)
            self.num_in_flight += 1
            self.live.add(req)
            req.handle.add_listener(self._listener(req))

    def _pin_for_consumers(self, frame: RunFrame, node: Node, req: _Req) -> None:
        """Pin a prefill's prompt until the nodes that extend its state are admitted (within budget)."""
        consumers = self.context.plans.pin_consumers(node)
        if consumers and self.pinned_tokens + len(req.prompt) <= self.pin_limit:
            req.pin = Pin(len(req.prompt), set(consumers))
            self.pinned_tokens += len(req.prompt)
            frame.pins.append(req.pin)
            frame.inst.pins.append(req.pin)

    def _host_async(self, frame: RunFrame, node: Node, pending: Pending, job: HostJob, started: float) -> None:
        """Run a host job on a worker thread; its result completes `node` through the event queue."""
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=_HOST_WORKERS, thread_name_prefix="sgc-host")
        events = self.events

        def work() -> None:
            try:
                events.put(_HostDone(frame, node, pending, started, job.run(), None))
            except ProgramError as exc:
                events.put(_HostDone(frame, node, pending, started, None, exc))

        self.num_in_flight += 1
        self.pool.submit(work)

    def _on_host_done(self, done: _HostDone) -> None:
        self.num_in_flight -= 1
        if done.frame.inst.done:
            return
        try:
            if done.error is not None:
                raise done.error
            value = done.pending.finish([done.value])
        except ProgramError as exc:
            self._fail_node(done.frame, done.node, str(exc))
            return
        self._complete(done.frame, done.node, value, started=done.started)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _ended_unrun(handle: RequestHandle) -> bool:
    """A chained request the runtime ended without running it (its predecessor did not finish normally)."""
    if not handle.done():
        return False
    try:
        reason = handle.result()["meta_info"].get("finish_reason") or {}
    except Exception:
        return True
    return reason.get("type") == "abort"
