"""How the shim refuses what sgc does not provide: one line that says why and what to use instead."""

from __future__ import annotations

from typing import Any

REMOTE_API = ("sgc runs programs on its own runtime, not on remote APIs; use sgc.Runtime(model_path=...) "
              "(sgl.Runtime), or sgl.RuntimeEndpoint(url) for an `sgc serve` server")
MULTIMODAL = "sgc runs text-only models: images and videos cannot be part of a prompt"


def refused_class(name: str, why: str, module: str = "sglang") -> type:
    """A class named `name` whose construction raises NotImplementedError(`sgl.<name> ...: why`)."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(f"sgl.{name} is not supported by sgc: {why}")

    return type(name, (), {"__init__": __init__, "__doc__": f"Refused by sgc: {why}", "__module__": module})


def refused_function(name: str, why: str, module: str = "sglang") -> Any:
    """A function named `name` that raises NotImplementedError(`sgl.<name> ...: why`) when called."""

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"sgl.{name} is not supported by sgc: {why}")

    refused.__name__ = refused.__qualname__ = name
    refused.__doc__ = f"Refused by sgc: {why}"
    refused.__module__ = module
    return refused
