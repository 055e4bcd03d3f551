"""What both executors' state objects share: SGLang's role forms and the role-owner check.

The eager `ProgramState` (`compiler.interpreter`) and the tracer's `SymState`
(`compiler.parser.trace_state`) subclass `StateBase`.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from compiler.errors import CompileError
from compiler.lang_expr import ExprList, GenExpr, RoleBegin, RoleEnd, SelectExpr, Text, _role

__all__ = ["StateBase"]


class StateBase:
    """Base of the eager `ProgramState` and the tracer's symbolic state.

    Subclasses implement how text is appended (`_append_text`), `_gen`, `_select`,
    `_exec_role_begin(role)` and `_exec_role_end(role)`; this class gives them the dispatch of
    `s += item`, SGLang's `with s.user():` forms and the check that a gen runs in a role of its own
    state.
    """

    def _exec(self, item: Any) -> None:
        """`s += item`: text, expressions, lists of them; anything else appends `str(item)` (as SGLang)."""
        if item is None:
            raise CompileError.here("cannot append None to a state (as in SGLang: did a helper forget to return?)")
        if isinstance(item, str):
            self._append_text(item)
        elif isinstance(item, ExprList):
            for part in item.items:
                self._exec(part)
        elif isinstance(item, Text):
            self._append_text(item.text)
        elif isinstance(item, GenExpr):
            self._gen(item)
        elif isinstance(item, SelectExpr):
            self._select(item)
        elif isinstance(item, RoleBegin):
            self._exec_role_begin(item.role)
        elif isinstance(item, RoleEnd):
            self._exec_role_end(item.role)
        elif isinstance(item, (StateBase, BranchGroupBase)):
            raise CompileError.here(f"cannot add a state to a state ({item!r})")
        else:
            self._append_text(str(item))  # as SGLang: s += 3 appends "3"

    def _append_text(self, text: str) -> None:
        raise NotImplementedError

    def _gen(self, expr: GenExpr) -> None:
        raise NotImplementedError

    def _select(self, expr: SelectExpr) -> None:
        raise NotImplementedError

    def _exec_role_begin(self, role: str) -> None:
        raise NotImplementedError

    def _exec_role_end(self, role: str) -> None:
        raise NotImplementedError

    def _open_role(self) -> str | None:
        raise NotImplementedError

    def _role_common(self, role: str, expr: Any) -> Any:
        if expr is not None:
            self += _role(role, expr)
            return None
        return self._role_block(role)

    @contextlib.contextmanager
    def _role_block(self, role: str) -> Iterator[None]:
        self._exec_role_begin(role)
        _ACTIVE_ROLES.stack.append((weakref.ref(self), role))
        try:
            yield
        finally:
            _ACTIVE_ROLES.stack.pop()
        self._exec_role_end(role)

    def system(self, expr: Any = None) -> Any:
        return self._role_common("system", expr)

    def user(self, expr: Any = None) -> Any:
        return self._role_common("user", expr)

    def assistant(self, expr: Any = None) -> Any:
        return self._role_common("assistant", expr)

    # -- SGLang's `state[name] = value` and `with s.copy() as c:` -------------------------------------
    def set_var(self, name: str, value: Any) -> None:
        raise NotImplementedError

    def __setitem__(self, name: str, value: Any) -> None:
        """`s["x"] = value` is `s.set_var("x", value)`, as in SGLang."""
        self.set_var(name, value)

    _copy_group: Any = None  # the one-branch fork group of a state made by `copy()`

    def __enter__(self) -> Any:
        """`with s.copy() as c:` (SGLang's form): `c` is a one-branch fork of `s`..."""
        if self._copy_group is None:
            raise CompileError.here("only a state made by s.copy() can be used in a with statement")
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        """... that is joined back into `s` (gathering its variables) when the block ends."""
        if exc_type is None:
            self._copy_group.join()

    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        raise NotImplementedError

    async def text_async_iter(self, var_name: str | None = None, return_meta_data: bool = False) -> Any:
        """`text_iter` for asyncio code (SGLang's): each piece is awaited on a worker thread."""
        async for piece in async_pieces(self, var_name, return_meta_data):
            yield piece

    def _check_role_owner(self, what: str) -> None:
        """A gen added to this state inside `with other.user():` of another state is an error."""
        stack = _ACTIVE_ROLES.stack
        if not stack:
            return
        owner, role = stack[-1]
        if owner() is not self and self._open_role() is None:
            raise CompileError.here(
                f"{what} on a state that is not in a role, inside the {role} role block of another state "
                "(add it to that state, or open a role on this one)"
            )


async def async_pieces(state: Any, var_name: str | None, return_meta_data: bool) -> Any:
    """The pieces of `state.text_iter(var_name)`, without blocking the event loop (any state kind)."""
    if return_meta_data:
        raise NotImplementedError("text_async_iter(return_meta_data=True) is not supported by sgc: "
                                  "read state.get_meta_info(name) once the run is done")
    import asyncio

    pieces = state.text_iter(var_name)
    loop = asyncio.get_running_loop()
    done = object()
    while True:
        piece = await loop.run_in_executor(None, next, pieces, done)
        if piece is done:
            return
        yield piece


class BranchGroupBase:
    """What the eager and the traced fork groups share: SGLang's sequence protocol and `forks += x`.

    Subclasses set `_branches` (the branch states) and define `join`.
    """

    _branches: list
    _parent: Any

    @property
    def states(self) -> list:
        """The branch states (SGLang's `ProgramStateGroup.states`)."""
        return list(self._branches)

    @property
    def src_state(self) -> Any:
        """The state that was forked (SGLang's `ProgramStateGroup.src_state`)."""
        return self._parent

    def __len__(self) -> int:
        return len(self._branches)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._branches)

    def __iadd__(self, other: Any) -> Any:
        """SGLang's `forks += x`: the same expression on every branch, `x[i]` for a list, `x(i)` for a
        callable."""
        for i, branch in enumerate(self._branches):
            if callable(other) and not hasattr(other, "__sgc_symbolic__"):
                branch += other(i)
            elif isinstance(other, (list, tuple)):
                branch += other[i]
            else:
                branch += other
        return self

    def __setitem__(self, index: int, value: Any) -> None:
        if value is not self._branches[index]:  # `forks[i] += x` stores the same state back
            raise CompileError.here("a fork's branches cannot be replaced")


class _ActiveRoles(threading.local):
    def __init__(self) -> None:
        self.stack: list[tuple[weakref.ref, str]] = []


_ACTIVE_ROLES = _ActiveRoles()
