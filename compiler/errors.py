"""Errors of the language front end: a bad program is one clear line that names the user's line.

`CompileError` is raised by the tracer (`compiler.parser.tracer`) for programs it rejects and by the
eager interpreter for the same mistakes at run time (nested roles, a forked state used after join,
an unknown argument), so both paths report a bad program the same way: ``file:line: message``.
`user_location()` finds that line: the innermost stack frame that belongs to the user's code rather
than to sgc itself or to the standard library (`with s.user():` enters through `contextlib`).
"""

from __future__ import annotations

import os
import sys
import sysconfig
import types
from pathlib import Path

__all__ = ["CompileError", "ProgramError", "definition_site", "is_internal_file", "location_of_traceback",
           "recursion_error", "recursion_site", "user_location"]


class CompileError(Exception):
    """A program the language rejects. `file` and `line` say where (either may be None)."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        super().__init__(self._render())

    def _render(self) -> str:
        if self.file is None:
            return self.message
        where = _display_path(self.file)
        return f"{where}:{self.line}: {self.message}" if self.line is not None else f"{where}: {self.message}"

    @classmethod
    def here(cls, message: str) -> CompileError:
        """The error located at the user's innermost frame on the current stack."""
        file, line = user_location()
        return cls(message, file, line)


class ProgramError(RuntimeError):
    """A program instance failed while running (an engine error, an exception in the user's code).

    `run_batch` gives each failed instance a state whose `error` is this, and reading the state's text
    or variables raises it: errors are reported per instance, never swallowed.
    """

    def __init__(self, message: str, index: int | None = None) -> None:
        self.index = index
        super().__init__(message)


def _display_path(path: str) -> str:
    """`path` relative to the working directory when it is inside it (shorter messages)."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return path
    return path if rel.startswith("..") else rel


_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
_INTERNAL_DIRS = tuple(str(_PACKAGE_ROOT / d) + os.sep for d in ("compiler", "sgc", "sglang", "executor"))


def _library_dirs() -> tuple[str, ...]:
    dirs = set()
    for key in ("stdlib", "platstdlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            dirs.add(str(Path(path).resolve()) + os.sep)
    return tuple(sorted(dirs))


_LIBRARY_DIRS = _library_dirs()
_INTERNAL_CACHE: dict[str, bool] = {}


def is_internal_file(filename: str) -> bool:
    """Whether a frame in `filename` is sgc's own code or the standard library (not the user's)."""
    cached = _INTERNAL_CACHE.get(filename)
    if cached is None:
        if filename.startswith("<"):
            cached = filename.startswith("<frozen")
        else:
            resolved = str(Path(filename).resolve())
            cached = resolved.startswith(_INTERNAL_DIRS) or (
                resolved.startswith(_LIBRARY_DIRS) and "site-packages" not in resolved
            )
        _INTERNAL_CACHE[filename] = cached
    return cached


def _is_user_code(code: types.CodeType) -> bool:
    """Whether a frame running `code` is the user's: not sgc, not the standard library, and not a
    method that `dataclasses` generated (`__init__` in `<string>`, which wraps sgc's own checks)."""
    if code.co_filename == "<string>" and code.co_name.startswith("__") and code.co_name.endswith("__"):
        return False
    return not is_internal_file(code.co_filename)


def user_location(frame: types.FrameType | None = None) -> tuple[str | None, int | None]:
    """(file, line) of the innermost user frame at or above `frame` (default: the caller's)."""
    current = frame if frame is not None else sys._getframe(1)
    while current is not None:
        if _is_user_code(current.f_code):
            return current.f_code.co_filename, current.f_lineno
        current = current.f_back
    return None, None


def definition_site(func: object) -> tuple[str | None, int | None]:
    """(file, line) of a function's `def` line (not its first decorator's, which is what
    `co_firstlineno` gives); a class's `class` line. (None, None) for what has no Python source."""
    import inspect

    code = getattr(func, "__code__", None)
    if code is None and not inspect.isclass(func):
        return None, None
    fallback = (code.co_filename, code.co_firstlineno) if code is not None else (None, None)
    try:
        file = inspect.getsourcefile(func) or fallback[0]  # type: ignore[arg-type]
        lines, start = inspect.getsourcelines(func)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return fallback
    for offset, text in enumerate(lines):
        if text.lstrip().startswith(("def ", "async def ", "class ")):
            return file, start + offset
    return fallback if code is not None else (file, start)


def _user_frames(tb: types.TracebackType | None) -> list[tuple[types.CodeType, str, int]]:
    """(code, file, line) of each user frame of a traceback, outermost first."""
    frames = []
    while tb is not None:
        code = tb.tb_frame.f_code
        if _is_user_code(code):
            frames.append((code, code.co_filename, tb.tb_lineno))
        tb = tb.tb_next
    return frames


def location_of_traceback(tb: types.TracebackType | None) -> tuple[str | None, int | None]:
    """(file, line) of the innermost user frame of a traceback (where an exception was raised)."""
    frames = _user_frames(tb)
    return (frames[-1][1], frames[-1][2]) if frames else (None, None)


def recursion_site(tb: types.TracebackType | None) -> tuple[str | None, int | None]:
    """(file, line) of the call that recursed, for a `RecursionError`'s traceback.

    The innermost frame of a runaway recursion is wherever the stack happened to run out, which says
    little; the useful line is the recursive call: in the outermost user function that appears again
    deeper in the traceback, the line it was executing.
    """
    frames = _user_frames(tb)
    last_seen = {id(code): index for index, (code, _, _) in enumerate(frames)}
    for index, (code, file, line) in enumerate(frames):
        if last_seen[id(code)] > index:
            return file, line
    return (frames[-1][1], frames[-1][2]) if frames else (None, None)


def recursion_error(exc: RecursionError) -> CompileError:
    """A RecursionError from a program's own Python (a helper that calls itself without end, a value
    nested too deeply to print) as a CompileError at the recursive call; both executors use it."""
    file, line = recursion_site(exc.__traceback__)
    return CompileError(f"RecursionError: {exc} (a recursive call without an end, or a value nested too deeply?)",
                        file, line)
