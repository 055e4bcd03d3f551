"""`@function` and `Function`: a program you can run and compile (SGLang's `SglFunction`).

`Function.run`/`run_batch` on a backend that can compile (an `sgc.Runtime`: it has `run_function`)
compile the function on first use and run it with the graph executor (the backend owns that glue;
`opt_level=` or `$SGC_OPT_LEVEL` picks the pipeline); with `eager=True`, `$SGC_EAGER=1`, or on a
plain engine they execute with the eager interpreter (`compiler.interpreter`), the test oracle.
`Function.compile` traces (`compiler.parser.tracer`). The definition itself is `Program`
(`compiler.lang_program`), which the interpreter and the tracer use, so this module sits above both.
`compiler.lang` re-exports everything.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from compiler.errors import CompileError
from compiler.interpreter import run_batch, run_program
from compiler.lang_backend import get_default_backend
from compiler.lang_program import Program, nested_call
from compiler.lang_sampling import RunDefaults
from compiler.lang_state import StateBase
from compiler.parser.tracer import compile_function, explain

__all__ = ["Function", "function"]


class Function(Program):
    """A program you can run: `f.run(...)`, `f.run_batch(...)`, `f.compile()`, and `other(s, ...)`
    inside another program (see `Program` for the definition)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """`other(s, ...)` inside a program continues `s` (inlined); otherwise it is `run`."""
        if args and isinstance(args[0], StateBase):
            values = self.bind_call(args[1:], kwargs)
            with nested_call(self):  # the body continues `s`, depth-bounded
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
        _, breaks = self.compile(bind=bind)
        return explain(breaks, self.name)


def _compiling_backend(backend: Any, eager: bool) -> Any:
    """The backend that compiles and executes, or None to run eagerly."""
    if eager or os.environ.get("SGC_EAGER", "") not in ("", "0"):
        return None
    target = backend if backend is not None else get_default_backend()
    return target if hasattr(target, "run_function") else None


def function(func: Callable[..., Any] | None = None, *, num_api_spec_tokens: int | None = None,
             **_ignored: Any) -> Any:
    """Decorate a program: `@function` or `@function(num_api_spec_tokens=...)`."""
    if func is None:
        return lambda f: Function(f, num_api_spec_tokens=num_api_spec_tokens)
    return Function(func, num_api_spec_tokens=num_api_spec_tokens)
