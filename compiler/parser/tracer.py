"""The tracer: run a program's function on a symbolic state and record its IR.

`compile_function(fn, bind=...)` returns `(Module, [GraphBreak])`: one graph per function, named
after it. How the program's Python becomes IR:

- **Straight-line code**, roles (both forms), `var_scope`, `set_var`, fork/join (both modes) record
  their ops as they run (`compiler.parser.trace_state`).
- **Nested calls** (`other(s, ...)` inside a program) are *inlined*: the callee's body runs on the
  same symbolic state, its ops carry the callee's lines. (The IR has no `call` op.)
- **Loops** run as Python: over constants, and over list arguments *bound* at compile time
  (`bind={"aspects": [...]}`), they unroll. An unbound argument is symbolic; iterating over it,
  `len()` of it or `int()` of it needs its value: a control break (below).
- **Branches on finite values** (a select's choice, `x == "yes"`, `"no" in x`, `x.startswith(...)`):
  the first time Python needs the concrete value the run records a *decision* and takes one outcome;
  the tracer re-runs the function once per combination of outcomes and merges the runs into `switch`
  nodes (`compiler.parser.paths`). At most `MAX_PATHS` runs and `MAX_DECISIONS` decisions per run
  (a `while` loop on generated text would never end): beyond that, a control break.
- **Value host steps**: a comparison, a string method or indexing of generated text or of an
  argument is a `host returns="value"` node naming a builtin (`operator:eq`, `builtins:str.strip`,
  `compiler.parser.host_funcs:concat`); its result stays symbolic. Each is a graph break in
  `explain()`, and the function stays compiled.
- **Control breaks**: when Python needs a real value with unboundedly many outcomes (`int(x)`,
  `len(x)`, iteration, `json.loads(x)`, a placeholder string that never reaches the state) or the
  trace otherwise cannot continue, the whole function *needs the host*: its graph is one
  `host returns="state"` node naming the function itself, which the executor runs with the eager
  interpreter (`compiler.interpreter.run_host_function`) on the incoming state and the arguments.
  `graph.meta["needs_host"]` is True. Every break found on every explored path is reported.

A program the language rejects (nested roles, a forked state used after join, a gen inside another
state's role, an unknown variable, a name error) is a `CompileError("file:line: message")`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Any, NoReturn

from compiler import ir
from compiler.errors import (
    CompileError,
    definition_site,
    location_of_traceback,
    recursion_error,
    recursion_site,
    user_location,
)
from compiler.lang_program import Program
from compiler.parser.paths import Decision, Instr, Path, SwitchUnsupported, build_graph
from compiler.parser.symbolic import Symbolic, SymValue, has_marks
from compiler.parser.trace_state import SymState

__all__ = ["MAX_DECISIONS", "MAX_PATHS", "GraphBreak", "compile_file", "compile_function", "explain"]

MAX_PATHS = 64
MAX_DECISIONS = 16
MAX_INSTRS = 200_000

# Exceptions from user code that are mistakes in the program, not a sign that it needs real values.
_PROGRAM_ERRORS = (NameError, ImportError, SyntaxError)  # RecursionError: see recursion_error


@dataclass(frozen=True)
class GraphBreak:
    """A place where the compiled graph leaves the static world.

    `kind` is "host step" (a value host step inside a compiled graph) or "host function" (the
    function runs on the host from the start: a control break).
    """

    function: str
    file: str | None
    line: int | None
    reason: str
    kind: str

    def location(self) -> str:
        if self.file is None:
            return "?"
        return f"{_display(self.file)}:{self.line}"

    def __str__(self) -> str:
        return f"{self.location()}: {self.reason}"


def _display(path: str) -> str:
    rel = os.path.relpath(path) if os.path.isabs(path) else path
    return path if rel.startswith("..") else rel


class _NeedsHost(BaseException):
    """Raised inside a traced run when it cannot continue statically (BaseException: a user's
    `except Exception:` must not swallow it)."""


def _loc(file: str | None, line: int | None) -> str | None:
    return f"{os.path.basename(file)}:{line}" if file else None


class _Run:
    """One traced run of the function along one path of decisions."""

    def __init__(self, function: Program, script: list[Any]) -> None:
        self.function = function
        self.path = Path()
        self.script = script
        self.num_decisions = 0
        self.outcome_list: list[Any] = []
        self.decided: dict[Any, Any] = {}
        self.alternatives: list[list[Any]] = []
        self.breaks: list[GraphBreak] = []
        self.fallback: GraphBreak | None = None
        self.placeholders: dict[int, tuple[int, str | None, int | None, str]] = {}
        self.consumed: set[int] = set()

    # -- recording --------------------------------------------------------------------------------
    def where(self) -> str:
        file, line = user_location()
        return f"{_display(file)}:{line}" if file else "an unknown line"

    def emit(self, op: ir.Op, operands: Sequence[int] = (), meta: dict[str, Any] | None = None,
             at: tuple[str | None, int | None] | None = None) -> int:
        """Record an instruction at the user's current line (or at `at`); its index."""
        if len(self.path.instrs) >= MAX_INSTRS:
            self.needs_host(f"the trace has more than {MAX_INSTRS} operations")
        file, line = user_location() if at is None else at
        frozen = tuple(sorted(meta.items())) if meta else ()
        self.path.instrs.append(Instr(op, tuple(operands), _loc(file, line), frozen))
        return len(self.path.instrs) - 1

    def const(self, value: Any) -> int:
        try:
            return self.emit(ir.Const(value))
        except ir.IRError:
            self.needs_host(f"a {type(value).__name__} value is passed to a host step (not JSON)")
        except RecursionError:
            raise CompileError.here(f"a {type(value).__name__} value nested too deeply is passed to a host step") from None

    def value_ref(self, value: Any) -> int:
        """An instruction holding `value` (symbolic, a string with placeholders, or JSON)."""
        if isinstance(value, Symbolic):
            return value._value_ref()
        if isinstance(value, str) and has_marks(value):
            from compiler.parser.symbolic import split_placeholders

            return self.concat_ref(split_placeholders(value), placeholders=True)
        return self.const(value)

    def concat_ref(self, parts: list[str | int], placeholders: bool = False) -> int:
        refs = []
        for part in parts:
            if isinstance(part, str):
                refs.append(self.const(part))
            else:
                refs.append(self.consume_placeholder(part) if placeholders else part)
        if len(refs) == 1 and not isinstance(parts[0], str):
            return refs[0]
        file, line = user_location()
        return self.emit(ir.Host(func="compiler.parser.host_funcs:concat", reason="text built from values",
                                 line=line, returns="value"), refs)

    def host_value(self, func: str, args: Sequence[Any], reason: str, origin: str,
                   domain: tuple[Any, ...] | None, key: Any = None, record: bool = True) -> SymValue:
        refs = [self.value_ref(a) for a in args]
        file, line = user_location()
        ref = self.emit(ir.Host(func=func, reason=reason, line=line, returns="value"), refs)
        if record:
            self.breaks.append(GraphBreak(self.function.name, file, line, reason, "host step"))
        return SymValue(self, ref, origin, domain, key=key)

    def needs_host(self, reason: str, file: str | None = None, line: int | None = None) -> NoReturn:
        if file is None:
            file, line = user_location()
        brk = GraphBreak(self.function.name, file, line, reason, "host function")
        if self.fallback is None:
            self.fallback = brk
        self.breaks.append(brk)
        raise _NeedsHost(reason)

    # -- placeholders for f-strings of symbolic values ---------------------------------------------------
    def placeholder(self, value: Symbolic, how: str) -> str:
        file, line = user_location()
        number = len(self.placeholders)
        self.placeholders[number] = (value._value_ref(), file, line, f"{how} of {value._origin}")
        return f"\ue000sgc{number}\ue001"

    def consume_placeholder(self, number: int) -> int:
        if number not in self.placeholders:
            self.needs_host("a placeholder string from another trace is appended")
        self.consumed.add(number)
        return self.placeholders[number][0]

    # -- decisions ----------------------------------------------------------------------------------
    def decide(self, key: Any, value_ref: int, domain: tuple[Any, ...]) -> Any:
        if key in self.decided:
            return self.decided[key]
        if self.num_decisions >= MAX_DECISIONS:
            self.needs_host(f"more than {MAX_DECISIONS} branches on generated values in one run "
                            "(a loop that depends on generated text?)")
        index = self.emit(Decision(tuple(domain)), (value_ref,))
        position = self.num_decisions
        self.num_decisions += 1
        if position < len(self.script):
            outcome = self.script[position]
        else:
            outcome = domain[0]
            for alternative in domain[1:]:
                self.alternatives.append([*self.outcome_list, alternative])
        self.outcome_list.append(outcome)
        self.path.outcomes[index] = outcome
        self.decided[key] = outcome
        return outcome

    # -- running ------------------------------------------------------------------------------------
    def execute(self, bind: dict[str, Any]) -> None:
        fn = self.function
        site = _def_site(fn)
        args: dict[str, Any] = {}
        for param in list(fn.signature.parameters.values())[1:]:
            if param.name in bind:
                args[param.name] = bind[param.name]
                continue
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise CompileError(f"{fn.name}: *args/**kwargs parameters cannot be compiled", *_def_site(fn))
            default = ir.NO_DEFAULT if param.default is param.empty else param.default
            try:
                ref = self.emit(ir.Arg(param.name, default=default), at=site)
            except ir.IRError:
                raise CompileError(f"{fn.name}: the default of argument {param.name!r} is not a JSON value; "
                                   "bind it to compile", *_def_site(fn)) from None
            except RecursionError:
                raise CompileError(f"{fn.name}: the default of argument {param.name!r} is nested too deeply",
                                   *_def_site(fn)) from None
            args[param.name] = SymValue(self, ref, f"argument {param.name!r}")
        state = SymState(self, self.emit(ir.StateNew(), at=site))
        try:
            fn.func(state, **args)
        except _NeedsHost:
            return
        except CompileError:
            raise
        except RecursionError as exc:
            raise recursion_error(exc) from None
        except _PROGRAM_ERRORS as exc:
            file, line = location_of_traceback(exc.__traceback__)
            raise CompileError(f"{type(exc).__name__}: {exc}", file, line) from exc
        except Exception as exc:
            if os.environ.get("SGC_TRACE_DEBUG"):
                raise
            file, line = location_of_traceback(exc.__traceback__)
            try:
                self.needs_host(f"Python raised {type(exc).__name__} ({exc}) on traced values: the code needs "
                                "real generated text or argument values", file, line)
            except _NeedsHost:
                return
        for number, (_, file, line, what) in self.placeholders.items():
            if number not in self.consumed:
                try:
                    self.needs_host(f"{what} is used outside the prompt (Python code needs its value)", file, line)
                except _NeedsHost:
                    return
        state._check_alive()
        self.emit(ir.Output(), (state._ref,), at=(None, None))


def _def_site(fn: Program) -> tuple[str | None, int | None]:
    return definition_site(fn.func)


def _trace(fn: Program, bind: dict[str, Any]) -> tuple[ir.Graph, list[GraphBreak]]:
    scripts: list[list[Any]] = [[]]
    runs: list[_Run] = []
    breaks: dict[GraphBreak, None] = {}  # in order, without duplicates (paths share code)
    fallback: GraphBreak | None = None
    while scripts:
        if len(runs) >= MAX_PATHS:
            file, line = _def_site(fn)
            fallback = fallback or GraphBreak(fn.name, file, line, f"more than {MAX_PATHS} paths through branches "
                                              "on generated values", "host function")
            breaks[fallback] = None
            break
        run = _Run(fn, scripts.pop(0))
        run.execute(bind)
        runs.append(run)
        scripts.extend(run.alternatives)
        breaks.update(dict.fromkeys(run.breaks))
        if run.fallback is not None and fallback is None:
            fallback = run.fallback
    if fallback is None:
        try:
            graph = build_graph(fn.name, [r.path for r in runs])
        except SwitchUnsupported as exc:
            file, line = _loc_parts(exc.loc, fn)
            fallback = GraphBreak(fn.name, file, line, exc.reason, "host function")
            breaks[fallback] = None
    if fallback is not None:
        graph = _host_graph(fn, bind, fallback)
        graph.meta["needs_host"] = True
    else:
        graph.meta["needs_host"] = False
    graph.meta["function"] = fn.ref
    graph.meta["bound"] = {k: bind[k] for k in bind}
    return graph, _sorted_breaks(list(breaks))


def _loc_parts(loc: str | None, fn: Program) -> tuple[str | None, int | None]:
    """A `file.py:12` loc back to the full path (the function's own file when the name matches)."""
    if loc is None:
        return _def_site(fn)
    name, _, line = loc.rpartition(":")
    file, _ = _def_site(fn)
    if file is not None and os.path.basename(file) == name:
        return file, int(line)
    return name, int(line)


def _sorted_breaks(breaks: list[GraphBreak]) -> list[GraphBreak]:
    """Control breaks first (they decide how the function runs), then by line."""
    return sorted(breaks, key=lambda b: (b.kind != "host function", b.file or "", b.line or 0))


def _host_graph(fn: Program, bind: dict[str, Any], brk: GraphBreak) -> ir.Graph:
    """The graph of a function that runs on the host: state in, the whole function as one host step."""
    graph = ir.Graph(fn.name)
    loc = _loc(brk.file, brk.line)
    site = _loc(*_def_site(fn))
    names = ["s"]
    values = []
    for param in list(fn.signature.parameters.values())[1:]:
        if param.name in bind:
            try:
                values.append(graph.add(ir.Const(bind[param.name]), loc=site))
            except (ir.IRError, TypeError, RecursionError):
                raise CompileError(f"{fn.name}: bound argument {param.name!r} is not a JSON value (or is nested "
                                   "too deeply), and the function runs on the host", *_def_site(fn)) from None
        else:
            default = ir.NO_DEFAULT if param.default is param.empty else param.default
            try:
                values.append(graph.add(ir.Arg(param.name, default=default), loc=site))
            except (ir.IRError, RecursionError):
                values.append(graph.add(ir.Arg(param.name), loc=site))
        names.append(param.name)
    state = graph.add(ir.StateNew(), loc=site)
    operands = [state, *values]
    host = graph.add(ir.Host(func=fn.ref, reason=brk.reason, line=brk.line, args=tuple(names), returns="state"),
                     operands, loc=loc)
    graph.add(ir.Output(), [host])
    return graph


def _as_function(fn: Program | Callable[..., Any]) -> Program:
    return fn if isinstance(fn, Program) else Program(fn)


def _check_bind(fn: Program, bind: dict[str, Any] | None) -> dict[str, Any]:
    merged = {**fn.bind_arguments, **(bind or {})}
    unknown = [k for k in merged if k not in fn.arg_names]
    if unknown:
        raise CompileError(f"{fn.name}: cannot bind unknown argument {unknown[0]!r} "
                           f"(its arguments: {', '.join(fn.arg_names) or 'none'})", *_def_site(fn))
    return merged


def compile_function(fn: Program | Callable[..., Any], bind: dict[str, Any] | None = None,
                     strict: bool = False) -> tuple[ir.Module, list[GraphBreak]]:
    """Trace one program into a module with one graph; the graph breaks it has.

    `bind` fixes arguments at compile time (loops over bound lists unroll). `strict=True` turns any
    graph break into a `CompileError`.
    """
    function = _as_function(fn)
    graph, breaks = _trace(function, _check_bind(function, bind))
    module = ir.Module([graph])
    module.verify()
    _check_strict(strict, breaks)
    return module, breaks


def _check_strict(strict: bool, breaks: list[GraphBreak]) -> None:
    if strict and breaks:
        first = breaks[0]
        raise CompileError(f"graph break in {first.function} (strict): {first.reason}", first.file, first.line)


def compile_file(path: str | os.PathLike[str], bind: dict[str, dict[str, Any]] | None = None,
                 strict: bool = False) -> tuple[ir.Module, list[GraphBreak]]:
    """Import a program file (its `if __name__ == "__main__":` code does not run) and trace every
    `@function` defined in it, in definition order. `bind` maps a function name to its bound args."""
    module = load_program_file(path)
    functions = [v for v in vars(module).values()
                 if isinstance(v, Program) and v.func.__module__ == module.__name__]
    functions.sort(key=lambda f: _def_site(f)[1] or 0)
    if not functions:
        raise CompileError("no @function in this file", str(path), None)
    bind = bind or {}
    unknown = [name for name in bind if name not in {f.name for f in functions}]
    if unknown:
        raise CompileError(f"bind names function {unknown[0]!r}, which the file does not define", str(path), None)
    result = ir.Module()
    breaks: list[GraphBreak] = []
    for function in functions:
        graph, found = _trace(function, _check_bind(function, bind.get(function.name)))
        graph.meta["source_file"] = str(FilePath(path).resolve())
        result.add(graph)
        breaks.extend(found)
    result.verify()
    _check_strict(strict, breaks)
    return result, breaks


_MODULE_NAME = re.compile(r"[^0-9A-Za-z_]")


def load_program_file(path: str | os.PathLike[str]) -> Any:
    """Import a program file as a module named after it (kept in sys.modules so host steps resolve)."""
    file = FilePath(path).resolve()
    if file.is_dir():
        raise CompileError("is a directory, not a program file", str(path), None)
    if not file.is_file():
        raise CompileError("no such file", str(path), None)
    name = _MODULE_NAME.sub("_", file.stem) or "program"
    if name[0].isdigit():
        name = "_" + name
    existing = sys.modules.get(name)
    if existing is not None and getattr(existing, "__file__", None) != str(file):
        name = f"sgc_program_{name}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise CompileError("cannot import this file as Python", str(path), None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(file.parent))
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(name, None)
        raise CompileError(f"syntax error: {exc.msg}", exc.filename or str(path), exc.lineno) from None
    except CompileError:
        sys.modules.pop(name, None)
        raise
    except RecursionError as exc:
        sys.modules.pop(name, None)
        file_, line = recursion_site(exc.__traceback__)
        if file_ is None:  # raised by Python's own compiler: no frame of the program ran
            raise CompileError(f"Python cannot compile this file: an expression is nested too deeply ({exc})",
                               str(path), None) from None
        raise CompileError(f"importing the program raised RecursionError: {exc}", file_, line) from None
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        file_, line = location_of_traceback(exc.__traceback__)
        what = f"called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else f"raised {type(exc).__name__}: {exc}"
        raise CompileError(f"importing the program {what}", file_ or str(path), line) from exc
    finally:
        sys.path.remove(str(file.parent))
    return module


def explain(breaks: Sequence[GraphBreak], function: str | None = None) -> str:
    """The graph breaks, one per line: `file:line: reason`, grouped by function."""
    names = [function] if function else list(dict.fromkeys(b.function for b in breaks))
    if not names:
        return "no graph breaks: everything compiles"
    lines = []
    for name in names:
        mine = [b for b in breaks if b.function == name]
        if not mine:
            lines.append(f"{name}: no graph breaks (fully compiled)")
            continue
        host = [b for b in mine if b.kind == "host function"]
        if host:
            lines.append(f"{name}: runs on the host (eager interpreter): {len(mine)} graph break"
                         f"{'s' * (len(mine) != 1)}")
        else:
            lines.append(f"{name}: compiled with {len(mine)} host step{'s' * (len(mine) != 1)}")
        for brk in mine:
            lines.append(f"  {brk.location()}: [{brk.kind}] {brk.reason}")
    return "\n".join(lines)


def dump_json(breaks: Sequence[GraphBreak]) -> str:
    """The breaks as JSON (for `sgc compile --explain --json`)."""
    return json.dumps([{"function": b.function, "file": b.file, "line": b.line, "reason": b.reason,
                        "kind": b.kind} for b in breaks], indent=2)
