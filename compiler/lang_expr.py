"""The language's expressions and primitives: what `s += ...` takes.

`gen`, `select`, the role primitives and plain text build *expressions*: plain values that do nothing
until a state executes them, so the eager interpreter and the tracer share them. `a + b` of strings
and expressions is an `ExprList`, executed left to right. `compiler.lang` re-exports everything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from compiler.errors import CompileError
from compiler.lang_sampling import ChoicesMethod, token_length_normalized
from compiler.lang_sampling import choices_method as _resolve_method

__all__ = [
    "Expr", "ExprList", "GenExpr", "RoleBegin", "RoleEnd", "SelectExpr", "Text", "assistant",
    "assistant_begin", "assistant_end", "gen", "gen_int", "gen_string", "select", "system", "system_begin",
    "system_end", "user", "user_begin", "user_end",
]


# ---------------------------------------------------------------------------------------------------
# Expressions


class Expr:
    """Something a state can execute: `s += expr`. `a + b` of expressions (or strings) is a list."""

    def __add__(self, other: Any) -> ExprList:
        return ExprList.of(self, other)

    def __radd__(self, other: Any) -> ExprList:
        return ExprList.of(other, self)


@dataclass(frozen=True, eq=False)
class Text(Expr):
    """Constant text."""

    text: str


@dataclass(frozen=True, eq=False)
class GenExpr(Expr):
    """`gen(...)`: `params` uses the IR's attribute names (`max_tokens`, `stop`, `dtype`, ...), only the
    given ones; `extra` holds the logprob options the IR does not carry (`logprob_start_len`, ...)."""

    name: str | None
    params: dict[str, Any]
    extra: dict[str, Any]


@dataclass(frozen=True, eq=False)
class SelectExpr(Expr):
    """`select(...)` (or `gen(..., choices=...)`)."""

    name: str | None
    choices: tuple[Any, ...]
    temperature: float | None
    method: ChoicesMethod


@dataclass(frozen=True, eq=False)
class RoleBegin(Expr):
    role: str


@dataclass(frozen=True, eq=False)
class RoleEnd(Expr):
    role: str


@dataclass(frozen=True, eq=False)
class ExprList(Expr):
    """A sequence of items executed in order: strings, expressions, or symbolic values (tracing)."""

    items: tuple[Any, ...]

    @classmethod
    def of(cls, *parts: Any) -> ExprList:
        items: list[Any] = []
        for part in parts:
            if isinstance(part, ExprList):
                items.extend(part.items)
            else:
                items.append(part)
        return cls(tuple(items))


# ---------------------------------------------------------------------------------------------------
# Primitives


def _is_symbolic(value: Any) -> bool:
    return getattr(value, "__sgc_symbolic__", False)


_DTYPES = {int: "int", float: "float", str: "str", bool: "bool", "int": "int", "float": "float",
           "str": "str", "bool": "bool"}


def _schema_text(schema: Any) -> Any:
    if schema is None or isinstance(schema, str) or _is_symbolic(schema):
        return schema
    if isinstance(schema, dict):
        return json.dumps(schema)
    if hasattr(schema, "model_json_schema"):  # a pydantic model class
        return json.dumps(schema.model_json_schema())
    raise CompileError.here(f"json_schema must be a JSON string, a dict or a pydantic model, got {schema!r}")


def gen(
    name: str | None = None,
    max_tokens: int | None = None,
    min_tokens: int | None = None,
    n: int | None = None,
    stop: str | Sequence[str] | None = None,
    stop_token_ids: Sequence[int] | None = None,
    stop_regex: str | Sequence[str] | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    min_p: float | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    ignore_eos: bool | None = None,
    return_logprob: bool | None = None,
    logprob_start_len: int | None = None,
    top_logprobs_num: int | None = None,
    return_text_in_logprobs: bool | None = None,
    dtype: type | str | None = None,
    choices: Sequence[str] | None = None,
    choices_method: ChoicesMethod | str | None = None,
    regex: str | None = None,
    json_schema: Any = None,
    ebnf: str | None = None,
) -> GenExpr | SelectExpr:
    """Generate text into variable `name` (SGLang's `gen`). With `choices` it is a `select`."""
    if stop_regex is not None:
        raise CompileError.here("gen(stop_regex=...) is not supported by sgc: stop on strings (stop=[...]) "
                                "or constrain the whole output with regex=")
    if choices is not None:
        return select(name, choices, 0.0 if temperature is None else temperature, choices_method)
    if n not in (None, 1):
        raise CompileError.here(f"gen(n={n}) is not supported: use s.fork({n}) and one gen per branch")
    if dtype is not None and not _is_symbolic(dtype):
        if dtype not in _DTYPES:
            raise CompileError.here(f"gen dtype must be int, float, str or bool, got {dtype!r}")
        dtype = _DTYPES[dtype]
    if isinstance(stop, str):
        stop = (stop,)
    elif stop is not None and not _is_symbolic(stop):
        stop = tuple(stop)
    if stop_token_ids is not None and not _is_symbolic(stop_token_ids):
        stop_token_ids = tuple(stop_token_ids)
    given = {
        "max_tokens": max_tokens, "min_tokens": min_tokens, "stop": stop, "stop_token_ids": stop_token_ids,
        "temperature": temperature, "top_p": top_p, "top_k": top_k, "min_p": min_p,
        "frequency_penalty": frequency_penalty, "presence_penalty": presence_penalty, "ignore_eos": ignore_eos,
        "return_logprob": return_logprob, "dtype": dtype, "regex": regex, "json_schema": _schema_text(json_schema),
        "ebnf": ebnf,
    }
    params = {k: v for k, v in given.items() if v is not None}
    extra = {k: v for k, v in (("logprob_start_len", logprob_start_len), ("top_logprobs_num", top_logprobs_num),
                               ("return_text_in_logprobs", return_text_in_logprobs)) if v is not None}
    if not _is_symbolic(name) and not any(_is_symbolic(v) for v in params.values()):
        _validate_gen(name, params)
    return GenExpr(name, params, extra)


def _validate_gen(name: str | None, params: dict[str, Any]) -> None:
    from compiler.ir import Gen, IRError

    if name is not None and not isinstance(name, str):
        raise CompileError.here(f"gen name must be a string, got {name!r}")
    try:
        Gen(name=name, **params)
    except IRError as exc:
        raise CompileError.here(exc.message) from None


def gen_int(name: str | None = None, max_tokens: int | None = None, **kwargs: Any) -> GenExpr | SelectExpr:
    """A gen constrained to an integer (`dtype=int`)."""
    return gen(name, max_tokens, dtype="int", **kwargs)


def gen_string(name: str | None = None, max_tokens: int | None = None, **kwargs: Any) -> GenExpr | SelectExpr:
    """A gen constrained to a double-quoted string (`dtype=str`)."""
    return gen(name, max_tokens, dtype="str", **kwargs)


def select(
    name: str | None = None,
    choices: Sequence[str] | None = None,
    temperature: float | None = 0.0,
    choices_method: ChoicesMethod | str | None = token_length_normalized,
) -> SelectExpr:
    """Pick one of `choices` by likelihood into variable `name` (SGLang's `select`)."""
    if choices is None:
        raise CompileError.here("select needs choices")
    if not _is_symbolic(choices):
        if isinstance(choices, str) or not isinstance(choices, Sequence):
            raise CompileError.here(f"select choices must be a list of strings, got {choices!r}")
        choices = tuple(choices)
        if not choices:
            raise CompileError.here("select choices must not be empty")
        concrete = [c for c in choices if not _is_symbolic(c)]
        if any(not isinstance(c, str) for c in concrete):
            raise CompileError.here(f"select choices must be strings, got {list(choices)!r}")
        if any(c == "" for c in concrete):
            raise CompileError.here("select choices must not be empty strings")
        if len(set(concrete)) != len(concrete):
            raise CompileError.here(f"select choices must be distinct, got {list(choices)!r}")
    if name is not None and not _is_symbolic(name) and (not isinstance(name, str) or not name):
        raise CompileError.here(f"select name must be a non-empty string, got {name!r}")
    try:
        method = _resolve_method(choices_method)
    except ValueError as exc:
        raise CompileError.here(str(exc)) from None
    return SelectExpr(name, choices, temperature, method)


def _role(role: str, expr: Any = None) -> ExprList:
    if expr is None:
        return ExprList((RoleBegin(role), RoleEnd(role)))
    return ExprList.of(RoleBegin(role), expr, RoleEnd(role))


def system(expr: Any = None) -> ExprList:
    return _role("system", expr)


def user(expr: Any = None) -> ExprList:
    return _role("user", expr)


def assistant(expr: Any = None) -> ExprList:
    return _role("assistant", expr)


def system_begin() -> RoleBegin:
    return RoleBegin("system")


def system_end() -> RoleEnd:
    return RoleEnd("system")


def user_begin() -> RoleBegin:
    return RoleBegin("user")


def user_end() -> RoleEnd:
    return RoleEnd("user")


def assistant_begin() -> RoleBegin:
    return RoleBegin("assistant")


def assistant_end() -> RoleEnd:
    return RoleEnd("assistant")
