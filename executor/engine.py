"""The offline engine: load a model, run the scheduler in a background thread, serve requests.

The API mirrors SGLang's offline `Engine` (generate with sampling_params, logprob options and
streaming) plus `score`, which `select` uses: the logprobs of several continuations of one prompt,
computed in one batch on top of the prompt's cached KV.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compiler.constraints import TokenFSM
from executor import kernels
from executor.constrained import ConstraintCache, ConstraintCursor
from executor.detokenizer import IncrementalDetokenizer
from executor.kv_manager import KVManager
from executor.memory import KVPool, kv_bytes_per_token
from executor.model_runner import ModelRunner
from executor.request import LogprobOptions, Request, RequestKind
from executor.sampling import RequestError, RequestTypeError, SamplingParams, make_generator
from executor.scheduler import Scheduler, SchedulerConfig
from executor.tokenizer import Tokenizer

logger = logging.getLogger("sgc.engine")


__all__ = ["Engine", "EngineConfig", "EngineError", "RequestError", "RequestHandle", "RequestTypeError"]


class EngineError(RuntimeError):
    """A request failed inside the engine; the message names the request id."""


# A score request fans out into one child request per continuation.
MAX_CONTINUATIONS = 4096


def _is_token(t: object) -> bool:
    return isinstance(t, int) and not isinstance(t, bool)


def _check_listener(listener: object) -> None:
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


@dataclass(frozen=True)
class EngineConfig:
    model_path: str = "smollm2-135m-instruct"
    device: str = "auto"
    dtype: str | None = None  # default: float32 on CPU, bfloat16 on CUDA
    kv_cache_gb: float | None = None  # KV memory budget; default sized from the machine
    # Without kv_cache_gb: the share of free device memory (after loading the weights) the KV pool
    # takes. Default on CUDA 0.8, leaving room for activations, CUDA graphs and the sampler;
    # on CPU the default stays a quarter of RAM (at most 4 GiB), a given fraction is of free RAM.
    kv_cache_fraction: float | None = None
    disable_cuda_graph: bool = False  # CUDA: run decode eagerly instead of replaying graphs
    cuda_graph_max_bs: int | None = None  # largest captured decode batch; default max_running_requests
    max_total_tokens: int | None = None  # KV slots; overrides kv_cache_gb (tests use tiny pools)
    max_running_requests: int = 256
    max_prefill_tokens: int = 8192
    chunk_size: int = 2048
    schedule_policy: str = "lpm"
    disable_radix_cache: bool = False
    disable_jump_forward: bool = False
    # Decode requests submitted with a common prefix_group read their shared prefix once (CPU).
    disable_shared_prefix_decode: bool = False
    # How long a step may wait for the follow-up requests of a client that holds it (see
    # `Engine.hold_next_step`); past it the step runs without them and the holds are dropped.
    follow_up_wait_s: float = 0.05


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; expected 'auto', 'cpu' or 'cuda[:N]'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available on this machine "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                         "use 'cpu' or 'auto'")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}; expected 'auto', 'cpu' or 'cuda[:N]'") from exc
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r} was asked for but this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s)")
    return resolved


DEFAULT_CUDA_KV_FRACTION = 0.8


def _default_kv_bytes(device: torch.device, fraction: float | None = None) -> int:
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"kv_cache_fraction must be in (0, 1], got {fraction}")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * (DEFAULT_CUDA_KV_FRACTION if fraction is None else fraction))
    if fraction is not None:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") * fraction)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(4 << 30, total // 4)


class PrefixPin:
    """A lock on a cached token prefix, from `Engine.pin_prefix`; release it with `Engine.unpin`."""

    def __init__(self, token_ids: list[int]) -> None:
        self.token_ids = token_ids
        self.num_tokens = 0  # how many leading tokens were cached and locked (set once applied)
        self.applied = threading.Event()
        self.released = threading.Event()  # set once `unpin` has taken effect
        self._kv: KVManager | None = None
        self._lock: Any = None
        self._released = False

    # Both run on the engine thread (or after it stopped).
    def _apply(self, engine: Engine) -> None:
        if not self._released:
            self._kv = engine.kv_manager
            self._lock, self.num_tokens = self._kv.lock_prefix(self.token_ids)
        self.applied.set()

    def _release(self, engine: Engine) -> None:
        self._released = True
        # After a failed step the runtime (and its cache) is rebuilt: the old lock went with it.
        if self._lock is not None and self._kv is engine.kv_manager:
            self._kv.unlock_prefix(self._lock)
        self._kv = self._lock = None
        self.released.set()

    def __repr__(self) -> str:
        return f"PrefixPin({len(self.token_ids)} tokens, {self.num_tokens} locked)"


@dataclass(frozen=True)
class _EngineTask:
    """A function to run on the engine thread between steps (queued in the inbox with requests)."""

    fn: Callable[[Engine], None]

    def run(self, engine: Engine) -> None:
        try:
            self.fn(engine)
        except Exception:
            logger.exception("an engine task failed")


class RequestHandle:
    """A submitted request: wait for its result or iterate over its streamed text."""

    def __init__(self, req: Request, engine: Engine, stream: bool):
        self.req = req
        self._engine = engine
        self._done = threading.Event()
        self._deltas: queue.Queue | None = queue.Queue() if stream else None
        self._error: BaseException | None = None
        self.submitted_at = time.perf_counter()
        self.finished_at: float | None = None
        # Listeners (add_listener) run on the engine thread; the lock orders registration and finish.
        self._listeners: list[Callable[[str, bool], None]] = []
        self._listener_lock = threading.Lock()

    # Called from the engine thread.
    def _publish(self) -> None:
        detok = self.req.detokenizer
        delta = ""
        if self._deltas is not None and detok is not None:
            if self.req.finished:
                detok.finish()
            delta = detok.pop_delta()
            if delta or self.req.finished:
                self._deltas.put(delta)
        if self.req.finished:
            self.finished_at = time.perf_counter()
            with self._listener_lock:
                self._done.set()
            if self._deltas is not None:
                self._deltas.put(None)
        if delta or self.req.finished:
            self._notify(delta, self.req.finished)

    def _fail(self, error: BaseException) -> None:
        self._error = error
        with self._listener_lock:
            self._done.set()
        if self._deltas is not None:
            self._deltas.put(None)
        self._notify("", True)

    def _notify(self, delta: str, finished: bool) -> None:
        for listener in list(self._listeners):
            try:
                listener(delta, finished)
            except Exception:  # a listener's bug must not take the engine thread down
                logger.exception("request %s: a listener raised", self.req.rid)

    def add_listener(self, listener: Callable[[str, bool], None]) -> None:
        """Call `listener(delta, finished)` after each update of this request: `delta` is the newly
        streamed text (always "" unless submitted with stream=True), `finished` is True once, at the
        end (success or failure: `result()` then returns or raises without blocking).

        Listeners run on the engine thread between forward passes: they must be quick and must not
        block (put the event on a queue). Registered after the request finished, the listener is
        called at once, on the caller's thread, with ("", True).
        """
        with self._listener_lock:
            if not self._done.is_set():
                self._listeners.append(listener)
                return
        listener("", True)

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> dict:
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.req.rid} did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._engine._make_output(self)

    def stream(self) -> Iterator[dict]:
        """Yields {"text": delta, "meta_info": ...}; the last chunk carries the final meta_info."""
        if self._deltas is None:
            raise ValueError("this request was not submitted with stream=True")
        while True:
            delta = self._deltas.get()
            if delta is None:
                break
            yield {"text": delta, "meta_info": {"id": self.req.rid}}
        final = self.result()
        yield {"text": "", "meta_info": final["meta_info"]}


class Engine:
    """sgc's LLM runtime, as a library object.

    >>> with Engine(model_path="smollm2-135m-instruct") as engine:
    ...     out = engine.generate("The capital of France is", {"max_new_tokens": 8, "temperature": 0})
    """

    def __init__(self, model_path: str = "smollm2-135m-instruct", device: str = "auto", **kwargs: Any):
        self.config = EngineConfig(model_path=model_path, device=device, **kwargs)
        from models import load_model, resolve_model

        self.device = resolve_device(self.config.device)
        dtype = self._dtype = self._pick_dtype()
        started = time.perf_counter()
        folder: Path = resolve_model(self.config.model_path)
        self.model, self.model_config = load_model(folder, self.device, dtype)
        self.tokenizer = Tokenizer(folder)
        self.constraints = ConstraintCache(self.tokenizer)
        self.model_folder = folder
        self.context_len = self.model_config.max_position_embeddings
        self._build_runtime(dtype)
        logger.info("engine ready in %.2f s: %s on %s (%s), %d KV slots",
                    time.perf_counter() - started, folder.name, self.device, dtype, self.num_kv_slots)
        self._ids = itertools.count()
        self._inbox: queue.Queue = queue.Queue()
        self._handles: dict[str, RequestHandle] = {}
        self._checked_fsms: weakref.WeakSet[TokenFSM] = weakref.WeakSet()  # passed TokenFSM.check
        self._stopping = False
        self._broken: BaseException | None = None  # set while the runtime cannot be rebuilt
        self._step_holds = 0
        self._holds_changed = threading.Condition()
        # Over every request finished so far (benchmarks take differences; cache hit rate =
        # cached / prompt tokens). A score request's prompt counts its continuations too.
        self._token_totals = dict.fromkeys(("num_finished_requests", "num_prompt_tokens",
                                            "num_cached_prompt_tokens", "num_generated_tokens"), 0)
        self._thread = threading.Thread(target=self._loop, name="sgc-engine", daemon=True)
        self._thread.start()

    def _pick_dtype(self) -> torch.dtype:
        if self.config.dtype is None:
            if self.device.type != "cuda":
                return torch.float32
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if self.config.dtype not in names:
            raise ValueError(f"unknown dtype {self.config.dtype!r}; expected one of {sorted(names)}")
        return names[self.config.dtype]

    def _build_runtime(self, dtype: torch.dtype) -> None:
        if self.device.type == "cuda" and getattr(self, "runner", None) is not None:
            # A rebuild after a failed step: free the old pool and graphs before sizing new ones.
            self.runner = self.kv_pool = None
            torch.cuda.empty_cache()
        cfg = self.model_config
        per_token = kv_bytes_per_token(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, dtype)
        if self.config.max_total_tokens is not None:
            num_slots = self.config.max_total_tokens
        else:
            budget = (int(self.config.kv_cache_gb * (1 << 30)) if self.config.kv_cache_gb
                      else _default_kv_bytes(self.device, self.config.kv_cache_fraction))
            num_slots = budget // per_token
        if num_slots < 2:
            raise ValueError(f"KV budget gives {num_slots} slots; it must hold at least a short prompt")
        self.num_kv_slots = num_slots
        self.kv_pool = KVPool(num_slots, cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, dtype, self.device)
        self.kv_manager = KVManager.build(num_slots, self.config.max_running_requests + 8, self.context_len,
                                          self.device, enable_cache=not self.config.disable_radix_cache)
        self.allocator = self.kv_manager.allocator
        self.req_to_token = self.kv_manager.req_to_token
        self.radix_cache = self.kv_manager.cache
        self.runner = ModelRunner(self.model, self.kv_pool, self.req_to_token, cfg.head_dim)
        if self.device.type == "cuda" and not self.config.disable_cuda_graph:
            self._capture_cuda_graphs()
        self.scheduler = Scheduler(
            self.runner,
            self.kv_manager,
            SchedulerConfig(
                max_running_requests=self.config.max_running_requests,
                max_prefill_tokens=self.config.max_prefill_tokens,
                chunk_size=self.config.chunk_size,
                context_len=self.context_len,
                policy=self.config.schedule_policy,
                enable_jump_forward=not self.config.disable_jump_forward,
                # The Triton decode kernel reads per request; only the CPU path uses the groups.
                shared_prefix_decode=not self.config.disable_shared_prefix_decode
                and not (self.device.type == "cuda" and kernels.triton_available()),
            ),
            self.device,
        )
        self.scheduler.constraints = self.constraints

    def _capture_cuda_graphs(self) -> None:
        from executor import kernels
        from executor.cuda_graph import capture_batch_sizes

        if not kernels.triton_available():  # the reference decode attention syncs with the host
            logger.warning("Triton kernels are off: decode runs without CUDA graphs")
            return
        max_bs = self.config.cuda_graph_max_bs or self.config.max_running_requests
        self.runner.capture_cuda_graphs(capture_batch_sizes(min(max_bs, self.config.max_running_requests)))

    # -- public API ------------------------------------------------------------------------------
    def generate(
        self,
        prompt: str | Sequence[str] | None = None,
        sampling_params: dict | Sequence[dict] | None = None,
        input_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
        return_logprob: bool = False,
        logprob_start_len: int | None = None,
        top_logprobs_num: int | None = None,
        stream: bool = False,
    ) -> dict | list[dict] | Iterator[dict]:
        """Generate for one prompt (returns a dict) or a list of prompts (returns a list).

        Each result is {"text", "output_ids", "meta_info"}; meta_info has prompt_tokens,
        completion_tokens, cached_tokens, finish_reason and, with return_logprob, the logprob lists
        as (logprob, token_id, None) tuples. With stream=True (one prompt) an iterator of
        {"text": delta} chunks is returned instead.
        """
        prompts, batched = self._normalize_prompts(prompt, input_ids)
        if not isinstance(stream, bool):
            raise RequestTypeError(f"invalid stream={stream!r}: must be a bool")
        if stream and batched:
            raise RequestError("stream=True takes a single prompt")
        if isinstance(sampling_params, Sequence) and not isinstance(sampling_params, (str, bytes)):
            if len(sampling_params) != len(prompts):
                raise RequestError(f"got {len(sampling_params)} sampling_params for {len(prompts)} prompts")
            params_list = list(sampling_params)
        else:
            params_list = [sampling_params] * len(prompts)
        options = LogprobOptions(
            return_logprob=return_logprob,
            logprob_start_len=-1 if logprob_start_len is None else logprob_start_len,
            top_logprobs_num=0 if top_logprobs_num is None else top_logprobs_num,
        )
        # Every request is checked before any is queued: a bad one refuses the whole call.
        reqs = [self._new_generate_request(ids, params, options) for ids, params in zip(prompts, params_list)]
        handles = [self._submit_request(req, stream) for req in reqs]
        if stream:
            return handles[0].stream()
        results = [h.result() for h in handles]
        return results if batched else results[0]

    def score(self, prompt: str | Sequence[int], continuations: Sequence[str] | Sequence[Sequence[int]]) -> dict:
        """Logprobs of each continuation after the prompt, in one batch over the prompt's KV.

        Strings are tokenized separately (prompt with special tokens, continuations without), so
        callers that care about the token boundary should pass token ids. Returns
        {"logprobs": [[per-token logprob] per continuation], "meta_info": {...}}.
        """
        if isinstance(continuations, (str, bytes)) or not isinstance(continuations, Sequence):
            raise RequestTypeError("continuations must be a list of strings or of token-id lists, "
                                   f"not {type(continuations).__name__}")
        conts = [self.tokenizer.encode(c, add_special_tokens=False) if isinstance(c, str) else c
                 for c in continuations]
        return self.submit_score(self._encode_prompt(prompt), conts).result()

    def submit_score(self, prompt_ids: Sequence[int], continuations: Sequence[Sequence[int]],
                     listener: Callable[[str, bool], None] | None = None) -> RequestHandle:
        """`score` without waiting: queue the scoring request and return its handle (token ids only).
        `listener` is registered (see `RequestHandle.add_listener`) before the request is queued."""
        rid = self._next_id()
        with _naming_request(rid):
            _check_listener(listener)
            prompt_ids = self._encode_prompt(prompt_ids)
            conts = self._check_continuations(prompt_ids, continuations)
        req = Request(rid=rid, input_ids=prompt_ids, params=SamplingParams(max_new_tokens=1),
                      kind=RequestKind.SCORE)
        req.continuations = conts
        return self._submit_request(req, stream=False, listener=listener)

    def _check_continuations(self, prompt_ids: list[int], continuations: object) -> list[list[int]]:
        if isinstance(continuations, (str, bytes)) or not isinstance(continuations, Sequence):
            raise RequestTypeError(f"continuations must be a list of token-id lists, not "
                                   f"{type(continuations).__name__}")
        if not continuations:
            raise RequestError("score needs at least one continuation")
        if len(continuations) > MAX_CONTINUATIONS:
            raise RequestError(f"score takes at most {MAX_CONTINUATIONS} continuations, got {len(continuations)}")
        vocab = self.model_config.vocab_size
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

    def pin_prefix(self, token_ids: Sequence[int]) -> PrefixPin:
        """Lock the cached part of `token_ids` in the radix cache so eviction cannot take it.

        For callers that know a prefix is about to be extended (the graph executor pins a prefilled
        prefix until the fork's branches have run). Called on the engine thread (from a request
        listener) it takes effect at once; from another thread it is queued with the requests, so it
        takes effect before any request submitted after it is scheduled. `pin.num_tokens` says how
        many tokens were cached and locked (0 without a radix cache). Pinned KV is unavailable to
        other requests: unpin as soon as possible.
        """
        pin = PrefixPin([int(t) for t in token_ids])
        self._run_on_engine_thread(pin._apply)
        return pin

    def unpin(self, pin: PrefixPin) -> None:
        """Release a `pin_prefix` lock (idempotent; safe after a runtime rebuild). Like `pin_prefix`
        it may take effect later, in order with requests; `pin.released` is set when it has."""
        self._run_on_engine_thread(pin._release)

    def hold_next_step(self) -> None:
        """Make the next step wait until `release_step` (or `follow_up_wait_s`).

        For a client that reacts to finished requests with new ones (the graph executor: a node's
        result makes the next node ready). Called from a request listener, on the engine thread
        right after the step that finished the request, so the follow-ups join the very next pass
        instead of missing it by microseconds and costing one pass more.
        """
        with self._holds_changed:
            self._step_holds += 1

    def release_step(self, count: int = 1) -> None:
        """Undo `count` holds (after submitting the follow-up requests)."""
        with self._holds_changed:
            self._step_holds = max(self._step_holds - count, 0)
            self._holds_changed.notify_all()

    def _wait_for_holds(self) -> None:
        with self._holds_changed:
            if not self._step_holds:
                return
            if not self._holds_changed.wait_for(lambda: not self._step_holds, self.config.follow_up_wait_s):
                logger.debug("step held past %.3f s; running without the follow-ups", self.config.follow_up_wait_s)
                self._step_holds = 0

    def _run_on_engine_thread(self, task: Callable[[Engine], None]) -> None:
        if threading.current_thread() is self._thread:
            task(self)
        elif self._stopping or not self._thread.is_alive():
            task(self)  # nothing else touches the runtime any more
        else:
            self._inbox.put(_EngineTask(task))

    def submit(self, input_ids: list[int], params: SamplingParams | Mapping[str, Any] | None = None,
               options: LogprobOptions = LogprobOptions(), stream: bool = False,
               constraint: TokenFSM | None = None, listener: Callable[[str, bool], None] | None = None,
               prefix_group: str | None = None) -> RequestHandle:
        """Queue one generate request without waiting (the graph executor uses this).

        `params` is a `SamplingParams` or a dict of SGLang sampling parameters. `constraint` is a
        precompiled token FSM (from an artifact); otherwise params.regex / params.json_schema are
        compiled here (once per distinct constraint). `listener` is registered (see
        `RequestHandle.add_listener`) before the request is queued, so it sees every update.
        Requests submitted with the same `prefix_group` are expected to share a prompt prefix (a
        fork's branches): on CPU their decode steps read that prefix's KV once per group. The
        sharing is checked on the KV slots, so a wrong hint costs nothing.

        Everything is checked here, on the caller's thread: a bad request raises `RequestError`
        (a ValueError; `RequestTypeError` is also a TypeError) naming the request id, the
        parameter and its value, and never reaches the engine.
        """
        if not isinstance(stream, bool):
            raise RequestTypeError(f"invalid stream={stream!r}: must be a bool")
        req = self._new_generate_request(input_ids, params, options, constraint, prefix_group, listener)
        return self._submit_request(req, stream, listener=listener)

    def _new_generate_request(self, input_ids: object, params: object, options: object,
                              constraint: object = None, prefix_group: object = None,
                              listener: object = None) -> Request:
        """A validated generate request (see `submit`); raises `RequestError` naming its id."""
        rid = self._next_id()
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
            if prefix_group is not None and not isinstance(prefix_group, str):
                raise RequestTypeError(f"invalid prefix_group={prefix_group!r}: must be a string or None")
            _check_listener(listener)
            input_ids = self._encode_prompt(input_ids)  # in the vocabulary, inside the context
            self._check_against_model(params, options, len(input_ids))
            constraint = self._checked_constraint(params, constraint)
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
        vocab = self.model_config.vocab_size
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
            vocab = self.model_config.vocab_size
            try:
                constraint.check(vocab)
            except ValueError as exc:
                raise RequestError(f"the constraint's tables are invalid: {exc}") from exc
            self._checked_fsms.add(constraint)
        return constraint

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def stats(self) -> dict:
        """Counters for benchmarks and debugging (not synchronized with a running step)."""
        s = self.scheduler
        return {
            "num_forward_passes": self.runner.num_forward_passes,
            "num_extend_steps": s.num_extend_steps,
            "num_decode_steps": s.num_decode_steps,
            "num_retractions": s.num_retractions,
            "num_jump_forward_tokens": s.num_jump_forward_tokens,
            "num_shared_prefix_tokens": s.num_shared_prefix_tokens,
            **self._token_totals,
            "num_free_kv_slots": self.kv_manager.num_free_slots,
            "num_cached_kv_tokens": self.kv_manager.num_cached_tokens,
        }

    def shutdown(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._inbox.put(None)
        self._thread.join(timeout=30)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __del__(self) -> None:  # best effort; explicit shutdown() is preferred
        try:
            self.shutdown()
        except Exception:
            pass

    # -- helpers -------------------------------------------------------------------------------------
    def _next_id(self) -> str:
        return f"req-{next(self._ids)}"

    def _encode_prompt(self, prompt: object) -> list[int]:
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
        vocab = self.model_config.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise RequestError(f"input_ids contain {bad[0]}, outside the vocabulary [0, {vocab})")
        if len(ids) >= self.context_len:
            raise RequestError(f"prompt has {len(ids)} tokens but the model's context is {self.context_len} "
                               "(it must leave room for at least one new token)")
        return ids

    def _normalize_prompts(self, prompt, input_ids) -> tuple[list[list[int]], bool]:
        if (prompt is None) == (input_ids is None):
            raise RequestError("pass exactly one of prompt= or input_ids=")
        if prompt is not None:
            if isinstance(prompt, str):
                return [self._encode_prompt(prompt)], False
            if isinstance(prompt, Sequence) and prompt and all(isinstance(p, str) for p in prompt):
                return [self._encode_prompt(p) for p in prompt], True
            raise RequestTypeError("prompt must be a string or a non-empty list of strings")
        if isinstance(input_ids, Sequence) and input_ids and all(_is_token(t) for t in input_ids):
            return [self._encode_prompt(input_ids)], False
        if (isinstance(input_ids, Sequence) and input_ids
                and all(isinstance(x, Sequence) and not isinstance(x, (str, bytes)) for x in input_ids)):
            return [self._encode_prompt(x) for x in input_ids], True
        raise RequestTypeError("input_ids must be a non-empty list of token ids or a list of such lists")

    def _submit_request(self, req: Request, stream: bool,
                        listener: Callable[[str, bool], None] | None = None) -> RequestHandle:
        if self._stopping:
            raise EngineError("the engine has been shut down")
        if not self._thread.is_alive():
            raise EngineError("the engine thread is not running")
        handle = RequestHandle(req, self, stream)
        if listener is not None:
            handle.add_listener(listener)
        self._inbox.put(handle)
        return handle

    def _make_output(self, handle: RequestHandle) -> dict:
        req = handle.req
        meta: dict[str, Any] = {
            "id": req.rid,
            "prompt_tokens": len(req.input_ids),
            "completion_tokens": len(req.output_ids),
            "cached_tokens": req.num_cached_tokens,
            "finish_reason": req.finish_reason,
            "e2e_latency": (handle.finished_at or time.perf_counter()) - handle.submitted_at,
        }
        if req.kind is RequestKind.SCORE:
            return {"logprobs": req.continuation_logprobs, "meta_info": meta}
        if req.logprobs.return_logprob:
            meta["input_token_logprobs"] = req.input_token_logprobs
            meta["output_token_logprobs"] = req.output_token_logprobs
            if req.logprobs.top_logprobs_num:
                meta["input_top_logprobs"] = req.input_top_logprobs
                meta["output_top_logprobs"] = req.output_top_logprobs
        if req.finish_reason and req.finish_reason.get("type") == "abort":
            raise EngineError(req.finish_reason["message"])
        text = ""
        if req.detokenizer is not None:
            try:
                req.detokenizer.finish()
                text = req.detokenizer.text
            except Exception as exc:
                raise EngineError(f"request {req.rid} failed while detokenizing its output: {exc!r}") from exc
        return {"text": text, "output_ids": list(req.output_ids), "meta_info": meta}

    # -- the engine thread ----------------------------------------------------------------------------
    def _loop(self) -> None:
        """The engine thread. It never dies of an error: a request's own failure fails that request
        (the scheduler isolates it), anything else fails what is in flight and rebuilds the runtime."""
        while True:
            try:
                if not self._serve_once():
                    return
            except Exception as exc:
                logger.exception("engine step failed")
                self._recover(exc)

    def _serve_once(self) -> bool:
        """Take new requests, run one step, publish its results; False once shut down."""
        if self._broken is not None:  # no runtime: try again to build one when requests come
            items = self._drain_inbox(block=True)
            self._rebuild_runtime()
            return self._take_inbox(items)  # refuses them if it is still broken
        if not self._take_inbox(self._drain_inbox(block=not self.scheduler.has_work())):
            return False
        if self._step_holds:
            self._wait_for_holds()
            if not self._take_inbox(self._drain_inbox(block=False)):
                return False
        for req in self.scheduler.step():
            handle = self._handles.get(req.rid)
            if handle is None:
                continue
            if req.error is None:
                try:
                    handle._publish()
                except Exception as exc:  # e.g. detokenizing this request's output
                    logger.exception("request %s: publishing its output failed", req.rid)
                    self.scheduler.fail_request(req, exc, report=False)
            if req.error is not None:
                handle._fail(EngineError(f"request {req.rid} failed: {req.error!r}"))
                del self._handles[req.rid]
            elif req.finished:
                del self._handles[req.rid]
                self._count_finished(req)
        return True

    def _recover(self, exc: BaseException) -> None:
        """After an error no request can be blamed for: fail every request in flight, start clean."""
        self._fail_all(exc)
        self._rebuild_runtime()

    def _rebuild_runtime(self) -> None:
        try:
            self._build_runtime(self._dtype)
            self._broken = None
        except Exception as exc:  # keep the thread alive; requests are refused until a rebuild works
            logger.exception("rebuilding the runtime failed")
            self._broken = exc

    def _count_finished(self, req: Request) -> None:
        totals = self._token_totals
        totals["num_finished_requests"] += 1
        totals["num_prompt_tokens"] += len(req.input_ids) + sum(len(c) for c in req.continuations)
        totals["num_cached_prompt_tokens"] += req.num_cached_tokens
        if req.kind is not RequestKind.SCORE:
            totals["num_generated_tokens"] += len(req.output_ids)

    def _take_inbox(self, items: list) -> bool:
        """Queue new requests and run engine tasks; False on the shutdown sentinel."""
        for item in items:
            if item is None:
                self._fail_all(EngineError("the engine was shut down before this request finished"))
                return False
            if isinstance(item, _EngineTask):
                item.run(self)
                continue
            if self._broken is not None:
                item._fail(EngineError(f"request {item.req.rid} failed: the engine's runtime could not be "
                                       f"rebuilt after an error ({self._broken!r})"))
                continue
            item.req.arrival = next(self._ids)
            self._handles[item.req.rid] = item
            self.scheduler.add(item.req)
        return True

    def _drain_inbox(self, block: bool) -> list:
        items = [self._inbox.get()] if block else []
        while True:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                return items

    def _fail_all(self, exc: BaseException) -> None:
        for rid, handle in list(self._handles.items()):
            error = exc if isinstance(exc, EngineError) else EngineError(f"request {rid} failed: {exc!r}")
            handle._fail(error)
        self._handles.clear()
