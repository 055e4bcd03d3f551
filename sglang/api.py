"""SGLang's frontend API (`sglang.api`, also `sglang.lang.api`): sgc's language under SGLang's names.

What works is sgc's own implementation (`compiler.lang`); what belongs to SGLang's server and
multimodal world raises NotImplementedError with one line saying why and what to use instead.
`docs/language.md` (section 6) lists every name.
"""

from __future__ import annotations

from typing import Any

from compiler.lang import (
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
from sglang._refused import MULTIMODAL, refused_function

__all__ = [  # noqa: F822 (Engine and Runtime are imported on first use)
    "Engine", "Runtime", "assistant", "assistant_begin", "assistant_end", "flush_cache", "function", "gen",
    "gen_int", "gen_string", "get_default_backend", "get_server_info", "image", "select", "separate_reasoning",
    "set_default_backend", "system", "system_begin", "system_end", "user", "user_begin", "user_end", "video",
]

image = refused_function("image", MULTIMODAL)
video = refused_function("video", MULTIMODAL)
separate_reasoning = refused_function(
    "separate_reasoning", "sgc has no reasoning parsers; generate the reasoning into its own variable "
    "(gen(\"reasoning\", stop=\"</think>\")) and the answer into another")


def flush_cache(backend: Any = None, empty_cache: bool = True) -> bool:
    """Drop the runtime's cached prefixes (SGLang's `flush_cache`): False without a backend.

    `backend` defaults to the default backend: an `sgc.Runtime` or an `sgc.Engine`. Prefixes that
    running requests hold stay cached. `empty_cache` is accepted (sgc has no separate device cache).
    """
    backend = backend if backend is not None else get_default_backend()
    if backend is None or not hasattr(backend, "flush_cache"):
        return False
    return bool(backend.flush_cache())


def get_server_info(backend: Any = None) -> dict[str, Any] | None:
    """The backend's version, model and engine settings (SGLang's `get_server_info`); None without one."""
    from sgc.runtime import server_info

    backend = backend if backend is not None else get_default_backend()
    if backend is None:
        return None
    if hasattr(backend, "get_server_info"):
        return backend.get_server_info()
    return server_info(backend, str(getattr(getattr(backend, "config", None), "model_path", "")) or None)


def __getattr__(name: str) -> Any:
    """`Runtime` and `Engine` are imported on first use (they pull in torch)."""
    if name == "Runtime":
        from sgc.runtime import Runtime

        return Runtime
    if name == "Engine":
        from executor.runtime.engine import Engine

        return Engine
    raise AttributeError(f"module {__name__!r} (sgc's shim) has no attribute {name!r}")
