"""Request intake: everything a request is checked against, on the caller's thread.

A bad request must fail where it was made, with a message naming the request id, the parameter and
its value, and never reach the engine thread (where it could only fail a step). So the sampling
parameters, logprob options, prompt and stop ids against the vocabulary and context, and a
constraint's tables (`TokenFSM.check`) are all checked here, and only then does the scheduler's
`Request` exist. Errors are `RequestError` (a ValueError) or `RequestTypeError` (also a TypeError).
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import Iterator, Mapping, Sequence

import torch

from compiler.constraints import TokenFSM
from executor.runtime.constrained import ConstraintCache, ConstraintCursor
from executor.runtime.detokenizer import IncrementalDetokenizer
from executor.runtime.request import Request, RequestKind
from executor.runtime.runtime_client import GenerateRequest, ScoreRequest
from executor.runtime.sampling import make_generator
from executor.runtime.sampling_params import LogprobOptions, RequestError, RequestTypeError, SamplingParams
from executor.runtime.tokenizer import Tokenizer

__all__ = ["MAX_CONTINUATIONS", "RequestIntake", "check_listener"]

# A score request fans out into one child request per continuation.
MAX_CONTINUATIONS = 4096


def _is_token(t: object) -> bool:
    return isinstance(t, int) and not isinstance(t, bool)


def check_listener(listener: object) -> None:
    if listener is not None and not callable(listener):
        raise RequestTypeError(f"listener must be callable, not {type(listener).__name__}")


@contextlib.contextmanager
def _naming_request(rid: str) -> Iterator[None]:
    """Re-raise a refusal (any ValueError or TypeError) as `RequestError` naming the request."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        kind = RequestTypeError if isinstance(exc, TypeError) else RequestError
        raise kind(f"request {rid}: {exc}") from exc


class RequestIntake:
    """Turns what a caller hands the engine into checked scheduler `Request`s (thread-safe)."""

    def __init__(self, tokenizer: Tokenizer, constraints: ConstraintCache, vocab_size: int, context_len: int,
                 device: torch.device) -> None:
        self.tokenizer = tokenizer
        self.constraints = constraints
        self.vocab_size = vocab_size
        self.context_len = context_len
        self.device = device
        self._ids = itertools.count()
        self._checked_fsms: weakref.WeakSet[TokenFSM] = weakref.WeakSet()  # passed TokenFSM.check

    def next_id(self) -> str:
        return f"req-{next(self._ids)}"

    # -- generate ---------------------------------------------------------------------------------
    def generate(self, request: GenerateRequest, listener: object = None) -> Request:
        """A checked generate request (see `GenerateRequest`); raises `RequestError` naming its id."""
        for name in ("stream", "follow_up"):
            value = getattr(request, name)
            if not isinstance(value, bool):
                raise RequestTypeError(f"invalid {name}={value!r}: must be a bool")
        rid = self.next_id()
        params, options = request.params, request.options
        with _naming_request(rid):
            if isinstance(params, SamplingParams):
                params.validate()
            elif params is None or isinstance(params, Mapping):
                params = SamplingParams.from_dict(params)
            else:
                raise RequestTypeError(f"sampling params must be a SamplingParams or a dict, "
                                       f"not {type(params).__name__}")
            if not isinstance(options, LogprobOptions):
                raise RequestTypeError(f"options must be a LogprobOptions, not {type(options).__name__}")
            options.validate()
            prefix_group = request.prefix_group
            if prefix_group is not None and not isinstance(prefix_group, str):
                raise RequestTypeError(f"invalid prefix_group={prefix_group!r}: must be a string or None")
            check_listener(listener)
            input_ids = self.encode_prompt(request.input_ids)  # in the vocabulary, inside the context
            self._check_against_model(params, options, len(input_ids))
            constraint = self._checked_constraint(params, request.constraint)
        stop_ids = set(params.stop_token_ids or ())
        if not params.ignore_eos:
            stop_ids |= self.tokenizer.eos_token_ids
        return Request(
            rid=rid, input_ids=input_ids, params=params, logprobs=options,
            stop_token_ids=frozenset(stop_ids),
            detokenizer=IncrementalDetokenizer(self.tokenizer, params.stop_strings,
                                               skip_special_tokens=params.skip_special_tokens,
                                               no_stop_trim=params.no_stop_trim),
            generator=None if params.seed is None else make_generator(params.seed, self.device),
            constraint=None if constraint is None else ConstraintCursor(constraint, self.tokenizer.eos_token_ids),
            prefix_group=prefix_group,
        )

    def _check_against_model(self, params: SamplingParams, options: LogprobOptions, prompt_len: int) -> None:
        """The checks that need the model: vocabulary and context bounds."""
        if params.max_new_tokens > self.context_len:
            raise RequestError(f"invalid sampling parameter max_new_tokens={params.max_new_tokens!r}: "
                               f"more than the model's context of {self.context_len} tokens")
        vocab = self.vocab_size
        bad_ids = [t for t in params.stop_token_ids or () if t >= vocab]
        if bad_ids:
            raise RequestError(f"invalid sampling parameter stop_token_ids={params.stop_token_ids!r}: "
                               f"{bad_ids[0]} is outside the vocabulary [0, {vocab})")
        if options.logprob_start_len >= prompt_len:
            raise RequestError(f"logprob_start_len={options.logprob_start_len} is not inside the prompt "
                               f"({prompt_len} tokens)")

    def _checked_constraint(self, params: SamplingParams, constraint: object) -> TokenFSM | None:
        """The request's token FSM (compiled from params.regex / json_schema when not given), its
        tables checked against this model: a tampered artifact is refused here, not mid-step."""
        if constraint is None:
            if params.regex is None and params.json_schema is None:
                return None
            constraint = self.constraints.get(params.regex, params.json_schema)
        if not isinstance(constraint, TokenFSM):
            raise RequestTypeError(f"constraint must be a TokenFSM, not {type(constraint).__name__}")
        if constraint.fingerprint != self.constraints.fingerprint:
            raise RequestError("the constraint was compiled for a different tokenizer than this model's")
        if constraint not in self._checked_fsms:
            try:
                constraint.check(self.vocab_size)
            except ValueError as exc:
                raise RequestError(f"the constraint's tables are invalid: {exc}") from exc
            self._checked_fsms.add(constraint)
        return constraint

    # -- score ------------------------------------------------------------------------------------
    def score(self, request: ScoreRequest, listener: object = None) -> Request:
        """A checked score request: the prompt, then one child per continuation (see the scheduler)."""
        if not isinstance(request.follow_up, bool):
            raise RequestTypeError(f"invalid follow_up={request.follow_up!r}: must be a bool")
        rid = self.next_id()
        with _naming_request(rid):
            check_listener(listener)
            prompt_ids = self.encode_prompt(request.input_ids)
            conts = self._check_continuations(prompt_ids, request.continuations)
        req = Request(rid=rid, input_ids=prompt_ids, params=SamplingParams(max_new_tokens=1),
                      kind=RequestKind.SCORE)
        req.continuations = conts
        return req

    def _check_continuations(self, prompt_ids: list[int], continuations: object) -> list[list[int]]:
        if isinstance(continuations, (str, bytes)) or not isinstance(continuations, Sequence):
            raise RequestTypeError(f"continuations must be a list of token-id lists, not "
                                   f"{type(continuations).__name__}")
        if not continuations:
            raise RequestError("score needs at least one continuation")
        if len(continuations) > MAX_CONTINUATIONS:
            raise RequestError(f"score takes at most {MAX_CONTINUATIONS} continuations, got {len(continuations)}")
        vocab = self.vocab_size
        conts = []
        for i, c in enumerate(continuations):
            if isinstance(c, (str, bytes)) or not isinstance(c, Sequence) or not all(_is_token(t) for t in c):
                raise RequestTypeError(f"continuation {i} must be a list of token ids (ints)")
            if not c:
                raise RequestError(f"continuation {i} is empty")
            if not all(0 <= t < vocab for t in c):
                raise RequestError(f"continuation {i} has a token outside the vocabulary [0, {vocab})")
            if len(prompt_ids) + len(c) > self.context_len:
                raise RequestError(f"prompt plus continuation {i} has {len(prompt_ids) + len(c)} tokens; "
                                   f"the model's context is {self.context_len}")
            conts.append(list(c))
        return conts

    # -- prompts ----------------------------------------------------------------------------------
    def encode_prompt(self, prompt: object) -> list[int]:
        """A prompt (text, or token ids) as token ids inside the vocabulary and the context."""
        if isinstance(prompt, str):
            if not prompt:
                raise RequestError("prompt is empty")
            ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, Sequence) and not isinstance(prompt, bytes) and all(_is_token(t) for t in prompt):
            ids = list(prompt)
        else:
            raise RequestTypeError(f"prompt must be a string or a list of token ids (ints), "
                                   f"not {type(prompt).__name__}")
        if not ids:
            raise RequestError("prompt is empty")
        vocab = self.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise RequestError(f"input_ids contain {bad[0]}, outside the vocabulary [0, {vocab})")
        if len(ids) >= self.context_len:
            raise RequestError(f"prompt has {len(ids)} tokens but the model's context is {self.context_len} "
                               "(it must leave room for at least one new token)")
        return ids

    def normalize_prompts(self, prompt: object, input_ids: object) -> tuple[list[list[int]], bool]:
        """`generate`'s prompt= / input_ids= (one or a list) as token-id lists; True if a list."""
        if (prompt is None) == (input_ids is None):
            raise RequestError("pass exactly one of prompt= or input_ids=")
        if prompt is not None:
            if isinstance(prompt, str):
                return [self.encode_prompt(prompt)], False
            if isinstance(prompt, Sequence) and prompt and all(isinstance(p, str) for p in prompt):
                return [self.encode_prompt(p) for p in prompt], True
            raise RequestTypeError("prompt must be a string or a non-empty list of strings")
        if isinstance(input_ids, Sequence) and input_ids and all(_is_token(t) for t in input_ids):
            return [self.encode_prompt(input_ids)], False
        if (isinstance(input_ids, Sequence) and input_ids
                and all(isinstance(x, Sequence) and not isinstance(x, (str, bytes)) for x in input_ids)):
            return [self.encode_prompt(x) for x in input_ids], True
        raise RequestTypeError("input_ids must be a non-empty list of token ids or a list of such lists")
