"""A compatibility shim: `import sglang as sgl` programs run on sgc unchanged.

Installed only where the real SGLang is not. It re-exports sgc's language (the frontend names
SGLang programs use: `function`, `gen`, `select`, roles, `set_default_backend`, `Runtime`, the choice
methods); what belongs to SGLang's server world (`RuntimeEndpoint`, `OpenAI`, images) raises a clear
error instead of half-working.
"""

from __future__ import annotations

from typing import Any

from compiler.errors import CompileError
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

__version__ = "0.0.0+sgc"

__all__ = [
    "CompileError", "Engine", "Function", "OpenAI", "Runtime", "RuntimeEndpoint", "assistant",
    "assistant_begin", "assistant_end", "function", "gen", "gen_int", "gen_string", "get_default_backend",
    "greedy_token_selection", "image", "select", "set_default_backend", "system", "system_begin",
    "system_end", "token_length_normalized", "unconditional_likelihood_normalized", "user", "user_begin",
    "user_end", "video",
]


class _Unsupported:
    """A name from SGLang's server world that sgc does not provide."""

    what = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(f"sgl.{type(self).__name__} is not supported by sgc's sglang shim: {self.what}")


class RuntimeEndpoint(_Unsupported):
    what = "sgc runs models in-process; use sgl.Runtime(model_path=...)"


class OpenAI(_Unsupported):
    what = "sgc runs local models only; use sgl.Runtime(model_path=...)"


def image(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("sgl.image is not supported by sgc (text-only models)")


def video(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("sgl.video is not supported by sgc (text-only models)")


def __getattr__(name: str) -> Any:
    if name == "Runtime":
        from sgc.runtime import Runtime

        return Runtime
    if name == "Engine":
        from executor.engine import Engine

        return Engine
    raise AttributeError(f"module 'sglang' (sgc's shim) has no attribute {name!r}")
