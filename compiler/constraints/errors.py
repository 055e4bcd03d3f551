"""The one error type of the constraint compiler.

Every construct the compiler cannot enforce exactly is rejected with a `ConstraintError` that says
where it is: a JSON pointer into the schema (`pointer`) or an offset into the regex (`position`).
Failing closed is the point: a keyword that was silently dropped would let invalid output pass as a
success.
"""

from __future__ import annotations


class ConstraintError(ValueError):
    """A regex or JSON schema that cannot be compiled exactly, or that exceeds a budget.

    `pointer` is an RFC 6901 JSON pointer into the schema ("" for the root), `position` a 0-based
    character offset into the regex; either may be None. `pattern` is the regex the position is in.
    """

    def __init__(
        self,
        message: str,
        *,
        pointer: str | None = None,
        position: int | None = None,
        pattern: str | None = None,
    ) -> None:
        self.message = message
        self.pointer = pointer
        self.position = position
        self.pattern = pattern
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.pointer is not None:
            where.append(f"at schema pointer {self.pointer!r}" if self.pointer else "at the schema root")
        if self.position is not None:
            where.append(f"at regex position {self.position}")
        text = self.message
        if where:
            text += " (" + ", ".join(where) + ")"
        if self.pattern is not None and self.position is not None:
            shown, caret = _window(self.pattern, self.position)
            text += f"\n    {shown}\n    {' ' * caret}^"
        return text

    def with_pointer(self, pointer: str) -> ConstraintError:
        """The same error, placed at `pointer` (used when a schema's regex fails to compile)."""
        return ConstraintError(self.message, pointer=pointer, position=self.position, pattern=self.pattern)


def _window(pattern: str, position: int, width: int = 80) -> tuple[str, int]:
    """The part of a long pattern around `position` (a hostile regex can be megabytes long), and
    the caret's column in it."""
    if len(pattern) <= width:
        return pattern, position
    lo = max(0, min(position - width // 2, len(pattern) - width))
    head = "..." if lo > 0 else ""
    tail = "..." if lo + width < len(pattern) else ""
    return head + pattern[lo : lo + width] + tail, len(head) + position - lo


def escape_pointer_token(token: str | int) -> str:
    """One reference token of a JSON pointer, escaped per RFC 6901."""
    return str(token).replace("~", "~0").replace("/", "~1")


def join_pointer(pointer: str, *tokens: str | int) -> str:
    return pointer + "".join("/" + escape_pointer_token(t) for t in tokens)
