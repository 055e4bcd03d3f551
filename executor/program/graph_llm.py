"""How the graph executor turns LLM nodes into runtime requests: the glue to the shared rules.

The requests are the runtime client interface's plain data (`executor/runtime/runtime_client.py`):
`SamplingParams`, `LogprobOptions` and `GenerateRequest`. Nothing here knows which
runtime will run them (the in-process engine, a server, a remote replica).

The rules themselves live in `compiler.lang_sampling` and `compiler.lang_select`, shared with the
eager interpreter (`compiler.interpreter`), so that a compiled program produces exactly the eager
run's text:

**Tokenization rule** (`compiler.lang_select.prompt_ids`). A state's text is kept as a string;
every LLM node tokenizes the *whole* prompt text afresh, as the eager interpreter does for each
`gen`/`select` and as SGLang's runtime does when the frontend sends text. A request therefore
depends only on the state's text, never on how it was assembled: constant folding, prefix hoisting
and gen fusion change nothing.

**Sampling parameters** (`gen_request`): `lang_sampling.sampling_params` on the node's attributes
(a node's own attribute, when not None, wins over the run's default; inside an `assistant` role the
chat format's end-of-turn string and token are added to the stops; `dtype` maps to
`lang_sampling.DTYPE_REGEXES`; `regex`/`json_schema` pass through). A node with a compiled `fsm`
found in the executor's FSM table gets that token FSM instead of a regex to compile.

**Select** is one module, `compiler.lang_select` (the scoring requests, the choice's token boundary,
the pick), shared by the eager interpreter, the graph executor and the semantics checker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from compiler.lang_sampling import RunDefaults, logprob_options, sampling_params
from executor.runtime.runtime_client import GenerateRequest, LogprobOptions, SamplingParams

__all__ = ["GenRequest", "gen_request", "make_run_defaults"]


def make_run_defaults(defaults: RunDefaults | None = None, **kwargs: Any) -> RunDefaults:
    """The run's sampling defaults: `defaults` (or SGLang's) with `run(...)` keywords applied."""
    if defaults is not None and not isinstance(defaults, RunDefaults):
        raise TypeError(f"defaults must be a RunDefaults, got {type(defaults).__name__}")
    try:
        given = RunDefaults.make(**kwargs)
    except TypeError as exc:
        raise ValueError(f"unknown run option: {exc}") from None
    if defaults is None:
        return given
    return replace(defaults, **{k: getattr(given, k) for k, v in kwargs.items() if v is not None})


@dataclass(frozen=True)
class GenRequest:
    """A `gen` node's request, before its prompt is known (one per state of a batch_gen)."""

    params: SamplingParams
    options: LogprobOptions
    constraint: Any  # a precompiled TokenFSM, or None

    def for_prompt(self, input_ids: Sequence[int], *, stream: bool = False, prefix_group: str | None = None,
                   follow_up: bool = False) -> GenerateRequest:
        """The request to send for the state whose text tokenizes to `input_ids`."""
        return GenerateRequest(input_ids, self.params, self.options, self.constraint, stream=stream,
                               prefix_group=prefix_group, follow_up=follow_up)


def gen_request(attributes: Mapping[str, Any], defaults: RunDefaults, chat_format: Any, open_role: str | None,
                fsms: Mapping[str, Any] | None) -> GenRequest:
    """The engine request of a `gen` (IR attribute names) on a state whose open role is `open_role`.

    Raises ValueError naming the parameter for what the runtime cannot do (e.g. `ebnf`).
    """
    in_assistant = open_role == "assistant" and chat_format is not None
    params = sampling_params(
        attributes, defaults,
        end_of_turn=getattr(chat_format, "end_of_turn", None) if in_assistant else None,
        end_of_turn_token_id=getattr(chat_format, "end_of_turn_token_id", None) if in_assistant else None,
    )
    constraint = None
    fsm_id = attributes.get("fsm")
    if fsm_id is not None and fsms is not None and fsm_id in fsms:
        constraint = fsms[fsm_id]
        for key in ("regex", "json_schema"):
            params.pop(key, None)
    if params.get("max_new_tokens") == 0:  # no request is made; keep the rest valid for the record
        params["max_new_tokens"] = 1
        return GenRequest(SamplingParams.from_dict(params), LogprobOptions(), constraint)
    options = logprob_options(attributes, defaults)
    start = options["logprob_start_len"]
    top = options["top_logprobs_num"]
    return GenRequest(
        SamplingParams.from_dict(params),
        LogprobOptions(return_logprob=options["return_logprob"], logprob_start_len=-1 if start is None else start,
                       top_logprobs_num=top or 0),
        constraint,
    )
