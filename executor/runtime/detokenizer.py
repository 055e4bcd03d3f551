"""Incremental detokenization with stop strings, for one request.

Decoding token by token and concatenating is wrong for byte-level BPE: one character's UTF-8 bytes can
be split over tokens (each half decodes to U+FFFD), and some tokenizers' decode of a sequence is not the
concatenation of per-token decodes. Decoding the whole output each step is right but costs O(length).
So we decode a short window: `prefix_offset..read_offset` are tokens already turned into text (kept as
context), `read_offset..` are new tokens. The new text is `decode(window) - decode(context)`; it is
committed (and the window slides) once it does not end in U+FFFD, i.e. once the last character is
complete. Each step decodes O(window) tokens, whatever the output length.

Stop strings are matched on stable text (committed text plus the new text up to a trailing U+FFFD run),
so a stop is seen on the token that completes it, even when that token ends in half a character. A stop
is the occurrence that completes first (smallest end; on a tie, the longest): that is the only rule under
which the result does not depend on how the text was split into tokens. `text` is cut at its start (or
after its end with `no_stop_trim`).

Streaming (`pop_delta`) emits only text that can no longer change: never a trailing U+FFFD of a character
still being completed, and never a suffix that could be the beginning of a stop string.

Lazy until needed: without stop strings nothing reads the text before the request ends unless it
streams, so `add` only records the token (most requests: no per-step decode, the engine's biggest
per-request cost). `text` then decodes the whole output once, which is the reference the window
method reproduces (tests/test_detokenizer.py checks the two agree). The first `pop_delta` (a
streaming request) replays the recorded tokens through the window and stays incremental from then.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["Decoder", "IncrementalDetokenizer"]

REPLACEMENT = "\ufffd"

# A character is at most 4 UTF-8 bytes, so at most 4 tokens can be waiting to complete it. Text still
# ending in U+FFFD after this many pending tokens holds a genuinely invalid byte sequence: commit it
# rather than let the decode window grow without bound.
MAX_PENDING_TOKENS = 8


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool) -> str: ...


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Decoder, stop_strings: Sequence[str] = (),
                 skip_special_tokens: bool = True, no_stop_trim: bool = False) -> None:
        if isinstance(stop_strings, str):
            stop_strings = (stop_strings,)
        if any(not s for s in stop_strings):
            raise ValueError("stop strings must not be empty")
        self._tokenizer = tokenizer
        self._stops = tuple(dict.fromkeys(stop_strings))
        self._max_stop_len = max((len(s) for s in self._stops), default=0)
        self._skip_special = skip_special_tokens
        self._no_stop_trim = no_stop_trim

        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._prefix_text = ""       # decode(ids[prefix_offset:read_offset])
        self._committed = ""         # text of ids[:read_offset]
        self._pending = ""           # text of ids[read_offset:], may end in U+FFFD
        self._scanned = 0            # stable length already searched for stops
        self._emitted = 0            # length of text handed out by pop_delta
        self._cut: int | None = None  # where `text` ends once a stop matched
        self._matched_stop: str | None = None
        self._finished = False
        # Lazy mode (see the module docstring): tokens are recorded, the window untouched.
        self._lazy = not self._stops
        self._lazy_text: tuple[int, str] | None = None  # (tokens decoded, their text)

    # -- inputs -----------------------------------------------------------------------------------

    def add(self, token_id: int) -> None:
        """Append one generated token. Ignored once a stop string matched or after `finish()`."""
        if self._cut is not None or self._finished:
            return
        self._ids.append(token_id)
        if self._lazy:
            return
        self._advance()

    def _advance(self) -> None:
        """Run the newest token (`_ids[-1]`, the tokens before it done) through the decode window."""
        window = self._decode(self._ids[self._prefix_offset:])
        # For byte-level BPE the context's text is a prefix of the window's. Tokenizers that rewrite
        # text across token boundaries (clean-up of spaces) may break that; what was committed stays.
        new_text = window[len(self._prefix_text):]
        num_pending = len(self._ids) - self._read_offset
        incomplete = new_text.endswith(REPLACEMENT) or not new_text
        if incomplete and num_pending < MAX_PENDING_TOKENS:
            # Hold: the last character is not complete yet, or the tokens gave no text (special
            # tokens); sliding the window past them would lose the context that a leading-space
            # (SentencePiece) token needs.
            self._pending = new_text
        else:
            self._committed += new_text
            self._pending = ""
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            self._prefix_text = self._decode(self._ids[self._prefix_offset:self._read_offset])
        self._find_stop()

    def rebuilt(self, token_ids: Sequence[int]) -> IncrementalDetokenizer:
        """A detokenizer over a rewritten token list whose text extends this one's (jump-forward
        re-tokenizes the tail of the output): text already streamed is not streamed again."""
        fresh = IncrementalDetokenizer(self._tokenizer, self._stops, self._skip_special, self._no_stop_trim)
        if not self._lazy:  # it streams: so does the new one, from the same point of the text
            fresh._go_incremental()
        for token_id in token_ids:
            fresh.add(token_id)
        if not self._lazy:
            fresh._emitted = min(self._emitted, len(fresh._committed) + len(fresh._pending))
        return fresh

    def finish(self) -> None:
        """No more tokens: the next `pop_delta` releases everything held back. Idempotent."""
        self._finished = True

    # -- outputs ----------------------------------------------------------------------------------

    @property
    def text(self) -> str:
        """The output text so far, cut at a matched stop string."""
        if self._lazy:  # no stop strings, never streamed: one decode of the whole output
            if self._lazy_text is None or self._lazy_text[0] != len(self._ids):
                self._lazy_text = (len(self._ids), self._decode(self._ids))
            return self._lazy_text[1]
        full = self._committed + self._pending
        return full if self._cut is None else full[:self._cut]

    @property
    def stopped(self) -> bool:
        return self._cut is not None

    @property
    def matched_stop(self) -> str | None:
        return self._matched_stop

    @property
    def token_ids(self) -> list[int]:
        return list(self._ids)

    def pop_delta(self) -> str:
        """Text that became stable since the last call (see the module docstring)."""
        self._go_incremental()
        if self._cut is not None:
            end = self._cut
        elif self._finished:
            end = len(self._committed) + len(self._pending)
        else:
            stable = self._stable_len()
            end = stable - self._stop_prefix_len(stable)
        if end <= self._emitted:
            return ""
        delta = self._tail(self._emitted, end)
        self._emitted = end
        return delta

    # -- internals --------------------------------------------------------------------------------

    def _go_incremental(self) -> None:
        """Leave lazy mode: run the recorded tokens through the window, as `add` would have."""
        if not self._lazy:
            return
        self._lazy = False
        self._lazy_text = None
        recorded, self._ids = self._ids, []
        for token_id in recorded:
            self._ids.append(token_id)
            self._advance()

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special)

    def _stable_len(self) -> int:
        """Length of text that later tokens cannot change (all but a trailing U+FFFD run)."""
        return len(self._committed) + len(self._pending.rstrip(REPLACEMENT))

    def _tail(self, start: int, end: int) -> str:
        """full_text[start:end] for a short range near the end, without joining the whole text."""
        n = len(self._committed)
        if start >= n:
            return self._pending[start - n:end - n]
        if end <= n:
            return self._committed[start:end]
        return self._committed[start:] + self._pending[:end - n]

    def _find_stop(self) -> None:
        if not self._stops:
            return
        stable = self._stable_len()
        if stable <= self._scanned:
            return
        # A match not yet found must end after `_scanned`, so it starts at most max_len - 1 before it.
        base = max(0, self._scanned - (self._max_stop_len - 1))
        region = self._tail(base, stable)
        self._scanned = stable
        best: tuple[int, int, str] | None = None  # (end, -length, stop)
        for stop in self._stops:
            i = region.find(stop)
            if i >= 0:
                key = (base + i + len(stop), -len(stop), stop)
                if best is None or key < best:
                    best = key
        if best is not None:
            end, neg_len, stop = best
            self._matched_stop = stop
            self._cut = end if self._no_stop_trim else end + neg_len

    def _stop_prefix_len(self, stable: int) -> int:
        """Longest suffix of the stable text that is a proper prefix of some stop string."""
        if not self._stops:
            return 0
        tail = self._tail(max(0, stable - (self._max_stop_len - 1)), stable)
        for k in range(len(tail), 0, -1):
            suffix = tail[len(tail) - k:]
            if any(len(s) > k and s.startswith(suffix) for s in self._stops):
                return k
        return 0
