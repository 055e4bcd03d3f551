"""`RuntimeEndpoint` (refused until sgc has a server) and `Runtime` (sgc's)."""

from __future__ import annotations

from typing import Any

from sglang._refused import refused_class

__all__ = ["Runtime", "RuntimeEndpoint"]  # noqa: F822 (Runtime: on first use)

RuntimeEndpoint = refused_class(
    "RuntimeEndpoint", "sgc has no HTTP server yet (issue 15); run the model in-process with "
    "sgl.Runtime(model_path=...)", "sglang")


def __getattr__(name: str) -> Any:
    if name == "Runtime":
        from sgc.runtime import Runtime

        return Runtime
    raise AttributeError(f"module {__name__!r} (sgc's shim) has no attribute {name!r}")
