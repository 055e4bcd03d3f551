"""Host steps: which Python callables an IR `host` node may reach, and running whole functions eagerly.

An IR graph is data: it may come from an artifact someone sent you. So a host node's
`func="module:qualname"` is resolved against a `HostPolicy`, never by importing or walking a module:

1. sgc's allow-list, `PURE_FUNCTIONS`: individual pure functions the tracer emits for value host
   steps (`operator:eq`, `builtins:str.strip`, `compiler.parser.host_funcs:concat`, ...). None of them
   reaches exec/eval/compile/open/import/getattr/setattr, and those that can amplify their input
   (`*`, `%`, `str.center`, `str.replace`, `str.format`, ...) are wrapped so their result is bounded by
   the `host_value_chars` budget and `str.format` cannot reach attributes (`{0.__class__}`);
2. what the caller opted into: an explicit `functions` mapping (`GraphExecutor(host_functions=...)`),
   the functions of `modules` the caller named (`sgc.load(path, host_functions=my_program)`), or every
   live sgc `Function` of this process (`live_functions=True`: the in-process compile path, where the
   graph was traced from the caller's own code rather than read from data).

Anything else is refused: `HostPolicy.refused(module)` lists such nodes so a loader can refuse them
at load time, naming the node and the function, and the executor refuses them again at run time. A state
host step that names an sgc `Function` runs it through the eager interpreter on a copy of the state
(`compiler.interpreter.run_on_prompt_state`, called from `executor/program/graph_domain.py`).
"""

from __future__ import annotations

import dataclasses
import re
import string
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from compiler import budgets
from compiler.ir import Host, Module, Node

__all__ = ["PURE_FUNCTIONS", "HostPolicy", "HostPolicyError", "describe_refusal"]


class HostPolicyError(ValueError):
    """A host step names a function the caller did not allow."""


# -- sgc's allow-list --------------------------------------------------------------------------------

def _size(value: Any) -> int:
    """A cheap measure of a value's size: characters, items, or bytes of an int."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() // 8
    try:
        return len(value)
    except TypeError:
        return 0


def _bounded(size: int, what: str) -> None:
    budgets.check("host_value_chars", size, f"a host step's result ({what})", HostPolicyError)


def _add(a: Any, b: Any) -> Any:
    if not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
        _bounded(_size(a) + _size(b), "+")
    return a + b


def _mul(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int):
        _bounded(_size(a) + _size(b), "*")
    elif isinstance(b, int) and not isinstance(a, float):
        _bounded(_size(a) * max(b, 0), "*")
    elif isinstance(a, int) and not isinstance(b, float):
        _bounded(_size(b) * max(a, 0), "*")
    return a * b


_PRINTF_WIDTHS = re.compile(r"%[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_widths(widths: Iterator[str], base: int, what: str) -> None:
    total = base
    for width in widths:
        if width == "*":
            raise HostPolicyError(f"{what}: '*' widths are not allowed in host steps")
        if width:
            total += int(width) if len(width) < 12 else 1 << 62
    _bounded(total, what)


def _mod(a: Any, b: Any) -> Any:
    if isinstance(a, str):
        args = b if isinstance(b, tuple) else (b,)
        widths = (w for m in _PRINTF_WIDTHS.finditer(a) for w in m.groups() if w)
        _check_widths(widths, len(a) + sum(len(str(x)) for x in args), "%")
    return a % b


def _format(template: str, *args: Any, **kwargs: Any) -> str:
    """`str.format` without attribute or index access in fields (`{0.__class__}` reads internals)."""
    widths: list[str] = []
    for _, name, spec, _ in string.Formatter().parse(template):
        if name is not None and ("." in name or "[" in name):
            raise HostPolicyError(f"str.format field {{{name}}}: attribute and index access are not allowed "
                                  "in host steps")
        if spec:
            if "{" in spec:
                raise HostPolicyError("str.format: nested replacement fields are not allowed in host steps")
            widths.extend(re.findall(r"\d+", spec))
    _check_widths(iter(widths), len(template) + sum(len(str(x)) for x in (*args, *kwargs.values())), "str.format")
    return template.format(*args, **kwargs)


def _padded(method: str) -> Callable[..., str]:
    unbound = getattr(str, method)

    def pad(text: str, width: Any = 0, *rest: Any) -> str:
        if isinstance(width, int):
            _bounded(max(width, len(text)), f"str.{method}")
        return unbound(text, width, *rest)

    pad.__name__ = method
    return pad


def _expandtabs(text: str, tabsize: Any = 8) -> str:
    if isinstance(tabsize, int):
        _bounded(len(text) + text.count("\t") * max(tabsize, 0), "str.expandtabs")
    return text.expandtabs(tabsize)


def _replace(text: str, old: Any, new: Any, count: Any = -1) -> str:
    if isinstance(old, str) and isinstance(new, str):
        hits = text.count(old)
        if isinstance(count, int) and count >= 0:
            hits = min(hits, count)
        _bounded(len(text) + hits * len(new), "str.replace")
    return text.replace(old, new, count)


def _join(separator: str, items: Any) -> str:
    items = list(items) if not isinstance(items, (list, tuple)) else items
    _bounded(len(separator) * len(items) + sum(_size(x) for x in items), "str.join")
    return separator.join(items)


# str methods whose result is no larger than their input (or a bool, int or list of pieces of it).
_SAFE_STR_METHODS = (
    "capitalize", "casefold", "count", "endswith", "find", "index", "isalnum", "isalpha", "isascii",
    "isdecimal", "isdigit", "isidentifier", "islower", "isnumeric", "isprintable", "isspace", "istitle",
    "isupper", "lower", "lstrip", "partition", "removeprefix", "removesuffix", "rfind", "rindex",
    "rpartition", "rsplit", "rstrip", "split", "splitlines", "startswith", "strip", "swapcase", "title",
    "upper",
)


def _pure_functions() -> dict[str, Callable[..., Any]]:
    import operator

    from compiler.parser import host_funcs

    table: dict[str, Callable[..., Any]] = {f"builtins:str.{m}": getattr(str, m) for m in _SAFE_STR_METHODS}
    table.update({f"builtins:str.{m}": _padded(m) for m in ("center", "ljust", "rjust", "zfill")})
    table.update({
        "builtins:str.expandtabs": _expandtabs,
        "builtins:str.replace": _replace,
        "builtins:str.join": _join,
        "builtins:str.format": _format,
        "builtins:repr": repr,
        "builtins:bool": bool,
        "operator:add": _add,
        "operator:mul": _mul,
        "operator:mod": _mod,
        "operator:eq": operator.eq,
        "operator:ne": operator.ne,
        "operator:lt": operator.lt,
        "operator:le": operator.le,
        "operator:gt": operator.gt,
        "operator:ge": operator.ge,
        "operator:contains": operator.contains,
        "operator:getitem": operator.getitem,
        "compiler.parser.host_funcs:concat": _concat(host_funcs.concat),
        "compiler.parser.host_funcs:text_slice": host_funcs.text_slice,
    })
    return table


def _concat(concat: Callable[..., str]) -> Callable[..., str]:
    def bounded_concat(*parts: Any) -> str:
        _bounded(sum(_size(p) if isinstance(p, str) else len(str(p)) for p in parts), "concatenation")
        return concat(*parts)

    return bounded_concat


PURE_FUNCTIONS: Mapping[str, Callable[..., Any]] = _pure_functions()


# -- the policy --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HostPolicy:
    """What host steps may call (see the module docstring). The default allows sgc's pure functions only."""

    functions: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    modules: frozenset[str] = frozenset()
    live_functions: bool = False

    @classmethod
    def make(cls, host_functions: Any = None, *, live_functions: bool = False) -> HostPolicy:
        """A policy from what a caller passes: None, a mapping of refs to callables, a module, or a
        sequence of modules (their names are trusted)."""
        if isinstance(host_functions, HostPolicy):
            return dataclasses.replace(host_functions, live_functions=host_functions.live_functions or live_functions)
        if host_functions is None:
            return cls(live_functions=live_functions)
        if isinstance(host_functions, Mapping):
            return cls(functions=host_functions, live_functions=live_functions)
        modules = host_functions if isinstance(host_functions, (list, tuple, set, frozenset)) else [host_functions]
        names = []
        for module in modules:
            name = module if isinstance(module, str) else getattr(module, "__name__", None)
            if not isinstance(name, str):
                raise TypeError(f"host_functions must be a mapping, a module or modules, got {module!r}")
            names.append(name)
        return cls(modules=frozenset(names), live_functions=live_functions)

    def resolve(self, func: str) -> Callable[..., Any] | None:
        """The plain callable for `func`, or None (an sgc `Function` comes from `function`)."""
        fn = self.functions.get(func)
        if fn is not None:
            return fn
        fn = PURE_FUNCTIONS.get(func)
        if fn is not None:
            return fn
        module_name, _, qualname = func.partition(":")
        if module_name in self.modules and qualname:
            obj = _attribute_path(sys.modules.get(module_name), qualname)
            if callable(obj) and not _is_sgc_function(obj):
                return obj
        return None

    def function(self, func: str) -> Any | None:
        """The live sgc `Function` named `func`, if the policy allows it."""
        module_name = func.partition(":")[0]
        if not (self.live_functions or module_name in self.modules):
            return None
        from compiler.lang import lookup_function

        return lookup_function(func)

    def allows(self, op: Host) -> bool:
        """Whether `op.func` could be bound when it runs (explicit mappings are looked up dynamically)."""
        if op.func in PURE_FUNCTIONS or op.func in self.functions:
            return True
        module_name, _, qualname = op.func.partition(":")
        return bool(qualname) and (self.live_functions or module_name in self.modules)

    def refused(self, module: Module) -> list[tuple[str, Node]]:
        """Every host step of `module` this policy does not allow, as (function name, node)."""
        return [(graph.name, node) for graph in module for node in graph.nodes()
                if isinstance(node.op, Host) and not self.allows(node.op)]

    def check(self, module: Module) -> None:
        """Refuse a module with a host step this policy does not allow, naming the node and function."""
        for function, node in self.refused(module):
            raise HostPolicyError(describe_refusal(function, node))


def describe_refusal(function: str, node: Node) -> str:
    """Why a host step may not run, and how to allow it."""
    loc = f" at {node.loc}" if node.loc else ""
    return (f"@{function}: %{node.id} (host{loc}) calls {node.op.func!r}, which is not allowed: a program may "
            f"call only sgc's pure functions, or functions of a program you opt into "
            f"(sgc.load(..., host_functions=your_module), or sgc run --import-source)")


def _attribute_path(obj: Any, qualname: str) -> Any:
    """`obj.a.b` for qualname "a.b", through plain attributes of a trusted module only (no dunders)."""
    for part in qualname.split("."):
        if obj is None or part.startswith("_"):
            return None
        obj = getattr(obj, part, None)
    return obj


def _is_sgc_function(obj: Any) -> bool:
    from compiler.lang import Function

    return isinstance(obj, Function)
