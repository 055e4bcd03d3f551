"""What a request asks for, as plain data: sampling parameters and logprob options.

These are the values that cross the runtime's client interface (`executor/runtime/runtime_client.py`), so
they hold no tensors and import no torch: an HTTP or remote client builds, validates and serializes
them the same way the in-process engine reads them. Validation errors are `RequestError`s (a
ValueError; `RequestTypeError` is also a TypeError) whose message names the parameter and its value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["GREEDY_TEMPERATURE", "MAX_TOP_LOGPROBS", "LogprobOptions", "RequestError", "RequestTypeError",
           "SamplingParams"]


class RequestError(ValueError):
    """A request refused on entry: the message names the parameter and its bad value (and, from the
    engine, the request id)."""


class RequestTypeError(RequestError, TypeError):
    """A request parameter of the wrong type (both a `RequestError` and a `TypeError`)."""


# Bounds on sampling parameters beyond their mathematical ranges: past them the float32 sampler
# would overflow (temperature, repetition penalty), torch would (top_k, seed), or one request
# could make every step of the batch slow (stop strings).
MAX_TEMPERATURE = 1e4
# Below this a temperature is greedy (SGLang's rule): dividing by it would overflow float32.
GREEDY_TEMPERATURE = 1e-6
REPETITION_PENALTY_RANGE = (0.01, 2.0)
MAX_TOP_K = 2**31 - 1
MAX_SEED = 2**64 - 1  # what torch.Generator.manual_seed accepts
MAX_STOP_STRINGS = 256
MAX_STOP_STRING_CHARS = 1024
MAX_STOP_TOKEN_IDS = 1024


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_finite(x: float) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an int too large for a float
        return False


@dataclass(frozen=True)
class SamplingParams:
    """One request's sampling parameters, with SGLang's names and defaults.

    `top_k=-1` means off. `stop` may be a string or a list of strings; use `stop_strings` for the
    normalized tuple. Construction does not validate (so a caller can build and then report all errors
    in its own words); `from_dict` validates, and `validate()` can be called at any time.
    """

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    seed: int | None = None
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    # Constrained decoding (at most one): a regex the output must fullmatch, or a JSON schema
    # (a dict or its JSON text) the output must validate against. See executor/runtime/constrained.py.
    regex: str | None = None
    json_schema: str | dict | None = None

    # SGLang spells the seed `sampling_seed`.
    _ALIASES = {"sampling_seed": "seed"}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> SamplingParams:
        """Build from a dict of SGLang sampling parameters and validate; unknown keys are an error."""
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise RequestTypeError(f"sampling_params must be a dict, not {type(d).__name__}")
        if "ebnf" in d:
            raise RequestError("sampling parameter 'ebnf' is not supported yet; use regex or json_schema")
        known = cls.field_names()
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            name = cls._ALIASES.get(key, key)
            if not isinstance(name, str) or name.startswith("_") or name not in known:
                names = ", ".join(sorted((*known, *cls._ALIASES)))
                raise RequestError(f"unknown sampling parameter {key!r}; known parameters: {names}")
            if name in kwargs:
                raise RequestError(f"sampling parameter {name!r} given twice (as {key!r} and its alias)")
            kwargs[name] = value
        params = cls(**kwargs)
        params.validate()
        return params

    def validate(self) -> None:
        """Raise `RequestError` naming the first bad parameter and its value (`RequestTypeError`,
        also a TypeError, when the value has the wrong type)."""

        def bad(name: str, why: str, error: type[RequestError] = RequestError) -> RequestError:
            return error(f"invalid sampling parameter {name}={getattr(self, name)!r}: {why}")

        def need_int(name: str) -> int:
            value = getattr(self, name)
            if not _is_int(value):
                raise bad(name, "must be an integer", RequestTypeError)
            return value

        def need_number(name: str) -> float:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise bad(name, "must be a number", RequestTypeError)
            if not _is_finite(value):
                raise bad(name, "must be finite")
            return value

        if need_int("max_new_tokens") <= 0:
            raise bad("max_new_tokens", "must be a positive integer")
        if need_int("min_new_tokens") < 0:
            raise bad("min_new_tokens", "must be a non-negative integer")
        if self.min_new_tokens > self.max_new_tokens:
            raise bad("min_new_tokens", f"must not exceed max_new_tokens={self.max_new_tokens}")
        if not 0 <= need_number("temperature") <= MAX_TEMPERATURE:
            raise bad("temperature", f"must be in [0, {MAX_TEMPERATURE:g}]")
        if not 0 < need_number("top_p") <= 1:
            raise bad("top_p", "must be in (0, 1]")
        top_k = need_int("top_k")
        if top_k == 0 or top_k < -1 or top_k > MAX_TOP_K:
            raise bad("top_k", f"must be -1 (off) or an integer in [1, {MAX_TOP_K}]")
        if not 0 <= need_number("min_p") <= 1:
            raise bad("min_p", "must be in [0, 1]")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2 <= need_number(name) <= 2:
                raise bad(name, "must be in [-2, 2]")
        low, high = REPETITION_PENALTY_RANGE
        if not low <= need_number("repetition_penalty") <= high:
            raise bad("repetition_penalty", f"must be in [{low:g}, {high:g}] (1 is off)")
        self._validate_stops(bad)
        if self.seed is not None:
            if not _is_int(self.seed):
                raise bad("seed", "must be an integer or None", RequestTypeError)
            if not 0 <= self.seed <= MAX_SEED:
                raise bad("seed", "must be in [0, 2**64 - 1]")
        if self.regex is not None and not isinstance(self.regex, str):
            raise bad("regex", "must be a string", RequestTypeError)
        if self.json_schema is not None and not isinstance(self.json_schema, (str, dict)):
            raise bad("json_schema", "must be a dict or its JSON text", RequestTypeError)
        if self.regex is not None and self.json_schema is not None:
            raise bad("json_schema", "cannot be combined with regex (give one constraint)")
        for name in ("ignore_eos", "skip_special_tokens", "no_stop_trim"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be a bool", RequestTypeError)

    def _validate_stops(self, bad: Callable[..., RequestError]) -> None:
        stop = self.stop
        if stop is not None:
            items = [stop] if isinstance(stop, str) else stop
            if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
                raise bad("stop", "must be a string or a list of strings", RequestTypeError)
            if any(s == "" for s in items):
                raise bad("stop", "stop strings must not be empty")
            if len(items) > MAX_STOP_STRINGS:
                raise bad("stop", f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(items)}")
            if any(len(s) > MAX_STOP_STRING_CHARS for s in items):
                raise bad("stop", f"a stop string may have at most {MAX_STOP_STRING_CHARS} characters")
        ids = self.stop_token_ids
        if ids is not None:
            if not isinstance(ids, (list, tuple)) or not all(_is_int(i) for i in ids):
                raise bad("stop_token_ids", "must be a list of non-negative integers", RequestTypeError)
            if any(i < 0 for i in ids):
                raise bad("stop_token_ids", "must be a list of non-negative integers")
            if len(ids) > MAX_STOP_TOKEN_IDS:
                raise bad("stop_token_ids", f"at most {MAX_STOP_TOKEN_IDS} ids are allowed, got {len(ids)}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE or self.top_k == 1

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        if isinstance(self.stop, str):
            return (self.stop,)
        return tuple(self.stop)

    @property
    def stop_token_id_set(self) -> frozenset[int]:
        return frozenset(self.stop_token_ids or ())

    @property
    def has_penalties(self) -> bool:
        return (self.frequency_penalty != 0 or self.presence_penalty != 0
                or self.repetition_penalty != 1)

    @property
    def cuts_by_rank(self) -> bool:
        """Whether top_k or top_p cut the distribution, which needs it sorted (min_p does not)."""
        return self.top_k > 0 or self.top_p < 1


# More alternatives per token than this would make one request's results (and the step computing
# them) huge: with a long prompt and input logprobs, K tuples per prompt token.
MAX_TOP_LOGPROBS = 128


@dataclass(frozen=True)
class LogprobOptions:
    """Which logprobs a request returns (SGLang's names): of its output tokens, of its prompt from
    `logprob_start_len` on, and the `top_logprobs_num` most likely alternatives of each."""

    return_logprob: bool = False
    logprob_start_len: int = -1  # -1: no prompt logprobs (SGLang's default)
    top_logprobs_num: int = 0

    def validate(self) -> None:
        """Raise `RequestError` naming the first bad option and its value (prompt-dependent checks,
        such as logprob_start_len inside the prompt, are the engine's)."""
        if not isinstance(self.return_logprob, bool):
            raise RequestTypeError(f"invalid return_logprob={self.return_logprob!r}: must be a bool")
        for name, low in (("logprob_start_len", -1), ("top_logprobs_num", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise RequestTypeError(f"invalid {name}={value!r}: must be an integer")
            if value < low:
                raise RequestError(f"invalid {name}={value!r}: must be >= {low}")
        if self.top_logprobs_num > MAX_TOP_LOGPROBS:
            raise RequestError(f"invalid top_logprobs_num={self.top_logprobs_num!r}: at most "
                               f"{MAX_TOP_LOGPROBS} alternatives per token are returned")
