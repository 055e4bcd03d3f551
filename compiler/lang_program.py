"""What a program is: `Program`, the definition behind `@function` (the function, its signature, its
bound arguments), the registry that host steps look programs up in, and the depth bound on nested
program calls.

The tracer (`compiler.parser.tracer`) and the eager interpreter (`compiler.interpreter`) work on a
`Program`; `compiler.lang_function.Function` adds `run`, `run_batch` and `compile` on top by calling
them. Keeping the definition apart is what lets those two modules depend on it without a circle.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from compiler import budgets
from compiler.errors import CompileError, definition_site

__all__ = ["Program", "lookup_function", "nested_call"]


_FUNCTIONS: weakref.WeakValueDictionary[str, Program] = weakref.WeakValueDictionary()


class Program:
    """A program's definition: a Python function whose first parameter `s` is the state, its signature
    and bound arguments. `compiler.lang_function.Function` (what `@function` makes) adds running and
    compiling; the tracer and the eager interpreter need only this."""

    def __init__(self, func: Callable[..., Any], num_api_spec_tokens: int | None = None,
                 bind_arguments: dict[str, Any] | None = None) -> None:
        if isinstance(func, Program):  # @function applied twice
            func = func.func
        _check_program_form(func)
        self.func = func
        self.num_api_spec_tokens = num_api_spec_tokens  # accepted for SGLang compatibility; unused
        self.bind_arguments = dict(bind_arguments or {})
        self.name = func.__name__
        self.signature = inspect.signature(func)
        params = list(self.signature.parameters.values())
        if not params or params[0].name != "s" or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD
        ):
            first = params[0].name if params else "nothing"
            if first == "s":
                first = f"{params[0]} (it must be positional)"
            raise CompileError(f"@function {self.name}: the first parameter must be the state `s`, got {first}",
                               *definition_site(func))
        _check_parameters(self.name, func, params[1:])
        self.arg_names = [p.name for p in params[1:]]
        unknown = set(self.bind_arguments) - set(self.arg_names)
        if unknown:
            raise CompileError(f"@function {self.name}: cannot bind unknown argument(s) {sorted(unknown)}",
                               *definition_site(func))
        # The registry host steps look functions up in (weak). A bound copy does not displace a live
        # entry for the same def: a short-lived `f.bind(...)` would otherwise take `f`'s entry away
        # when it is collected.
        existing = _FUNCTIONS.get(self.ref)
        if existing is None or existing.func is not func or not self.bind_arguments:
            _FUNCTIONS[self.ref] = self
        self.__doc__ = func.__doc__
        self.__name__ = self.name
        self.__qualname__ = getattr(func, "__qualname__", self.name)
        self.__module__ = getattr(func, "__module__", None)
        self.__wrapped__ = func

    @property
    def ref(self) -> str:
        """`module:qualname`, how IR host steps name this function."""
        return f"{self.func.__module__}:{self.func.__qualname__}"

    def __repr__(self) -> str:
        return f"<sgc.Function {self.name}({', '.join(self.arg_names)})>"

    def bind(self, **kwargs: Any) -> Program:
        """A copy with some arguments fixed (compiling it unrolls loops over bound lists)."""
        return type(self)(self.func, self.num_api_spec_tokens, {**self.bind_arguments, **kwargs})

    def bind_call(self, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The argument dict of a call (without `s`), defaults applied; CompileError at the caller's line."""
        merged = {**self.bind_arguments, **kwargs}
        names = ", ".join(self.arg_names) or "none"
        unknown = [k for k in merged if k not in self.arg_names]
        if unknown:
            raise CompileError.here(f"{self.name}() got an unknown argument {unknown[0]!r} (its arguments: {names})")
        try:
            bound = self.signature.bind(None, *args, **merged)
        except TypeError as exc:
            raise CompileError.here(f"{self.name}(): {exc} (its arguments: {names})") from None
        bound.apply_defaults()
        return {k: v for k, v in list(bound.arguments.items())[1:]}


# ---------------------------------------------------------------------------------------------------
# What a program may be


def _check_program_form(func: Any) -> None:
    """Refuse, at decoration time, callables that cannot be programs (see docs/language.md, 4).

    These are properties of the definition, so they are checked once, where the program is defined,
    for both executors: a generator or a coroutine would otherwise "run" without executing its body
    (calling it only creates the generator), and the other forms have no `def` to name the graph.
    """
    if inspect.isclass(func):
        raise CompileError(f"@function decorates a function defined with def, got class {func.__name__}",
                           *definition_site(func))
    if not (inspect.isfunction(func) or inspect.ismethod(func)):
        what = f"the builtin {func.__name__}" if inspect.isbuiltin(func) else f"an object of type {type(func).__name__}"
        raise CompileError.here(f"@function decorates a Python function defined with def, got {what}")
    name = func.__name__
    site = definition_site(func)
    if name == "<lambda>":
        raise CompileError("@function cannot decorate a lambda: define the program with def "
                           "(its name names the compiled graph and the host steps that run it)", *site)
    if inspect.isasyncgenfunction(func):
        raise CompileError(f"@function {name} is an async generator (async def with yield): programs are "
                           "plain functions that append to `s`", *site)
    if inspect.iscoroutinefunction(func):
        raise CompileError(f"@function {name} is an async def: programs are plain functions (sgc runs "
                           "them itself and batches their requests; there is nothing to await)", *site)
    if inspect.isgeneratorfunction(func):
        raise CompileError(f"@function {name} is a generator (it contains yield): calling it would not run "
                           "its body; programs append to `s` (use s.text_iter() to stream text)", *site)


def _check_parameters(name: str, func: Any, params: list[inspect.Parameter]) -> None:
    """The arguments after `s`: named ones only, since `run(**args)` passes them by name."""
    for param in params:
        if param.kind is param.VAR_POSITIONAL:
            raise CompileError(f"@function {name}: *{param.name} is not supported: name each argument "
                               "(run() passes arguments by name)", *definition_site(func))
        if param.kind is param.VAR_KEYWORD:
            raise CompileError(f"@function {name}: **{param.name} is not supported: name each argument "
                               "(a compiled graph has a fixed set of arguments)", *definition_site(func))
        if param.kind is param.POSITIONAL_ONLY:
            raise CompileError(f"@function {name}: argument {param.name!r} is positional-only (before /), "
                               "but run() passes arguments by name", *definition_site(func))


# ---------------------------------------------------------------------------------------------------
# Nested calls


class _CallStack(threading.local):
    """The @functions called inside a running program, innermost last (per thread)."""

    def __init__(self) -> None:
        self.functions: list[Program] = []


_CALLS = _CallStack()


@contextlib.contextmanager
def nested_call(function: Program) -> Iterator[None]:
    """Enter a nested call; a CompileError at the caller's line beyond the program_depth budget.

    Both executors inline nested calls as plain Python calls, so a recursion without an end would
    otherwise be a RecursionError somewhere deep inside sgc. A bounded recursion (a base case on a
    constant or bound argument) is fine within the budget.
    """
    stack = _CALLS.functions
    depth = len(stack) + 1
    if depth > budgets.value("program_depth"):
        raise CompileError.here(budgets.over_budget("program_depth", depth, _describe_calls(stack, function)))
    stack.append(function)
    try:
        yield
    finally:
        stack.pop()


def _describe_calls(stack: list[Program], callee: Program) -> str:
    """`recursive @function calls a -> b -> a` (the cycle), or the chain of nested calls, shortened."""
    if callee in stack:
        start = len(stack) - 1 - stack[::-1].index(callee)
        cycle = [f.name for f in stack[start:]] + [callee.name]
        return f"recursive @function calls {' -> '.join(cycle)} (no base case?)"
    names = [f.name for f in stack] + [callee.name]
    if len(names) > 6:
        names = [*names[:3], "...", *names[-2:]]
    return f"nested @function calls {' -> '.join(names)}"


def lookup_function(ref: str) -> Program | None:
    """A live `Function` by `module:qualname` (functions defined anywhere in this process)."""
    return _FUNCTIONS.get(ref)
