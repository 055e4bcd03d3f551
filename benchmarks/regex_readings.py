"""Validate a corpus instance under both readings of a JSON Schema `pattern`.

JSON Schema says patterns are ECMA-262 regexes, where `\\w`, `\\d` (and, nearly, `\\s`) are ASCII
classes, `.` excludes every line terminator (\\n, \\r, U+2028, U+2029) and `$` is the end of the
text; Python's `re`, which `jsonschema` uses, reads the classes as Unicode ones, lets `.` take \\r
and lets `$` match before a final newline. A string such as "洏" is valid for `^\\w+$` under
Python's reading only. sgc enforces what is valid under both (see
`compiler/constraints/regex_parser.py`), so a corpus instance counts as valid only when it is valid
under Python's reading and under the ECMA-like one here (`re.ASCII` for `\\w`/`\\d`, ECMA's spaces for
`\\s`/`\\S` (except `\\S` inside a class, left at re.ASCII's), `.` without line terminators, `$` as
`\\Z`).
"""

from __future__ import annotations

from typing import Any

import jsonschema

# Keyword positions whose values are schemas (maps of them, or a schema / list of schemas).
SCHEMA_MAPS = {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
SCHEMA_VALUES = {
    "items",
    "additionalItems",
    "unevaluatedItems",
    "contains",
    "additionalProperties",
    "unevaluatedProperties",
    "propertyNames",
    "not",
    "if",
    "then",
    "else",
    "contentSchema",
    "prefixItems",
    "allOf",
    "anyOf",
    "oneOf",
    "extends",
}


_DOT = "[^\\n\\r\\u2028\\u2029]"
_ECMA_SPACES = "\\t\\n\\v\\f\\r \\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"


def ecma_like(pattern: str) -> str:
    """`pattern` for Python's `re` read as ECMA-262 would: ASCII classes, `.` without line
    terminators, `$` only at the very end (outside character classes; escapes kept)."""
    out, i, in_class = ["(?a)"], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            escape = pattern[i : i + 2]
            if escape == "\\s":  # ECMA's spaces (re.ASCII's are the six ASCII ones)
                escape = _ECMA_SPACES if in_class else f"[{_ECMA_SPACES}]"
            elif escape == "\\S" and not in_class:  # inside a class it stays re.ASCII's (looser)
                escape = f"[^{_ECMA_SPACES}]"
            out.append(escape)
            i += 2
            continue
        if in_class:
            in_class = c != "]" or pattern[i - 1] == "[" or pattern[i - 2 : i] == "[^"
        elif c == "[":
            in_class = True
        elif c == ".":
            c = _DOT
        elif c == "$":
            c = "\\Z"
        out.append(c)
        i += 1
    return "".join(out)


def ascii_reading(schema: Any) -> Any:
    """`schema` with every `pattern` and `patternProperties` regex read as ECMA-262 would (`ecma_like`)."""
    if isinstance(schema, list):
        return [ascii_reading(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k == "pattern" and isinstance(v, str):
            v = ecma_like(v)
        elif k == "patternProperties" and isinstance(v, dict):
            v = {ecma_like(p): ascii_reading(sub) for p, sub in v.items()}
        elif k in SCHEMA_MAPS and isinstance(v, dict):
            v = {name: ascii_reading(sub) for name, sub in v.items()}
        elif k in SCHEMA_VALUES:
            v = ascii_reading(v)
        elif k == "dependencies" and isinstance(v, dict):
            v = {name: ascii_reading(sub) if isinstance(sub, dict) else sub for name, sub in v.items()}
        out[k] = v
    return out


def _validator(schema: Any) -> Any:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


class BothReadings:
    """`is_valid`: valid under Python's Unicode reading and under the ASCII reading of patterns."""

    def __init__(self, schema: Any) -> None:
        self.unicode = _validator(schema)
        self.ascii = _validator(ascii_reading(schema))

    def is_valid(self, instance: Any) -> bool:
        return self.unicode.is_valid(instance) and self.ascii.is_valid(instance)
