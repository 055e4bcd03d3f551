"""Dumps of the IR for people: text, Graphviz DOT, SVG (via `dot`) and a self-contained HTML page.

Nodes are colored by category: LLM ops (gen, select, score, batch_gen, prefill), text ops (const,
arg, append, roles, getvar), control (states, fork/branch/join, switch, call, output) and host steps
(graph breaks). Every dump takes optional per-node `stats` (e.g. the executor's timings and cached
tokens): for a graph a dict keyed by node id, for a module a dict keyed by function name of those.
"""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import networkx as nx

from compiler.ir import NO_DEFAULT, Graph, Kind, Module, Node, Region, StateIn, Switch, thaw_json
from compiler.ir_text import format_value, node_header, print_graph, print_module, printable_meta

__all__ = ["CATEGORY_COLORS", "DumpError", "dump", "to_dot", "to_html", "to_svg", "to_text"]

Stats = Mapping[int, Mapping[str, Any]]
Format = Literal["text", "dot", "svg", "html"]

CATEGORY_COLORS = {"llm": "#ffd8a8", "text": "#d0ebff", "control": "#e9ecef", "host": "#ffc9c9"}
_EDGE_COLORS = {Kind.STATE: "#343a40", Kind.TEXT: "#868e96", Kind.VALUE: "#868e96", Kind.FORK: "#7048e8"}


class DumpError(RuntimeError):
    """A dump that cannot be produced (e.g. SVG without Graphviz installed)."""


def _graphs(obj: Graph | Module) -> list[Graph]:
    return list(obj) if isinstance(obj, Module) else [obj]


def _stats_for(obj: Graph | Module, graph: Graph, stats: Mapping[Any, Any] | None) -> Stats:
    if not stats:
        return {}
    if isinstance(obj, Module):
        return stats.get(graph.name, {})
    return stats


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _format_stat(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    try:
        return format_value(value)
    except ValueError:
        return str(value)


def _attr_lines(node: Node) -> list[str]:
    skip = ("cases", "default") if isinstance(node.op, Switch) else ()
    return [f"{k}={format_value(v)}" for k, v in node.op.explicit_attributes() if k not in skip]


def to_text(obj: Graph | Module, *, meta: bool = False) -> str:
    return print_module(obj, meta=meta) if isinstance(obj, Module) else print_graph(obj, meta=meta)


# ---------------------------------------------------------------------------------------------------
# DOT


def _dot_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(obj: Graph | Module, stats: Mapping[Any, Any] | None = None) -> str:
    """Graphviz DOT source: one box per node, use-def edges, a cluster per switch case."""
    graphs = _graphs(obj)
    title = "module" if isinstance(obj, Module) else obj.name
    lines = [
        f"digraph {_dot_str(title)} {{",
        '  graph [rankdir=TB, fontname="Helvetica", fontsize=10];',
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=9];',
    ]
    for gi, graph in enumerate(graphs):
        prefix = f"g{gi}_" if len(graphs) > 1 else ""
        graph_stats = _stats_for(obj, graph, stats)
        pad = "  "
        if len(graphs) > 1:
            lines.append(f"  subgraph cluster_{prefix}func {{")
            lines.append(f"    label={_dot_str('@' + graph.name)}; style=solid;")
            pad = "    "
        _dot_region(graph.body, prefix, graph_stats, lines, pad)
        for node in graph.nodes():
            for operand in node.operands:
                color = _EDGE_COLORS.get(operand.kind, "#343a40")
                style = "solid" if operand.kind in (Kind.STATE, Kind.FORK) else "dashed"
                lines.append(f"{pad}{prefix}n{operand.id} -> {prefix}n{node.id} "
                             f'[color="{color}", style={style}];')
        if len(graphs) > 1:
            lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_region(region: Region, prefix: str, stats: Stats, lines: list[str], pad: str) -> None:
    for node in region:
        label = [f"%{node.id} {node.op.opname}"] + [_short(a) for a in _attr_lines(node)]
        if node.loc:
            label.append(node.loc)
        for key, value in stats.get(node.id, {}).items():
            label.append(f"{key}: {_format_stat(value)}")
        color = CATEGORY_COLORS.get(node.op.category, "#ffffff")
        tooltip = f", tooltip={_dot_str(node.loc)}" if node.loc else ""
        lines.append(f'{pad}{prefix}n{node.id} [label={_dot_str(chr(10).join(label))}, '
                     f'fillcolor="{color}"{tooltip}];')
        cases = getattr(node.op, "cases", ())
        for i, inner in enumerate(node.regions):
            name = f"case {format_value(cases[i])}" if i < len(cases) else "default"
            lines.append(f"{pad}subgraph cluster_{prefix}n{node.id}_r{i} {{")
            lines.append(f"{pad}  label={_dot_str(f'%{node.id} {name}')}; style=dashed;")
            _dot_region(inner, prefix, stats, lines, pad + "  ")
            lines.append(f"{pad}}}")
            if len(inner):
                lines.append(f'{pad}{prefix}n{node.id} -> {prefix}n{inner.nodes[0].id} '
                             f'[style=dotted, label={_dot_str(name)}];')


def to_svg(obj: Graph | Module, stats: Mapping[Any, Any] | None = None, *, timeout_s: float = 120) -> str:
    """SVG rendered by Graphviz's `dot` program from `to_dot`'s output."""
    exe = shutil.which("dot")
    if exe is None:
        raise DumpError(
            "SVG output needs Graphviz's `dot` program, which is not installed (e.g. `apt-get install "
            "graphviz` or `brew install graphviz`); the DOT and HTML dumps need nothing extra."
        )
    try:
        done = subprocess.run([exe, "-Tsvg"], input=to_dot(obj, stats).encode("utf-8"),
                              capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise DumpError(f"`dot` did not finish within {timeout_s} s") from None
    if done.returncode != 0:
        raise DumpError(f"`dot -Tsvg` failed (exit {done.returncode}): "
                        f"{done.stderr.decode('utf-8', 'replace').strip()}")
    return done.stdout.decode("utf-8")


# ---------------------------------------------------------------------------------------------------
# HTML: our own layered layout drawn as inline SVG, a details panel, the IR text; no network.

_BOX_W, _BOX_H, _GAP_X, _GAP_Y, _MARGIN = 190, 50, 24, 34, 16


def _layout(graph: Graph) -> tuple[dict[int, tuple[float, float]], list[tuple[int, int, str]], float, float]:
    """Layered positions (top-left corners), the edges to draw, and the canvas size."""
    nodes = list(graph.nodes())
    order = {n.id: i for i, n in enumerate(nodes)}
    dag = nx.DiGraph()
    dag.add_nodes_from(order)
    edges: list[tuple[int, int, str]] = []
    for node in nodes:
        for operand in node.operands:
            edges.append((operand.id, node.id, operand.kind.value))
            dag.add_edge(operand.id, node.id)
        for inner in node.regions:
            if len(inner):
                edges.append((node.id, inner.nodes[0].id, "region"))
                dag.add_edge(node.id, inner.nodes[0].id)
            out = inner.output
            if out is not None:
                for user in graph.users(node):
                    dag.add_edge(out.id, user.id)  # layout only: case results flow on to the switch's users
    try:
        topo = list(nx.lexicographical_topological_sort(dag, key=order.__getitem__))
    except nx.NetworkXUnfeasible:  # a broken graph still gets a picture, in printing order
        topo = [n.id for n in nodes]
    layer: dict[int, int] = {}
    for nid in topo:
        preds = [layer[p] for p in dag.predecessors(nid) if p in layer]
        layer[nid] = max(preds) + 1 if preds else 0
    for nid in reversed(topo):  # sources (constants, args) sit just above their first use
        if not any(True for _ in dag.predecessors(nid)):
            succs = [layer[s] for s in dag.successors(nid)]
            if succs:
                layer[nid] = max(0, min(succs) - 1)
    rows: dict[int, list[int]] = {}
    for nid in topo:
        rows.setdefault(layer[nid], []).append(nid)
    # Crossing reduction: order rows by the mean position of their neighbours above, then below, then
    # both (positions are centered per row, so rows of different widths compare).
    slot: dict[int, float] = {}

    def both(nid: int) -> list[int]:
        return [*dag.predecessors(nid), *dag.successors(nid)]

    for sweep, neighbours in enumerate((dag.predecessors, dag.successors, both)):
        for depth in sorted(rows, reverse=sweep == 1):
            row = rows[depth]
            fallback = {nid: slot.get(nid, order[nid] / len(order) * len(row) - len(row) / 2) for nid in row}
            row.sort(key=lambda nid, fb=fallback, nb=neighbours: (_barycenter(nb(nid), slot, fb[nid]),
                                                                  order[nid]))
            for i, nid in enumerate(row):
                slot[nid] = i - (len(row) - 1) / 2
    width = max((len(r) for r in rows.values()), default=1)
    positions = {}
    for depth, row in rows.items():
        offset = (width - len(row)) * (_BOX_W + _GAP_X) / 2
        for i, nid in enumerate(row):
            positions[nid] = (_MARGIN + offset + i * (_BOX_W + _GAP_X), _MARGIN + depth * (_BOX_H + _GAP_Y))
    canvas_w = 2 * _MARGIN + width * (_BOX_W + _GAP_X) - _GAP_X
    canvas_h = 2 * _MARGIN + (max(rows, default=0) + 1) * (_BOX_H + _GAP_Y) - _GAP_Y
    return positions, edges, canvas_w, canvas_h


def _barycenter(neighbours: Iterable[int], slot: dict[int, float], fallback: float) -> float:
    """The mean slot of a node's placed neighbours (the classic crossing-reduction heuristic)."""
    placed = [slot[p] for p in neighbours if p in slot]
    return sum(placed) / len(placed) if placed else fallback


def _stat_summary(node_stats: Mapping[str, Any]) -> str:
    return _short("  ".join(f"{k}={_format_stat(v)}" for k, v in node_stats.items()), 34)


def _svg(graph: Graph, gi: int, stats: Stats, heat: str | None) -> str:
    positions, edges, width, height = _layout(graph)
    heat_values = {nid: float(s[heat]) for nid, s in stats.items()
                   if heat and isinstance(s.get(heat), (int, float)) and not isinstance(s.get(heat), bool)}
    heat_max = max(heat_values.values(), default=0.0)
    out = [f'<svg class="graph" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" role="img">',
           '<defs><marker id="arrow{gi}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
           'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#495057"/>'
           "</marker></defs>".replace("{gi}", str(gi))]
    for src, dst, kind in edges:
        if src not in positions or dst not in positions:
            continue
        (x1, y1), (x2, y2) = positions[src], positions[dst]
        x1, y1, x2, y2 = x1 + _BOX_W / 2, y1 + _BOX_H, x2 + _BOX_W / 2, y2
        if y2 <= y1:  # same or earlier row: route around the side
            d = f"M {x1:.1f} {y1:.1f} C {x1 + 60:.1f} {y1 + 40:.1f}, {x2 + 60:.1f} {y2 - 40:.1f}, {x2:.1f} {y2:.1f}"
        else:
            mid = (y1 + y2) / 2
            d = f"M {x1:.1f} {y1:.1f} C {x1:.1f} {mid:.1f}, {x2:.1f} {mid:.1f}, {x2:.1f} {y2:.1f}"
        out.append(f'<path class="edge e-{kind}" data-src="{src}" data-dst="{dst}" d="{d}" '
                   f'marker-end="url(#arrow{gi})"/>')
    for node in graph.nodes():
        x, y = positions[node.id]
        attrs = _attr_lines(node)
        second = _short(attrs[0], 30) if attrs else (node.loc or "")
        if isinstance(node.op, StateIn) and node.parent is not None:
            case = node.region.case
            second = "default" if case is NO_DEFAULT else _short(f"case {format_value(case)}", 30)
        node_stats = stats.get(node.id, {})
        stroke = ""
        if node.id in heat_values and heat_max > 0:
            share = heat_values[node.id] / heat_max
            stroke = f' style="stroke: rgb({int(120 + 135 * share)}, 40, 40); stroke-width: {1 + 4 * share:.1f}"'
        title = html.escape(node_header(node) + (f"  # {node.loc}" if node.loc else ""))
        out.append(f'<g class="node cat-{node.op.category}" data-id="{node.id}" '
                   f'transform="translate({x:.1f},{y:.1f})"><title>{title}</title>'
                   f'<rect width="{_BOX_W}" height="{_BOX_H}" rx="6"{stroke}/>'
                   f'<text x="8" y="16" class="head">%{node.id} {html.escape(node.op.opname)}</text>'
                   f'<text x="8" y="30">{html.escape(second)}</text>')
        if node_stats:
            out.append(f'<text x="8" y="44" class="stat">{html.escape(_stat_summary(node_stats))}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def _node_data(graph: Graph, stats: Stats) -> dict[str, Any]:
    data = {}
    for node in graph.nodes():
        where = node.region
        data[str(node.id)] = {
            "id": node.id,
            "op": node.op.opname,
            "kind": node.kind.value,
            "category": node.op.category,
            "line": node_header(node),
            "attrs": _attr_lines(node),
            "operands": [o.id for o in node.operands],
            "users": [u.id for u in graph.users(node)],
            "loc": node.loc,
            "region": None if where.parent is None else f"%{where.parent.id} region {where.index}",
            "meta": {k: thaw_json(v) for k, v in printable_meta(node.meta).items()},
            "stats": {str(k): _jsonable(v) for k, v in stats.get(node.id, {}).items()},
        }
    return data


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def _script_json(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True, sort_keys=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_CSS = """
body { margin: 0; font: 13px/1.4 system-ui, sans-serif; color: #212529; background: #f8f9fa; }
header { padding: 8px 14px; background: #343a40; color: #f8f9fa; display: flex; gap: 12px; align-items: center; }
header h1 { font-size: 15px; margin: 0 12px 0 0; }
header button { background: #495057; color: #f8f9fa; border: 0; padding: 4px 10px; border-radius: 4px; cursor: pointer; }
header button.active { background: #f08c00; }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 4px; border-radius: 3px; color: #212529; }
main { display: flex; height: calc(100vh - 42px); }
.canvas { flex: 1; overflow: auto; background: #fff; }
aside { width: 380px; overflow: auto; border-left: 1px solid #dee2e6; padding: 10px 14px; }
aside h2 { font-size: 14px; margin: 4px 0 8px; }
aside table { border-collapse: collapse; width: 100%; }
aside td { border-top: 1px solid #e9ecef; padding: 3px 4px; vertical-align: top; word-break: break-all; }
aside td:first-child { color: #868e96; white-space: nowrap; width: 1%; }
pre.ir { font: 12px/1.45 ui-monospace, monospace; background: #f1f3f5; padding: 8px; overflow: auto; }
pre.ir span[data-id] { cursor: pointer; }
pre.ir span.sel { background: #ffe066; }
.node rect { stroke: #495057; stroke-width: 1; }
.node { cursor: pointer; }
.node text { font: 11px ui-monospace, monospace; fill: #212529; }
.node text.head { font-weight: bold; }
.node text.stat { fill: #c92a2a; }
.node.sel rect { stroke: #f08c00; stroke-width: 3; }
.node.near rect { stroke: #1c7ed6; stroke-width: 2; }
.edge { fill: none; stroke: #868e96; stroke-width: 1.2; }
.edge.e-state { stroke: #343a40; stroke-width: 1.6; }
.edge.e-text, .edge.e-value { stroke-dasharray: 4 3; }
.edge.e-fork { stroke: #7048e8; stroke-width: 1.6; }
.edge.e-region { stroke: #adb5bd; stroke-dasharray: 1 3; }
.edge.hot { stroke: #f08c00; stroke-width: 2.5; }
.func { display: none; } .func.shown { display: flex; }
"""

_JS = """
(function () {
  const data = JSON.parse(document.getElementById('ir-data').textContent);
  function esc(s) { const d = document.createElement('div'); d.textContent = String(s); return d.innerHTML; }
  function row(k, v) { return '<tr><td>' + esc(k) + '</td><td>' + v + '</td></tr>'; }
  function refs(ids) { return ids.map(function (i) { return '<a href="#" data-go="' + i + '">%' + i + '</a>'; }).join(', ') || '-'; }
  function select(fi, id) {
    const fn = data[fi], n = fn.nodes[String(id)], root = document.getElementById('func' + fi);
    if (!n) return;
    root.querySelectorAll('.node').forEach(function (g) {
      const gid = Number(g.dataset.id);
      g.classList.toggle('sel', gid === id);
      g.classList.toggle('near', n.operands.indexOf(gid) >= 0 || n.users.indexOf(gid) >= 0);
    });
    root.querySelectorAll('.edge').forEach(function (e) {
      e.classList.toggle('hot', Number(e.dataset.src) === id || Number(e.dataset.dst) === id);
    });
    root.querySelectorAll('pre.ir span[data-id]').forEach(function (s) {
      s.classList.toggle('sel', Number(s.dataset.id) === id);
    });
    let h = '<h2>%' + n.id + ' = ' + esc(n.op) + '</h2><table>';
    h += row('result', esc(n.kind)) + row('category', esc(n.category));
    h += row('operands', refs(n.operands)) + row('users', refs(n.users));
    if (n.loc) h += row('loc', esc(n.loc));
    if (n.region) h += row('in', esc(n.region));
    n.attrs.forEach(function (a) { const i = a.indexOf('='); h += row(a.slice(0, i), esc(a.slice(i + 1))); });
    Object.keys(n.meta).forEach(function (k) { h += row('meta.' + k, esc(JSON.stringify(n.meta[k]))); });
    Object.keys(n.stats).forEach(function (k) { h += row('stats.' + k, '<b>' + esc(JSON.stringify(n.stats[k])) + '</b>'); });
    h += '</table><pre class="line">' + esc(n.line) + '</pre>';
    const panel = root.querySelector('.details');
    panel.innerHTML = h;
    panel.querySelectorAll('a[data-go]').forEach(function (a) {
      a.addEventListener('click', function (ev) { ev.preventDefault(); select(fi, Number(a.dataset.go)); });
    });
  }
  document.querySelectorAll('.func').forEach(function (root) {
    const fi = Number(root.dataset.func);
    root.querySelectorAll('.node, pre.ir span[data-id]').forEach(function (el) {
      el.addEventListener('click', function () { select(fi, Number(el.dataset.id)); });
    });
  });
  document.querySelectorAll('header button[data-func]').forEach(function (b) {
    b.addEventListener('click', function () {
      document.querySelectorAll('.func').forEach(function (f) { f.classList.toggle('shown', f.dataset.func === b.dataset.func); });
      document.querySelectorAll('header button[data-func]').forEach(function (o) { o.classList.toggle('active', o === b); });
    });
  });
})();
"""


def _ir_listing(graph: Graph) -> str:
    from compiler.ir_text import graph_lines

    parts = []
    for line, node in graph_lines(graph):
        text = html.escape(line)
        parts.append(f'<span data-id="{node.id}">{text}</span>' if node is not None else text)
    return "\n".join(parts)


_ACTIVE = ' class="active"'


def to_html(obj: Graph | Module, stats: Mapping[Any, Any] | None = None, *, title: str | None = None,
            heat: str | None = "time_s") -> str:
    """A self-contained page (inline CSS/JS/SVG, no network): the graph, each node's attributes,
    and `stats` per node when given. `heat` names a numeric stat that thickens/reddens box borders."""
    graphs = _graphs(obj)
    title = title or ("module" if isinstance(obj, Module) else f"@{obj.name}")
    buttons = "".join(
        f'<button data-func="{i}"{_ACTIVE if i == 0 else ""}>@{html.escape(g.name)}</button>'
        for i, g in enumerate(graphs)
    )
    legend = "".join(f'<span style="background:{c}">{k}</span>' for k, c in CATEGORY_COLORS.items())
    sections = []
    data = []
    for i, graph in enumerate(graphs):
        graph_stats = _stats_for(obj, graph, stats)
        data.append({"name": graph.name, "nodes": _node_data(graph, graph_stats)})
        sections.append(
            f'<main class="func{" shown" if i == 0 else ""}" id="func{i}" data-func="{i}">'
            f'<div class="canvas">{_svg(graph, i, graph_stats, heat)}</div>'
            f'<aside><div class="details"><h2>@{html.escape(graph.name)}</h2>'
            f"<p>{len(graph)} nodes. Click a node for its attributes"
            f"{', operands, users and stats' if graph_stats else ', operands and users'}.</p></div>"
            f'<pre class="ir">{_ir_listing(graph)}</pre></aside></main>'
        )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f'<header><h1>sgc IR: {html.escape(title)}</h1>{buttons}<span class="legend">{legend}</span></header>'
        + "".join(sections)
        + f'<script type="application/json" id="ir-data">{_script_json(data)}</script>'
        + f"<script>{_JS}</script></body></html>\n"
    )


def dump(obj: Graph | Module, fmt: Format = "text", stats: Mapping[Any, Any] | None = None) -> str:
    """One entry point for `sgc show`: `fmt` is text, dot, svg or html."""
    if fmt == "text":
        return to_text(obj)
    if fmt == "dot":
        return to_dot(obj, stats)
    if fmt == "svg":
        return to_svg(obj, stats)
    if fmt == "html":
        return to_html(obj, stats)
    raise DumpError(f"unknown dump format {fmt!r}; formats are text, dot, svg, html")

