"""Host steps: find the Python callable of an IR `host` node, and run whole functions eagerly.

Resolution of `func` ("module:qualname"), in order:

1. the executor's `host_functions` mapping (any `Mapping`; called as `fn(*operand_values)`, states
   as `executor.graph_state.ProgramState`, inline on the executor's thread);
2. a pure function of an allow-listed module (`PURE_MODULES`: builtins, operator, math and the
   tracer's `compiler.parser.host_funcs`), which the tracer names for value host steps
   (`builtins:str.strip`, `operator:eq`); importing these runs no user code, so loading a program
   still never does;
3. for `returns="state"`: an sgc `Function` defined in this process (`compiler.lang.lookup_function`,
   no import), which the tracer emits for a function that must run on the host. It runs through the
   eager interpreter (`compiler.interpreter.run_host_function`) on a copy of the state, with the
   run's sampling defaults, in a worker thread so other instances keep going.

Anything else is an error naming the node.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from executor.graph_state import ProgramState

__all__ = ["PURE_MODULES", "live_function", "resolve_pure", "run_function_step"]

PURE_MODULES = frozenset({"builtins", "operator", "math", "compiler.parser.host_funcs"})


def resolve_pure(func: str) -> Callable[..., Any] | None:
    """The callable `func` names if it lives in an allow-listed module, else None."""
    module_name, _, qualname = func.partition(":")
    if module_name not in PURE_MODULES or not qualname:
        return None
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if callable(obj) else None


def live_function(func: str) -> Any | None:
    """The sgc `Function` named `func` if one is defined in this process."""
    try:
        from compiler.lang import lookup_function
    except ImportError:  # the language is not part of this build
        return None
    return lookup_function(func)


def run_function_step(fn: Any, engine: Any, defaults: Any, names: Sequence[str], values: Sequence[Any]) -> ProgramState:
    """Run sgc function `fn` eagerly on state `values[0]` with arguments `names[1:]`=`values[1:]`.

    Text and messages are taken from the interpreter's state; variables it bound or changed are
    bound on the result (so a later join gathers them like any other).
    """
    from compiler.interpreter import new_state, run_host_function

    state: ProgramState = values[0]
    eager = new_state(engine, defaults, text=state.text, messages=state.messages,
                      variables=dict(state.variables), meta_info=dict(state.meta_info), role=state.open_role)
    run_host_function(fn, eager, dict(zip(names[1:], values[1:])))
    snap = eager.snapshot()
    result = ProgramState(snap["text"], snap["messages"], state.variables, state.meta_info, role=snap["role"],
                          fork_text=state._fork_text, fork_messages=state._fork_messages, bound=state._bound)
    for name, value in snap["variables"].items():
        if name not in state.variables or state.variables[name] is not value:
            result = result.with_var(name, value, snap["meta_info"].get(name))
    return result
