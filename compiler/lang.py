"""The language: SGLang's frontend names and semantics, the source language of the compiler.

A program is a Python function decorated with `@function` whose first parameter `s` is the prompt
state. The primitives build *expressions* (`gen`, `select`, roles, text) that the state executes
when they are added to it (`s += ...`). The same function runs two ways:

- eagerly, by `compiler.interpreter` (`Function.run`, `run_batch`): a real state on a backend;
- symbolically, by `compiler.parser.tracer` (`Function.compile`): a symbolic state records IR.

This module is the public surface; the code is in `lang_expr` (expressions and primitives),
`lang_state` (what both executors' states share), `lang_program` (`Program`, a program's
definition), `lang_function` (`Function`: running and compiling it), `lang_backend` (the default
backend) and
`lang_sampling` (the run-time rules of gen and select: sampling defaults, dtype regexes, choice
methods). Chat roles as text are in `compiler.chat_template`.
"""

from __future__ import annotations

from compiler.lang_backend import get_default_backend, set_default_backend
from compiler.lang_expr import (
    Expr,
    ExprList,
    GenExpr,
    RoleBegin,
    RoleEnd,
    SelectExpr,
    Text,
    assistant,
    assistant_begin,
    assistant_end,
    gen,
    gen_int,
    gen_string,
    select,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
)
from compiler.lang_function import Function, function
from compiler.lang_program import Program, lookup_function
from compiler.lang_sampling import (
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from compiler.lang_state import StateBase

__all__ = [
    "Expr", "ExprList", "Function", "GenExpr", "Program", "RoleBegin", "RoleEnd", "SelectExpr", "StateBase", "Text",
    "assistant", "assistant_begin", "assistant_end", "function", "gen", "gen_int", "gen_string",
    "get_default_backend", "greedy_token_selection", "lookup_function", "select", "set_default_backend",
    "system", "system_begin", "system_end", "token_length_normalized", "unconditional_likelihood_normalized",
    "user", "user_begin", "user_end",
]
