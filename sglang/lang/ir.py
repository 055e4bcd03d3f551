"""`sglang.lang.ir`: SGLang's regex constants and the frontend's expression classes, as sgc's.

The constants have SGLang's exact values (REGEX_INT and REGEX_FLOAT allow trailing spaces and
newlines; `gen(dtype=int)` in sgc does not). The classes are sgc's: `SglFunction` is
`sgc.Function`, `SglGen` the expression `gen(...)` returns, and so on, so `isinstance` checks work.
The nodes of SGLang's own interpreter (`SglFork`, `SglVariable`, ...) have no counterpart: a program
never builds them, and naming one is an AttributeError that says so.
"""

from __future__ import annotations

from typing import Any

from compiler.lang import Expr, ExprList, Function, GenExpr, RoleBegin, RoleEnd, SelectExpr, Text
from sglang._refused import MULTIMODAL, refused_class

__all__ = [
    "REGEX_BOOL", "REGEX_FLOAT", "REGEX_INT", "REGEX_STR", "SglConstantText", "SglExpr", "SglExprList",
    "SglFunction", "SglGen", "SglImage", "SglRoleBegin", "SglRoleEnd", "SglSelect", "SglVideo",
]

REGEX_INT = r"[-+]?[0-9]+[ \n]*"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+[ \n]*"
REGEX_BOOL = r"(True|False)"
REGEX_STR = r"\"[\w\d\s]*\""

SglFunction = Function
SglExpr = Expr
SglExprList = ExprList
SglGen = GenExpr
SglSelect = SelectExpr
SglConstantText = Text
SglRoleBegin = RoleBegin
SglRoleEnd = RoleEnd
SglImage = refused_class("SglImage", MULTIMODAL, __name__)
SglVideo = refused_class("SglVideo", MULTIMODAL, __name__)

_INTERNAL = frozenset({
    "SglSamplingParams", "SglArgument", "SglFork", "SglGetForkItem", "SglVariable", "SglVarScopeBegin",
    "SglVarScopeEnd", "SglConcateAndAppend", "SglCommitLazy", "SglSeparateReasoning",
})


def __getattr__(name: str) -> Any:
    if name in _INTERNAL:
        raise AttributeError(f"sglang.lang.ir.{name} belongs to SGLang's own interpreter, which sgc replaces: "
                             "programs use the frontend (sgl.gen, s.fork, s.var_scope, run(...) keywords)")
    raise AttributeError(f"module {__name__!r} (sgc's shim) has no attribute {name!r}")
