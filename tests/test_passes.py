"""The pass manager (pipeline, -O0, verification, IR dumps, names), the registry, and the pieces the
passes rely on: the token-safe split of hoist-prefix, the oracle's sensitivity, known switch values."""

from __future__ import annotations

import io

import pytest

from compiler.ir import Append, Const, Fork, Gen, Graph, IRError, Output, Prefill, Select, StateNew
from compiler.ir_text import print_graph, print_module
from compiler.parser.ir_reader import parse_graph, parse_module
from compiler.passes import (
    DEFAULT_PIPELINE,
    PASSES,
    Pass,
    PassManager,
    PassVerificationError,
    UnknownPassError,
    available_passes,
    default_pipeline,
    get_pass,
    register,
)
from compiler.passes.dce import possible_values
from compiler.passes.hoist_prefix import safe_split
from compiler.passes.semantics import evaluate, evaluate_module

PROGRAM = """\
func @tips {
  %0 = state_new
  %1 = const value="Tips:"
  %2 = append %0, %1
  %3 = const value="\\n"
  %4 = append %2, %3
  %5 = fork %4 n=2
  %6 = branch %5 index=0
  %7 = const value="Now, expand tip 1:\\n"
  %8 = append %6, %7
  %9 = gen %8 name="tip" max_tokens=32
  %10 = branch %5 index=1
  %11 = const value="Now, expand tip 2:\\n"
  %12 = append %10, %11
  %13 = gen %12 name="tip" max_tokens=32
  %14 = join %4, %9, %13
  %15 = select %14 name="best" choices=["Tip one", "Tip two"]
  %16 = getvar %15 name="best"
  %17 = output %15
}
"""

OPTIMIZED = """\
func @tips {
  %0 = state_new
  %1 = const value="Tips:\\n"
  %4 = append %0, %1
  %20 = const value="Now, expand tip"
  %21 = prefill %4, %20
  %5 = fork %21 n=2
  %6 = branch %5 index=0
  %7 = const value="Now, expand tip 1:\\n"
  %8 = append %6, %7
  %10 = branch %5 index=1
  %11 = const value="Now, expand tip 2:\\n"
  %12 = append %10, %11
  %22 = batch_gen %8, %12 name="tip" max_tokens=32
  %23 = branch %22 index=0
  %24 = branch %22 index=1
  %14 = join %21, %23, %24
  %18 = const value="Tip"
  %19 = append %14, %18
  %15 = score %19 name="best" choices=[" one", " two"] prefix="Tip"
  %17 = output %15
}
"""


def test_default_pipeline_end_to_end() -> None:
    graph = parse_graph(PROGRAM)
    before = evaluate(graph)
    manager = PassManager(verify=True)
    assert manager.names == list(DEFAULT_PIPELINE)
    assert manager.run(graph)
    assert print_graph(graph) == OPTIMIZED
    assert evaluate(graph) == before
    assert manager.history == [("dce", True), ("fold-constants", True), ("lower-select", True),
                               ("hoist-prefix", True), ("fuse-fork-gens", True), ("dce", False),
                               ("chain-gens", False)]


def test_o0_runs_nothing() -> None:
    graph = parse_graph(PROGRAM)
    manager = PassManager.for_level(0, verify=True, print_after_all=True, stream=io.StringIO())
    assert manager.passes == [] and not manager.run(graph)
    assert print_graph(graph) == PROGRAM
    assert PassManager.for_level(1).names == PassManager.for_level(2).names == list(DEFAULT_PIPELINE)
    with pytest.raises(ValueError, match=">= 0"):
        PassManager.for_level(-1)


def test_the_constraint_pass_has_a_slot() -> None:
    class FakeConstraints:
        name = "compile-constraints"

        def __init__(self) -> None:
            self.seen: list[str] = []

        def run(self, graph: Graph) -> bool:
            self.seen.append(print_graph(graph))
            return False

    fake = FakeConstraints()
    names = [p.name for p in default_pipeline(constraints=fake)]
    assert names == ["dce", "fold-constants", "lower-select", "hoist-prefix", "fuse-fork-gens",
                     "compile-constraints", "dce", "chain-gens"]
    PassManager(default_pipeline(constraints=fake), verify=True).run(parse_graph(PROGRAM))
    assert "batch_gen" in fake.seen[0] and "select" not in fake.seen[0]
    assert PassManager.for_level(0, constraints=fake).names == ["compile-constraints"]
    PassManager(print_after={"compile-constraints"})  # a known name even when not registered


def test_disabled_passes_are_left_out() -> None:
    class FakeConstraints:
        name = "compile-constraints"

        def run(self, graph: Graph) -> bool:
            return False

    names = [p.name for p in default_pipeline(constraints=FakeConstraints(), disable={"fuse-fork-gens"})]
    assert names == ["dce", "fold-constants", "lower-select", "hoist-prefix", "compile-constraints", "dce",
                     "chain-gens"]
    assert PassManager.for_level(1, disable=["dce"]).names == ["fold-constants", "lower-select",
                                                               "hoist-prefix", "fuse-fork-gens", "chain-gens"]
    graph = parse_graph(PROGRAM)
    before = evaluate(graph)
    PassManager.for_level(1, disable={"hoist-prefix"}, verify=True).run(graph)
    text = print_graph(graph)
    assert "prefill" not in text and "batch_gen" in text and 'choices=["Tip one", "Tip two"]' in text
    assert evaluate(graph) == before
    with pytest.raises(UnknownPassError, match="'hoist'"):
        PassManager.for_level(1, disable=["hoist"])
    with pytest.raises(UnknownPassError):  # checked at -O0 too, so a typo never goes unnoticed
        PassManager.for_level(0, disable=["hoist"])
    with pytest.raises(ValueError, match="cannot be disabled"):
        default_pipeline(disable=["compile-constraints"])


def test_the_driver_and_runtime_take_disabled_passes() -> None:
    from compiler.driver import optimize
    from sgc.runtime import Runtime

    module = parse_module(PROGRAM)
    optimize(module, opt_level=1, disable_passes=["fuse-fork-gens"])
    text = print_module(module)
    assert "prefill" in text and "batch_gen" not in text
    runtime = Runtime(disable_passes=["hoist-prefix", "hoist-prefix"])  # the engine is not started
    assert runtime.disable_passes == ("hoist-prefix",) and not runtime.started
    with pytest.raises(UnknownPassError):
        Runtime(disable_passes=["fuse"])


def test_print_after_writes_parsable_dumps() -> None:
    stream = io.StringIO()
    module = parse_module(PROGRAM)
    PassManager(print_after={"fold-constants", "dce"}, stream=stream).run(module)
    text = stream.getvalue()
    headers = [line for line in text.splitlines() if line.startswith("//")]
    assert headers == ["// after dce", "// after fold-constants", "// after dce (no change)"]
    sections = text.split("// after ")[1:]
    assert all(print_module(parse_module(s.split("\n", 1)[1])) == s.split("\n", 1)[1] for s in sections)
    assert "%16 = getvar" not in sections[0] and '"Tips:\\n"' in sections[1]
    assert sections[2].split("\n", 1)[1] == print_module(module)


def test_print_after_all_and_meta() -> None:
    stream = io.StringIO()
    graph = parse_graph(PROGRAM)
    graph.node(0).meta["note"] = "kept"
    PassManager(print_after_all=True, stream=stream, meta=True).run(graph)
    headers = [line[len("// after "):].split(" ")[0] for line in stream.getvalue().splitlines()
               if line.startswith("//")]
    assert headers == list(DEFAULT_PIPELINE)
    assert 'meta={"note": "kept"}' in stream.getvalue()


def test_print_after_defaults_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    PassManager.from_names(["lower-select"], print_after={"lower-select"}).run(parse_graph(PROGRAM))
    assert "// after lower-select\nfunc @tips {" in capsys.readouterr().err


def test_unknown_pass_names() -> None:
    with pytest.raises(UnknownPassError, match="unknown pass 'hoist' .*hoist-prefix"):
        PassManager.from_names(["hoist"])
    with pytest.raises(UnknownPassError, match="'nope'"):
        PassManager(print_after={"dce", "nope"})
    with pytest.raises(UnknownPassError):
        get_pass("")
    assert isinstance(UnknownPassError("x"), ValueError)


def test_registry_lists_every_pass_with_its_summary() -> None:
    listed = dict(available_passes())
    assert set(listed) == {"chain-gens", "dce", "fold-constants", "fuse-fork-gens", "hoist-prefix",
                           "lower-select"} == set(PASSES)
    assert all(summary and not summary.endswith(" ") for summary in listed.values())
    for name, cls in PASSES.items():
        assert cls.name == name and cls.__doc__ and "Guarantees" in cls.__doc__
    with pytest.raises(ValueError, match="kebab-case"):
        register(type("Bad", (Pass,), {"name": "Bad_Name"}))
    with pytest.raises(ValueError, match="already taken"):
        register(type("Other", (Pass,), {"name": "dce"}))


def test_verification_names_the_pass_that_broke_the_graph() -> None:
    class Breaker(Pass):
        name = "breaker"

        def run(self, graph: Graph) -> bool:
            graph.erase(graph.output)
            return True

    graph = parse_graph(PROGRAM)
    with pytest.raises(PassVerificationError, match="after pass breaker: .*exactly one output") as info:
        PassManager([Breaker()], verify=True).run(graph)
    assert info.value.pass_name == "breaker" and isinstance(info.value, IRError)
    PassManager([Breaker()]).run(parse_graph(PROGRAM))  # verification is optional

    broken = Graph("broken")
    broken.add(StateNew())
    with pytest.raises(IRError) as input_error:
        PassManager([], verify=True).run(broken)
    assert not isinstance(input_error.value, PassVerificationError)


def test_safe_split() -> None:
    assert safe_split(["The answer is yes", "The answer is no"]) == len("The answer is")
    assert safe_split(["Line\nfoo", "Line\nbar"]) == len("Line\n")
    assert safe_split(["yes", "yesterday"]) == 0  # no boundary inside "yes"
    assert safe_split(["a  b", "a  c"]) == 1  # before the first of two spaces only
    assert safe_split(["A\n\nx", "A\n\ny"]) == 0  # no boundary inside or after a whitespace run
    assert safe_split(["A\n x", "A\n y"]) == 0 and safe_split(["\nx", "\ny"]) == 0
    assert safe_split(["a b", "a b c"]) == 1  # no choice may become empty
    assert safe_split(["same", "same"]) == 0 and safe_split([]) == 0 and safe_split(["x y"]) == 1
    assert safe_split(["😀 x", "😀 y"]) == 1


def test_the_oracle_sees_wrong_rewrites() -> None:
    """The symbolic interpreter must tell apart what the passes must not do."""
    original = parse_graph(PROGRAM)
    reference = evaluate(original)

    # Appending the branches' shared text to the parent (the naive hoist) changes the parent's text.
    naive = parse_graph(PROGRAM)
    shared = naive.add(Const("Now, expand tip "), before=naive.node(5))
    appended = naive.add(Append(), [naive.node(4), shared], before=naive.node(5))
    naive.set_operands(naive.node(5), [appended])
    naive.set_operands(naive.node(14), [appended, naive.node(9), naive.node(13)])
    naive.verify()
    assert evaluate(naive) != reference

    # Hoisting a select's common prefix without recording it changes the bound variable.
    unrecorded = parse_graph(PROGRAM)
    head = unrecorded.add(Append(), [unrecorded.node(14), unrecorded.add(Const("Tip"), before=unrecorded.node(15))],
                          before=unrecorded.node(15))
    unrecorded.set_operands(unrecorded.node(15), [head])
    unrecorded.set_op(unrecorded.node(15), Select("best", [" one", " two"]))
    assert evaluate(unrecorded) != reference

    # Gens are functions of their prompt and parameters: changing either changes the output.
    for change in ({"max_tokens": 31}, {"name": "other"}):
        changed = parse_graph(PROGRAM)
        changed.set_op(changed.node(9), Gen(**{"name": "tip", "max_tokens": 32, **change}))
        assert evaluate(changed) != reference


def test_the_oracle_models_joins_and_switch_errors() -> None:
    module = parse_module("""\
func @f {
  %0 = state_new
  %1 = const value="P"
  %2 = append %0, %1
  %3 = fork %2 n=2
  %4 = branch %3 index=0
  %5 = gen %4 name="a"
  %6 = branch %3 index=1
  %7 = const value="x"
  %8 = append %6, %7
  %9 = join %2, %5, %8 mode="concate_and_append"
  %10 = fork %9 n=2
  %11 = branch %10 index=0
  %12 = gen %11 name="b"
  %13 = branch %10 index=1
  %14 = join %9, %12, %13
  %15 = const value=1
  %16 = switch %14, %15 {
    case "1" {
      %17 = state_in
      %18 = output %17
    }
  }
  %19 = output %16
}
""")
    assert evaluate_module(module)["f"].error == ("@f: %16 (switch): the value 1 matches no case of ['1'] and "
                                                  "there is no default")
    graph = module["f"]
    graph.set_operands(graph.output, [graph.node(14)])
    graph.erase(graph.node(16))
    outcome = evaluate(graph)
    assert outcome.text[0] == "P" and outcome.text[1].kind == "gen:a" and outcome.text[2] == "x"
    variables = dict(outcome.variables)
    # Both join modes gather every variable bound in a branch (docs/ir.md, as the executor and the eager
    # interpreter do); a branch that did not bind it contributes None.
    assert variables["a"][0].kind == "gen:a" and variables["a"][1] is None
    assert variables["b"][0].kind == "gen:b" and variables["b"][1] is None


def test_possible_values() -> None:
    graph = parse_graph("""\
func @f {
  %0 = state_new
  %1 = select %0 name="a" choices=["x", "y"] prefix=""
  %2 = gen %1 name="b"
  %3 = fork %2 n=1
  %4 = branch %3 index=0
  %5 = getvar %4 name="a"
  %6 = getvar %4 name="b"
  %7 = const value=[1]
  %8 = join %2, %4
  %9 = getvar %8 name="a"
  %10 = output %8
}
""")
    assert possible_values(graph.node(5)) == ["x", "y"]
    assert possible_values(graph.node(6)) is None
    assert possible_values(graph.node(7)) == [(1,)]
    assert possible_values(graph.node(9)) is None


def test_hoist_prefix_keeps_a_fork_whose_parent_moved_on_first() -> None:
    """The parent's next op printed before the fork: no prefill (it could not sit before both)."""
    g = Graph("f")
    s = g.add(StateNew())
    s = g.add(Append(), [s, g.add(Const("P"))])
    nxt = g.add(Append(), [s, g.add(Const("Q"))])
    fork = g.add(Fork(2), [s])
    from compiler.ir import Branch, Join

    ends = [g.add(Gen("g"), [g.add(Branch(i), [fork])]) for i in range(2)]
    g.add(Output(), [g.add(Join(), [nxt, *ends])])
    g.verify()
    assert not PassManager.from_names(["hoist-prefix"], verify=True).run(g)
    assert not any(isinstance(n.op, Prefill) for n in g.nodes())


def test_docs_have_a_section_per_pass() -> None:
    from pathlib import Path

    docs = (Path(__file__).parent.parent / "docs" / "passes.md").read_text(encoding="utf-8")
    for name in [*PASSES, "compile-constraints"]:
        assert f"\n## {name}\n" in docs, name
    assert ", ".join(DEFAULT_PIPELINE) in docs
