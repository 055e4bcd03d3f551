"""`sglang.lang.interpreter`: the state classes programs name in annotations and checks.

`ProgramState` is sgc's eager state and `ProgramStateGroup` what `s.fork(n)` returns on it. A
program compiled on an `sgc.Runtime` gets an `sgc.compiled.CompiledState` back from `run` (the same
methods, not a subclass). SGLang's `StreamExecutor` has no counterpart: sgc runs each `s += ...`
when it is written.
"""

from __future__ import annotations

from typing import Any

from compiler.interpreter import ForkGroup as ProgramStateGroup
from compiler.interpreter import ProgramState

__all__ = ["ProgramState", "ProgramStateGroup"]


def __getattr__(name: str) -> Any:
    if name == "StreamExecutor":
        raise AttributeError("sglang.lang.interpreter.StreamExecutor is not provided by sgc: there is no "
                             "background executor (each s += ... runs when it is written)")
    raise AttributeError(f"module {__name__!r} (sgc's shim) has no attribute {name!r}")
