"""Chained generations (`runtime_client.ChainedGen`): the engine's half of gen -> known text -> gen.

A request sent with `then=ChainedGen(...)` carries a `Chain`: the chained request, built and checked
when the first one was sent, and the texts the runtime needs to compute its prompt. When the first
request finishes normally, the scheduler (`Scheduler._start_chain`) gives the chained request the
same sequence: the same request-table row and KV, truncated to the tokens the new prompt shares, and
queues it first for an extend of the forced text. No client round trip, no radix re-match.

**Token boundaries.** The chained prompt must be exactly `tokenize(prompt_text + generated text +
forced_text)`, what a client tokenizing the whole text sends (and what the eager interpreter does).
Re-tokenizing the whole text at every hop is what chains avoid, so `ChainTokenizer` re-tokenizes only
the tail after the last special token of the first prompt: HF tokenizers split added special tokens
out before any other step, so the text on either side of one tokenizes on its own. That property is
checked once per tokenizer on probe strings; where it does not hold (or a prompt has no special token,
or the tail does not re-tokenize to the prompt's own tokens) the whole text is tokenized again, which
is always right.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from executor.runtime.request import Request

__all__ = ["Chain", "ChainTokenizer", "common_prefix_len"]

logger = logging.getLogger("sgc.engine")

_PROBES = ("Hello there", " two words", "\n\nnew lines\n", "x", "unicode é ✓ end ")


@dataclass(eq=False)
class Chain:
    """The engine side of a `ChainedGen`: the request to run next on the same sequence, its handle."""

    request: Request  # built and checked at send; its input_ids are set when it starts
    handle: Any  # engine_handles.RequestHandle (its `chained` continues the chain)
    prompt_text: str  # the text whose tokenization is the previous request's input_ids
    forced_text: str  # appended after the previous request's generated text


def common_prefix_len(a: list[int], b: list[int]) -> int:
    """How many leading tokens two id lists share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class ChainTokenizer:
    """A chained request's prompt ids, re-tokenizing only what may have changed (see the module)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.specials: dict[int, str] = self._special_tokens(tokenizer)
        self.tail_safe = bool(self.specials) and self._splits_at_specials()
        self.num_tail = 0  # hops that re-tokenized only the tail
        self.num_full = 0  # hops that re-tokenized the whole text

    @staticmethod
    def _special_tokens(tokenizer: Any) -> dict[int, str]:
        inner = getattr(tokenizer, "_tok", None)
        get = getattr(inner, "get_added_tokens_decoder", None)
        if get is None:
            return {}
        try:
            return {int(i): t.content for i, t in get().items() if getattr(t, "special", False) and t.content}
        except Exception:  # an unusual tokenizer object: always re-tokenize the whole text
            logger.debug("no special tokens readable from %r", tokenizer, exc_info=True)
            return {}

    def _splits_at_specials(self) -> bool:
        """Whether text on both sides of each special token tokenizes on its own (probe strings)."""
        encode = self.tokenizer.encode
        for sid, special in self.specials.items():
            for left in _PROBES:
                for right in _PROBES:
                    try:
                        whole = encode(left + special + right, add_special_tokens=False)
                        parts = (encode(left, add_special_tokens=False) + [sid]
                                 + encode(right, add_special_tokens=False))
                    except Exception:
                        return False
                    if whole != parts:
                        logger.info("tokenizer does not split at %r: chains re-tokenize whole prompts", special)
                        return False
        return True

    def prompt_ids(self, previous_ids: list[int], prompt_text: str, generated: str, forced: str) -> list[int]:
        """`tokenize(prompt_text + generated + forced)`, where `previous_ids` is `tokenize(prompt_text)`."""
        new_text = generated + forced
        anchor = self._last_special(previous_ids) if self.tail_safe else None
        if anchor is not None:
            index, special = anchor
            cut = prompt_text.rfind(special)
            if cut >= 0:
                tail = prompt_text[cut + len(special):]
                encode = self.tokenizer.encode
                # The tail must be the prompt's own tokens after the anchor, or the anchor is not the
                # same occurrence (then the whole text is tokenized).
                if encode(tail, add_special_tokens=False) == previous_ids[index + 1:]:
                    self.num_tail += 1
                    return previous_ids[: index + 1] + encode(tail + new_text, add_special_tokens=False)
        self.num_full += 1
        return list(self.tokenizer.encode(prompt_text + new_text))

    def _last_special(self, ids: list[int]) -> tuple[int, str] | None:
        specials = self.specials
        for i in range(len(ids) - 1, -1, -1):
            special = specials.get(ids[i])
            if special is not None:
                return i, special
        return None
