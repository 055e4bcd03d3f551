"""The import graph of the project: no circles between modules, and the layers import only downwards.

A circle means neither side can be read or tested alone. The layers (docs/architecture.md has the
picture): `compiler` imports neither `executor` nor `models` (nor the public packages above it);
`models` are plain torch and import neither `executor` nor `compiler`; inside `executor`, the program
executor (`executor/program/`) reaches the LLM runtime (`executor/runtime/`, `executor/kernels/`)
only through the one seam, `executor.runtime.runtime_client`, and the runtime never imports the
program executor.

The graph is built statically from the source: every `import` and `from ... import` statement at any
depth (inside functions and `if TYPE_CHECKING:` blocks too: a lazy import hides a circle, it does not
remove it) that names a module of the project is an edge. `from package import name` is an edge to
`package.name` when that is a module, else to `package` (whose `__init__` defines the name); `import
a.b.c` is an edge to `a.b.c`. The whole graph is checked; circles that their owners are removing are
listed, with who owns them, in `KNOWN_CIRCLES_BEING_FIXED`, and nothing else is tolerated.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("compiler", "executor", "models", "sgc", "sglang")

# Strongly connected groups of modules that are known and being removed by their owners in parallel
# work (issue 14). Each entry must still be a circle: when one is gone, delete it here.
KNOWN_CIRCLES_BEING_FIXED: dict[frozenset[str], str] = {}


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of dotted `name` that is a project module."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `module` imports, anywhere in its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, modules)
                if target is not None:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package[:len(package) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else _resolve(base, modules)
                if target is not None:
                    found.add(target)
    found.discard(module)
    return found


@functools.cache
def import_graph() -> nx.DiGraph:
    """The project's import graph (built once per run; callers must not change it)."""
    modules = project_modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for module, path in modules.items():
        graph.add_edges_from((module, target) for target in imported_modules(module, path, modules))
    return graph


def _circles(graph: nx.DiGraph) -> list[frozenset[str]]:
    return [frozenset(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]


def _describe(graph: nx.DiGraph, group: frozenset[str]) -> str:
    cycle = nx.find_cycle(graph.subgraph(group))
    return " -> ".join(a for a, _ in cycle) + f" -> {cycle[0][0]}"


def test_the_graph_sees_the_project() -> None:
    graph = import_graph()
    assert graph.number_of_nodes() > 100
    assert graph.has_edge("compiler.ir", "compiler.ir_ops")
    assert graph.has_edge("compiler.lang_function", "compiler.parser.tracer")  # inside the function bodies too


def test_no_import_circles() -> None:
    graph = import_graph()
    unknown = [_describe(graph, c) for c in _circles(graph) if c not in KNOWN_CIRCLES_BEING_FIXED]
    assert not unknown, "import circles:\n  " + "\n  ".join(unknown)


def test_known_circles_are_still_there() -> None:
    """An allow-listed circle that is gone must leave the list, so it cannot come back unnoticed."""
    circles = set(_circles(import_graph()))
    gone = [sorted(c) for c in KNOWN_CIRCLES_BEING_FIXED if c not in circles]
    assert not gone, f"fixed: remove {gone} from KNOWN_CIRCLES_BEING_FIXED"


def test_a_lazy_import_still_counts(tmp_path: Path) -> None:
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("def f():\n    from pkg import b\n")
    b.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import f\n")
    modules = {"pkg": tmp_path / "__init__.py", "pkg.a": a, "pkg.b": b}
    assert imported_modules("pkg.a", a, modules) == {"pkg.b"}
    assert imported_modules("pkg.b", b, modules) == {"pkg.a"}


# -- layers -----------------------------------------------------------------------------------------
RUNTIME = ("executor.runtime", "executor.kernels")  # the LLM runtime and its kernels
PROGRAM = "executor.program"  # the program executor
CLUSTER = "executor.cluster"  # replicas, routing and batch runs over many runtimes: above both layers
SEAM = "executor.runtime.runtime_client"  # the one runtime module the program executor may import
# What the seam itself may import of the runtime: plain data, no torch (a remote client imports it alone).
SEAM_IMPORTS = {"executor.runtime.sampling_params"}

# (importer, what it must not import, why)
FORBIDDEN: list[tuple[str, tuple[str, ...], str]] = [
    ("compiler", ("executor", "models", "sgc", "sglang"), "the compiler sits below the runtime, the models "
                                                         "and the public packages"),
    ("models", ("executor", "compiler", "sgc", "sglang"), "models are plain torch modules"),
    ("executor", ("sgc", "sglang"), "the executor sits below the public packages"),
    *[(runtime, (PROGRAM,), "the runtime knows nothing of programs") for runtime in RUNTIME],
    *[(layer, (CLUSTER,), "one runtime and one program run know nothing of the cluster above them")
      for layer in (*RUNTIME, PROGRAM)],
]


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layer_violations(graph: nx.DiGraph) -> list[str]:
    """Every import that goes against the layers, as 'a -> b: why'."""
    found = []
    for a, b in sorted(graph.edges):
        for importer, forbidden, why in FORBIDDEN:
            if _within(a, importer) and any(_within(b, f) for f in forbidden):
                found.append(f"{a} -> {b}: {why}")
        if _within(a, PROGRAM) and any(_within(b, r) for r in RUNTIME) and b != SEAM:
            found.append(f"{a} -> {b}: the program executor reaches the runtime only through {SEAM}")
        if a == SEAM and any(_within(b, r) for r in RUNTIME) and b not in SEAM_IMPORTS:
            found.append(f"{a} -> {b}: the client interface is plain data ({sorted(SEAM_IMPORTS)} only)")
    return found


def test_the_layers() -> None:
    violations = layer_violations(import_graph())
    assert not violations, "imports against the layers:\n  " + "\n  ".join(violations)


def test_the_layers_are_there() -> None:
    """The rules are not vacuous: both packages exist and the program executor uses the seam."""
    graph = import_graph()
    program = [m for m in graph if _within(m, PROGRAM)]
    runtime = [m for m in graph if _within(m, RUNTIME[0])]
    assert len(program) >= 5 and len(runtime) >= 10 and SEAM in graph
    assert any(graph.has_edge(m, SEAM) for m in program)
    assert not [m for m in graph if m.startswith("executor.") and not any(
        _within(m, p) for p in (*RUNTIME, PROGRAM, CLUSTER))], "every executor module is in one of the layers"


def test_a_violation_is_seen() -> None:
    graph = nx.DiGraph([("compiler.ir", "executor.runtime.engine"), ("models.decoder", "compiler.ir"),
                        (f"{PROGRAM}.graph_run", "executor.runtime.scheduler"), (f"{PROGRAM}.graph_run", SEAM),
                        ("executor.runtime.engine", f"{PROGRAM}.graph_plan"), (SEAM, "executor.runtime.engine"),
                        (SEAM, "executor.runtime.sampling_params")])
    found = layer_violations(graph)
    assert [v.split(":")[0] for v in found] == [
        "compiler.ir -> executor.runtime.engine", "executor.program.graph_run -> executor.runtime.scheduler",
        "executor.runtime.engine -> executor.program.graph_plan", "executor.runtime.runtime_client -> "
        "executor.runtime.engine", "models.decoder -> compiler.ir"]
