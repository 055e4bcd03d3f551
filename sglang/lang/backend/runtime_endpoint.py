"""`RuntimeEndpoint` (a program runs on an `sgc serve` over HTTP) and `Runtime` (sgc's in-process one)."""

from __future__ import annotations

from typing import Any

__all__ = ["Runtime", "RuntimeEndpoint"]  # noqa: F822 (both imported on first use)


def __getattr__(name: str) -> Any:
    if name == "Runtime":
        from sgc.runtime import Runtime

        return Runtime
    if name == "RuntimeEndpoint":  # httpx is imported only when it is used
        from sgc.serve.client import RuntimeEndpoint

        return RuntimeEndpoint
    raise AttributeError(f"module {__name__!r} (sgc's shim) has no attribute {name!r}")
