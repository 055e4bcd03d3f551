"""What symbolic values and states ask of the trace they belong to: the `Recorder` interface.

The tracer's run (`compiler.parser.tracer._Run`) implements it; the symbolic values
(`compiler.parser.symbolic`) and the symbolic state (`compiler.parser.trace_state`) only call it.
Naming the interface here, below all three, is what keeps them out of an import circle: the tracer
builds symbolic values, and the values record into the tracer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn, Protocol

from compiler import ir

__all__ = ["Recorder"]


class Recorder(Protocol):
    """One traced run of a program: it records instructions and decides branches."""

    def where(self) -> str:
        """The user's current `file:line`, for messages."""
        ...

    def emit(self, op: ir.Op, operands: Sequence[int] = (), meta: dict[str, Any] | None = None,
             at: tuple[str | None, int | None] | None = None) -> int:
        """Record an instruction (at the user's current line, or `at`); its index."""
        ...

    def concat_ref(self, parts: list[str | int], placeholders: bool = False) -> int:
        """An instruction holding the concatenation of constant strings and instruction refs."""
        ...

    def host_value(self, func: str, args: Sequence[Any], reason: str, origin: str,
                   domain: tuple[Any, ...] | None, key: Any = None, record: bool = True) -> Any:
        """A value host step of `func` on `args`: a new symbolic value (`SymValue`)."""
        ...

    def needs_host(self, reason: str, file: str | None = None, line: int | None = None) -> NoReturn:
        """Give up on static tracing: the whole function runs on the host, for `reason`."""
        ...

    def placeholder(self, value: Any, how: str) -> str:
        """A placeholder string standing for a symbolic value inside a Python string."""
        ...

    def consume_placeholder(self, number: int) -> int:
        """The instruction a placeholder stands for (it reached the prompt)."""
        ...

    def decide(self, key: Any, value_ref: int, domain: tuple[Any, ...]) -> Any:
        """The outcome this run takes for a branch on a value with a finite `domain`."""
        ...
