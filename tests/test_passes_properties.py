"""Properties of the passes on generated programs (hypothesis): every pass, alone and in the default
pipeline, keeps the graph verifying and printable-parsable, keeps the symbolic meaning (final texts and
variables, compiler/passes/semantics.py), and changes nothing when run a second time.

The generator favours what the passes look for: chains of constant appends (some empty), forks whose
branches follow one template (shared and differing text, equal gens), selects whose choices share
words, switches on constants and on select results, nested regions, several functions, host steps, and hostile
strings."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.ir import (
    Append,
    Arg,
    Branch,
    Const,
    Fork,
    Gen,
    GetVar,
    Graph,
    Host,
    Join,
    Module,
    Node,
    Output,
    Prefill,
    RoleBegin,
    RoleEnd,
    Score,
    Select,
    SetVar,
    StateIn,
    StateNew,
    Switch,
    VarScopeBegin,
    VarScopeEnd,
)
from compiler.ir_text import print_module
from compiler.parser.ir_reader import parse_module
from compiler.passes import PASSES, PassManager
from compiler.passes.semantics import evaluate_module
from tests.tiers import examples

WORDS = ["", " ", "\n", "a", "The answer is ", "Tip ", "yes", " no", "x y\nz", "\"", "\\", "\u2028",
         "😀", "\ud800", "%1", "// c", " #", "\t", "é"]
texts = st.lists(st.sampled_from(WORDS), max_size=3).map("".join)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2, 2), st.sampled_from([1.0, 0.5]), texts)
GEN_PARAMS = [{}, {"max_tokens": 8}, {"max_tokens": 8, "stop": ["\n"]}, {"regex": "[0-9]+"},
              {"temperature": 0.0, "choices": ["yes", "no"]}]
NAMES = ["v", "w", "answer"]
METHODS = ["token_length_normalized", "greedy_token_selection", "unconditional_likelihood_normalized"]


class Builder:
    def __init__(self, draw, graph: Graph) -> None:
        self.draw, self.graph = draw, graph

    def add(self, op, operands=(), region=None) -> Node:
        return self.graph.add(op, operands, region=region)

    def const(self, value, region) -> Node:
        return self.add(Const(value), region=region)

    def steps(self, s: Node, values: list[Node], region, depth: int, count: int | None = None) -> Node:
        if count is None:
            count = self.draw(st.integers(0, 4 if depth else 2))
        for _ in range(count):
            s = self.step(s, values, region, depth)
        return s

    def choices(self) -> list[str]:
        prefix = self.draw(st.sampled_from(["", "The answer is ", "Line\n", "a b", "😀 é", "\"q\" "]))
        suffixes = self.draw(st.lists(texts, min_size=1, max_size=3, unique=True))
        return [prefix + s for s in suffixes]

    def step(self, s: Node, values: list[Node], region, depth: int) -> Node:
        draw = self.draw
        kind = draw(st.sampled_from(["text", "text", "value", "role", "gen", "select", "fork", "fork",
                                     "switch", "host", "prefill", "set_var", "var_scope"]))
        if kind == "text":
            for _ in range(draw(st.integers(1, 3))):
                s = self.add(Append(), [s, self.const(draw(texts), region)], region)
            return s
        if kind == "value" and values:
            return self.add(Append(), [s, draw(st.sampled_from(values))], region)
        if kind == "role":
            role = draw(st.sampled_from(["system", "user", "assistant"]))
            s = self.add(RoleBegin(role), [s], region)
            s = self.steps(s, values, region, max(0, depth - 1))
            return self.add(RoleEnd(role), [s], region)
        if kind == "gen":
            s = self.add(Gen(draw(st.sampled_from([*NAMES, None])), **draw(st.sampled_from(GEN_PARAMS))),
                         [s], region)
            if draw(st.booleans()):
                values.append(self.add(GetVar(draw(st.sampled_from(NAMES))), [s], region))
            return s
        if kind == "select":
            return self.select(s, values, region, depth)
        if kind == "fork" and depth:
            return self.fork(s, values, region, depth)
        if kind == "switch" and depth:
            selector = draw(st.one_of(st.sampled_from(values), st.none())) if values else None
            if selector is None:
                selector = self.const(draw(scalars), region)
            cases = draw(st.lists(scalars, max_size=3, unique_by=lambda v: (type(v), v)))
            return self.switch(s, selector, cases, values, region, depth)
        if kind == "host":
            if draw(st.booleans()):
                return self.add(Host("m:f", reason="test"), [s], region)
            values.append(self.add(Host("m:g", returns="text"), [s], region))
            return s
        if kind == "set_var":
            value = draw(st.sampled_from(values)) if values and draw(st.booleans()) else self.const(draw(scalars), region)
            name = draw(st.sampled_from(NAMES))
            s = self.add(SetVar(name), [s, value], region)
            if depth and draw(st.booleans()):
                selector = self.add(GetVar(name), [s], region)
                cases = draw(st.lists(scalars, max_size=3, unique_by=lambda v: (type(v), v)))
                return self.switch(s, selector, cases, values, region, depth)
            return s
        if kind == "var_scope":
            name = draw(st.sampled_from(NAMES))
            s = self.add(VarScopeBegin(name), [s], region)
            s = self.steps(s, values, region, max(0, depth - 1))
            s = self.add(VarScopeEnd(name), [s], region)
            if draw(st.booleans()):
                values.append(self.add(GetVar(name), [s], region))
            return s
        if kind == "prefill":
            extra = [self.const(draw(texts), region)] if draw(st.booleans()) else []
            return self.add(Prefill(), [s, *extra], region)
        return self.add(Append(), [s, self.const(draw(texts), region)], region)

    def select(self, s: Node, values: list[Node], region, depth: int) -> Node:
        draw = self.draw
        choices = self.choices()
        name = draw(st.sampled_from([*NAMES, None]))
        cls = draw(st.sampled_from([Select, Select, Score]))
        s = self.add(cls(name, choices, method=draw(st.sampled_from(METHODS))), [s], region)
        if name is None or not draw(st.booleans()):
            return s
        if draw(st.booleans()):  # text between the select and the read of its variable
            s = self.add(Append(), [s, self.const(draw(texts), region)], region)
        selector = self.add(GetVar(name), [s], region)
        values.append(selector)
        if not depth or not draw(st.booleans()):
            return s
        cases = draw(st.lists(st.sampled_from([*choices, "other", 1]), max_size=4, unique=True))
        return self.switch(s, selector, cases, values, region, depth)

    def switch(self, s: Node, selector: Node, cases: list, values: list[Node], region, depth: int) -> Node:
        default = self.draw(st.booleans()) or not cases
        sw = self.add(Switch(cases=cases, default=default), [s, selector], region)
        for inner in sw.regions:
            r = self.add(StateIn(), region=inner)
            r = self.steps(r, list(values), inner, depth - 1)
            self.add(Output(), [r], region=inner)
        return sw

    def fork(self, s: Node, values: list[Node], region, depth: int) -> Node:
        draw = self.draw
        n = draw(st.integers(1, 3))
        fork = self.add(Fork(n), [s], region)
        if draw(st.booleans()):
            template = draw(st.lists(st.sampled_from(["same", "vary", "value", "gen", "gen", "role", "select",
                                                      "set_var"]), max_size=5))
            shared = {i: draw(texts) for i in range(len(template))}
            params = {i: draw(st.sampled_from(GEN_PARAMS)) for i in range(len(template))}
            ends = [self.templated(self.add(Branch(i), [fork], region), i, template, shared, params, values,
                                   region)
                    for i in range(n)]
        else:
            ends = [self.steps(self.add(Branch(i), [fork], region), list(values), region, depth - 1)
                    for i in range(n)]
        if draw(st.booleans()):  # the parent goes on before the join
            s = self.add(Append(), [s, self.const(draw(texts), region)], region)
        if draw(st.integers(0, 4)) == 0:
            return s  # an unjoined fork
        mode = draw(st.sampled_from(["gather_variable", "concate_and_append"]))
        return self.add(Join(mode=mode), [s, *ends], region)

    def templated(self, s: Node, index: int, template: list[str], shared: dict, params: dict,
                  values: list[Node], region) -> Node:
        for position, kind in enumerate(template):
            if kind in ("same", "vary"):
                text = shared[position] + (f" {index}" if kind == "vary" else "")
                s = self.add(Append(), [s, self.const(text, region)], region)
            elif kind == "value" and values:
                s = self.add(Append(), [s, values[position % len(values)]], region)
            elif kind == "gen":
                s = self.add(Gen("g", **params[position]), [s], region)
            elif kind == "role":
                s = self.add(RoleBegin("assistant"), [s], region)
                s = self.add(RoleEnd("assistant"), [s], region)
            elif kind == "select":
                s = self.add(Select("pick", ["The answer is yes", "The answer is no"]), [s], region)
            elif kind == "set_var":
                s = self.add(SetVar("index"), [s, self.const(index, region)], region)
        return s


@st.composite
def modules(draw) -> Module:
    graphs = []
    helper = None
    if draw(st.booleans()):
        helper = Graph("helper")
        b = Builder(draw, helper)
        q = b.add(Arg("q"))
        s = b.steps(b.add(StateIn()), [q], None, 1)
        b.add(Output(), [s])
        graphs.append(helper)
    main = Graph("main")
    b = Builder(draw, main)
    values = [b.add(Arg(name)) for name in draw(st.lists(st.sampled_from(["x", "y"]), max_size=2, unique=True))]
    s = b.steps(b.add(StateNew()), values, None, 2, count=draw(st.integers(1, 6)))
    b.add(Output(), [s])
    graphs.append(main)
    return Module(graphs)


def _check(module: Module, manager: PassManager) -> None:
    text = print_module(module)
    expected = evaluate_module(module)
    copy = parse_module(text)
    manager.run(copy)  # verifies after every pass
    after = print_module(copy)
    assert print_module(parse_module(after)) == after
    assert evaluate_module(copy) == expected, f"meaning changed:\n{text}\n=>\n{after}"


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(modules())
def test_default_pipeline_keeps_meaning(module: Module) -> None:
    module.verify()
    _check(module, PassManager(verify=True))


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(modules())
def test_each_pass_keeps_meaning_and_is_idempotent(module: Module) -> None:
    for name in sorted(PASSES):
        _check(module, PassManager.from_names([name], verify=True))
        once = parse_module(print_module(module))
        PassManager.from_names([name]).run(once)
        text = print_module(once)
        assert not PassManager.from_names([name], verify=True).run(once), \
            f"{name} is not idempotent:\n{text}\n=>\n{print_module(once)}"
        assert print_module(once) == text


def test_inlining_a_switch_keeps_same_name_scopes_nested() -> None:
    # Found by the property above: folding the constant switch inlines its default region, and the
    # outer `var_scope_end` must then skip the inner scope of the same name (brackets, not nearest).
    text = """func @main {
  %0 = state_new
  %1 = var_scope_begin %0 name="v"
  %2 = const value=false
  %3 = switch %1, %2 {
    case true {
      %4 = state_in
      %5 = output %4
    }
    default {
      %6 = state_in
      %7 = role_begin %6 role="system"
      %8 = var_scope_begin %7 name="v"
      %9 = var_scope_end %8 name="v"
      %10 = role_end %9 role="system"
      %11 = output %10
    }
  }
  %12 = var_scope_end %3 name="v"
  %13 = output %12
}
"""
    module = parse_module(text)
    module.verify()
    _check(module, PassManager(verify=True))
