"""How the graph executor turns LLM nodes into runtime requests: the glue to the shared rules.

The requests are the runtime client interface's plain data (`executor/runtime_client.py`):
`SamplingParams`, `LogprobOptions`, `GenerateRequest` and `ScoreRequest`. Nothing here knows which
runtime will run them (the in-process engine, a server, a remote replica).

The rules themselves live in `compiler.lang_sampling`, shared with the eager interpreter
(`compiler.interpreter`), so that a compiled program produces exactly the eager run's text:

**Tokenization rule.** A state's text is kept as a string; every LLM node tokenizes the *whole*
prompt text afresh (`prompt_ids`), as the eager interpreter does for each `gen`/`select` and as
SGLang's runtime does when the frontend sends text. A request therefore depends only on the state's
text, never on how it was assembled: constant folding, prefix hoisting and gen fusion change
nothing. (Generated text is appended as text too, so the next node sees the canonical tokenization
of prompt + output; the radix cache still reuses everything up to the first token that differs.)
An empty prompt is an error, as in the eager interpreter.

**Sampling parameters** (`gen_request`): `lang_sampling.sampling_params` on the node's attributes
(a node's own attribute, when not None, wins over the run's default; inside an `assistant` role the
chat format's end-of-turn string and token are added to the stops; `dtype` maps to
`lang_sampling.DTYPE_REGEXES`; `regex`/`json_schema` pass through). A node with a compiled `fsm`
found in the executor's FSM table gets that token FSM instead of a regex to compile.

**Select** (`select_requests`, `decide`): the tokens of choice c after prompt text T are
`lang_sampling.choice_token_ids` (the tokens of `T + c` after those of `T` when those are a prefix,
else `c` tokenized alone). All choices are scored in one request over the prompt's KV
(a client `ScoreRequest`). `unconditional_likelihood_normalized` also scores each choice on its own:
token i given the choice's tokens 0..i-1 (one request per choice of two or more tokens; the first
token has no unconditional logprob, None, which counts as 0). The pick is
`lang_sampling.CHOICES_METHODS[method]`: `token_length_normalized` takes the highest mean logprob;
`greedy_token_selection` compares position by position, keeping the choices with the maximum
logprob there (a shorter choice stands in with its mean), until one is left;
`unconditional_likelihood_normalized` takes the highest mean of (conditional - unconditional)
logprob. Ties go to the earliest choice. A hoisted `prefix` (see docs/ir.md) is scored as part of
every candidate, after the text without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from compiler.lang_sampling import (
    CHOICES_METHODS,
    RunDefaults,
    choice_token_ids,
    logprob_options,
    sampling_params,
)
from executor import runtime_client as client
from executor.runtime_client import LogprobOptions, SamplingParams

__all__ = ["GenRequest", "ScoreRequest", "decide", "gen_request", "make_run_defaults", "prompt_ids",
           "select_requests"]


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


def prompt_ids(tokenizer: Any, text: str, what: str = "this node") -> list[int]:
    """A state's text as a prompt: the tokenization of the whole text (see the module docstring)."""
    ids = tokenizer.encode(text) if text else []
    if not ids:
        raise ValueError(f"{what} needs a non-empty prompt (add some text first)")
    return ids


@dataclass(frozen=True)
class GenRequest:
    """A `gen` node's request, before its prompt is known (one per state of a batch_gen)."""

    params: SamplingParams
    options: LogprobOptions
    constraint: Any  # a precompiled TokenFSM, or None

    def for_prompt(self, input_ids: Sequence[int], *, stream: bool = False, prefix_group: str | None = None,
                   follow_up: bool = False) -> client.GenerateRequest:
        """The request to send for the state whose text tokenizes to `input_ids`."""
        return client.GenerateRequest(input_ids, self.params, self.options, self.constraint, stream=stream,
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


@dataclass(frozen=True)
class ScoreRequest:
    """One scoring request of a select: `continuations` after `prompt` (`for_client` sends it)."""

    prompt: list[int]
    continuations: list[list[int]]

    def for_client(self, *, follow_up: bool = False) -> client.ScoreRequest:
        return client.ScoreRequest(self.prompt, self.continuations, follow_up=follow_up)


def select_requests(tokenizer: Any, text: str, candidates: Sequence[str], method: str,
                    ) -> tuple[list[ScoreRequest], list[list[int]]]:
    """The scoring requests of a select over `candidates` after `text`, and each candidate's tokens.

    The first request scores every candidate after the prompt; for
    `unconditional_likelihood_normalized` one more per candidate of two or more tokens follows.
    """
    if method not in CHOICES_METHODS:
        raise ValueError(f"unknown select method {method!r}; expected one of {', '.join(CHOICES_METHODS)}")
    prompt = prompt_ids(tokenizer, text, "select")
    conts = [choice_token_ids(tokenizer, text, prompt, c) for c in candidates]
    for candidate, cont in zip(candidates, conts):
        if not cont:
            raise ValueError(f"select choice {candidate!r} has no tokens")
    requests = [ScoreRequest(prompt, conts)]
    if CHOICES_METHODS[method].requires_unconditional_logprobs:
        requests += [ScoreRequest(c[:1], [c[1:]]) for c in conts if len(c) > 1]
    return requests, conts


def decide(method: str, conts: Sequence[Sequence[int]], scored: Sequence[Sequence[Sequence[float]]],
           ) -> tuple[int, dict[str, Any]]:
    """The chosen index and the select's meta info, from the logprobs of `select_requests`' requests."""
    chooser = CHOICES_METHODS[method]
    logprobs = scored[0]
    unconditional = None
    if chooser.requires_unconditional_logprobs:
        rest = iter(scored[1:])
        unconditional = [[None, *next(rest)[0]] if len(c) > 1 else [None] for c in conts]
    decision = chooser(logprobs, unconditional)
    meta = {**decision.meta_info, "input_token_logprobs": [list(lp) for lp in logprobs], "method": method}
    if unconditional is not None:
        meta["unconditional_token_logprobs"] = unconditional
    return decision.index, meta
