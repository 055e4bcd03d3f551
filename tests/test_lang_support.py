"""Helpers for the language tests (no tests here): a deterministic fake engine, and the test oracle for
traced graphs: the IR interpreter (`compiler.ir_interpreter`, the one statement of each op's meaning)
on real states with a synchronous engine, so compiled == eager can be checked fast."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from compiler import ir
from compiler.constraints.dtypes import DTYPE_REGEXES
from compiler.interpreter import resolve_backend, resolve_function, run_on_prompt_state
from compiler.ir_interpreter import Chosen, Generated, Interpreter, Pending
from compiler.ir_interpreter import run_graph as ir_run_graph
from compiler.lang_sampling import RunDefaults, logprob_options, sampling_params
from compiler.lang_select import decide, prompt_ids, score_requests
from compiler.prompt_state import PromptState, to_text
from sgc.compiled import CompiledState


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
# The test oracle for traced graphs: the IR interpreter on real states and a synchronous engine


class EngineDomain:
    """Real `PromptState`s on a backend's engine (fake or real), answered at once: the domain of the
    IR interpreter (`compiler.ir_interpreter.Domain`) for the oracle. Requests are made as the eager
    interpreter makes them (`lang_sampling`, `lang_select`), so a traced graph run here must equal
    the eager run of its program."""

    def __init__(self, backend: Any, defaults: RunDefaults) -> None:
        resolved = resolve_backend(backend)
        self.backend = backend
        self.engine, self.tokenizer, self.chat_format = resolved.engine, resolved.tokenizer, resolved.chat_format
        self.defaults = defaults

    def new_state(self) -> PromptState:
        return PromptState()

    def text(self, value: Any) -> str:
        return to_text(value)

    def opaque_case(self, value: Any, num_regions: int) -> None:
        return None

    def generate(self, node: ir.Node, states: Any) -> Pending:
        attributes, fmt = node.op.attributes(), self.chat_format
        outs = []
        for state in states:
            in_assistant = state.open_role == "assistant"
            params = sampling_params(attributes, self.defaults,
                                     end_of_turn=fmt.end_of_turn if in_assistant else None,
                                     end_of_turn_token_id=fmt.end_of_turn_token_id if in_assistant else None)
            if params.get("max_new_tokens") == 0:
                outs.append(Generated("", {"prompt_tokens": None, "completion_tokens": 0,
                                           "finish_reason": {"type": "length", "length": 0}}))
                continue
            options = logprob_options(attributes, self.defaults, node.meta)
            out = self.engine.generate(input_ids=prompt_ids(self.tokenizer, state.text, "gen"),
                                       sampling_params=params, **options)
            outs.append(Generated(out["text"], dict(out["meta_info"])))
        return Pending.ready(outs)

    def choose(self, node: ir.Node, text: str, candidates: Any, method: str) -> Pending:
        requests, conts = score_requests(self.tokenizer, text, candidates, method)
        scored = [self.engine.score(r.prompt, r.continuations)["logprobs"] for r in requests]
        return Pending.ready(Chosen(*decide(method, conts, scored)))

    def prefill(self, node: ir.Node, state: PromptState, text: str) -> Pending:
        return Pending.ready(None)

    def host(self, node: ir.Node, values: Any) -> Any:
        op = node.op
        if op.returns == "state":
            return run_on_prompt_state(resolve_function(op.func), self.backend, self.defaults, op.args or ("s",),
                                       values)
        return _resolve(op.func)(*values)


def run_graph(graph: ir.Graph, args: dict[str, Any], backend: Any,
              defaults: RunDefaults | None = None) -> CompiledState:
    """Run a traced graph through the IR interpreter on `backend`; the result has the eager state's API."""
    domain = EngineDomain(backend, defaults or RunDefaults())
    return CompiledState(ir_run_graph(Interpreter(domain), graph, args))


def _resolve(func: str) -> Any:
    import importlib

    module_name, _, qualname = func.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


__all__ = ["EngineDomain", "FakeEngine", "resolve_function", "run_graph"]
