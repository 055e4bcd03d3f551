"""A compatibility shim: `import sglang as sgl` programs run on sgc unchanged.

Installed only where the real SGLang is not. It offers the whole public frontend of SGLang 0.5.x:
every name `sglang/__init__.py` exports, `sglang.lang.ir`'s constants and expression classes,
`sglang.lang.choices`, `sglang.lang.interpreter`'s state classes and `sglang.global_config`. Each
name either works with SGLang's semantics (sgc's own implementation: the eager interpreter or, on an
`sgc.Runtime`, the compiler and graph executor) or, for SGLang's server, remote-API and multimodal
world, raises NotImplementedError with one line saying why and what to use instead.
`docs/language.md` (section 6) is the table of every name.
"""

from __future__ import annotations

from typing import Any

from compiler.errors import CompileError
from compiler.lang import Function
from compiler.lang_sampling import (
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from sglang._refused import REMOTE_API, refused_class
from sglang.api import (
    assistant,
    assistant_begin,
    assistant_end,
    flush_cache,
    function,
    gen,
    gen_int,
    gen_string,
    get_default_backend,
    get_server_info,
    image,
    select,
    set_default_backend,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
    video,
)
from sglang.global_config import global_config
from sglang.version import __version__

# What SGLang 0.5.x's `sglang/__init__.py` exports (its `__all__`), then sgc's additions.
__all__ = [  # noqa: F822 (Engine, Runtime and RuntimeEndpoint are imported on first use, below)
    "Engine", "Runtime", "assistant", "assistant_begin", "assistant_end", "flush_cache", "function", "gen",
    "gen_int", "gen_string", "get_server_info", "image", "select", "set_default_backend", "system",
    "system_begin", "system_end", "user", "user_begin", "user_end", "video", "RuntimeEndpoint",
    "greedy_token_selection", "token_length_normalized", "unconditional_likelihood_normalized", "Anthropic",
    "LiteLLM", "OpenAI", "VertexAI", "global_config", "__version__",
    "CompileError", "Function", "get_default_backend",
]

Anthropic = refused_class("Anthropic", REMOTE_API)
LiteLLM = refused_class("LiteLLM", REMOTE_API)
OpenAI = refused_class("OpenAI", REMOTE_API)
VertexAI = refused_class("VertexAI", REMOTE_API)


def __getattr__(name: str) -> Any:
    """`Runtime` (sgc's `Runtime`), `Engine` (sgc's `Engine`) and `RuntimeEndpoint` (sgc's HTTP
    backend, `sgc.serve.client`) are imported on first use."""
    if name in ("Runtime", "Engine"):
        import sglang.api

        return getattr(sglang.api, name)
    if name == "RuntimeEndpoint":
        from sgc.serve.client import RuntimeEndpoint

        return RuntimeEndpoint
    raise AttributeError(f"module 'sglang' (sgc's shim) has no attribute {name!r}")
