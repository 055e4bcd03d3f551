"""Small pure functions that traced host steps call (`host func="compiler.parser.host_funcs:..."`).

Most value host steps name a builtin directly (`builtins:str.strip`, `operator:eq`); these cover what
has no builtin spelling. Each takes and returns plain values, so an executor calls
`func(*operand_values)` and nothing else.
"""

from __future__ import annotations

from typing import Any

__all__ = ["concat", "text_slice"]


def concat(*parts: Any) -> str:
    """The parts as one string, each as `s += part` would write it (`str()` of non-strings)."""
    return "".join(p if isinstance(p, str) else str(p) for p in parts)


def text_slice(value: Any, start: int | None, stop: int | None, step: int | None) -> Any:
    """`value[start:stop:step]`."""
    return value[start:stop:step]
