"""The select rule, once: which scoring requests a `select` makes and how their logprobs pick a choice.

The eager interpreter (`compiler.interpreter`), the graph executor's model client and the test
oracle all run a select through these two functions, so a compiled select and an eager one cannot
pick differently:

- **Tokens.** A prompt is the tokenization of the state's *whole* text (`prompt_ids`; an empty one
  is an error). The tokens of candidate c after prompt text T are `lang_sampling.choice_token_ids`
  (the tokens of `T + c` after those of `T` when those are a prefix, else `c` tokenized alone).
- **Requests** (`score_requests`): one request scores every candidate after the prompt (the
  prompt's KV shared); `unconditional_likelihood_normalized` adds, per candidate of two or more
  tokens, one request scoring its tokens 1.. given its token 0 alone.
- **Decision** (`decide`): the method (`lang_sampling.CHOICES_METHODS`) picks the index from the
  logprobs; the meta info is the method's own, the prompt logprobs, the method's name and, for the
  unconditional method, the unconditional logprobs (the first token has none: None).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from compiler.lang_sampling import CHOICES_METHODS, choice_token_ids

__all__ = ["ScoreRequest", "decide", "prompt_ids", "score_requests"]


def prompt_ids(tokenizer: Any, text: str, what: str = "this node") -> list[int]:
    """A state's text as a prompt: the tokenization of the whole text. ValueError when it is empty."""
    ids = tokenizer.encode(text) if text else []
    if not ids:
        raise ValueError(f"{what} needs a non-empty prompt (add some text first)")
    return list(ids)


@dataclass(frozen=True)
class ScoreRequest:
    """Score each of `continuations` after `prompt` (token ids)."""

    prompt: list[int]
    continuations: list[list[int]]


def score_requests(tokenizer: Any, text: str, candidates: Sequence[str], method: str,
                   ) -> tuple[list[ScoreRequest], list[list[int]]]:
    """The scoring requests of a select over `candidates` after `text`, and each candidate's tokens.

    ValueError for an unknown method, an empty prompt, or a candidate without tokens.
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
    """The chosen index and the select's meta info, from the logprobs of `score_requests`' requests
    (`scored[i]` holds request i's per-continuation token logprobs)."""
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
