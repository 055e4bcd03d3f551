"""The IR interpreter is the one place each op's meaning is written (compiler/ir_interpreter.py).

- it has a method for every op of the closed op set, and no method for an op that no longer exists;
- a graph that uses every op runs through it, each op's method called;
- the graph executor, the semantics checker and the test oracle go through it, and none of them
  dispatches on op classes itself (checked on their source: no op class is named there).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from compiler import ir
from compiler.ir_interpreter import Bundle, EnterRegion, Interpreter, Pending, run_graph
from compiler.parser.ir_reader import parse_graph
from compiler.passes.semantics import SymbolicDomain, _SymbolicArguments
from compiler.prompt_state import PromptState

ROOT = Path(__file__).resolve().parent.parent

# Where a graph runs: each must use the interpreter and must not look at op classes itself.
RUNNERS = {
    "executor/program/graph_run.py": "the graph executor's loop",
    "executor/program/graph_domain.py": "the graph executor's domain",
    "executor/program/graph_executor.py": "the graph executor",
    "executor/program/graph_plan.py": "the graph executor's plans (ops through `op.state_use`)",
    "compiler/passes/semantics.py": "the semantics checker",
    "tests/test_lang_support.py": "the test oracle",
}
# How each of them reaches the interpreter.
ENTRY_POINTS = {
    "executor/program/graph_run.py": {"Interpreter", "run_node"},
    "compiler/passes/semantics.py": {"Interpreter", "run_graph"},
    "tests/test_lang_support.py": {"Interpreter", "run_graph"},
}
NOT_OPS = {"run_node"}  # the interpreter's public methods that are not ops


def test_the_interpreter_has_one_method_per_op() -> None:
    for name, cls in ir.OPS.items():
        method = Interpreter.__dict__.get(name)
        assert callable(method), f"Interpreter has no method for op {name!r} ({cls.__name__})"
        assert method.__doc__ or name in {
            "const", "getvar", "state_new", "state_in", "append", "role_begin", "role_end", "set_var", "branch",
        }, f"Interpreter.{name} should say what the op means"
    public = {n for n, v in vars(Interpreter).items() if callable(v) and not n.startswith("_")}
    assert public - NOT_OPS == set(ir.OPS), "a method for an op that is not in the op set"


EVERY_OP = """\
func @every {
  %0 = arg name="topic" default="owls"
  %1 = state_new
  %2 = const value="About "
  %3 = append %1, %2
  %4 = append %3, %0
  %5 = role_begin %4 role="user"
  %6 = var_scope_begin %5 name="asked"
  %7 = gen %6 name="q" max_tokens=4
  %8 = var_scope_end %7 name="asked"
  %9 = role_end %8 role="user"
  %10 = set_var %9, %2 name="label"
  %11 = prefill %10, %2
  %12 = fork %11 n=2
  %13 = branch %12 index=0
  %14 = branch %12 index=1
  %15 = batch_gen %13, %14 name="a" max_tokens=2
  %16 = branch %15 index=0
  %17 = branch %15 index=1
  %18 = join %11, %16, %17 mode="concate_and_append"
  %19 = select %18 name="pick" choices=["yes", "no"]
  %20 = score %19 name="again" choices=["x", "y"]
  %21 = host %20 func="m:f" reason="test" returns="text"
  %22 = getvar %20 name="pick"
  %23 = switch %20, %22 {
    case "yes" {
      %24 = state_in
      %25 = append %24, %21
      %26 = output %25
    }
    default {
      %27 = state_in
      %28 = output %27
    }
  }
  %29 = output %23
}
"""


class _Recording(Interpreter):
    """The interpreter, noting which op methods ran."""

    def __init__(self) -> None:
        super().__init__(SymbolicDomain())
        self.seen: set[str] = set()
        for name in ir.OPS:
            setattr(self, name, self._noting(name, getattr(self, name)))

    def _noting(self, name, method):  # type: ignore[no-untyped-def]
        def run(*args):  # type: ignore[no-untyped-def]
            self.seen.add(name)
            return method(*args)

        return run


def test_a_graph_with_every_op_runs_through_one_method_each() -> None:
    graph = parse_graph(EVERY_OP)
    assert {n.op.opname for n in graph.nodes()} == set(ir.OPS)
    interpreter = _Recording()
    state = run_graph(interpreter, graph, _SymbolicArguments())
    assert interpreter.seen == set(ir.OPS)  # each region of the switch starts with a state_in
    text, variables = state.public()
    names = dict(variables)
    assert {"q", "asked", "label", "a", "pick", "again"} <= set(names)
    assert len(names["a"]) == 2  # gathered from both branches of the fork
    assert str(text[0]).startswith("About ")


class _NotingDomain(SymbolicDomain):
    """The symbolic domain, noting the nodes that asked the model or the host."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[int] = set()

    def generate(self, node, states):  # type: ignore[no-untyped-def]
        self.asked.add(node.id)
        return super().generate(node, states)

    def choose(self, node, text, candidates, method):  # type: ignore[no-untyped-def]
        self.asked.add(node.id)
        return super().choose(node, text, candidates, method)

    def prefill(self, node, state, text):  # type: ignore[no-untyped-def]
        self.asked.add(node.id)
        return super().prefill(node, state, text)

    def host(self, node, values):  # type: ignore[no-untyped-def]
        self.asked.add(node.id)
        return super().host(node, values)


class _Values(Interpreter):
    """The interpreter on the symbolic domain, keeping each node's operand values and value."""

    def __init__(self) -> None:
        super().__init__(_NotingDomain())
        self.runs: list[tuple[ir.Node, list, object]] = []

    def run_node(self, frame, node):  # type: ignore[no-untyped-def]
        value = super().run_node(frame, node)
        self.runs.append((node, [frame.lookup(o) for o in node.operands], value))
        return value


def _states(value: object) -> list:
    return list(value.states) if isinstance(value, Bundle) else [value] if isinstance(value, PromptState) else []


def _starts_with(text: tuple, prefix: tuple) -> bool:
    """Text parts (strings and symbols) `text` begins with `prefix` (adjacent strings may have merged)."""
    if not prefix:
        return True
    head, last = prefix[:-1], prefix[-1]
    if len(text) < len(prefix) or tuple(text[:len(head)]) != tuple(head):
        return False
    nxt = text[len(head)]
    return nxt == last or (isinstance(nxt, str) and isinstance(last, str) and nxt.startswith(last))


def test_state_use_agrees_with_the_interpreter() -> None:
    """`op.state_use` (what planners read instead of naming op classes) is what the op's method does:
    a CONTINUES op's states start with the text of a state it read, a READS op makes no new state,
    neither asks the model or the host; a RUNS op that reads a state does (or enters a region)."""
    interpreter = _Values()
    run_graph(interpreter, parse_graph(EVERY_OP), _SymbolicArguments())
    asked = interpreter.domain.asked
    seen = set()
    for node, operands, value in interpreter.runs:
        use = node.op.state_use
        read = [s for operand in operands for s in _states(operand)]
        if not read:
            continue  # no state in (arg, const, state_new, state_in)
        assert (use is ir.StateUse.RUNS) == (node.id in asked or isinstance(value, EnterRegion)), node.op.opname
        if use is ir.StateUse.CONTINUES:
            assert read and _states(value), node.op.opname
            for state in _states(value):
                assert any(_starts_with(state.public()[0], r.public()[0]) for r in read), node.op.opname
        elif use is ir.StateUse.READS:
            assert read and all(s is r for s in _states(value) for r in read[:1]), node.op.opname
        seen.add(use)
    assert seen == set(ir.StateUse)
    assert {name for name, cls in ir.OPS.items() if cls.state_use is ir.StateUse.READS} == {"getvar", "output"}


def test_pending_composes() -> None:
    ready = Pending.ready(2).then(lambda v: v * 10)
    assert ready.requests == () and ready.finish([]) == 20
    first = Pending(["r1"], lambda results: results[0] + "!")
    second = Pending(["r2", "r3"], lambda results: "".join(results))
    both = Pending.all([first, second, Pending.ready("c")]).then(tuple)
    assert both.requests == ("r1", "r2", "r3")
    assert both.finish(["a", "b", "c"]) == ("a!", "bc", "c")


# -- nobody else says what an op means ---------------------------------------------------------------
OP_CLASS_NAMES = {cls.__name__ for cls in ir.OPS.values()}


def _op_class_references(tree: ast.AST) -> list[tuple[int, str]]:
    """Every place the source names an IR op class (`ir.Gen`, or `Gen` imported from compiler.ir*),
    or compares a node's opname: the ways to dispatch on ops."""
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("compiler.ir"):
            imported |= {a.asname or a.name for a in node.names if a.name in OP_CLASS_NAMES}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in OP_CLASS_NAMES and isinstance(node.value, ast.Name) \
                and node.value.id == "ir":
            found.append((node.lineno, f"ir.{node.attr}"))
        elif isinstance(node, ast.Name) and node.id in imported:
            found.append((node.lineno, node.id))
        elif isinstance(node, ast.Compare) and any(
                isinstance(side, ast.Attribute) and side.attr == "opname"
                for side in (node.left, *node.comparators)):
            found.append((node.lineno, "an opname comparison"))
    return found


@pytest.mark.parametrize("path", sorted(RUNNERS))
def test_runners_do_not_dispatch_on_op_classes(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    found = _op_class_references(tree)
    assert not found, (f"{path} ({RUNNERS[path]}) names op classes; an op's meaning belongs in "
                       f"compiler/ir_interpreter.py: {found}")


@pytest.mark.parametrize("path", sorted(ENTRY_POINTS))
def test_runners_go_through_the_interpreter(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "compiler.ir_interpreter"
             for a in n.names}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}  # interpreter.run_node(...)
    missing = ENTRY_POINTS[path] - names
    assert not missing, f"{path} does not use {sorted(missing)} of compiler.ir_interpreter"


def test_the_check_sees_a_dispatch() -> None:
    """The source check is not vacuous: an isinstance chain over ops is caught."""
    tree = ast.parse("from compiler import ir\nif isinstance(op, ir.Gen):\n    pass\n"
                     "from compiler.ir import Select\nx = isinstance(op, Select)\nif node.op.opname == 'gen': pass\n")
    assert sorted(what for _, what in _op_class_references(tree)) == ["Select", "an opname comparison", "ir.Gen"]
