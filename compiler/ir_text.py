"""The textual form of the IR: a stable printer, one line per node.

```
func @grade_essay {
  %0 = arg name="essay"
  %1 = state_new
  %2 = const value="Evaluate this essay:\\n"  # essay.py:5
  %3 = append %1, %2  # essay.py:5
  %4 = gen %3 name="verdict" choices=["accept", "reject"]  # essay.py:12
  %5 = switch %4, %6 {
    case "accept" {
      %7 = state_in
      %8 = output %7
    }
    default {
      ...
    }
  }
  %9 = output %5
}
```

Attributes print in their op's field order, only where they differ from the default. Strings use
`\\"`, `\\\\`, `\\n`, `\\r`, `\\t`, `\\uXXXX` and `\\UXXXXXXXX` escapes for every character that is not
visible (controls, format characters, separators, surrogates), so any string round-trips and a line is
always one node. `# file:line` is the node's `loc`; `meta={...}` (JSON-able entries only) is printed
when asked. `compiler.parser.ir_reader` parses this text back: `print(parse(print(g))) == print(g)`.

The printer reads the IR through the small structural views below (`NodeView`, `GraphView`, ...)
rather than importing `compiler.ir`: the IR prints itself (`str(graph)`, the graph excerpt in every
`IRError`), so the printer sits below it and the two do not import each other.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from compiler.ir_values import NO_DEFAULT, freeze_json

__all__ = ["GraphView", "ModuleView", "NodeView", "RegionView", "excerpt", "format_string", "format_value",
           "graph_lines", "print_graph", "print_module", "print_node"]


class OpView(Protocol):
    """What the printer reads of an op (`compiler.ir_ops.Op`)."""

    @property
    def opname(self) -> str: ...

    def explicit_attributes(self) -> list[tuple[str, Any]]: ...


class NodeView(Protocol):
    """What the printer reads of a node (`compiler.ir.Node`)."""

    @property
    def id(self) -> int: ...

    @property
    def op(self) -> OpView: ...

    @property
    def operands(self) -> Sequence[NodeView]: ...

    @property
    def regions(self) -> Sequence[RegionView]: ...

    @property
    def loc(self) -> str | None: ...

    @property
    def meta(self) -> Mapping[Any, Any]: ...


class RegionView(Protocol):
    """What the printer reads of a region (`compiler.ir.Region`): its nodes in order."""

    def __iter__(self) -> Iterator[NodeView]: ...


class GraphView(Protocol):
    """What the printer reads of a graph (`compiler.ir.Graph`)."""

    @property
    def name(self) -> str: ...

    @property
    def body(self) -> RegionView: ...


class ModuleView(Protocol):
    """What the printer reads of a module (`compiler.ir.Module`): its graphs in order."""

    def __iter__(self) -> Iterator[GraphView]: ...


INDENT = "  "
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_INVISIBLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def format_string(text: str) -> str:
    """`text` as a double-quoted IR string literal."""
    out = ['"']
    for ch in text:
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif (ch < " " or ch > "~") and unicodedata.category(ch) in _INVISIBLE:
            code = ord(ch)
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def format_value(value: Any) -> str:
    """An attribute value: null, true/false, ints, floats (repr), strings, [lists], {"objects"}."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot print the non-finite number {value!r}")
        return repr(value)
    if isinstance(value, str):
        return format_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{format_string(k)}: {format_value(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"cannot print {value!r} ({type(value).__name__}) as an IR value")


def format_func_name(name: str) -> str:
    return "@" + (name if _PLAIN_NAME.fullmatch(name) else format_string(name))


def printable_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a meta dict that can be printed (string keys, JSON values)."""
    out = {}
    for key, value in meta.items():
        if not isinstance(key, str):
            continue
        try:
            out[key] = freeze_json(value)
        except TypeError:
            continue
    return out


def node_header(node: NodeView, *, meta: bool = False) -> str:
    """`%3 = gen %2 name="x"`: the node's line without region braces or loc."""
    parts = [f"%{node.id} = {node.op.opname}"]
    if node.operands:
        parts.append(", ".join(f"%{o.id}" for o in node.operands))
    skip = ("cases", "default") if node.op.opname == "switch" else ()
    for key, value in node.op.explicit_attributes():
        if key not in skip and value is not NO_DEFAULT:
            parts.append(f"{key}={format_value(value)}")
    if meta:
        entries = printable_meta(node.meta)
        if entries:
            parts.append(f"meta={format_value(entries)}")
    return " ".join(parts)


def _loc_suffix(node: NodeView) -> str:
    return f"  # {node.loc}" if node.loc else ""


def print_node(node: NodeView, *, meta: bool = False) -> str:
    """One node on one line (a switch's regions shown as `{...}`)."""
    tail = " {...}" if node.regions else ""
    return node_header(node, meta=meta) + tail + _loc_suffix(node)


def _region_lines(region: RegionView, depth: int, meta: bool, out: list[tuple[str, NodeView | None]]) -> None:
    pad = INDENT * depth
    for node in region:
        if not node.regions:
            out.append((pad + node_header(node, meta=meta) + _loc_suffix(node), node))
            continue
        out.append((pad + node_header(node, meta=meta) + " {" + _loc_suffix(node), node))
        cases = getattr(node.op, "cases", ())
        for i, inner in enumerate(node.regions):
            label = f"case {format_value(cases[i])}" if i < len(cases) else "default"
            out.append((pad + INDENT + label + " {", None))
            _region_lines(inner, depth + 2, meta, out)
            out.append((pad + INDENT + "}", None))
        out.append((pad + "}", None))


def graph_lines(graph: GraphView, *, meta: bool = False) -> list[tuple[str, NodeView | None]]:
    """The printed lines of a graph, each with the node it starts (None for braces)."""
    out: list[tuple[str, NodeView | None]] = [(f"func {format_func_name(graph.name)} {{", None)]
    _region_lines(graph.body, 1, meta, out)
    out.append(("}", None))
    return out


def print_graph(graph: GraphView, *, meta: bool = False) -> str:
    """The graph as text (ends with a newline). `meta=True` also prints each node's JSON-able meta."""
    return "\n".join(line for line, _ in graph_lines(graph, meta=meta)) + "\n"


def print_module(module: ModuleView, *, meta: bool = False) -> str:
    """All functions of the module, in order, separated by blank lines."""
    return "\n".join(print_graph(g, meta=meta) for g in module)


def excerpt(graph: GraphView, node: NodeView | None, context: int = 4) -> str:
    """The printed graph around `node` (marked `>>`), for error messages; the whole graph if short."""
    lines = graph_lines(graph)
    marked = [i for i, (_, n) in enumerate(lines) if node is not None and n is node]
    if marked:
        lo, hi = max(0, marked[0] - context), min(len(lines), marked[0] + context + 1)
    elif len(lines) <= 2 * context + 1:
        lo, hi = 0, len(lines)
    else:
        lo, hi = 0, 2 * context + 1
    shown = []
    if lo > 0:
        shown.append("   ...")
    for i in range(lo, hi):
        shown.append((">> " if i in marked else "   ") + lines[i][0])
    if hi < len(lines):
        shown.append("   ...")
    return "\n".join(shown)
