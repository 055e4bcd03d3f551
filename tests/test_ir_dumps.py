"""IR dumps: DOT text, SVG via Graphviz (or a clear error), and the self-contained HTML page."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from compiler.codegen.dumps import CATEGORY_COLORS, DumpError, dump, to_dot, to_html, to_svg
from compiler.ir import Append, Const, Graph, Module, Output, StateNew
from compiler.ir_text import print_module
from compiler.parser.ir_reader import parse_module

GOLDEN = Path(__file__).parent / "golden" / "ir"
NODE_LINE = re.compile(r'^\s*(g\d+_)?n(\d+) \[label="(?:[^"\\]|\\.)*", fillcolor="#[0-9a-f]{6}"'
                       r'(, tooltip="(?:[^"\\]|\\.)*")?\];$')
EDGE_LINE = re.compile(r"^\s*(g\d+_)?n(\d+) -> (g\d+_)?n(\d+) \[.*\];$")


def load(name: str) -> Module:
    return parse_module((GOLDEN / f"{name}.ir").read_text(encoding="utf-8"))


def nasty() -> Graph:
    g = Graph("nasty")
    text = 'quote " backslash \\ newline \n </script><script>alert(1)</script> & <b> é 😀 \u2028'
    g.add(Output(), [g.add(Append(), [g.add(StateNew(), loc='we"ird\\path.py:3'), g.add(Const(text))])])
    return g


def test_dot_has_a_line_per_node_and_edge() -> None:
    graph = load("switch")["triage"]
    text = to_dot(graph, {3: {"time_s": 0.25, "cached_tokens": 12}})
    assert text.startswith('digraph "triage" {') and text.rstrip().endswith("}")
    node_ids = {int(m.group(2)) for line in text.splitlines() if (m := NODE_LINE.match(line))}
    assert node_ids == {n.id for n in graph.nodes()}
    edges = {(int(m.group(2)), int(m.group(4))) for line in text.splitlines() if (m := EDGE_LINE.match(line))}
    assert {(o.id, n.id) for n in graph.nodes() for o in n.operands} <= edges
    assert 'n3 [label="%3 select\\nname=\\"urgent\\"' in text
    assert "time_s: 0.25\\ncached_tokens: 12" in text
    assert text.count("subgraph cluster_n5_r") == 3 and 'label="%5 case \\"yes\\""' in text
    assert f'fillcolor="{CATEGORY_COLORS["llm"]}"' in text and f'fillcolor="{CATEGORY_COLORS["text"]}"' in text


def test_dot_escapes_and_modules() -> None:
    text = to_dot(nasty())
    for line in text.splitlines():
        if "[label=" in line and "->" not in line:
            assert NODE_LINE.match(line), line
    assert "\n </script>" not in text  # the raw newline never reaches DOT
    module_text = to_dot(load("host_steps"), {"main": {2: {"time_s": 1.5}}})
    assert "subgraph cluster_g0_func" in module_text and 'label="@main"' in module_text
    assert "g1_n2 [label=" in module_text and "time_s: 1.5" in module_text


def fake_dot(tmp_path: Path, body: str) -> str:
    exe = tmp_path / "dot"
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(tmp_path) + os.pathsep + os.environ.get("PATH", "")


def test_svg_needs_graphviz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DumpError, match="Graphviz's `dot` program, which is not installed"):
        to_svg(load("essay"))


def test_svg_pipes_dot_through_graphviz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", fake_dot(tmp_path, 'cat > "$(dirname "$0")/in.dot"; echo "<svg>ok</svg>"'))
    assert to_svg(load("essay")).strip() == "<svg>ok</svg>"
    assert (tmp_path / "in.dot").read_text(encoding="utf-8") == to_dot(load("essay"))
    assert dump(load("essay"), "svg").strip() == "<svg>ok</svg>"


def test_svg_reports_graphviz_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", fake_dot(tmp_path, "cat >/dev/null; echo 'syntax error in line 3' >&2; exit 2"))
    with pytest.raises(DumpError, match=r"exit 2\): syntax error in line 3"):
        to_svg(load("essay"))


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_real_graphviz_renders_every_golden() -> None:
    for path in sorted(GOLDEN.glob("*.ir")):
        assert "<svg" in to_svg(parse_module(path.read_text(encoding="utf-8")))


def html_data(page: str) -> list[dict]:
    match = re.search(r'<script type="application/json" id="ir-data">(.*?)</script>', page, re.S)
    assert match
    return json.loads(match.group(1))


def test_html_is_self_contained() -> None:
    for path in sorted(GOLDEN.glob("*.ir")):
        page = to_html(parse_module(path.read_text(encoding="utf-8")))
        assert "http://" not in page and "https://" not in page
        assert not re.search(r"<(link|img|iframe)\b|\ssrc=|@import|url\((?!#)", page)
        assert page.count("<script") == 2 and page.count("</script>") == 2


def test_html_shows_nodes_attributes_and_stats() -> None:
    module = load("switch")
    page = to_html(module, {"triage": {3: {"time_s": 0.5, "cached_tokens": 7}, 9: {"time_s": 0.1}}})
    graph = module["triage"]
    for node in graph.nodes():
        assert f'data-id="{node.id}"' in page
    (data,) = html_data(page)
    assert data["name"] == "triage" and set(data["nodes"]) == {str(n.id) for n in graph.nodes()}
    select = data["nodes"]["3"]
    assert select["op"] == "select" and select["stats"] == {"time_s": 0.5, "cached_tokens": 7}
    assert 'choices=["yes", "no"]' in select["attrs"] and select["loc"] == "triage.py:4"
    assert select["operands"] == [2] and select["users"] == [4, 5]
    assert data["nodes"]["6"]["region"] == "%5 region 0"
    assert "time_s=0.5" in page and "stroke-width: 5.0" in page  # heat on the slowest node
    assert "case &quot;yes&quot;" in page


def test_html_escapes_hostile_text() -> None:
    g = nasty()
    g.node(0).meta["note"] = "</script>"
    page = to_html(g, {1: {"why": "</script><b>"}})
    assert page.count("</script>") == 2
    assert "<b>" not in page.replace("<b>' + esc", "")  # only the JS template's own <b>
    (data,) = html_data(page)
    assert "</script><script>alert(1)</script>" in data["nodes"]["1"]["line"]
    assert data["nodes"]["0"]["meta"] == {"note": "</script>"}
    page.encode("utf-8")  # no lone surrogates reach the page


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_html_script_is_valid_javascript(tmp_path: Path) -> None:
    page = to_html(load("host_steps"))
    script = re.findall(r"<script>(.*?)</script>", page, re.S)[0]
    (tmp_path / "page.js").write_text(script, encoding="utf-8")
    done = subprocess.run(["node", "--check", str(tmp_path / "page.js")], capture_output=True, text=True,
                          timeout=30, env={**os.environ})
    assert done.returncode == 0, done.stderr


def test_dump_dispatch() -> None:
    module = load("lowered")
    assert dump(module, "text") == print_module(module)
    assert dump(module, "dot").startswith('digraph "module"')
    assert dump(module, "html").startswith("<!DOCTYPE html>")
    with pytest.raises(DumpError, match="unknown dump format 'png'"):
        dump(module, "png")  # type: ignore[arg-type]


def test_dumps_of_an_unverified_graph_still_work() -> None:
    g = Graph("broken")
    s = g.add(StateNew())
    a = g.add(Append(), [s, g.add(Const("x"))])
    g.add(Append(), [a, a])  # ill-kinded, no output: still drawable for debugging
    assert "n3" in to_dot(g) and 'data-id="3"' in to_html(g)
