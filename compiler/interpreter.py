"""The eager reference interpreter: run a program's Python function on a real state, one step at a time.

This is SGLang's execution model without its background executor: every `s += expr` runs when it is
written. A `gen` is one `engine.generate` call on the tokens of the state's whole text (with the
merged sampling parameters and constraint, see `compiler.lang_sampling`); a `select` is one
`engine.score` call over the choices' tokens (plus one per choice for
`unconditional_likelihood_normalized`). `fork` copies the state; `join` gathers the branches'
variables into lists, or appends their new text (`concate_and_append`).

It is the test oracle for compiled programs (same text and variables, greedy), and the executor of
host steps: a graph runner runs a function that needs the host with `run_on_prompt_state` (an
eager state built by `new_state` from the IR's `PromptState`, and back). Selects follow the shared
rule of `compiler.lang_select`.

The backend is an `sgc.Runtime` (its `.engine`) or an `Engine`-like object with `generate`, `score`
and `tokenizer` (`encode`, `decode`, `chat_template`, ...).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import threading
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from compiler.chat_template import ChatFormat, get_chat_format
from compiler.errors import CompileError, ProgramError, recursion_error, user_location
from compiler.lang_backend import get_default_backend
from compiler.lang_expr import GenExpr, SelectExpr
from compiler.lang_program import Program, lookup_function
from compiler.lang_sampling import RunDefaults, logprob_options, sampling_params
from compiler.lang_select import decide, score_requests
from compiler.lang_state import BranchGroupBase, StateBase
from compiler.prompt_state import PromptState

__all__ = ["ForkGroup", "ProgramState", "new_state", "resolve_backend", "resolve_function",
           "run_batch", "run_eager", "run_host_function", "run_on_prompt_state", "run_program"]

logger = logging.getLogger("sgc.interpreter")

JOIN_MODES = ("gather_variable", "concate_and_append")


# ---------------------------------------------------------------------------------------------------
# Backends


@dataclass(frozen=True)
class Backend:
    """A resolved backend: the engine, its tokenizer and the chat format roles render with."""

    engine: Any
    tokenizer: Any
    chat_format: ChatFormat


_BACKENDS: weakref.WeakKeyDictionary[Any, Backend] = weakref.WeakKeyDictionary()
_BACKENDS_LOCK = threading.Lock()


def resolve_backend(backend: Any = None) -> Backend:
    """The backend to run on: `backend`, else the default one (`set_default_backend`)."""
    if isinstance(backend, Backend):
        return backend
    if backend is None:
        backend = get_default_backend()
    if backend is None:
        raise ProgramError("no backend to run on: call sgc.set_default_backend(sgc.Runtime(model_path=...)) "
                           "or pass backend= to run()")
    with _BACKENDS_LOCK:
        try:
            cached = _BACKENDS.get(backend)
        except TypeError:  # not weak-referenceable: resolve every time
            cached = None
    if cached is not None:
        return cached
    engine = getattr(backend, "engine", backend)
    missing = [a for a in ("generate", "score", "tokenizer") if not hasattr(engine, a)]
    if missing:
        raise TypeError(f"{backend!r} is not a backend: it has no {', '.join(missing)} "
                        "(pass an sgc.Runtime or an sgc.Engine)")
    tokenizer = engine.tokenizer
    folder = getattr(engine, "model_folder", None)
    model_name = getattr(folder, "name", "") or str(getattr(getattr(engine, "config", None), "model_path", ""))
    spec = getattr(backend, "chat_template", None)
    fmt = get_chat_format(spec if isinstance(spec, (str, ChatFormat)) else None, tokenizer, model_name)
    resolved = Backend(engine, tokenizer, fmt)
    with _BACKENDS_LOCK, contextlib.suppress(TypeError):
        _BACKENDS[backend] = resolved
    return resolved


@dataclass
class _Context:
    backend: Backend
    defaults: RunDefaults
    stream: bool = False


class _Stream:
    """The text a root state appends, chunk by chunk, for `text_iter` (also after the run)."""

    def __init__(self) -> None:
        self.chunks: list[tuple[str | None, str]] = []
        self.done = False
        self.cond = threading.Condition()

    def push(self, var: str | None, text: str) -> None:
        if not text:
            return
        with self.cond:
            self.chunks.append((var, text))
            self.cond.notify_all()

    def finish(self) -> None:
        with self.cond:
            self.done = True
            self.cond.notify_all()

    def iterate(self, var_name: str | None) -> Iterator[str]:
        index = 0
        while True:
            with self.cond:
                while index >= len(self.chunks) and not self.done:
                    self.cond.wait()
                pending = self.chunks[index:]
                index = len(self.chunks)
                finished = self.done
            for var, text in pending:
                if var_name is None or var == var_name:
                    yield text
            if finished and index >= len(self.chunks):
                return


# ---------------------------------------------------------------------------------------------------
# The state


def _where() -> str:
    file, line = user_location()
    return f"{file}:{line}" if file else "an unknown line"


class ProgramState(StateBase):
    """A prompt state: text, chat messages, variables and their meta info (SGLang's `ProgramState`)."""

    def __init__(self, ctx: _Context) -> None:
        self._ctx = ctx
        self._text = ""
        self._messages: list[dict[str, str]] = []
        self._vars: dict[str, Any] = {}
        self._meta: dict[str, Any] = {}
        self._role: tuple[str, int] | None = None  # (open role, offset where its content starts)
        self._assigned: list[str] = []  # variables bound since this state was created or forked
        self._fork_base = (0, 0)  # (text length, message count) at the fork that made this state
        self._joined_at: str | None = None
        self._sink: _Stream | None = None
        self._done: threading.Event | None = None
        self._runner: threading.Thread | None = None
        self._error: BaseException | None = None
        self.ret_value: Any = None

    # -- reading ----------------------------------------------------------------------------------
    def _wait(self) -> None:
        if self._done is not None and threading.current_thread() is not self._runner:
            self._done.wait()
        if self._error is not None:
            raise self._error

    def text(self) -> str:
        self._wait()
        return self._text

    def messages(self) -> list[dict[str, str]]:
        """The finished chat messages, `{"role", "content"}` (the injected default system one too)."""
        self._wait()
        return [dict(m) for m in self._messages]

    def __getitem__(self, name: str) -> Any:
        self._wait()
        try:
            return self._vars[name]
        except KeyError:
            raise KeyError(f"variable {name!r} is not set (set: {', '.join(map(repr, self._vars)) or 'none'})") from None

    def get_var(self, name: str) -> Any:
        return self[name]

    def __contains__(self, name: str) -> bool:
        self._wait()
        return name in self._vars

    def get_meta_info(self, name: str) -> Any:
        """The engine's meta info of the gen/select that bound `name` (a list after a gathering join)."""
        self._wait()
        return self._meta.get(name)

    def error(self) -> BaseException | None:
        """The exception this instance failed with, or None."""
        if self._done is not None and threading.current_thread() is not self._runner:
            self._done.wait()
        return self._error

    def sync(self) -> None:
        self._wait()

    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        """The text as it is appended (run with `stream=True` to get it live); one variable's only."""
        if self._sink is None:
            raise ValueError("text_iter is only available on the state returned by run()")
        yield from self._sink.iterate(var_name)
        self._wait()

    def snapshot(self) -> dict[str, Any]:
        """Text, messages, variables, meta info and the open role, as plain data."""
        self._wait()
        return {"text": self._text, "messages": [dict(m) for m in self._messages], "variables": dict(self._vars),
                "meta_info": dict(self._meta), "role": self._role[0] if self._role else None}

    def __repr__(self) -> str:
        text = self._text if len(self._text) <= 60 else self._text[:57] + "..."
        return f"ProgramState({text!r}, variables={list(self._vars)})"

    # -- writing ----------------------------------------------------------------------------------
    def __iadd__(self, other: Any) -> ProgramState:
        self._check_alive()
        self._exec(other)
        return self

    def set_var(self, name: str, value: Any) -> None:
        self._check_alive()
        self._bind(name, value)

    @contextlib.contextmanager
    def var_scope(self, name: str) -> Iterator[None]:
        """Bind `name` to the text appended inside the block."""
        self._check_alive()
        start = len(self._text)
        yield
        self._bind(name, self._text[start:])

    def fork(self, size: int = 1, position_ids_offset: Any = None) -> ForkGroup:
        """`size` copies of this state (text, messages, variables, open role)."""
        self._check_alive()
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise CompileError.here(f"fork size must be a positive integer, got {size!r}")
        return ForkGroup(self, [self._fork_copy() for _ in range(size)])

    def copy(self, position_ids_offset: Any = None) -> ProgramState:
        """A single fork of this state; `with s.copy() as c:` joins it back at the end (SGLang's form)."""
        group = self.fork(1)
        branch = group[0]
        branch._copy_group = group
        return branch

    def _fork_copy(self) -> ProgramState:
        child = ProgramState(self._ctx)
        child._text = self._text
        child._messages = [dict(m) for m in self._messages]
        child._vars = copy.copy(self._vars)
        child._meta = copy.copy(self._meta)
        child._role = self._role
        child._fork_base = (len(self._text), len(self._messages))
        return child

    def _check_alive(self) -> None:
        if self._joined_at is not None:
            raise CompileError.here(f"this forked state was joined at {self._joined_at}; "
                                    "a forked state cannot be used after join")

    def _open_role(self) -> str | None:
        return self._role[0] if self._role else None

    def _append(self, text: str, var: str | None = None) -> None:
        self._text += text
        if self._sink is not None:
            self._sink.push(var, text)

    def _bind(self, name: str, value: Any, meta: Any = None) -> None:
        self._vars[name] = value
        if meta is not None:
            self._meta[name] = meta
        if name not in self._assigned:
            self._assigned.append(name)

    def _append_text(self, text: str) -> None:
        self._append(text)

    def _exec_role_begin(self, role: str) -> None:
        self._check_alive()
        if self._role is not None:
            raise CompileError.here(f"nested roles: {role} begins while the {self._role[0]} role is open")
        fmt = self._ctx.backend.chat_format
        injected = fmt.default_system_message(role, len(self._messages))
        text = fmt.begin_text(role, len(self._messages))
        if injected is not None:
            self._messages.append(injected)
        self._append(text)
        self._role = (role, len(self._text))

    def _exec_role_end(self, role: str) -> None:
        self._check_alive()
        if self._role is None:
            raise CompileError.here(f"{role} role ends but no role is open")
        if self._role[0] != role:
            raise CompileError.here(f"{role} role ends but the open role is {self._role[0]}")
        self._messages.append({"role": role, "content": self._text[self._role[1]:]})
        self._role = None
        self._append(self._ctx.backend.chat_format.end_text(role))

    def _prompt_ids(self, what: str) -> list[int]:
        ids = self._ctx.backend.tokenizer.encode(self._text)
        if not ids:
            raise ProgramError(f"{_where()}: {what} needs a non-empty prompt (add some text first)")
        return ids

    def _gen(self, expr: GenExpr) -> None:
        self._check_role_owner("gen")
        backend, defaults = self._ctx.backend, self._ctx.defaults
        fmt = backend.chat_format
        in_assistant = self._open_role() == "assistant"
        params = sampling_params(expr.params, defaults,
                                 end_of_turn=fmt.end_of_turn if in_assistant else None,
                                 end_of_turn_token_id=fmt.end_of_turn_token_id if in_assistant else None)
        options = logprob_options(expr.params, defaults, expr.extra)
        name = expr.name
        if params.get("max_new_tokens") == 0:
            self._bind_gen(name, "", {"prompt_tokens": None, "completion_tokens": 0,
                                      "finish_reason": {"type": "length", "length": 0}})
            return
        request = dict(input_ids=self._prompt_ids("gen"), sampling_params=params, **options)
        if self._ctx.stream and self._sink is not None:
            pieces, meta = [], {}
            for chunk in backend.engine.generate(stream=True, **request):
                if chunk["text"]:
                    pieces.append(chunk["text"])
                    self._append(chunk["text"], name)
                meta = chunk.get("meta_info", meta)
            self._bind_gen(name, "".join(pieces), meta, appended=True)
            return
        out = backend.engine.generate(**request)
        meta = dict(out["meta_info"])
        if expr.extra.get("return_text_in_logprobs") or self._ctx.defaults.return_text_in_logprobs:
            _add_logprob_text(meta, backend.tokenizer)
        self._bind_gen(name, out["text"], meta)

    def _bind_gen(self, name: str | None, text: str, meta: dict, appended: bool = False) -> None:
        if not appended:
            self._append(text, name)
        if name is not None:
            self._bind(name, text, meta)

    def _select(self, expr: SelectExpr) -> None:
        """A select by the shared rule (`compiler.lang_select`): one score call over the choices (and
        one per choice for the unconditional method), then the method's decision."""
        self._check_role_owner("select")
        backend = self._ctx.backend
        choices = list(expr.choices)
        try:
            requests, conts = score_requests(backend.tokenizer, self._text, choices, expr.method.name)
        except ValueError as exc:
            raise ProgramError(f"{_where()}: {exc}") from None
        scored = [backend.engine.score(r.prompt, r.continuations)["logprobs"] for r in requests]
        index, meta = decide(expr.method.name, conts, scored)
        choice = choices[index]
        meta["choices"] = choices
        self._append(choice, expr.name)
        if expr.name is not None:
            self._bind(expr.name, choice, meta)

    def _finish(self) -> None:
        if self._sink is not None:
            self._sink.finish()
        if self._done is not None:
            self._done.set()


def _add_logprob_text(meta: dict, tokenizer: Any) -> None:
    for key in ("input_token_logprobs", "output_token_logprobs"):
        if key in meta and meta[key] is not None:
            meta[key] = [(lp, tid, tokenizer.decode([tid], skip_special_tokens=False)) for lp, tid, *_ in meta[key]]


class ForkGroup(BranchGroupBase, Sequence[ProgramState]):
    """The states `s.fork(n)` returns (SGLang's `ProgramStateGroup`); `join()` merges them back."""

    def __init__(self, parent: ProgramState, branches: list[ProgramState]) -> None:
        self._parent = parent
        self._branches = branches
        self._joined = False

    def __getitem__(self, index: Any) -> Any:
        return self._branches[index]

    def join(self, mode: str = "gather_variable") -> None:
        """Merge the branches into the parent state.

        Every variable bound in any branch since the fork becomes, in the parent, the list of its
        values in each branch (None where a branch has none), with its meta info likewise; nothing is
        dropped. `concate_and_append` also appends each branch's new text (and messages) to the
        parent, in branch order. The branches cannot be used afterwards.
        """
        if mode not in JOIN_MODES:
            raise CompileError.here(f"unknown join mode {mode!r}; expected one of {', '.join(JOIN_MODES)}")
        if self._joined:
            raise CompileError.here("these forks are already joined")
        parent = self._parent
        parent._check_alive()
        for branch in self._branches:
            branch._check_alive()
        if mode == "concate_and_append":
            for branch in self._branches:
                text_base, messages_base = branch._fork_base
                parent._append(branch._text[text_base:])
                parent._messages.extend(dict(m) for m in branch._messages[messages_base:])
        names: list[str] = []
        for branch in self._branches:
            names.extend(n for n in branch._assigned if n not in names)
        for name in names:
            parent._bind(name, [b._vars.get(name) for b in self._branches],
                         [b._meta.get(name) for b in self._branches])
        where = _where()
        for branch in self._branches:
            branch._joined_at = where
        self._joined = True


# ---------------------------------------------------------------------------------------------------
# Running programs


def new_state(backend: Any = None, defaults: RunDefaults | None = None, *, text: str = "",
              messages: Sequence[dict[str, str]] = (), variables: dict[str, Any] | None = None,
              meta_info: dict[str, Any] | None = None, role: str | None = None) -> ProgramState:
    """A state with the given contents (how a graph executor hands its state to a host step).

    `role` is the open role; its content is taken to start at the end of `text`.
    """
    state = ProgramState(_Context(resolve_backend(backend), defaults or RunDefaults()))
    state._text = text
    state._messages = [dict(m) for m in messages]
    state._vars = dict(variables or {})
    state._meta = dict(meta_info or {})
    state._role = (role, len(text)) if role else None
    return state


def resolve_function(ref: str) -> Program:
    """The `Function` an IR host step names (`module:qualname`): a live one, else imported."""
    found = lookup_function(ref)
    if found is not None:
        return found
    module_name, _, qualname = ref.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, Program):
        raise TypeError(f"{ref} is not an sgc function")
    return obj


def run_host_function(ref: str | Program, state: ProgramState, args: dict[str, Any]) -> ProgramState:
    """Run a program's function body eagerly on `state` (the IR `host` step of a needs-host function)."""
    fn = ref if isinstance(ref, Program) else resolve_function(ref)
    state.ret_value = _call_program(fn, state, args)
    return state


def run_on_prompt_state(fn: Program, backend: Any, defaults: RunDefaults | None, names: Sequence[str],
                        values: Sequence[Any]) -> PromptState:
    """Run program `fn` eagerly on prompt state `values[0]` with arguments `names[1:]`=`values[1:]`:
    the IR `host` step of a function that needs the host, as the graph executor and the test oracle
    run it.

    Text, messages and the open role are taken from the eager state afterwards; variables it bound or
    changed are bound on the result (so a later join gathers them like any other).
    """
    state: PromptState = values[0]
    eager = new_state(backend, defaults, text=state.text, messages=state.messages,
                      variables=dict(state.variables), meta_info=dict(state.meta_info), role=state.open_role)
    run_host_function(fn, eager, dict(zip(names[1:], values[1:])))
    snap = eager.snapshot()
    result = state.rewritten(snap["text"], snap["messages"], snap["role"])
    for name, value in snap["variables"].items():
        if name not in state.variables or state.variables[name] is not value:
            result = result.with_var(name, value, snap["meta_info"].get(name))
    return result


def _call_program(function: Program, state: ProgramState, values: dict[str, Any]) -> Any:
    """Run the program's body on `state`. A RecursionError in its Python becomes a CompileError at
    the recursive call, as when tracing (nested @function calls stop earlier, at program_depth)."""
    try:
        return function.func(state, **values)
    except RecursionError as exc:
        raise recursion_error(exc) from None


def run_program(function: Program, values: dict[str, Any], defaults: RunDefaults, *,
                backend: Any = None, stream: bool = False) -> ProgramState:
    """Run one instance; with `stream=True` in a background thread (the state fills as it runs)."""
    state = ProgramState(_Context(resolve_backend(backend), defaults, stream))
    state._sink = _Stream()
    if stream:
        state._done = threading.Event()
        state._runner = threading.Thread(target=_execute, args=(function, state, values, False),
                                         name=f"sgc-{function.name}", daemon=True)
        state._runner.start()
        return state
    _execute(function, state, values, True)
    return state


def run_eager(function: Any, *args: Any, **kwargs: Any) -> Any:
    """`function.run(...)` with the eager interpreter, whatever the backend (the test oracle)."""
    return function.run(*args, eager=True, **kwargs)


def _execute(function: Program, state: ProgramState, values: dict[str, Any], reraise: bool) -> None:
    try:
        state.ret_value = _call_program(function, state, values)
    except BaseException as exc:
        state._error = exc
        if reraise:
            raise
    finally:
        state._finish()


def run_batch(function: Program, batch: Sequence[dict[str, Any]], defaults: RunDefaults, *,
              backend: Any = None, num_threads: int | str = "auto", progress_bar: bool = False,
              generator_style: bool = False) -> Any:
    """Run many instances on threads (the engine batches their requests); states in input order."""
    resolved = resolve_backend(backend)
    num = len(batch)
    if num_threads == "auto":
        workers = max(1, min(num, 64))
    elif isinstance(num_threads, int) and num_threads >= 1:
        workers = num_threads
    else:
        raise ValueError(f"num_threads must be 'auto' or a positive integer, got {num_threads!r}")

    def one(index: int) -> ProgramState:
        state = ProgramState(_Context(resolved, defaults))
        state._sink = _Stream()
        try:
            state.ret_value = _call_program(function, state, batch[index])
        except Exception as exc:
            error = ProgramError(f"instance {index} of {function.name} failed: {type(exc).__name__}: {exc}", index)
            error.__cause__ = exc
            state._error = error
            logger.warning("%s", error)
        finally:
            state._finish()
        return state

    if generator_style:
        return _generate_states(one, num, workers, progress_bar)
    states: list[ProgramState] = []
    for state in _generate_states(one, num, workers, progress_bar):
        states.append(state)
    return states


def _generate_states(one: Any, num: int, workers: int, progress_bar: bool) -> Iterator[ProgramState]:
    bar = None
    if progress_bar:
        from tqdm import tqdm

        bar = tqdm(total=num)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sgc-batch") as pool:
        futures = [pool.submit(one, i) for i in range(num)]
        if bar is not None:
            for future in futures:
                future.add_done_callback(lambda _f: bar.update(1))
        try:
            for future in futures:
                yield future.result()
        finally:
            if bar is not None:
                bar.close()
