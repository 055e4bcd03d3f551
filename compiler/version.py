"""sgc's version, in a leaf module: the artifact writer records it and `sgc.__version__` re-exports it,
so neither the compiler nor the runtime has to import the public `sgc` package to learn it."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
