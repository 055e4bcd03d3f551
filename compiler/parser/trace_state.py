"""The symbolic state the tracer hands to a program in place of `s` (and the forks it makes).

Every operation records IR instructions through the run (a `compiler.parser.recorder.Recorder`) instead of
calling a model: `s += text` is `const` + `append`, `gen` is `gen`, a role is `role_begin` ...
`role_end`, `fork` is `fork` + one `branch` per copy, `join` is `join`. The state keeps what the
program could ask of it statically: its current instruction, the open role, and what each variable
is (`VarInfo`: a gen's text, a select's choice, a joined list, a constant).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from compiler import ir
from compiler.errors import CompileError
from compiler.lang_expr import GenExpr, SelectExpr
from compiler.lang_state import BranchGroupBase, StateBase
from compiler.parser.recorder import Recorder
from compiler.parser.symbolic import Symbolic, SymValue, VarInfo, has_marks, split_placeholders

__all__ = ["SymForkGroup", "SymState"]

JOIN_MODES = ("gather_variable", "concate_and_append")


class SymState(StateBase):
    """A symbolic prompt state: `ref` is the instruction that produced its current snapshot."""

    def __init__(self, run: Recorder, ref: int, variables: dict[str, VarInfo] | None = None,
                 role: str | None = None) -> None:
        self._run = run
        self._ref = ref
        self._vars: dict[str, VarInfo] = dict(variables or {})
        self._role = role
        self._assigned: list[str] = []
        self._joined_at: str | None = None
        self._getvars: dict[tuple[int, str], int] = {}

    def __repr__(self) -> str:
        return f"<symbolic state %{self._ref}>"

    # -- plumbing -------------------------------------------------------------------------------------
    def _emit(self, op: ir.Op, *values: int, meta: dict[str, Any] | None = None) -> None:
        self._ref = self._run.emit(op, (self._ref, *values), meta=meta)

    def _check_alive(self) -> None:
        if self._joined_at is not None:
            raise CompileError.here(f"this forked state was joined at {self._joined_at}; "
                                    "a forked state cannot be used after join")

    def _open_role(self) -> str | None:
        return self._role

    def _bind(self, name: str, info: VarInfo) -> None:
        self._vars[name] = info
        if name not in self._assigned:
            self._assigned.append(name)

    def _name(self, name: Any, what: str) -> str | None:
        if isinstance(name, Symbolic) or (isinstance(name, str) and has_marks(name)):
            self._run.needs_host(f"the variable name of a {what} is computed from a generated value or an argument")
        return name

    # -- the state's API ------------------------------------------------------------------------------
    def __iadd__(self, other: Any) -> SymState:
        self._check_alive()
        self._exec(other)
        return self

    def _exec(self, item: Any) -> None:
        if isinstance(item, Symbolic):  # an argument or generated value: appended by reference
            self._append_parts(item._parts())
        else:
            super()._exec(item)

    def _append_text(self, text: str) -> None:
        # Text may carry placeholders of symbolic values (f-strings); they become references.
        self._append_parts(split_placeholders(text), placeholders=True)

    def _append_parts(self, parts: list[str | int], placeholders: bool = False) -> None:
        for part in parts:
            if isinstance(part, str):
                if not part:
                    continue
                if has_marks(part):
                    self._run.needs_host("a string with a damaged placeholder of a generated value or argument "
                                         "is appended (a string operation was applied to an f-string)")
                self._emit(ir.Append(), self._run.emit(ir.Const(part)))
            else:
                ref = self._run.consume_placeholder(part) if placeholders else part
                self._emit(ir.Append(), ref)

    def _exec_role_begin(self, role: str) -> None:
        self._check_alive()
        if self._role is not None:
            raise CompileError.here(f"nested roles: {role} begins while the {self._role} role is open")
        self._emit(ir.RoleBegin(role))
        self._role = role

    def _exec_role_end(self, role: str) -> None:
        self._check_alive()
        if self._role is None:
            raise CompileError.here(f"{role} role ends but no role is open")
        if self._role != role:
            raise CompileError.here(f"{role} role ends but the open role is {self._role}")
        self._emit(ir.RoleEnd(role))
        self._role = None

    def _gen(self, expr: GenExpr) -> None:
        self._check_alive()
        self._check_role_owner("gen")
        name = self._name(expr.name, "gen")
        for key, value in expr.params.items():
            if isinstance(value, Symbolic) or _marked(value):
                self._run.needs_host(f"gen parameter {key}= comes from a generated value or an argument "
                                     "(bind the argument to compile it)")
        self._emit(ir.Gen(name=name, **expr.params), meta=dict(expr.extra) or None)
        if name is not None:
            self._bind(name, VarInfo("text", self._ref))

    def _select(self, expr: SelectExpr) -> None:
        self._check_alive()
        self._check_role_owner("select")
        name = self._name(expr.name, "select")
        choices = expr.choices
        if isinstance(choices, Symbolic) or any(isinstance(c, Symbolic) or _marked(c) for c in choices):
            self._run.needs_host("select choices come from a generated value or an argument "
                                 "(bind the argument to compile it)")
        if isinstance(expr.temperature, Symbolic):
            self._run.needs_host("select temperature comes from a generated value or an argument")
        self._emit(ir.Select(name=name, choices=tuple(choices), method=expr.method.name,
                             temperature=expr.temperature))
        if name is not None:
            self._bind(name, VarInfo("choice", self._ref, domain=tuple(choices)))

    def __getitem__(self, name: str) -> Any:
        # No liveness check: a joined branch's variables stay readable (SGLang allows
        # `forks[i]["x"]` after `forks.join()`); the getvar reads the branch's final state.
        name = self._name(name, "variable read")
        info = self._vars.get(name)
        if info is None:
            known = ", ".join(map(repr, self._vars)) or "none"
            raise CompileError.here(f"variable {name!r} is not set on this state (set: {known})")
        if info.kind == "const":
            return info.value
        key = (self._ref, name)
        ref = self._getvars.get(key)
        if ref is None:
            ref = self._getvars[key] = self._run.emit(ir.GetVar(name), (self._ref,))
        domain = info.domain if info.kind in ("choice", "value") else None
        return SymValue(self._run, ref, f"s[{name!r}]", domain, key=("var", info.source), info=info)

    def get_var(self, name: str) -> Any:
        return self[name]

    def __contains__(self, name: str) -> bool:
        return name in self._vars

    def set_var(self, name: str, value: Any) -> None:
        self._check_alive()
        name = self._name(name, "set_var")
        if isinstance(value, Symbolic):
            info = VarInfo("value", -1)
            if isinstance(value, SymValue) and value._finite() is not None:
                domain, _ = value._finite()  # type: ignore[misc]
                info = VarInfo("value", -1, domain=domain)
            self._emit(ir.SetVar(name), value._value_ref())
        else:
            if isinstance(value, str) and has_marks(value):
                self._emit(ir.SetVar(name), self._run.concat_ref(split_placeholders(value), placeholders=True))
                self._bind(name, VarInfo("text", self._ref))
                return
            try:
                json.dumps(value)
                const = self._run.emit(ir.Const(value))
            except (TypeError, ValueError, ir.IRError):
                self._run.needs_host(f"set_var({name!r}, ...) of a value that is not JSON ({type(value).__name__})")
            self._emit(ir.SetVar(name), const)
            info = VarInfo("const", -1, value=value)
        self._bind(name, VarInfo(info.kind, self._ref, info.domain, info.elements, info.value))

    @contextlib.contextmanager
    def var_scope(self, name: str) -> Iterator[None]:
        self._check_alive()
        name = self._name(name, "var_scope")
        self._emit(ir.VarScopeBegin(name))
        yield
        self._check_alive()
        self._emit(ir.VarScopeEnd(name))
        self._bind(name, VarInfo("text", self._ref))

    def fork(self, size: int = 1, position_ids_offset: Any = None) -> SymForkGroup:
        self._check_alive()
        if isinstance(size, Symbolic):
            size = operator_index(size)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise CompileError.here(f"fork size must be a positive integer, got {size!r}")
        fork_ref = self._run.emit(ir.Fork(size), (self._ref,))
        branches = []
        for i in range(size):
            branch = SymState(self._run, self._run.emit(ir.Branch(i), (fork_ref,)), self._vars, self._role)
            branches.append(branch)
        return SymForkGroup(self, branches)

    def copy(self, position_ids_offset: Any = None) -> SymState:
        group = self.fork(1)
        branch = group[0]
        branch._copy_group = group
        return branch

    # What only a real run has: the text, the messages, meta info.
    def text(self) -> str:
        return self._run.needs_host("s.text() inside the function needs the generated text")

    def messages(self) -> list:
        return self._run.needs_host("s.messages() inside the function needs the generated text")

    def get_meta_info(self, name: str) -> Any:
        return self._run.needs_host("s.get_meta_info() inside the function needs a real run")

    def text_iter(self, var_name: str | None = None) -> Any:
        return self._run.needs_host("s.text_iter() inside the function needs a real run")


def operator_index(value: Any) -> int:
    import operator

    return operator.index(value)


def _marked(value: Any) -> bool:
    if isinstance(value, str):
        return has_marks(value)
    if isinstance(value, (list, tuple)):
        return any(_marked(v) for v in value)
    return False


class SymForkGroup(BranchGroupBase):
    """The branches of a traced `s.fork(n)`."""

    def __init__(self, parent: SymState, branches: list[SymState]) -> None:
        self._parent = parent
        self._branches = branches
        self._joined = False

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, Symbolic):
            index = operator_index(index)
        return self._branches[index]

    def join(self, mode: str = "gather_variable") -> None:
        if mode not in JOIN_MODES:
            raise CompileError.here(f"unknown join mode {mode!r}; expected one of {', '.join(JOIN_MODES)}")
        if self._joined:
            raise CompileError.here("these forks are already joined")
        parent = self._parent
        parent._check_alive()
        for branch in self._branches:
            branch._check_alive()
        parent._emit(ir.Join(mode), *(b._ref for b in self._branches))
        names: list[str] = []
        for branch in self._branches:
            names.extend(n for n in branch._assigned if n not in names)
        for name in names:
            elements = tuple(b._vars.get(name) for b in self._branches)
            parent._bind(name, VarInfo("list", parent._ref, elements=elements))
        where = self._parent._run.where()
        for branch in self._branches:
            branch._joined_at = where
        self._joined = True
