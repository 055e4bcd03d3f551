"""The default backend: what `run`/`run_batch` use when no `backend=` is given (SGLang's
`set_default_backend`). A leaf module, so the eager interpreter can read it without importing
`Function`, which imports the interpreter."""

from __future__ import annotations

from typing import Any

__all__ = ["get_default_backend", "set_default_backend"]

_default_backend: Any = None


def set_default_backend(backend: Any) -> None:
    """The backend `run`/`run_batch` use when none is passed: an `sgc.Runtime` or an `Engine`."""
    global _default_backend
    _default_backend = backend


def get_default_backend() -> Any:
    return _default_backend
