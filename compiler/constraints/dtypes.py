"""The regexes behind `gen(dtype=...)`, shared by the compiler and the runtime.

SGLang maps int, float, bool and str to regexes; ours are bounded (see the number policy in
docs/constraints.md) so a small model cannot emit digits forever. `str` is unconstrained.
"""

from __future__ import annotations

DTYPE_REGEXES: dict[str, str | None] = {
    "int": r"-?(0|[1-9][0-9]{0,14})",
    "float": r"-?(0|[1-9][0-9]{0,14})(\.[0-9]{1,15})?",
    "bool": r"(True|False)",
    "str": None,
}


def dtype_regex(dtype: str) -> str | None:
    """The regex for a dtype name (None: no constraint); unknown names are an error."""
    if dtype not in DTYPE_REGEXES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPE_REGEXES)}")
    return DTYPE_REGEXES[dtype]
