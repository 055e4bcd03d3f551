"""The run-time rules of `gen` and `select` that every executor shares (pure functions, no runtime).

The eager interpreter and the graph executor must produce the same text from the same program, so
the rules that turn a `gen`/`select` into engine requests live here, once:

- `RunDefaults`: the sampling defaults of `Function.run`/`run_batch` (SGLang's: `max_new_tokens=128`,
  `temperature=1.0`, ...). A gen's own parameter, when given (not None), overrides the run's.
- `sampling_params(gen_attrs, defaults, ...)`: the engine's `sampling_params` dict for one gen;
  `gen_attrs` uses the IR's attribute names (`max_tokens`, `min_tokens`, `stop`, `dtype`, ...), so a
  graph executor passes `node.op.attributes()`. Inside an assistant role the chat format's end of
  turn is added to the stop strings (and its token to `stop_token_ids`).
- `DTYPE_REGEXES`: `dtype=int/float/bool/str` as regexes, as SGLang maps them.
- `choice_token_ids`: the token boundary between a prompt and a `select` choice (see its docstring).
- `ChoicesMethod`s: `token_length_normalized` (default), `greedy_token_selection`,
  `unconditional_likelihood_normalized`, each a pure function of the choices' token logprobs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from compiler.constraints.dtypes import DTYPE_REGEXES

__all__ = [
    "CHOICES_METHODS", "DTYPE_REGEXES", "ChoicesDecision", "ChoicesMethod", "GreedyTokenSelection",
    "RunDefaults", "TokenLengthNormalized", "UnconditionalLikelihoodNormalized", "choice_token_ids",
    "choices_method", "greedy_token_selection", "logprob_options", "sampling_params",
    "token_length_normalized", "unconditional_likelihood_normalized",
]

# `dtype=` regexes: one table shared with the compiler (see compiler/constraints/dtypes.py).


@dataclass(frozen=True)
class RunDefaults:
    """The sampling defaults of one `run`: what a gen uses for each parameter it does not give."""

    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    ignore_eos: bool = False
    return_logprob: bool = False
    logprob_start_len: int | None = None
    top_logprobs_num: int | None = None
    return_text_in_logprobs: bool = False

    @classmethod
    def make(cls, **kwargs: Any) -> RunDefaults:
        """From `run(...)` keyword arguments; None means "SGLang's default"."""
        given = {k: v for k, v in kwargs.items() if v is not None}
        if "stop" in given:
            given["stop"] = _as_strings(given["stop"])
        if "stop_token_ids" in given:
            given["stop_token_ids"] = tuple(int(t) for t in given["stop_token_ids"])
        return cls(**given)


def _as_strings(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    return tuple(stop)


# Gen attribute (IR name) -> (engine parameter, run default field or None).
_SAMPLING_FIELDS = {
    "max_tokens": ("max_new_tokens", "max_new_tokens"),
    "min_tokens": ("min_new_tokens", None),
    "temperature": ("temperature", "temperature"),
    "top_p": ("top_p", "top_p"),
    "top_k": ("top_k", "top_k"),
    "min_p": ("min_p", "min_p"),
    "frequency_penalty": ("frequency_penalty", "frequency_penalty"),
    "presence_penalty": ("presence_penalty", "presence_penalty"),
    "ignore_eos": ("ignore_eos", "ignore_eos"),
}


def sampling_params(gen_attrs: Mapping[str, Any], defaults: RunDefaults, *, end_of_turn: str | None = None,
                    end_of_turn_token_id: int | None = None) -> dict[str, Any]:
    """The engine sampling parameters of one gen (`gen_attrs`: IR attribute names).

    `end_of_turn` (and its token id) are given when the gen runs inside an assistant role.
    `choices` is not handled here (a gen with choices is a select); `ebnf` is passed through.
    """
    params: dict[str, Any] = {}
    for attr, (engine_name, default_name) in _SAMPLING_FIELDS.items():
        value = gen_attrs.get(attr)
        if value is None and default_name is not None:
            value = getattr(defaults, default_name)
        if value is not None:
            params[engine_name] = value
    stop = list(_as_strings(gen_attrs.get("stop")) or defaults.stop)
    stop_ids = list(gen_attrs.get("stop_token_ids") or defaults.stop_token_ids)
    if end_of_turn and end_of_turn not in stop:
        stop.append(end_of_turn)
    if end_of_turn_token_id is not None and end_of_turn_token_id not in stop_ids:
        stop_ids.append(end_of_turn_token_id)
    if stop:
        params["stop"] = stop
    if stop_ids:
        params["stop_token_ids"] = stop_ids
    dtype = gen_attrs.get("dtype")
    if dtype is not None:
        params["regex"] = DTYPE_REGEXES[dtype]
    for key in ("regex", "json_schema", "ebnf"):
        if gen_attrs.get(key) is not None:
            params[key] = gen_attrs[key]
    return params


def logprob_options(gen_attrs: Mapping[str, Any], defaults: RunDefaults,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`return_logprob`, `logprob_start_len`, `top_logprobs_num` for the engine's generate call."""
    extra = extra or {}
    return_logprob = gen_attrs.get("return_logprob")
    if return_logprob is None:
        return_logprob = defaults.return_logprob
    start = extra.get("logprob_start_len", defaults.logprob_start_len)
    top = extra.get("top_logprobs_num", defaults.top_logprobs_num)
    return {"return_logprob": bool(return_logprob), "logprob_start_len": start, "top_logprobs_num": top}


# ---------------------------------------------------------------------------------------------------
# select: the token boundary and the choice methods


def choice_token_ids(tokenizer: Any, prompt_text: str, prompt_ids: Sequence[int], choice: str) -> list[int]:
    """The tokens a `select` scores for `choice` after a prompt tokenized as `prompt_ids`.

    The rule: tokenize prompt and choice together; when the prompt's own tokens are a prefix of that,
    the choice's tokens are the rest (so `"Answer:" + " yes"` scores the model's own ` yes` token).
    When the joint tokenization merges across the boundary (the prompt's last token changes), the
    prompt keeps its tokens and the choice is tokenized on its own (no special tokens).
    """
    joint = tokenizer.encode(prompt_text + choice)
    n = len(prompt_ids)
    if len(joint) > n and list(joint[:n]) == list(prompt_ids):
        return list(joint[n:])
    return list(tokenizer.encode(choice, add_special_tokens=False))


@dataclass(frozen=True)
class ChoicesDecision:
    """The chosen index and what the method computed (stored as the select's meta info)."""

    index: int
    meta_info: dict[str, Any]


class ChoicesMethod:
    """How a select picks a choice from its tokens' logprobs (conditional on the prompt)."""

    name: str = ""
    requires_unconditional_logprobs: bool = False

    def __call__(self, logprobs: Sequence[Sequence[float]],
                 unconditional_logprobs: Sequence[Sequence[float | None]] | None = None) -> ChoicesDecision:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChoicesMethod) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else -math.inf


def _argmax(scores: Sequence[float]) -> int:
    best = 0
    for i, score in enumerate(scores):
        if score > scores[best]:
            best = i
    return best


class TokenLengthNormalized(ChoicesMethod):
    """The choice with the highest mean token logprob (SGLang's default)."""

    name = "token_length_normalized"

    def __call__(self, logprobs, unconditional_logprobs=None):
        scores = [_mean(lp) for lp in logprobs]
        return ChoicesDecision(_argmax(scores), {"normalized_prompt_logprobs": scores})


class GreedyTokenSelection(ChoicesMethod):
    """Greedy over token positions: keep the choices with the best logprob at position 0, then 1, ...

    A choice shorter than the position being compared stands in with its own mean logprob there
    (so a choice that is a prefix of a longer one competes on equal footing).
    """

    name = "greedy_token_selection"

    def __call__(self, logprobs, unconditional_logprobs=None):
        width = max(len(lp) for lp in logprobs)
        rows = [list(lp) + [_mean(lp)] * (width - len(lp)) for lp in logprobs]
        remaining = list(range(len(rows)))
        for position in range(width):
            best = max(rows[i][position] for i in remaining)
            remaining = [i for i in remaining if rows[i][position] == best]
            if len(remaining) == 1:
                break
        return ChoicesDecision(remaining[0], {"normalized_prompt_logprobs": [_mean(lp) for lp in logprobs]})


class UnconditionalLikelihoodNormalized(ChoicesMethod):
    """The highest mean of (logprob given the prompt - logprob without it) over the choice's tokens.

    The unconditional logprob of token i is that of the choice's own tokens 0..i-1 as the only context;
    the first token has none (None), which counts as 0.
    """

    name = "unconditional_likelihood_normalized"
    requires_unconditional_logprobs = True

    def __call__(self, logprobs, unconditional_logprobs=None):
        if unconditional_logprobs is None:
            raise ValueError("unconditional_likelihood_normalized needs the unconditional logprobs")
        scores = []
        for cond, uncond in zip(logprobs, unconditional_logprobs):
            diffs = [c - (u or 0.0) for c, u in zip(cond, uncond)]
            scores.append(_mean(diffs))
        return ChoicesDecision(_argmax(scores), {
            "normalized_prompt_logprobs": [_mean(lp) for lp in logprobs],
            "normalized_unconditional_prompt_logprobs": scores,
        })


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()
CHOICES_METHODS: dict[str, ChoicesMethod] = {
    m.name: m for m in (token_length_normalized, greedy_token_selection, unconditional_likelihood_normalized)
}


def choices_method(method: ChoicesMethod | str | None) -> ChoicesMethod:
    """A method object from itself, its name, or None (the default)."""
    if method is None:
        return token_length_normalized
    if isinstance(method, ChoicesMethod) and method.name in CHOICES_METHODS:
        return CHOICES_METHODS[method.name]
    if isinstance(method, str) and method in CHOICES_METHODS:
        return CHOICES_METHODS[method]
    if isinstance(method, ChoicesMethod) or callable(method):
        raise ValueError(f"custom choices_method {method!r} is not supported (a compiled select names its "
                         f"method): use one of {', '.join(CHOICES_METHODS)}")
    raise ValueError(f"unknown choices_method {method!r}; expected one of {', '.join(CHOICES_METHODS)}")
