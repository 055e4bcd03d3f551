"""JSON values as they live inside frozen IR ops: hashable (`freeze_json`), and back (`thaw_json`).

A leaf module: the ops (`compiler.ir_ops`), the graph (`compiler.ir`) and the printer
(`compiler.ir_text`) all need these, and the printer must not depend on the graph it prints.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

__all__ = ["NO_DEFAULT", "FrozenDict", "Json", "freeze_json", "thaw_json"]

# ---------------------------------------------------------------------------------------------------
# JSON values inside frozen ops


class FrozenDict(Mapping[str, Any]):
    """A read-only, hashable dict: how JSON objects live inside frozen ops (`thaw_json` gives a dict)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> None:
        self._items = dict(items)

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __repr__(self) -> str:
        return f"FrozenDict({self._items!r})"


class _NoDefault:
    """The `default` of an `arg` that has none (distinct from a default of `null`)."""

    _instance: _NoDefault | None = None

    def __new__(cls) -> _NoDefault:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NO_DEFAULT"

    def __reduce__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT = _NoDefault()


class Json:
    """Annotation marker for an attribute holding any JSON value (stored frozen)."""


def freeze_json(value: Any) -> Any:
    """`value` as a hashable JSON value: lists become tuples, dicts `FrozenDict`s. Raises TypeError."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{value!r} is not a finite number")
        return value
    if isinstance(value, (list, tuple)):
        return tuple(freeze_json(v) for v in value)
    if isinstance(value, Mapping):
        for k in value:
            if not isinstance(k, str):
                raise TypeError(f"object key {k!r} is not a string")
        return FrozenDict((k, freeze_json(v)) for k, v in value.items())
    raise TypeError(f"{value!r} ({type(value).__name__}) is not a JSON value")


def thaw_json(value: Any) -> Any:
    """A frozen JSON value as plain Python (lists and dicts), e.g. for the executor."""
    if isinstance(value, tuple):
        return [thaw_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: thaw_json(v) for k, v in value.items()}
    return value
