"""Helpers for the language tests (no tests here): a deterministic fake engine and a reference runner
that executes traced IR on the eager interpreter's states, so compiled == eager can be checked fast."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from compiler import ir
from compiler.constraints.dtypes import DTYPE_REGEXES
from compiler.interpreter import ForkGroup, ProgramState, new_state, resolve_function, run_host_function
from compiler.lang import GenExpr, SelectExpr
from compiler.lang_sampling import RunDefaults, choices_method


def _crc(*parts: Any) -> int:
    return zlib.crc32(repr(parts).encode("utf-8"))


class FakeEngine:
    """Stands in for `Engine`: a gen's text is a function of its prompt tokens (and regex), a select's
    scores a function of (prompt, continuation). Records every request."""

    def __init__(self, tokenizer: Any, score_fn: Callable[[list[int], list[list[int]]], list[list[float]]] | None = None,
                 reply_fn: Callable[[list[int], dict], str] | None = None) -> None:
        self.tokenizer = tokenizer
        self.requests: list[dict] = []
        self.score_calls: list[tuple[list[int], list[list[int]]]] = []
        self.score_fn = score_fn
        self.reply_fn = reply_fn
        self._lock = threading.Lock()

    def _reply(self, ids: list[int], params: dict) -> str:
        if self.reply_fn is not None:
            return self.reply_fn(ids, params)
        regex = params.get("regex")
        h = _crc(ids)
        if regex == DTYPE_REGEXES["int"]:
            return str(h % 90 + 10)
        if regex is not None and regex.startswith("(True|False)"):
            return "True" if h % 2 else "False"
        return f" w{h % 1000}"

    def generate(self, prompt: Any = None, sampling_params: dict | None = None, input_ids: Sequence[int] | None = None,
                 return_logprob: bool = False, logprob_start_len: int | None = None,
                 top_logprobs_num: int | None = None, stream: bool = False) -> Any:
        ids = list(input_ids) if input_ids is not None else self.tokenizer.encode(prompt)
        params = dict(sampling_params or {})
        with self._lock:
            self.requests.append({"input_ids": ids, "sampling_params": params, "return_logprob": return_logprob,
                                  "logprob_start_len": logprob_start_len, "top_logprobs_num": top_logprobs_num})
        text = self._reply(ids, params)
        meta = {"prompt_tokens": len(ids), "completion_tokens": 2, "finish_reason": {"type": "stop"}}
        if stream:
            half = len(text) // 2
            return iter([{"text": text[:half]}, {"text": text[half:]}, {"text": "", "meta_info": meta}])
        return {"text": text, "output_ids": [], "meta_info": meta}

    def score(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]]) -> dict:
        prompt, conts = list(prompt), [list(c) for c in continuations]
        with self._lock:
            self.score_calls.append((prompt, conts))
        if self.score_fn is not None:
            logprobs = self.score_fn(prompt, conts)
        else:
            logprobs = [[-(_crc(prompt, c[: i + 1]) % 1000) / 100 for i in range(len(c))] for c in conts]
        return {"logprobs": logprobs, "meta_info": {}}


# ---------------------------------------------------------------------------------------------------
# A reference runner for traced graphs, on the interpreter's states


def run_graph(graph: ir.Graph, args: dict[str, Any], backend: Any,
              defaults: RunDefaults | None = None) -> ProgramState:
    """Execute `graph` op by op with `ProgramState`s (states are continued in place: the IR is linear)."""
    defaults = defaults or RunDefaults()
    values: dict[int, Any] = {}
    scopes: dict[tuple[int, str], int] = {}

    def region_output(region: ir.Region, incoming: ProgramState | None) -> ProgramState:
        for node in region:
            op = node.op
            operand = [values[o.id] for o in node.operands]
            if isinstance(op, ir.Arg):
                values[node.id] = args[op.name] if op.name in args else ir.thaw_json(op.default)
            elif isinstance(op, ir.Const):
                values[node.id] = ir.thaw_json(op.value)
            elif isinstance(op, ir.StateNew):
                values[node.id] = new_state(backend, defaults)
            elif isinstance(op, ir.StateIn):
                values[node.id] = incoming if incoming is not None else new_state(backend, defaults)
            elif isinstance(op, ir.Append):
                value = operand[1]
                operand[0]._exec(value if isinstance(value, str) else str(value))
                values[node.id] = operand[0]
            elif isinstance(op, ir.RoleBegin):
                operand[0]._exec_role_begin(op.role)
                values[node.id] = operand[0]
            elif isinstance(op, ir.RoleEnd):
                operand[0]._exec_role_end(op.role)
                values[node.id] = operand[0]
            elif isinstance(op, ir.Gen):
                params = {k: ir.thaw_json(v) for k, v in op.attributes().items()
                          if v not in (None, ()) and k not in ("name", "fsm")}
                operand[0]._gen(GenExpr(op.name, params, dict(node.meta)))
                values[node.id] = operand[0]
            elif isinstance(op, ir.Select):
                operand[0]._select(SelectExpr(op.name, op.choices, op.temperature, choices_method(op.method)))
                values[node.id] = operand[0]
            elif isinstance(op, ir.GetVar):
                values[node.id] = operand[0][op.name]
            elif isinstance(op, ir.SetVar):
                operand[0]._bind(op.name, operand[1])
                values[node.id] = operand[0]
            elif isinstance(op, ir.VarScopeBegin):
                scopes[(id(operand[0]), op.name)] = len(operand[0]._text)
                values[node.id] = operand[0]
            elif isinstance(op, ir.VarScopeEnd):
                start = scopes.pop((id(operand[0]), op.name))
                operand[0]._bind(op.name, operand[0]._text[start:])
                values[node.id] = operand[0]
            elif isinstance(op, ir.Fork):
                values[node.id] = (operand[0], [operand[0]._fork_copy() for _ in range(op.n)])
            elif isinstance(op, ir.Branch):
                values[node.id] = operand[0][1][op.index]
            elif isinstance(op, ir.Join):
                ForkGroup(operand[0], list(operand[1:])).join(op.mode)
                values[node.id] = operand[0]
            elif isinstance(op, ir.Switch):
                value = operand[1]
                index = next((i for i, c in enumerate(op.cases) if type(c) is type(value) and c == value), None)
                if index is None:
                    assert op.default, f"switch value {value!r} matches no case"
                    index = len(op.cases)
                values[node.id] = region_output(node.regions[index], operand[0])
            elif isinstance(op, ir.Host):
                if op.returns == "state":
                    named = dict(zip(op.args[1:], operand[1:]))
                    values[node.id] = run_host_function(op.func, operand[0], named)
                else:
                    values[node.id] = _resolve(op.func)(*operand)
            elif isinstance(op, ir.Output):
                return operand[0]
            else:
                raise AssertionError(f"the reference runner does not know {op.opname}")
        raise AssertionError("region without output")

    return region_output(graph.body, None)


def _resolve(func: str) -> Any:
    import importlib

    module_name, _, qualname = func.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


__all__ = ["FakeEngine", "resolve_function", "run_graph"]
