"""The regexes behind `gen(dtype=...)`: one table for the compiler, the eager interpreter and the
graph executor, so all three constrain the same way.

These are SGLang's regexes without its trailing `[ \\n]*` (sgc bounds whitespace) and with digit
runs bounded at 15 (the number policy in docs/constraints.md): a small model under a number
constraint otherwise emits digits until the token limit.
"""

from __future__ import annotations

DTYPE_REGEXES: dict[str, str] = {
    "int": r"[-+]?[0-9]{1,15}",
    "float": r"[-+]?[0-9]{0,15}\.?[0-9]{1,15}",
    "bool": r"(True|False)",
    "str": r'"[\w\d\s]*"',
}


def dtype_regex(dtype: str) -> str:
    """The regex for a dtype name; unknown names are an error."""
    if dtype not in DTYPE_REGEXES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPE_REGEXES)}")
    return DTYPE_REGEXES[dtype]
