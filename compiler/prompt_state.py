"""`PromptState`: the value of an IR `state` when a graph runs, an immutable prompt snapshot.

A `PromptState` is what an IR `state` value is at run time (in the graph executor, the test oracle,
a host step's arguments and result): the text so far, the chat messages closed so far, the
variables bound (`s["x"]`), their meta info (cached tokens, finish reason, logprobs), the open chat
role, and, for a branch of a fork, where the branch started. Every op returns a new state; nothing
is mutated, so fork branches can share their parent freely. (SGLang's mutable `ProgramState`, what
an eager run hands a program, is `compiler.interpreter.ProgramState`.)

What each IR op does with states is said once, in `compiler.ir_interpreter.Interpreter`; this
module gives it the operations, with the rules of the eager interpreter (`compiler.interpreter`), so
compiled and eager runs agree:

- `append`: a string is appended as is, any other value as `str(value)` (SGLang's `s += x`).
- Roles render through a *chat format*: `compiler.chat_template.ChatFormat` (derived from the
  model's template), or any object with `prefix(role)` and `suffix(role)`. `role_begin(role)`
  appends `fmt.begin_text(role, num_messages)` when the format has it (which adds the template's
  start text and default system message before the first message), else `fmt.prefix(role)`
  preceded, before the first message of a non-system role, by a system message with
  `fmt.default_system_prompt` when that is not None (SGLang's rule); the injected system message is
  recorded in `messages`. `role_end(role)` closes the message: its content is the text appended
  since the begin text, then `fmt.end_text(role)` (or `fmt.suffix(role)`) is appended. Roles do
  not nest, and `role_end` must close the open role. (A gen inside an `assistant` role also stops
  at the format's `end_of_turn`: see `executor/program/graph_llm.py`.)
- `fork`: each branch starts as a copy of the parent that remembers the text length and message
  count at the fork.
- a state remembers the variables bound since its fork (`bound_since_fork`) and what it added since
  (`added_since_fork`): what a `join` gathers (see the interpreter's `join`).

The text is a `str`, or for the semantics checker a symbolic text that behaves like one
(`compiler.passes.semantics.SymbolicText`: concatenation, `len`, slicing, `endswith`); nothing here
assumes more of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from compiler.errors import ProgramError

__all__ = ["PromptState", "StateError", "to_text"]


class StateError(ProgramError, ValueError):
    """A text op that cannot apply to this state (e.g. nested roles, an unbound variable)."""


def _begin_text(fmt: Any, role: str, num_messages: int) -> tuple[str, tuple[str, str] | None]:
    """The text a role begin appends, and the system message it injects (if any)."""
    if hasattr(fmt, "begin_text"):
        text = fmt.begin_text(role, num_messages)
        injected = None
        if hasattr(fmt, "default_system_message"):
            message = fmt.default_system_message(role, num_messages)
            if message is not None:
                injected = (message["role"], message["content"])
        return text, injected
    text = fmt.prefix(role)
    system = getattr(fmt, "default_system_prompt", None)
    if num_messages == 0 and role != "system" and system is not None:
        return fmt.prefix("system") + system + fmt.suffix("system") + text, ("system", system)
    return text, None


def _end_text(fmt: Any, role: str) -> str:
    return fmt.end_text(role) if hasattr(fmt, "end_text") else fmt.suffix(role)


def to_text(value: Any) -> str:
    """The text `append` adds for a value: strings as is, anything else as `str(value)`."""
    return value if isinstance(value, str) else str(value)


_EMPTY: Mapping[str, Any] = MappingProxyType({})


class PromptState:
    """An immutable prompt state. Read `text`, `messages`, `variables`, `s[name]`, `meta_info`.

    Host functions receive states and may return new ones built with `appended`, `with_var`, or
    the constructor (`messages` as `{"role", "content"}` dicts; `role` is the open role, whose
    content starts at `role_start`, by default the end of `text`).
    """

    __slots__ = ("_text", "_messages", "_vars", "_meta", "_role", "_role_start", "_fork_text",
                 "_fork_messages", "_bound")

    def __init__(self, text: str = "", messages: Sequence[Mapping[str, str] | tuple[str, str]] = (),
                 variables: Mapping[str, Any] = _EMPTY, meta_info: Mapping[str, Any] = _EMPTY,
                 role: str | None = None, role_start: int | None = None, fork_text: int = 0,
                 fork_messages: int = 0, bound: tuple[str, ...] = ()) -> None:
        self._text = text
        if not (isinstance(messages, tuple) and all(isinstance(m, tuple) for m in messages)):
            messages = tuple(m if isinstance(m, tuple) else (m["role"], m["content"]) for m in messages)
        self._messages: tuple[tuple[str, str], ...] = messages  # type: ignore[assignment]
        self._vars = variables if isinstance(variables, MappingProxyType) else MappingProxyType(dict(variables))
        self._meta = meta_info if isinstance(meta_info, MappingProxyType) else MappingProxyType(dict(meta_info))
        self._role = role
        self._role_start = (len(text) if role_start is None else role_start) if role is not None else 0
        self._fork_text = fork_text  # text length when this branch was forked (0 outside forks)
        self._fork_messages = fork_messages
        self._bound = bound  # variables bound since the fork (or since the start), in binding order

    def _replace(self, **changes: Any) -> PromptState:
        fields = {
            "text": self._text, "messages": self._messages, "variables": self._vars, "meta_info": self._meta,
            "role": self._role, "role_start": self._role_start, "fork_text": self._fork_text,
            "fork_messages": self._fork_messages, "bound": self._bound,
        }
        fields.update(changes)
        return type(self)(**fields)

    # -- reading -------------------------------------------------------------------------------
    @property
    def text(self) -> str:
        return self._text

    @property
    def messages(self) -> list[dict[str, str]]:
        """The chat messages closed so far, as `{"role", "content"}` dicts (a fresh list)."""
        return [{"role": r, "content": c} for r, c in self._messages]

    @property
    def variables(self) -> Mapping[str, Any]:
        return self._vars

    @property
    def meta_info(self) -> Mapping[str, Any]:
        """Per variable: the engine's meta info of the request that bound it."""
        return self._meta

    @property
    def open_role(self) -> str | None:
        return self._role

    def __getitem__(self, name: str) -> Any:
        try:
            return self._vars[name]
        except KeyError:
            bound = ", ".join(repr(v) for v in self._vars) or "none"
            raise StateError(f"variable {name!r} is not bound (bound: {bound})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._vars

    def get(self, name: str, default: Any = None) -> Any:
        return self._vars.get(name, default)

    def get_meta_info(self, name: str) -> Any:
        return self._meta.get(name)

    def __repr__(self) -> str:
        text = self._text if len(self._text) <= 60 else "..." + self._text[-57:]
        return f"{type(self).__name__}(text={text!r}, variables={dict(self._vars)!r})"

    # -- ops -----------------------------------------------------------------------------------
    def appended(self, text: str) -> PromptState:
        return self._replace(text=self._text + text) if text else self

    def with_var(self, name: str, value: Any, meta: Any = None) -> PromptState:
        """The state with variable `name` bound (and its meta info, if given)."""
        variables = dict(self._vars)
        variables[name] = value
        meta_info = self._meta
        if meta is not None:
            meta_dict = dict(self._meta)
            meta_dict[name] = meta
            meta_info = MappingProxyType(meta_dict)
        bound = self._bound if name in self._bound else (*self._bound, name)
        return self._replace(variables=MappingProxyType(variables), meta_info=meta_info, bound=bound)

    def role_begin(self, role: str, chat_format: Any) -> PromptState:
        if self._role is not None:
            raise StateError(f"role {role!r} begins inside role {self._role!r}: roles do not nest")
        try:
            begin, injected = _begin_text(chat_format, role, len(self._messages))
        except (KeyError, ValueError) as exc:
            raise StateError(str(exc)) from None
        text = self._text + begin
        messages = self._messages if injected is None else (*self._messages, injected)
        return self._replace(text=text, role=role, role_start=len(text), messages=messages)

    def role_end(self, role: str, chat_format: Any) -> PromptState:
        if self._role != role:
            if self._role is None:
                raise StateError(f"role {role!r} ends but no role is open")
            raise StateError(f"role {role!r} ends but the open role is {self._role!r}")
        content = self._text[self._role_start:]
        try:
            end = _end_text(chat_format, role)
        except (KeyError, ValueError) as exc:
            raise StateError(str(exc)) from None
        return self._replace(text=self._text + end, role=None, role_start=0,
                             messages=(*self._messages, (role, content)))

    def forked(self) -> PromptState:
        """A branch's starting state: a copy that remembers where the fork happened."""
        return self._replace(fork_text=len(self._text), fork_messages=len(self._messages), bound=())

    @property
    def bound_since_fork(self) -> tuple[str, ...]:
        """The variables bound since this branch's fork (since the start outside forks), in order."""
        return self._bound

    def added_since_fork(self) -> tuple[Any, tuple[tuple[str, str], ...]]:
        """The text and the (role, content) messages this branch added since its fork."""
        return self._text[self._fork_text:], self._messages[self._fork_messages:]

    def extended(self, text: Any, messages: Sequence[tuple[str, str]]) -> PromptState:
        """The state with `text` appended and `messages` closed after its own (a branch's additions)."""
        return self._replace(text=self._text + text, messages=(*self._messages, *messages))

    def rewritten(self, text: Any, messages: Sequence[Mapping[str, str]], role: str | None) -> PromptState:
        """The same state (variables, fork point) with new text, messages and open role: what a host
        step that ran Python on the text hands back."""
        return self._replace(text=text, messages=tuple((m["role"], m["content"]) for m in messages), role=role,
                             role_start=None)
