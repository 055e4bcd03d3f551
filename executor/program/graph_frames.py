"""What a graph run keeps per program instance: the instance, its frames, its prefill pins, its stream.

`executor/program/graph_run.py` drives these; they hold no policy. A `RunFrame` is one activation of a
region (the body, or a taken switch region) and is the interpreter's `Frame` (incoming state,
arguments, values so far). A `Pin` keeps a prefilled prefix in the radix cache until the nodes that
extend it have been admitted. A `Sink` holds one instance's streamed text for `text_iter`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from compiler.ir import Graph, Node, Region
from compiler.prompt_state import PromptState
from executor.program.graph_plan import Plan
from executor.program.graph_results import GraphExecutionError, Stats

__all__ = ["Instance", "Pin", "RunFrame", "Sink"]


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
class Instance:
    """One program instance of a run: its arguments, outcome, stats and pins."""

    index: int
    arguments: Mapping[str, Any]
    sink: Sink | None = None
    state: PromptState | None = None
    error: GraphExecutionError | None = None
    done: bool = False
    started: float = 0.0
    finished: float = 0.0
    stats: Stats = field(default_factory=dict)
    pins: list[Pin] = field(default_factory=list)

    def record(self, node: Node, **values: float) -> None:
        slot = self.stats.setdefault(node.graph.name, {}).setdefault(node.id, {})
        for key, value in values.items():
            slot[key] = slot.get(key, 0) + value


class Pin:
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


class RunFrame:
    """One activation of a region: the graph body or a taken switch region (an interpreter `Frame`)."""

    def __init__(self, inst: Instance, graph: Graph, region: Region, plan: Plan, incoming: PromptState,
                 arguments: Mapping[str, Any], parent: RunFrame | None, main: bool,
                 on_done: Callable[[PromptState], None], path: tuple[str, ...]) -> None:
        self.inst = inst
        self.graph = graph
        self.region = region
        self.plan = plan
        self.incoming = incoming
        self.arguments = arguments
        self.parent = parent
        self.main = main
        self.on_done = on_done
        self.path = path
        self.values: dict[int, Any] = {}
        self.waiting = dict(plan.num_deps)
        self.remaining = len(plan.nodes)
        self.output: PromptState | None = None
        self.pins: list[Pin] = []

    def lookup(self, node: Node) -> Any:
        frame: RunFrame | None = self
        while frame is not None:
            if frame.graph is node.graph and node.id in frame.values:
                return frame.values[node.id]
            frame = frame.parent
        raise AssertionError(f"%{node.id} is used before it was computed")
