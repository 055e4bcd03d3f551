"""Chat roles as text: each role's prefix and suffix, derived from the model's own chat template.

SGLang programs write `s += user("hi")`; the state's text gets the role's *prefix*, the content and
the role's *suffix*. `ChatFormat` holds those strings. `ChatFormat.from_tokenizer` renders the
tokenizer's Jinja chat template on probe conversations and reads the pieces off between marker
contents, then checks the result by re-rendering a longer conversation; a template it cannot take
apart (or a tokenizer without one) falls back to a small registry of known formats (`FORMATS`),
picked by the template's telltale tokens or the model's name.

Both executors use the same rules (this module is pure and imports nothing from the runtime):

- `begin_text(role, num_messages)` is the text a role begin appends. SGLang's default-system-prompt
  rule: when the template injects a system message if the conversation does not start with one, the
  first role begun on a state with no messages yet, if it is not `system`, is preceded by that system
  message (prefix, default prompt, suffix). `start` (text the template puts before everything, such
  as a BOS the tokenizer does not add itself) is emitted before the first message.
- `end_text(role)` is the suffix a role end appends.
- `end_of_turn` is the stop string added to every `gen` inside an assistant role (for example
  `<|im_end|>`), with `end_of_turn_token_id` when it is a single token.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["FORMATS", "ChatFormat", "ChatTemplateError", "get_chat_format", "render_bounded", "sandboxed_environment"]


class ChatTemplateError(ValueError):
    """A chat template that cannot be split into role prefixes and suffixes."""


class _Tokenizer(Protocol):
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...


ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatFormat:
    """How chat roles render as text. `roles` maps a role to its (prefix, suffix)."""

    name: str
    roles: Mapping[str, tuple[str, str]]
    default_system_prompt: str | None = None
    start: str = ""
    end_of_turn: str | None = None
    end_of_turn_token_id: int | None = field(default=None, compare=False)

    def prefix(self, role: str) -> str:
        return self._pair(role)[0]

    def suffix(self, role: str) -> str:
        return self._pair(role)[1]

    def _pair(self, role: str) -> tuple[str, str]:
        try:
            return self.roles[role]
        except KeyError:
            raise ChatTemplateError(
                f"chat format {self.name!r} has no role {role!r} (roles: {', '.join(self.roles)})"
            ) from None

    def begin_text(self, role: str, num_messages: int) -> str:
        """What a `role_begin` appends to a state that holds `num_messages` finished messages."""
        text = self.prefix(role)
        if num_messages == 0:
            if role != "system" and self.default_system_prompt is not None:
                text = self.prefix("system") + self.default_system_prompt + self.suffix("system") + text
            text = self.start + text
        return text

    def default_system_message(self, role: str, num_messages: int) -> dict[str, str] | None:
        """The injected system message `begin_text` adds (for `s.messages()`), or None."""
        if num_messages == 0 and role != "system" and self.default_system_prompt is not None:
            return {"role": "system", "content": self.default_system_prompt}
        return None

    def end_text(self, role: str) -> str:
        """What a `role_end` appends."""
        return self.suffix(role)

    def render(self, messages: list[Mapping[str, str]]) -> str:
        """A whole conversation, as a program that emits these messages in order would write it."""
        out = []
        for i, message in enumerate(messages):
            out.append(self.begin_text(message["role"], i))
            out.append(message["content"])
            out.append(self.end_text(message["role"]))
        return "".join(out)

    def with_tokenizer(self, tokenizer: Any) -> ChatFormat:
        """This format with the end-of-turn token id filled in for `tokenizer` (when it is one token)."""
        if not self.end_of_turn:
            return self
        ids = tokenizer.encode(self.end_of_turn, add_special_tokens=False)
        token_id = ids[0] if len(ids) == 1 else None
        return ChatFormat(self.name, self.roles, self.default_system_prompt, self.start, self.end_of_turn, token_id)

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def from_template(cls, template: str, *, bos_token: str = "", eos_token: str = "",
                      tokenizer_adds_bos: bool = False, name: str = "template") -> ChatFormat:
        """Derive the format from a Jinja chat template by rendering probe conversations.

        Raises `ChatTemplateError` when the template does not decompose into per-role prefixes and
        suffixes that reproduce its own rendering of a four-message conversation.
        """
        render = _renderer(template, bos_token, eos_token)
        m = [f"SGCPROBE{i}X" for i in range(4)]

        def pieces(messages: list[tuple[str, str]]) -> list[str]:
            text = render([{"role": r, "content": c} for r, c in messages])
            out, pos = [], 0
            for _, content in messages:
                at = text.find(content, pos)
                if at < 0 or text.find(content, at + 1) >= 0:
                    raise ChatTemplateError(f"the template does not render message content {content!r} once")
                out.append(text[pos:at])
                pos = at + len(content)
            out.append(text[pos:])
            return out

        head_u, _ = pieces([("user", m[0])])
        _, ua_join, assistant_suffix = pieces([("user", m[0]), ("assistant", m[1])])
        _, _, au_join, user_suffix = pieces([("user", m[0]), ("assistant", m[1]), ("user", m[2])])
        if not ua_join.startswith(user_suffix):
            raise ChatTemplateError("the user suffix is not the same in the middle of a conversation")
        assistant_prefix = ua_join[len(user_suffix):]
        if not au_join.startswith(assistant_suffix):
            raise ChatTemplateError("the assistant suffix is not the same in the middle of a conversation")
        user_prefix = au_join[len(assistant_suffix):]
        head_s, su_join, _ = pieces([("system", m[3]), ("user", m[0])])
        if not su_join.endswith(user_prefix):
            raise ChatTemplateError("the user prefix after a system message differs")
        system_suffix = su_join[: len(su_join) - len(user_prefix)]
        # A BOS written by the template opens the conversation, unless it is also how every role
        # prefix starts (SmolLM2's BOS is `<|im_start|>`).
        start = ""
        if bos_token and head_s.startswith(bos_token) and not user_prefix.startswith(bos_token):
            start = bos_token
        system_prefix = head_s[len(start):]
        if not head_u.endswith(user_prefix):
            raise ChatTemplateError("the first user message's prefix differs from a later one's")
        injected = head_u[: len(head_u) - len(user_prefix)]
        default_system: str | None = None
        if injected != start:
            block = injected[len(start):] if injected.startswith(start) else None
            if block is None or not block.startswith(system_prefix) or not block.endswith(system_suffix):
                raise ChatTemplateError("the template adds text before the first message that is not a system message")
            default_system = block[len(system_prefix): len(block) - len(system_suffix)]
        if tokenizer_adds_bos and start == bos_token:
            start = ""  # the tokenizer adds the BOS itself: writing it as text would double it
        fmt = cls(
            name=name,
            roles={"system": (system_prefix, system_suffix), "user": (user_prefix, user_suffix),
                   "assistant": (assistant_prefix, assistant_suffix)},
            default_system_prompt=default_system,
            start=start,
            end_of_turn=_end_of_turn(assistant_suffix),
        )
        check = [{"role": "system", "content": "a"}, {"role": "user", "content": "b"},
                 {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"}]
        expected = render(check)
        if tokenizer_adds_bos and bos_token and expected.startswith(bos_token):
            expected = expected[len(bos_token):]
        if fmt.render(check) != expected:
            raise ChatTemplateError("the derived role prefixes and suffixes do not reproduce the template")
        return fmt

    @classmethod
    def from_tokenizer(cls, tokenizer: _Tokenizer, model_name: str = "") -> ChatFormat:
        """The model's format: derived from its template, else a known format, else `default`."""
        template = getattr(tokenizer, "chat_template", None)
        bos = getattr(tokenizer, "bos_token", None) or ""
        eos = getattr(tokenizer, "eos_token", None) or ""
        adds_bos = False
        bos_id = getattr(tokenizer, "bos_token_id", None)
        if bos and bos_id is not None:
            ids = tokenizer.encode("a")
            adds_bos = bool(ids) and ids[0] == bos_id
        if template:
            try:
                return cls.from_template(template, bos_token=bos, eos_token=eos, tokenizer_adds_bos=adds_bos,
                                         name="template").with_tokenizer(tokenizer)
            except Exception:  # any template we cannot take apart: sniff a known format instead
                pass
        return FORMATS[_guess_format(template or "", model_name)].with_tokenizer(tokenizer)


def _end_of_turn(assistant_suffix: str) -> str | None:
    """The stop string of an assistant turn: the first word of its suffix (`<|im_end|>`, `</s>`)."""
    words = assistant_suffix.split()
    return words[0] if words else None


def _renderer(template: str, bos_token: str, eos_token: str):
    from jinja2.exceptions import TemplateError

    env = sandboxed_environment()
    try:
        compiled = env.from_string(template)
    except TemplateError as exc:
        raise ChatTemplateError(f"the chat template does not compile: {exc}") from None

    def render(messages: list[dict[str, str]]) -> str:
        return render_bounded(compiled, messages=messages, add_generation_prompt=False, bos_token=bos_token,
                              eos_token=eos_token)

    return render


def sandboxed_environment() -> Any:
    """A Jinja2 environment for chat templates, which come with model folders: data, not code.

    Jinja2's immutable sandbox already refuses unsafe attributes (`''.__class__`), mutation and
    ranges over 100k; on top of it every operator, call, filter and attribute lookup checks the
    render's deadline (`template_seconds`), and `*`, `**`, `+`, calls and filters may not build a
    value over `template_chars` (`'x' * 10**10`, `'x'|center(10**10)`). `raise_exception` (what
    templates call to reject a conversation) raises `ChatTemplateError`.
    """
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from compiler import budgets

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+"})
        deadline = float("inf")

        def tick(self) -> None:
            if time.monotonic() > self.deadline:
                raise ChatTemplateError(budgets.over_budget("template_seconds", None, "rendering the chat template"))

        def limit(self, size: int, what: str) -> None:
            budgets.check("template_chars", size, f"the chat template's {what}", ChatTemplateError)

        def limit_args(self, args: tuple, kwargs: dict, what: str) -> None:
            for arg in (*args, *kwargs.values()):
                if isinstance(arg, int) and not isinstance(arg, bool):
                    self.limit(abs(arg), f"argument of {what}")

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            self.tick()
            if operator == "*":
                for seq, times in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
                        self.limit(len(seq) * max(times, 0), "'*' result")
            elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
                self.limit(right * abs(left).bit_length() // 8, "'**' result")
            elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                self.limit(len(left) + len(right), "'+' result")
            return super().call_binop(context, operator, left, right)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            __self.tick()
            __self.limit_args(args, kwargs, "a call")
            return super().call(__context, __obj, *args, **kwargs)

        def call_filter(self, name: str, value: Any, args: Any = None, kwargs: Any = None, *rest: Any,
                        **options: Any) -> Any:
            self.tick()
            self.limit_args(tuple(args or ()), dict(kwargs or {}), f"filter {name}")
            return super().call_filter(name, value, args, kwargs, *rest, **options)

        def getattr(self, obj: Any, attribute: str) -> Any:
            self.tick()
            return super().getattr(obj, attribute)

        def getitem(self, obj: Any, argument: Any) -> Any:
            self.tick()
            return super().getitem(obj, argument)

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True)
    # compiled templates call filters directly, not through `call_filter`: guard each one
    env.filters = {name: _guarded_filter(env, name, f) for name, f in env.filters.items()}

    def raise_exception(message: str) -> None:
        raise ChatTemplateError(f"the template raised: {message}")

    env.globals["raise_exception"] = raise_exception
    return env


def _guarded_filter(env: Any, name: str, fn: Any) -> Any:
    """`fn` with the deadline and size checks of `sandboxed_environment` (its arguments after the value)."""
    skip = 2 if hasattr(fn, "jinja_pass_arg") else 1  # (environment or context,) value, arguments...

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        env.tick()
        env.limit_args(args[skip:], kwargs, f"filter {name}")
        return fn(*args, **kwargs)

    return guarded


def render_bounded(compiled: Any, **variables: Any) -> str:
    """Render a template of `sandboxed_environment()` within the template budgets."""
    from jinja2.exceptions import SecurityError, TemplateError

    from compiler import budgets

    env = compiled.environment
    env.deadline = time.monotonic() + budgets.value("template_seconds")
    out: list[str] = []
    size = 0
    try:
        for chunk in compiled.generate(**variables):
            size += len(chunk)
            env.limit(size, "output")
            env.tick()
            out.append(chunk)
    except ChatTemplateError:
        raise
    except (SecurityError, TemplateError, OverflowError, TypeError, ValueError) as exc:
        raise ChatTemplateError(f"the chat template failed: {type(exc).__name__}: {exc}") from None
    finally:
        env.deadline = float("inf")
    return "".join(out)


def _guess_format(template: str, model_name: str) -> str:
    name = model_name.lower()
    if "<|im_start|>" in template or any(k in name for k in ("qwen", "smollm", "chatml")):
        return "chatml"
    if "<|start_header_id|>" in template or re.search(r"llama-?3", name):
        return "llama-3"
    if "<|user|>" in template or any(k in name for k in ("tinyllama", "zephyr")):
        return "zephyr"
    if "[INST]" in template or re.search(r"llama-?2|mistral", name):
        return "llama-2"
    return "default"


def _fmt(name: str, roles: dict[str, tuple[str, str]], end_of_turn: str | None, **kw: Any) -> ChatFormat:
    return ChatFormat(name=name, roles=roles, end_of_turn=end_of_turn, **kw)


FORMATS: dict[str, ChatFormat] = {
    f.name: f
    for f in (
        _fmt("default", {"system": ("SYSTEM: ", "\n"), "user": ("USER: ", "\n"),
                         "assistant": ("ASSISTANT: ", "\n")}, None),
        _fmt("chatml", {r: (f"<|im_start|>{r}\n", "<|im_end|>\n") for r in ROLES}, "<|im_end|>"),
        _fmt("llama-3", {r: (f"<|start_header_id|>{r}<|end_header_id|>\n\n", "<|eot_id|>") for r in ROLES},
             "<|eot_id|>"),
        _fmt("llama-2", {"system": ("<<SYS>>\n", "\n<</SYS>>\n\n"), "user": ("[INST] ", " [/INST]"),
                         "assistant": (" ", " </s><s>")}, "</s>"),
        _fmt("zephyr", {r: (f"<|{r}|>\n", "</s>\n") for r in ROLES}, "</s>"),
    )
}


def get_chat_format(spec: str | ChatFormat | None, tokenizer: _Tokenizer | None = None,
                    model_name: str = "") -> ChatFormat:
    """A format by registry name, a `ChatFormat` as is, or (None) the tokenizer's own."""
    if isinstance(spec, ChatFormat):
        return spec.with_tokenizer(tokenizer) if tokenizer is not None else spec
    if spec is not None:
        if spec not in FORMATS:
            raise ValueError(f"unknown chat format {spec!r}; known formats: {', '.join(FORMATS)}")
        fmt = FORMATS[spec]
        return fmt.with_tokenizer(tokenizer) if tokenizer is not None else fmt
    if tokenizer is None:
        return FORMATS["default"]
    return ChatFormat.from_tokenizer(tokenizer, model_name)
