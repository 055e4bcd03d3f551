"""Compile every constrained gen's regex / JSON schema / dtype into a token FSM, ahead of time.

This is the one pass that needs the model's tokenizer: the FSM is over its vocabulary. Each distinct
constraint is compiled once; the gen node gets `fsm="<id>"`, the id of the compiled table that
codegen stores in the artifact (so loading a program never compiles constraints again).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from compiler.constraints import ConstraintError, TokenFSM, as_vocabulary, compile_json_schema, compile_regex
from compiler.constraints.dtypes import dtype_regex
from compiler.errors_common import located
from compiler.ir import BatchGen, Gen, Graph


def constraint_key(op: Gen | BatchGen) -> tuple[str, str] | None:
    """(kind, spec) of a gen's constraint, or None if it has none that compiles to an FSM."""
    if op.regex is not None:
        return ("regex", op.regex)
    if op.json_schema is not None:
        return ("json_schema", op.json_schema)
    if op.dtype is not None:
        return ("regex", dtype_regex(op.dtype))
    return None


def fsm_id(key: tuple[str, str]) -> str:
    return hashlib.sha256(json.dumps(key).encode("utf-8")).hexdigest()[:16]


class CompileConstraints:
    name = "compile-constraints"

    def __init__(self, tokenizer: Any):
        self.vocab = as_vocabulary(tokenizer)
        self.fsms: dict[str, TokenFSM] = {}

    def compile(self, key: tuple[str, str]) -> str:
        ident = fsm_id(key)
        if ident not in self.fsms:
            kind, spec = key
            self.fsms[ident] = (compile_regex(spec, self.vocab) if kind == "regex"
                                else compile_json_schema(json.loads(spec), self.vocab))
        return ident

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in list(graph.nodes()):
            op = node.op
            if not isinstance(op, (Gen, BatchGen)):
                continue
            key = constraint_key(op)
            if key is None:
                continue
            try:
                ident = self.compile(key)
            except ConstraintError as exc:
                raise located(exc, node.loc) from None
            if op.fsm != ident:
                graph.set_op(node, dataclasses.replace(op, fsm=ident))
                changed = True
        return changed
