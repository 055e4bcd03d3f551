"""sgc: an ahead-of-time compiler and runtime for structured LLM programs.

This package is the public face: the language (SGLang's frontend names: `function`, `gen`, `select`,
roles, ...), `Runtime` and `Engine` (the LLM runtime, imported lazily so `import sgc` stays fast),
`compile_function`/`compile_file`/`explain` (the tracer), `RuntimeEndpoint` (programs on an `sgc serve`
over HTTP) and the CLI.
"""

from __future__ import annotations

from compiler.errors import CompileError, ProgramError
from compiler.lang import (
    Function,
    assistant,
    assistant_begin,
    assistant_end,
    function,
    gen,
    gen_int,
    gen_string,
    get_default_backend,
    select,
    set_default_backend,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
)
from compiler.lang_sampling import (
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from compiler.version import __version__

__all__ = [
    "CompileError", "Engine", "Function", "ProgramError", "Runtime", "__version__", "assistant",
    "assistant_begin", "assistant_end", "compile_file", "compile_function", "explain", "function", "gen",
    "gen_int", "gen_string", "get_default_backend", "greedy_token_selection", "load", "RuntimeEndpoint", "select",
    "set_default_backend", "system", "system_begin", "system_end", "token_length_normalized",
    "unconditional_likelihood_normalized", "user", "user_begin", "user_end",
]


def __getattr__(name: str):
    # Imported lazily so `sgc --help` and `import sgc` stay fast (torch loads only when needed).
    if name == "Engine":
        from executor.runtime.engine import Engine

        return Engine
    if name == "Runtime":
        from sgc.runtime import Runtime

        return Runtime
    if name == "RuntimeEndpoint":  # a program on an `sgc serve` over HTTP (needs the serve extra)
        from sgc.serve.client import RuntimeEndpoint

        return RuntimeEndpoint
    if name in ("load", "LoadedProgram"):
        from sgc import loader

        return getattr(loader, name)
    if name in ("compile_function", "compile_file", "explain"):
        from compiler.parser import tracer

        return getattr(tracer, name)
    raise AttributeError(f"module 'sgc' has no attribute {name!r}")
