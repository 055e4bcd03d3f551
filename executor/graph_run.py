"""The dataflow loop of the graph executor: frames, engine requests, pins, streaming, failures.

One `Run` executes many instances of one entry graph on one engine (see `executor/graph_executor.py`
for the model). It lives on one thread: it evaluates every ready node of every instance, submits
the new engine requests together in prompt-token order, then waits for request events (put on its
queue by listeners on the engine thread) and completes the nodes they finish.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from compiler import ir
from compiler.ir import Graph, Node, Region
from compiler.lang_sampling import RunDefaults
from executor.graph_host import run_function_step
from executor.graph_llm import decide, gen_request, prompt_ids, select_requests
from executor.graph_plan import Plan
from executor.graph_results import BatchResult, GraphExecutionError, InstanceResult, Stats, merge_stats
from executor.graph_state import ProgramState, StateError, join_states, to_text
from executor.request import LogprobOptions
from executor.sampling import SamplingParams

if TYPE_CHECKING:
    from executor.graph_executor import GraphExecutor

__all__ = ["Run"]

_LLM_OPS = (ir.Gen, ir.BatchGen, ir.Select, ir.Score, ir.Prefill)
_ENGINE_POLL_S = 1.0  # how often a waiting loop checks that the engine thread is alive
_UNPIN_WAIT_S = 10.0
_HOST_WORKERS = 8  # threads for host steps that run whole functions eagerly


class _NodeFailed(Exception):
    """Internal: evaluation of a node failed with this message."""


@dataclass(frozen=True)
class _HostDone:
    """A host step that ran on a worker thread has finished (an event for the loop)."""

    frame: _Frame
    node: Node
    started: float
    value: Any
    error: BaseException | None


@dataclass(frozen=True)
class _Bundle:
    """A fork value: the branch states (of a `fork` or a `batch_gen`)."""

    states: tuple[ProgramState, ...]


class Sink:
    """Streamed text of one instance: (variable or None, text) chunks, readable many times."""

    def __init__(self) -> None:
        self.chunks: list[tuple[str | None, str]] = []
        self.finished = False
        self.cond = threading.Condition()

    def emit(self, var: str | None, text: str) -> None:
        if text:
            with self.cond:
                self.chunks.append((var, text))
                self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.finished = True
            self.cond.notify_all()

    def iterate(self, var: str | None) -> Iterator[str]:
        i = 0
        while True:
            with self.cond:
                while i >= len(self.chunks) and not self.finished:
                    self.cond.wait()
                chunks = self.chunks[i:]
                finished = self.finished
            i += len(chunks)
            for name, text in chunks:
                if var is None or name == var:
                    yield text
            if finished and i >= len(self.chunks):
                return


@dataclass(eq=False)
class _Instance:
    index: int
    arguments: Mapping[str, Any]
    sink: Sink | None = None
    state: ProgramState | None = None
    error: GraphExecutionError | None = None
    done: bool = False
    started: float = 0.0
    finished: float = 0.0
    stats: Stats = field(default_factory=dict)
    pins: list[_Pin] = field(default_factory=list)

    def record(self, node: Node, **values: float) -> None:
        slot = self.stats.setdefault(node.graph.name, {}).setdefault(node.id, {})
        for key, value in values.items():
            slot[key] = slot.get(key, 0) + value


class _Pin:
    """A prefill's pin: taken on the engine thread when the prefill finishes, released once every
    node in `waiting_for` has completed (or the frame or instance ends)."""

    def __init__(self, reserved: int, waiting_for: set[int]) -> None:
        self.reserved = reserved  # tokens counted against the run's pin budget
        self.waiting_for = waiting_for
        self.engine_pin: Any = None  # the engine's PrefixPin
        self.released = False
        self._lock = threading.Lock()

    def take(self, engine: Any, token_ids: list[int]) -> None:
        with self._lock:
            if not self.released:
                self.engine_pin = engine.pin_prefix(token_ids)

    def release(self, engine: Any) -> bool:
        """Release (once); True the first time."""
        with self._lock:
            if self.released:
                return False
            self.released = True
            pin = self.engine_pin
        if pin is not None:
            engine.unpin(pin)
        return True


class _Frame:
    """One activation of a region: the graph body, a taken switch region or a called function."""

    def __init__(self, inst: _Instance, graph: Graph, region: Region, plan: Plan, initial: ProgramState,
                 arguments: Mapping[str, Any], parent: _Frame | None, main: bool,
                 on_done: Callable[[ProgramState], None], path: tuple[str, ...]) -> None:
        self.inst = inst
        self.graph = graph
        self.region = region
        self.plan = plan
        self.initial = initial
        self.arguments = arguments
        self.parent = parent
        self.main = main
        self.on_done = on_done
        self.path = path
        self.values: dict[int, Any] = {}
        self.waiting = dict(plan.num_deps)
        self.remaining = len(plan.nodes)
        self.output: ProgramState | None = None
        self.pins: list[_Pin] = []

    def lookup(self, node: Node) -> Any:
        frame: _Frame | None = self
        while frame is not None:
            if frame.graph is node.graph and node.id in frame.values:
                return frame.values[node.id]
            frame = frame.parent
        raise AssertionError(f"%{node.id} is used before it was computed")


def _scope_begin(end: Node, name: str) -> Node:
    """The `var_scope_begin` a `var_scope_end` closes: up its state operands (this state's lineage)."""
    node = end.operands[0]
    while not (isinstance(node.op, ir.VarScopeBegin) and node.op.name == name):
        if not node.operands:
            raise _NodeFailed(f"var_scope_end {name!r} has no matching var_scope_begin on its state")
        node = node.operands[0]
    return node


@dataclass(eq=False)
class _Req:
    """One engine request of an LLM node."""

    call: _Call
    prompt: list[int]
    params: SamplingParams | None = None  # None: a score request
    options: LogprobOptions = LogprobOptions()
    constraint: Any = None
    continuations: list[list[int]] | None = None
    stream_var: str | None = None
    stream: bool = False
    pin: _Pin | None = None
    handle: Any = None
    streamed: str = ""
    result: dict | None = None
    num_pinned: int = 0
    prefix_group: str | None = None  # a batch_gen's branches: they share the fork's prefix


# Prefix-group keys, unique across every run sharing an engine.
_prefix_groups = itertools.count()


@dataclass(eq=False)
class _Call:
    """An LLM node in flight: its requests and how to turn their results into the node's value."""

    frame: _Frame
    node: Node
    finish: Callable[[list[dict]], Any]
    requests: list[_Req] = field(default_factory=list)
    pending: int = 0
    started: float = 0.0


class Run:
    """One execution of many instances: the dataflow loop."""

    def __init__(self, executor: GraphExecutor, graph: Graph, arguments: list[dict[str, Any]],
                 defaults: RunDefaults, sinks: bool, progress_bar: bool) -> None:
        self.ex = executor
        self.engine = executor.engine
        self.tokenizer = executor.engine.tokenizer
        self.graph = graph
        self.defaults = defaults
        self.instances = [_Instance(i, a, Sink() if sinks else None) for i, a in enumerate(arguments)]
        self.progress_bar = progress_bar
        self.ready: deque[tuple[_Frame, Node]] = deque()
        self.to_submit: list[_Req] = []
        self.events: queue.Queue = queue.Queue()
        self.num_in_flight = 0
        self.num_unfinished = len(self.instances)
        self.pinned_tokens = 0
        # Submit depth-first over shared prefixes unless the engine was asked for arrival order.
        self.cache_aware_order = executor.engine.config.schedule_policy != "fcfs"
        # Every finished request held the engine's next step (see `_listener`); the holds of the
        # results this loop has handled are released once their follow-ups are submitted.
        self.holds_to_release = 0
        slots = getattr(executor.engine, "num_kv_slots", 0) or 0
        self.pin_limit = int(slots * executor.pin_budget)
        self.bar: Any = None
        self.pool: ThreadPoolExecutor | None = None

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
                self._drain_ready()
                self._submit()
                self._release_held_steps()
                if not self.num_unfinished:
                    break
                if not self.num_in_flight and not self.ready:
                    self._fail_stalled()
                    continue
                self._wait_for_events()
        finally:
            self._release_unhandled_holds()
            for inst in self.instances:
                self._release_pins(inst.pins)
                # Unpins take effect on the engine thread; wait, so the run leaves the cache as it
                # found it (a prefill still in flight finds its pin released and takes none).
                for pin in inst.pins:
                    if pin.engine_pin is not None:
                        pin.engine_pin.released.wait(_UNPIN_WAIT_S)
            if self.bar is not None:
                self.bar.close()
            if self.pool is not None:
                self.pool.shutdown(wait=True)
        results = [InstanceResult(i.index, i.state, i.error, i.stats, i.finished - i.started)
                   for i in self.instances]
        total: dict = {}
        for r in results:
            merge_stats(total, r.stats)
        return BatchResult(results, total, time.perf_counter() - started)

    def _start_instance(self, inst: _Instance) -> None:
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
        frame = self._new_frame(inst, graph, graph.body, ProgramState(), inst.arguments, None, True,
                                lambda state: self._finish_instance(inst, state), ())
        self._start_frame(frame)

    def _drain_ready(self) -> None:
        while self.ready:
            frame, node = self.ready.popleft()
            if not frame.inst.done:
                self._execute(frame, node)

    def _submit(self) -> None:
        if not self.to_submit:
            return
        batch, self.to_submit = self.to_submit, []
        if self.cache_aware_order:
            batch.sort(key=lambda r: r.prompt)  # depth-first over shared prefixes
        for req in batch:
            inst = req.call.frame.inst
            if inst.done:
                continue
            listener = self._listener(req)
            self.num_in_flight += 1
            try:
                if req.params is None:
                    req.handle = self.engine.submit_score(req.prompt, req.continuations, listener=listener)
                else:
                    req.handle = self.engine.submit(req.prompt, req.params, req.options, stream=req.stream,
                                                    constraint=req.constraint, listener=listener,
                                                    prefix_group=req.prefix_group)
            except Exception as exc:
                self.num_in_flight -= 1
                self._fail_node(req.call.frame, req.call.node, f"the engine rejected the request: {exc}")

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
            if finished:  # the next pass waits for the nodes this result makes ready
                engine.hold_next_step()
            events.put((req, delta, finished))

        return listen

    def _release_held_steps(self) -> None:
        """Let the engine step again: the follow-ups of the results handled so far are submitted."""
        if self.holds_to_release:
            self.engine.release_step(self.holds_to_release)
            self.holds_to_release = 0

    def _release_unhandled_holds(self) -> None:
        """At the end of the run: the holds of finished requests whose events were never handled."""
        while True:
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, _HostDone) and item[2]:
                self.holds_to_release += 1
        self._release_held_steps()

    def _wait_for_events(self) -> None:
        while True:
            try:
                item = self.events.get(timeout=_ENGINE_POLL_S)
                break
            except queue.Empty:
                thread = getattr(self.engine, "_thread", None)
                if thread is not None and not thread.is_alive():
                    self._fail_everything("the engine thread stopped (was the engine shut down?)")
                    return
        items = [item]
        while True:
            try:
                items.append(self.events.get_nowait())
            except queue.Empty:
                break
        for item in items:
            if isinstance(item, _HostDone):
                self._on_host_done(item)
            else:
                req, delta, finished = item
                self._on_event(req, delta, finished)
                if finished:  # its listener held the engine's next step
                    self.holds_to_release += 1

    def _on_event(self, req: _Req, delta: str, finished: bool) -> None:
        inst = req.call.frame.inst
        if delta and req.stream and not inst.done:
            req.streamed += delta
            assert inst.sink is not None
            inst.sink.emit(req.stream_var, delta)
        if not finished:
            return
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
        except Exception as exc:
            self._fail_node(call.frame, call.node, _describe(exc))
            return
        self._complete(call.frame, call.node, value, timed=False, streamed=call.requests[0].streamed)

    # -- frames -------------------------------------------------------------------------------------
    def _new_frame(self, inst: _Instance, graph: Graph, region: Region, initial: ProgramState,
                   arguments: Mapping[str, Any], parent: _Frame | None, main: bool,
                   on_done: Callable[[ProgramState], None], path: tuple[str, ...]) -> _Frame:
        return _Frame(inst, graph, region, self.ex.plan(region), initial, arguments, parent, main, on_done, path)

    def _start_frame(self, frame: _Frame) -> None:
        for node in frame.plan.nodes:
            if frame.waiting[node.id] == 0:
                self.ready.append((frame, node))

    def _complete(self, frame: _Frame, node: Node, value: Any, timed: bool = True, started: float = 0.0,
                  streamed: str = "") -> None:
        inst = frame.inst
        if inst.done:
            return
        if timed:
            inst.record(node, time_s=time.perf_counter() - started, num_runs=1)
        frame.values[node.id] = value
        if isinstance(node.op, ir.Output):
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

    def _stream_text(self, frame: _Frame, node: Node, value: Any, streamed: str) -> None:
        """Emit the text a main-line node added (a streamed gen: what its deltas did not cover)."""
        if isinstance(node.op, (ir.Switch, ir.StateNew, ir.StateIn)) or not isinstance(value, ProgramState):
            return  # child frames stream their own text; entries add nothing
        before = frame.lookup(node.operands[0]) if node.operands else None
        if not isinstance(before, ProgramState) or not value.text.startswith(before.text):
            return  # a host step rewrote the text: what was streamed stands
        new = value.text[len(before.text):]
        new = new[len(streamed):] if new.startswith(streamed) else ""
        assert frame.inst.sink is not None
        var = node.op.name if isinstance(node.op, (ir.Gen, ir.Select, ir.Score)) else None
        frame.inst.sink.emit(var, new)

    # -- failing ------------------------------------------------------------------------------------
    def _fail_node(self, frame: _Frame, node: Node, message: str) -> None:
        self._fail(frame.inst, GraphExecutionError(
            message, function=node.graph.name, node_id=node.id, opname=node.op.opname, loc=node.loc,
            path=frame.path, instance=frame.inst.index))

    def _fail(self, inst: _Instance, error: GraphExecutionError) -> None:
        if inst.done:
            return
        inst.error = error
        self._end_instance(inst)

    def _finish_instance(self, inst: _Instance, state: ProgramState) -> None:
        inst.state = state
        self._end_instance(inst)

    def _end_instance(self, inst: _Instance) -> None:
        inst.done = True
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

    def _release_pins(self, pins: list[_Pin]) -> None:
        for pin in pins:
            if pin.release(self.engine):
                self.pinned_tokens -= pin.reserved

    # -- nodes ----------------------------------------------------------------------------------------
    def _execute(self, frame: _Frame, node: Node) -> None:
        started = time.perf_counter()
        try:
            self._dispatch(frame, node, started)
        except _NodeFailed as exc:
            self._fail_node(frame, node, str(exc))
        except StateError as exc:
            self._fail_node(frame, node, str(exc))
        except Exception as exc:  # an unexpected error still fails only this instance, loudly
            self._fail_node(frame, node, _describe(exc))

    def _dispatch(self, frame: _Frame, node: Node, started: float) -> None:
        op = node.op
        ops = node.operands
        done = self._complete
        if isinstance(op, ir.Const):
            done(frame, node, ir.thaw_json(op.value), started=started)
        elif isinstance(op, ir.Arg):
            if op.name in frame.arguments:
                value = frame.arguments[op.name]
            elif op.default is not ir.NO_DEFAULT:
                value = ir.thaw_json(op.default)
            else:
                raise _NodeFailed(f"missing argument {op.name!r}")
            done(frame, node, value, started=started)
        elif isinstance(op, (ir.StateNew, ir.StateIn)):
            done(frame, node, frame.initial, started=started)
        elif isinstance(op, ir.Append):
            done(frame, node, frame.lookup(ops[0]).appended(to_text(frame.lookup(ops[1]))), started=started)
        elif isinstance(op, ir.RoleBegin):
            done(frame, node, frame.lookup(ops[0]).role_begin(op.role, self._chat_format()), started=started)
        elif isinstance(op, ir.RoleEnd):
            done(frame, node, frame.lookup(ops[0]).role_end(op.role, self._chat_format()), started=started)
        elif isinstance(op, ir.GetVar):
            done(frame, node, frame.lookup(ops[0])[op.name], started=started)
        elif isinstance(op, ir.Fork):
            branch = frame.lookup(ops[0]).forked()
            done(frame, node, _Bundle((branch,) * op.n), started=started)
        elif isinstance(op, ir.Branch):
            done(frame, node, frame.lookup(ops[0]).states[op.index], started=started)
        elif isinstance(op, ir.Join):
            states = [frame.lookup(o) for o in ops]
            done(frame, node, join_states(states[0], states[1:], op.mode), started=started)
        elif isinstance(op, ir.Output):
            done(frame, node, frame.lookup(ops[0]), started=started)
        elif isinstance(op, ir.SetVar):
            done(frame, node, frame.lookup(ops[0]).with_var(op.name, frame.lookup(ops[1])), started=started)
        elif isinstance(op, ir.VarScopeBegin):
            done(frame, node, frame.lookup(ops[0]), started=started)
        elif isinstance(op, ir.VarScopeEnd):
            state = frame.lookup(ops[0])
            begin = _scope_begin(node, op.name)
            done(frame, node, state.with_var(op.name, state.text[len(frame.lookup(begin).text):]), started=started)
        elif isinstance(op, ir.Host):
            self._host(frame, node, started)
        elif isinstance(op, ir.Switch):
            self._switch(frame, node, started)
        elif isinstance(op, _LLM_OPS):
            self._llm(frame, node, started)
        else:
            raise _NodeFailed(f"the executor does not know op {op.opname!r}")

    def _chat_format(self) -> Any:
        return self.ex.chat_format

    def _host(self, frame: _Frame, node: Node, started: float) -> None:
        """Run a host step (see executor/graph_host.py for how `func` is found)."""
        op: ir.Host = node.op  # type: ignore[assignment]
        args = [frame.lookup(o) for o in node.operands]
        fn = self.ex.host_policy.resolve(op.func)
        if fn is None and op.returns == "state":
            function = self.ex.host_policy.function(op.func)
            if function is not None:
                names = op.args or ("s",)
                if len(names) != len(args):
                    raise _NodeFailed(f"host step of function {op.func} needs args naming its operands")
                self._host_async(frame, node, started,
                                 lambda: run_function_step(function, self.engine, self.defaults, names, args))
                return
        if fn is None:
            raise _NodeFailed(f"no allowed host function is registered for {op.func!r} (pass it in host_functions, "
                              f"or opt into its program's module; this step exists because: "
                              f"{op.reason or 'no reason given'})")
        try:
            value = fn(*args)
        except Exception as exc:
            raise _NodeFailed(_host_raised(op, exc)) from exc
        self._complete(frame, node, _check_host_value(op, value), started=started)

    def _host_async(self, frame: _Frame, node: Node, started: float, job: Callable[[], Any]) -> None:
        """Run `job` on a worker thread; its result completes `node` through the event queue."""
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=_HOST_WORKERS, thread_name_prefix="sgc-host")
        events = self.events

        def work() -> None:
            try:
                events.put(_HostDone(frame, node, started, job(), None))
            except BaseException as exc:  # reported as the node's failure
                events.put(_HostDone(frame, node, started, None, exc))

        self.num_in_flight += 1
        self.pool.submit(work)

    def _on_host_done(self, done: _HostDone) -> None:
        self.num_in_flight -= 1
        if done.frame.inst.done:
            return
        op: ir.Host = done.node.op  # type: ignore[assignment]
        try:
            if done.error is not None:
                raise _NodeFailed(_host_raised(op, done.error))
            value = _check_host_value(op, done.value)
        except _NodeFailed as exc:
            self._fail_node(done.frame, done.node, str(exc))
            return
        self._complete(done.frame, done.node, value, started=done.started)

    def _switch(self, frame: _Frame, node: Node, started: float) -> None:
        op: ir.Switch = node.op  # type: ignore[assignment]
        state = frame.lookup(node.operands[0])
        value = frame.lookup(node.operands[1])
        index = next((i for i, c in enumerate(op.cases) if type(c) is type(value) and c == value), None)
        if index is None:
            if not op.default:
                raise _NodeFailed(f"the value {value!r} matches no case of {list(op.cases)!r} and there is "
                                  "no default")
            index = len(op.cases)
        region = node.regions[index]
        main = frame.main and node.id in frame.plan.main_line
        where = f"@{node.graph.name} %{node.id} case {index}"
        frame.inst.record(node, time_s=time.perf_counter() - started, num_runs=1)

        def on_done(out: ProgramState) -> None:
            frame.inst.record(node, inclusive_time_s=time.perf_counter() - started)
            self._complete(frame, node, out, timed=False)

        child = self._new_frame(frame.inst, frame.graph, region, state, {}, frame, main, on_done, (where, *frame.path))
        self._start_frame(child)

    # -- LLM nodes ------------------------------------------------------------------------------------
    def _llm(self, frame: _Frame, node: Node, started: float) -> None:
        op = node.op
        if isinstance(op, ir.Gen) and op.choices is not None:
            self._select(frame, node, op.name, op.choices, "token_length_normalized", started)
        elif isinstance(op, (ir.Select, ir.Score)):
            self._select(frame, node, op.name, op.choices, op.method, started)
        elif isinstance(op, ir.Gen):
            self._gen(frame, node, op, [frame.lookup(node.operands[0])], started)
        elif isinstance(op, ir.BatchGen):
            self._gen(frame, node, op, [frame.lookup(o) for o in node.operands], started)
        elif isinstance(op, ir.Prefill):
            self._prefill(frame, node, started)

    def _gen(self, frame: _Frame, node: Node, op: ir.Gen | ir.BatchGen, states: list[ProgramState],
             started: float) -> None:
        attributes = op.attributes()
        try:
            requests = [gen_request(attributes, self.defaults, self._chat_format() if s.open_role else None,
                                    s.open_role, self.ex.fsms) for s in states]
        except ValueError as exc:
            raise _NodeFailed(str(exc)) from exc
        name = op.name
        batched = isinstance(op, ir.BatchGen)
        return_text = self.defaults.return_text_in_logprobs

        def bind(state: ProgramState, text: str, meta: Any) -> ProgramState:
            state = state.appended(text)
            return state.with_var(name, text, meta) if name is not None else state

        if op.max_tokens == 0 or (op.max_tokens is None and self.defaults.max_new_tokens == 0):
            meta = {"prompt_tokens": None, "completion_tokens": 0, "finish_reason": {"type": "length", "length": 0}}
            outs = [bind(s, "", dict(meta)) for s in states]
            self._complete(frame, node, _Bundle(tuple(outs)) if batched else outs[0], started=started)
            return

        def finish(results: list[dict]) -> Any:
            outs = []
            for state, result in zip(states, results):
                meta = dict(result["meta_info"])
                if return_text:
                    _add_logprob_text(meta, self.tokenizer)
                outs.append(bind(state, result["text"], meta))
            return _Bundle(tuple(outs)) if batched else outs[0]

        stream = (not batched and frame.inst.sink is not None and frame.main
                  and node.id in frame.plan.main_line)
        call = _Call(frame, node, finish, started=started)
        # A fused fork's branches decode over the fork's prefix together: tell the engine.
        group = f"batch_gen-{next(_prefix_groups)}" if batched and len(states) > 1 else None
        for state, request in zip(states, requests):
            try:
                ids = prompt_ids(self.tokenizer, state.text, "gen")
            except ValueError as exc:
                raise _NodeFailed(str(exc)) from exc
            call.requests.append(_Req(call, ids, request.params, request.options, request.constraint,
                                      stream_var=name, stream=stream, prefix_group=group))
        self._queue(call)

    def _prefill(self, frame: _Frame, node: Node, started: float) -> None:
        state: ProgramState = frame.lookup(node.operands[0])
        # Value operands extend the hinted text (the prefix a fork's branches start with).
        text = state.text + "".join(to_text(frame.lookup(o)) for o in node.operands[1:])
        if not text:
            self._complete(frame, node, state, started=started)
            return
        call = _Call(frame, node, lambda results: state, started=started)
        req = _Req(call, prompt_ids(self.tokenizer, text), SamplingParams(max_new_tokens=1, temperature=0.0))
        consumers = self.ex.pin_consumers(node)
        if consumers and self.pinned_tokens + len(req.prompt) <= self.pin_limit:
            req.pin = _Pin(len(req.prompt), set(consumers))
            self.pinned_tokens += len(req.prompt)
            frame.pins.append(req.pin)
            frame.inst.pins.append(req.pin)
        call.requests.append(req)
        self._queue(call)

    def _select(self, frame: _Frame, node: Node, name: str, choices: tuple[str, ...], method: str,
                started: float) -> None:
        state: ProgramState = frame.lookup(node.operands[0])
        # A prefix hoisted out of the choices is already at the end of the state's text; the
        # candidates are still prefix + choice, scored after the text without it.
        prefix: str = getattr(node.op, "prefix", "") or ""
        if prefix and not state.text.endswith(prefix):
            raise _NodeFailed(f"the state's text does not end with the hoisted choice prefix {prefix!r}")
        text = state.text[: len(state.text) - len(prefix)]
        candidates = [prefix + c for c in choices]
        try:
            requests, conts = select_requests(self.tokenizer, text, candidates, method)
        except ValueError as exc:
            raise _NodeFailed(str(exc)) from exc

        def finish(results: list[dict]) -> ProgramState:
            index, meta = decide(method, conts, [r["logprobs"] for r in results])
            engine_meta = results[0]["meta_info"]
            meta = {"prompt_tokens": engine_meta.get("prompt_tokens"), "cached_tokens": engine_meta.get("cached_tokens"),
                    **meta, "choices": candidates}
            return state.appended(choices[index]).with_var(name, candidates[index], meta)

        call = _Call(frame, node, finish, started=started)
        call.requests.extend(_Req(call, r.prompt, continuations=r.continuations) for r in requests)
        self._queue(call)

    def _queue(self, call: _Call) -> None:
        call.pending = len(call.requests)
        self.to_submit.extend(call.requests)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _host_raised(op: ir.Host, exc: BaseException) -> str:
    line = f" (line {op.line})" if op.line else ""
    return f"host function {op.func}{line} raised {_describe(exc)}"


def _check_host_value(op: ir.Host, value: Any) -> Any:
    if op.returns == "state" and not isinstance(value, ProgramState):
        raise _NodeFailed(f"host function {op.func} must return a ProgramState, got {type(value).__name__}")
    if op.returns == "text" and not isinstance(value, str):
        raise _NodeFailed(f"host function {op.func} must return a str, got {type(value).__name__}")
    return value


def _add_logprob_text(meta: dict, tokenizer: Any) -> None:
    """`return_text_in_logprobs`: each (logprob, token id, None) entry gets the token's text."""
    for key in ("input_token_logprobs", "output_token_logprobs"):
        if meta.get(key) is not None:
            meta[key] = [(lp, tid, tokenizer.decode([tid], skip_special_tokens=False)) for lp, tid, *_ in meta[key]]
