"""Programs: the `@function` decorator, `Function` (run, run_batch, compile) and the default backend.

`Function.run`/`run_batch` on a backend that can compile (an `sgc.Runtime`: it has `run_function`)
compile the function on first use and run it with the graph executor (the backend owns that glue;
`opt_level=` or `$SGC_OPT_LEVEL` picks the pipeline); with `eager=True`, `$SGC_EAGER=1`, or on a
plain engine they execute with the eager interpreter (`compiler.interpreter`, imported lazily), the
test oracle. `Function.compile` traces (`compiler.parser.tracer`). `compiler.lang` re-exports everything.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from compiler import budgets
from compiler.errors import CompileError, definition_site
from compiler.lang_state import StateBase

__all__ = ["Function", "function", "get_default_backend", "lookup_function", "set_default_backend"]


# ---------------------------------------------------------------------------------------------------
# Backends


_default_backend: Any = None


def set_default_backend(backend: Any) -> None:
    """The backend `run`/`run_batch` use when none is passed: an `sgc.Runtime` or an `Engine`."""
    global _default_backend
    _default_backend = backend


def get_default_backend() -> Any:
    return _default_backend


# ---------------------------------------------------------------------------------------------------
# Functions


_FUNCTIONS: weakref.WeakValueDictionary[str, Function] = weakref.WeakValueDictionary()


class Function:
    """A program: a Python function whose first parameter `s` is the state (SGLang's `SglFunction`)."""

    def __init__(self, func: Callable[..., Any], num_api_spec_tokens: int | None = None,
                 bind_arguments: dict[str, Any] | None = None) -> None:
        if isinstance(func, Function):  # @function applied twice
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

    def bind(self, **kwargs: Any) -> Function:
        """A copy with some arguments fixed (compiling it unrolls loops over bound lists)."""
        return Function(self.func, self.num_api_spec_tokens, {**self.bind_arguments, **kwargs})

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

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """`other(s, ...)` inside a program continues `s` (inlined); otherwise it is `run`."""
        if args and isinstance(args[0], StateBase):
            values = self.bind_call(args[1:], kwargs)
            with _nested_call(self):
                return self.func(args[0], **values)
        return self.run(*args, **kwargs)

    def run(self, *args: Any, max_new_tokens: int = 128, stop: str | Sequence[str] | None = None,
            stop_token_ids: Sequence[int] | None = None, temperature: float = 1.0, top_p: float = 1.0,
            top_k: int = -1, min_p: float = 0.0, frequency_penalty: float = 0.0,
            presence_penalty: float = 0.0, ignore_eos: bool = False, return_logprob: bool | None = None,
            logprob_start_len: int | None = None, top_logprobs_num: int | None = None,
            return_text_in_logprobs: bool | None = None, stream: bool = False, backend: Any = None,
            use_thread: bool = True, eager: bool = False, opt_level: int | None = None, **kwargs: Any) -> Any:
        """Run one instance; returns its state (with `stream=True`, while it runs).

        Compiled on an `sgc.Runtime` (see the module docstring), eagerly with `eager=True`.
        """
        from compiler.interpreter import run_program
        from compiler.lang_sampling import RunDefaults

        values = self.bind_call(args, kwargs)
        defaults = RunDefaults.make(
            max_new_tokens=max_new_tokens, stop=stop, stop_token_ids=stop_token_ids, temperature=temperature,
            top_p=top_p, top_k=top_k, min_p=min_p, frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty, ignore_eos=ignore_eos, return_logprob=return_logprob,
            logprob_start_len=logprob_start_len, top_logprobs_num=top_logprobs_num,
            return_text_in_logprobs=return_text_in_logprobs,
        )
        target = _compiling_backend(backend, eager)
        if target is not None:
            return target.run_function(self, values, defaults, stream=stream, opt_level=opt_level)
        return run_program(self, values, defaults, backend=backend, stream=stream)

    def run_batch(self, batch_kwargs: Sequence[dict[str, Any]], *, max_new_tokens: int = 128,
                  stop: str | Sequence[str] | None = None, stop_token_ids: Sequence[int] | None = None,
                  temperature: float = 1.0, top_p: float = 1.0, top_k: int = -1, min_p: float = 0.0,
                  frequency_penalty: float = 0.0, presence_penalty: float = 0.0, ignore_eos: bool = False,
                  return_logprob: bool | None = None, logprob_start_len: int | None = None,
                  top_logprobs_num: int | None = None, return_text_in_logprobs: bool | None = None,
                  backend: Any = None, num_threads: int | str = "auto", progress_bar: bool = False,
                  generator_style: bool = False, eager: bool = False, opt_level: int | None = None) -> Any:
        """Run many instances concurrently on one backend; a list of states in input order.

        A failed instance's state holds its error (`state.error`); reading its text or variables
        raises it. With `generator_style=True` the states are yielded as they finish, in order.
        """
        from compiler.interpreter import run_batch
        from compiler.lang_sampling import RunDefaults

        values = [self.bind_call((), self._batch_row(row, i)) for i, row in enumerate(batch_kwargs)]
        defaults = RunDefaults.make(
            max_new_tokens=max_new_tokens, stop=stop, stop_token_ids=stop_token_ids, temperature=temperature,
            top_p=top_p, top_k=top_k, min_p=min_p, frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty, ignore_eos=ignore_eos, return_logprob=return_logprob,
            logprob_start_len=logprob_start_len, top_logprobs_num=top_logprobs_num,
            return_text_in_logprobs=return_text_in_logprobs,
        )
        target = _compiling_backend(backend, eager)
        if target is not None:
            return target.run_function_batch(self, values, defaults, progress_bar=progress_bar,
                                             generator_style=generator_style, opt_level=opt_level)
        return run_batch(self, values, defaults, backend=backend, num_threads=num_threads,
                         progress_bar=progress_bar, generator_style=generator_style)

    def _batch_row(self, row: Any, index: int) -> dict[str, Any]:
        """One row of `run_batch`: a dict of arguments, or (as SGLang allows) a list/tuple of them in order."""
        if isinstance(row, dict):
            return dict(row)
        if isinstance(row, (list, tuple)):
            if len(row) > len(self.arg_names):
                raise CompileError.here(f"{self.name}.run_batch: row {index} has {len(row)} values but the "
                                        f"function takes {len(self.arg_names)} ({', '.join(self.arg_names)})")
            return dict(zip(self.arg_names, row))
        raise CompileError.here(f"{self.name}.run_batch: row {index} must be a dict of arguments or a list "
                                f"of their values, got {type(row).__name__}")

    def compile(self, bind: dict[str, Any] | None = None, strict: bool = False, *, backend: Any = None) -> Any:
        """Trace into IR: `(Module, [GraphBreak])` (see `compiler.parser.tracer.compile_function`).

        `backend` is accepted for SGLang compatibility; compiling does not need one.
        """
        from compiler.parser.tracer import compile_function

        return compile_function(self, bind=bind, strict=strict)

    def trace(self, *, backend: Any = None, **kwargs: Any) -> Any:
        """SGLang's `trace`: here the program's IR `Module`, with `kwargs` bound (see `compile`)."""
        module, _ = self.compile(bind=kwargs)
        return module

    def cache(self, backend: Any = None) -> None:
        """SGLang's `cache` (prefill the program's constant prefix): accepted, nothing to do. The
        runtime's radix cache keeps every prefix a run computed, and compiled graphs prefill the
        prefixes their branches share themselves."""
        return None

    def explain(self, bind: dict[str, Any] | None = None) -> str:
        """Every graph break of this function, one `file:line: reason` per line."""
        from compiler.parser.tracer import explain

        _, breaks = self.compile(bind=bind)
        return explain(breaks, self.name)


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
        self.functions: list[Function] = []


_CALLS = _CallStack()


@contextlib.contextmanager
def _nested_call(function: Function) -> Iterator[None]:
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


def _describe_calls(stack: list[Function], callee: Function) -> str:
    """`recursive @function calls a -> b -> a` (the cycle), or the chain of nested calls, shortened."""
    if callee in stack:
        start = len(stack) - 1 - stack[::-1].index(callee)
        cycle = [f.name for f in stack[start:]] + [callee.name]
        return f"recursive @function calls {' -> '.join(cycle)} (no base case?)"
    names = [f.name for f in stack] + [callee.name]
    if len(names) > 6:
        names = [*names[:3], "...", *names[-2:]]
    return f"nested @function calls {' -> '.join(names)}"


def _compiling_backend(backend: Any, eager: bool) -> Any:
    """The backend that compiles and executes, or None to run eagerly."""
    if eager or os.environ.get("SGC_EAGER", "") not in ("", "0"):
        return None
    target = backend if backend is not None else _default_backend
    return target if hasattr(target, "run_function") else None


def function(func: Callable[..., Any] | None = None, *, num_api_spec_tokens: int | None = None,
             **_ignored: Any) -> Any:
    """Decorate a program: `@function` or `@function(num_api_spec_tokens=...)`."""
    if func is None:
        return lambda f: Function(f, num_api_spec_tokens=num_api_spec_tokens)
    return Function(func, num_api_spec_tokens=num_api_spec_tokens)


def lookup_function(ref: str) -> Function | None:
    """A live `Function` by `module:qualname` (functions defined anywhere in this process)."""
    return _FUNCTIONS.get(ref)
