"""The graph executor's value domain for the IR interpreter: real states, engine requests, host steps.

`compiler.ir_interpreter.Interpreter` says what every op means; this module is what it needs to run
on the engine (`compiler.ir_interpreter.Domain`). States are `PromptState`s. An LLM op becomes
`ModelRequest`s in a `Pending` that the run loop (`executor/program/graph_run.py`) submits together with
the requests of every other instance, and finishes with the engine's results. A host step that runs
a whole sgc function eagerly becomes a `HostJob` the loop runs on a worker thread; value host steps
run at once.

The request rules are shared, so a compiled run asks the engine exactly what an eager run asks:
sampling parameters, end-of-turn stops and compiled FSMs by `executor.program.graph_llm.gen_request`
(`compiler.lang_sampling` underneath), prompts and select scoring by `compiler.lang_select`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from compiler.errors import ProgramError
from compiler.interpreter import run_on_prompt_state
from compiler.ir import Node
from compiler.ir_interpreter import Chosen, Generated, Pending
from compiler.lang_sampling import RunDefaults
from compiler.lang_select import decide, prompt_ids, score_requests
from compiler.prompt_state import PromptState, to_text
from executor.program.graph_host import HostPolicy
from executor.program.graph_llm import gen_request
from executor.runtime.runtime_client import LogprobOptions, SamplingParams

__all__ = ["ExecutorDomain", "HostJob", "ModelRequest"]

# Prefix-group keys, unique across every run sharing an engine.
_prefix_groups = itertools.count()


@dataclass(frozen=True)
class ModelRequest:
    """One engine request of an LLM node: a generation (`params`), a score (`continuations`), or a
    prefill (a one-token generation whose prompt the loop may pin in the radix cache)."""

    prompt: list[int]
    params: SamplingParams | None = None  # None: a score request
    options: LogprobOptions = LogprobOptions()
    constraint: Any = None  # a precompiled TokenFSM
    continuations: list[list[int]] | None = None
    stream_var: str | None = None  # the variable a streamed generation fills
    streamable: bool = False  # a gen's text may stream (when its node is on the main line)
    prefix_group: str | None = None  # a batch_gen's branches: they share the fork's prefix
    is_prefill: bool = False
    prompt_text: str | None = None  # a single gen's prompt as text (chains need it)
    adopted: Any = None  # a `graph_chain.Adoptable`: the runtime already runs this request


@dataclass(frozen=True)
class HostJob:
    """A host step that runs a whole function eagerly, off the loop's thread. `run` returns the
    function's result or raises `ProgramError` naming the step."""

    func: str
    line: int | None
    job: Callable[[], Any]

    def run(self) -> Any:
        try:
            return self.job()
        except BaseException as exc:  # reported as the node's failure
            raise ProgramError(_host_raised(self.func, self.line, exc)) from exc


class ExecutorDomain:
    """Real values on an engine, for one run (its sampling defaults, FSMs and host policy)."""

    def __init__(self, engine: Any, chat_format: Callable[[], Any], defaults: RunDefaults,
                 fsms: Mapping[str, Any] | None, host_policy: HostPolicy) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self._chat_format = chat_format
        self.defaults = defaults
        self.fsms = fsms
        self.host_policy = host_policy
        # Set by the run loop around the node it evaluates: a chained request that may be this gen's.
        self.adopting: Any = None

    @property
    def chat_format(self) -> Any:
        """Derived from the engine's tokenizer on first use (by the executor), as the eager run does."""
        return self._chat_format()

    def new_state(self) -> PromptState:
        return PromptState()

    def text(self, value: Any) -> str:
        return to_text(value)

    def opaque_case(self, value: Any, num_regions: int) -> int | None:
        return None

    # -- the model ----------------------------------------------------------------------------------
    def generate(self, node: Node, states: Sequence[Any]) -> Pending:
        op = node.op
        attributes = op.attributes()
        try:
            requests = [gen_request(attributes, self.defaults, self.chat_format if s.open_role else None,
                                    s.open_role, self.fsms) for s in states]
        except ValueError as exc:
            raise ProgramError(str(exc)) from exc
        max_tokens = attributes.get("max_tokens")
        if max_tokens == 0 or (max_tokens is None and self.defaults.max_new_tokens == 0):
            # Nothing to generate: no request, the meta info of an empty generation.
            meta = {"prompt_tokens": None, "completion_tokens": 0, "finish_reason": {"type": "length", "length": 0}}
            return Pending.ready([Generated("", dict(meta)) for _ in states])
        # A fused fork's branches decode over the fork's prefix together: tell the engine.
        group = f"batch_gen-{next(_prefix_groups)}" if len(states) > 1 else None
        specs = []
        adopting = self.adopting
        for state, request in zip(states, requests):
            single = len(states) == 1
            if single and adopting is not None and state.text == adopting.expected_text:
                # The runtime runs this gen already, on exactly this text (graph_chain): no new request.
                adopting.used = True
                specs.append(ModelRequest([], request.params, request.options, request.constraint,
                                          stream_var=attributes.get("name"), streamable=True,
                                          prompt_text=state.text, adopted=adopting))
                continue
            try:
                ids = prompt_ids(self.tokenizer, state.text, "gen")
            except ValueError as exc:
                raise ProgramError(str(exc)) from exc
            specs.append(ModelRequest(ids, request.params, request.options, request.constraint,
                                      stream_var=attributes.get("name"), streamable=single,
                                      prefix_group=group, prompt_text=state.text if single else None))
        return_text = self.defaults.return_text_in_logprobs
        tokenizer = self.tokenizer

        def finish(results: list[dict]) -> list[Generated]:
            outs = []
            for result in results:
                meta = dict(result["meta_info"])
                if return_text:
                    _add_logprob_text(meta, tokenizer)
                outs.append(Generated(result["text"], meta))
            return outs

        return Pending(specs, finish)

    def choose(self, node: Node, text: Any, candidates: Sequence[str], method: str) -> Pending:
        try:
            requests, conts = score_requests(self.tokenizer, text, candidates, method)
        except ValueError as exc:
            raise ProgramError(str(exc)) from exc

        def finish(results: list[dict]) -> Chosen:
            index, meta = decide(method, conts, [r["logprobs"] for r in results])
            engine_meta = results[0]["meta_info"]
            return Chosen(index, {"prompt_tokens": engine_meta.get("prompt_tokens"),
                                  "cached_tokens": engine_meta.get("cached_tokens"), **meta})

        return Pending([ModelRequest(r.prompt, continuations=r.continuations) for r in requests], finish)

    def prefill(self, node: Node, state: Any, text: Any) -> Pending:
        if not text:
            return Pending.ready(None)
        spec = ModelRequest(prompt_ids(self.tokenizer, text), SamplingParams(max_new_tokens=1, temperature=0.0),
                            is_prefill=True)
        return Pending([spec], lambda _results: None)

    # -- host steps ---------------------------------------------------------------------------------
    def host(self, node: Node, values: Sequence[Any]) -> Any:
        """Run a host step (see `executor/program/graph_host.py` for how `func` is found)."""
        op = node.op
        func = op.func  # type: ignore[attr-defined]
        fn = self.host_policy.resolve(func)
        if fn is None and op.returns == "state":  # type: ignore[attr-defined]
            function = self.host_policy.function(func)
            if function is not None:
                names = op.args or ("s",)  # type: ignore[attr-defined]
                if len(names) != len(values):
                    raise ProgramError(f"host step of function {func} needs args naming its operands")
                engine, defaults = self.engine, self.defaults
                job = HostJob(func, op.line,  # type: ignore[attr-defined]
                              lambda: run_on_prompt_state(function, engine, defaults, names, values))
                return Pending([job], lambda results: _check_host_value(node, results[0]))
        if fn is None:
            raise ProgramError(f"no allowed host function is registered for {func!r} (pass it in host_functions, "
                               f"or opt into its program's module; this step exists because: "
                               f"{op.reason or 'no reason given'})")  # type: ignore[attr-defined]
        try:
            value = fn(*values)
        except Exception as exc:
            raise ProgramError(_host_raised(func, op.line, exc)) from exc  # type: ignore[attr-defined]
        return _check_host_value(node, value)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _host_raised(func: str, line: int | None, exc: BaseException) -> str:
    where = f" (line {line})" if line else ""
    return f"host function {func}{where} raised {_describe(exc)}"


def _check_host_value(node: Node, value: Any) -> Any:
    op = node.op
    if op.returns == "state" and not isinstance(value, PromptState):  # type: ignore[attr-defined]
        raise ProgramError(f"host function {op.func} must return a PromptState, "  # type: ignore[attr-defined]
                           f"got {type(value).__name__}")
    if op.returns == "text" and not isinstance(value, str):  # type: ignore[attr-defined]
        raise ProgramError(f"host function {op.func} must return a str, "  # type: ignore[attr-defined]
                           f"got {type(value).__name__}")
    return value


def _add_logprob_text(meta: dict, tokenizer: Any) -> None:
    """`return_text_in_logprobs`: each (logprob, token id, None) entry gets the token's text."""
    for key in ("input_token_logprobs", "output_token_logprobs"):
        if meta.get(key) is not None:
            meta[key] = [(lp, tid, tokenizer.decode([tid], skip_special_tokens=False)) for lp, tid, *_ in meta[key]]
