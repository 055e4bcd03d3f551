"""sgc: an ahead-of-time compiler and runtime for structured LLM programs.

This package is the public face: it re-exports the runtime (`Engine`) and hosts the CLI.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Engine", "__version__"]


def __getattr__(name: str):
    # Imported lazily so `sgc --help` and `import sgc` stay fast (torch loads only when needed).
    if name == "Engine":
        from executor.engine import Engine

        return Engine
    raise AttributeError(f"module 'sgc' has no attribute {name!r}")
