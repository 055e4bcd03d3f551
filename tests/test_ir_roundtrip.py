"""Every printed graph parses back and prints identically (hypothesis over random well-formed modules),
and the reader fails with IRParseError/IRError, never anything else, on damaged text."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.ir import (
    Append,
    Arg,
    BatchGen,
    Branch,
    Const,
    Fork,
    Gen,
    GetVar,
    Graph,
    Host,
    IRError,
    Join,
    Module,
    Node,
    Output,
    Prefill,
    RoleBegin,
    RoleEnd,
    Score,
    Select,
    StateIn,
    StateNew,
    Switch,
)
from compiler.ir_text import format_string, print_graph, print_module
from compiler.parser.ir_reader import IRParseError, parse_graph, parse_module
from tests.tiers import examples

NASTY = [
    '"', "\\", "\n", "\r", "\t", "\x00", "\x7f", "\x85", "\u2028", "\u2029", "\ufeff", "\u200d", "\u202e",
    "\ud800", "\udfff", "\U000e0001", "\U0010ffff", "😀", "é", "#", "//", "%1", "{", "}", "[", "]", "=",
    ",", "case", "default", "\\u0041", "\\n", " ", "ǅ", "\u0301",
]
texts = st.one_of(
    st.text(st.one_of(st.characters(), st.sampled_from([c for c in NASTY if len(c) == 1])), max_size=8),
    st.lists(st.sampled_from(NASTY), max_size=4).map("".join),
)
names = st.sampled_from(["a", "b_2", "essay", "x", "_tmp", "q9"])
finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), finite, texts)
json_values = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
    max_leaves=6,
)
FILES = ["essay.py", "a b/c.py", "é/#x.py", "C:\\dir\\f.py", "x // y.py", "%1.py", '"q".py']
locs = st.one_of(st.none(), st.builds("{}:{}".format, st.sampled_from(FILES), st.integers(1, 9999)))
metas = st.one_of(st.none(), st.dictionaries(names, scalars, max_size=2), st.just({"deep": [{"a": None}, 1.5]}))


def sampling_kwargs(draw) -> dict:
    kw: dict = {}
    optional = {
        "max_tokens": st.integers(0, 4096), "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1),
        "top_k": st.sampled_from([-1, 1, 40]), "min_p": st.floats(0, 1), "ignore_eos": st.booleans(),
        "frequency_penalty": st.floats(-2, 2), "presence_penalty": finite, "return_logprob": st.booleans(),
        "stop": st.lists(texts.filter(bool), max_size=3), "stop_token_ids": st.lists(st.integers(0, 10**6), max_size=3),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            kw[key] = draw(strategy)
    if "max_tokens" in kw and draw(st.booleans()):
        kw["min_tokens"] = draw(st.integers(0, kw["max_tokens"]))
    constraint = draw(st.sampled_from([None, "regex", "json_schema", "ebnf", "choices", "dtype"]))
    if constraint == "choices":
        kw["choices"] = draw(st.lists(texts, min_size=1, max_size=4, unique=True))
    elif constraint == "dtype":
        kw["dtype"] = draw(st.sampled_from(["int", "float", "str", "bool"]))
    elif constraint:
        kw[constraint] = draw(texts)
    if constraint and draw(st.booleans()):
        kw["fsm"] = draw(texts)
    return kw


class Builder:
    """Builds a random well-formed graph by threading a state through random steps."""

    def __init__(self, draw, graph: Graph) -> None:
        self.draw, self.graph = draw, graph

    def add(self, op, operands=(), region=None) -> Node:
        return self.graph.add(op, operands, region=region, loc=self.draw(locs), meta=self.draw(metas))

    def steps(self, state: Node, values: list[Node], region, depth: int) -> Node:
        for _ in range(self.draw(st.integers(0, 5 if depth else 3))):
            state = self.step(state, values, region, depth)
        return state

    def step(self, s: Node, values: list[Node], region, depth: int) -> Node:
        draw = self.draw
        kind = draw(st.sampled_from(["const", "value", "role", "gen", "select", "prefill", "host", "hostv",
                                     "fork", "switch"]))
        if kind == "const":
            return self.add(Append(), [s, self.add(Const(draw(st.one_of(texts, json_values))), region=region)],
                            region)
        if kind == "value" and values:
            return self.add(Append(), [s, draw(st.sampled_from(values))], region)
        if kind == "role":
            role = draw(st.sampled_from(["system", "user", "assistant", "tool"]))
            s = self.add(RoleBegin(role), [s], region)
            s = self.steps(s, values, region, max(0, depth - 1))
            return self.add(RoleEnd(role), [s], region)
        if kind == "gen":
            s = self.add(Gen(name=draw(st.one_of(st.none(), texts.filter(bool))), **sampling_kwargs(draw)), [s], region)
            if draw(st.booleans()):
                values.append(self.add(GetVar(draw(texts)), [s], region))
            return s
        if kind == "select":
            cls = draw(st.sampled_from([Select, Score]))
            op = cls(draw(texts.filter(bool)), draw(st.lists(texts, min_size=1, max_size=4, unique=True)),
                     method=draw(st.sampled_from(["token_length_normalized", "greedy_token_selection",
                                                  "unconditional_likelihood_normalized"])),
                     temperature=draw(st.one_of(st.none(), st.floats(0, 2))))
            s = self.add(op, [s], region)
            values.append(self.add(GetVar(op.name), [s], region))
            return s
        if kind == "prefill":
            return self.add(Prefill(), [s], region)
        if kind in ("host", "hostv"):
            extra = draw(st.lists(st.sampled_from(values), max_size=2)) if values else []
            named = draw(st.booleans())
            returns = "state" if kind == "host" else draw(st.sampled_from(["text", "value"]))
            op = Host(f"{draw(names)}:{draw(names)}.<locals>", reason=draw(texts),
                      line=draw(st.one_of(st.none(), st.integers(1, 10**6))),
                      args=[f"a{i}" for i in range(1 + len(extra))] if named else [], returns=returns)
            node = self.add(op, [s, *extra], region)
            if returns == "state":
                return node
            values.append(node)
            return s
        if kind == "fork" and depth:
            n = draw(st.integers(1, 3))
            fork = self.add(Fork(n), [s], region)
            ends = [self.steps(self.add(Branch(i), [fork], region), values, region, depth - 1) for i in range(n)]
            if draw(st.booleans()):
                batch = self.add(BatchGen(**sampling_kwargs(draw)), ends, region)
                ends = [self.add(Branch(i), [batch], region) for i in range(n)]
            if draw(st.booleans()):
                s = self.add(Append(), [s, self.add(Const(draw(texts)), region=region)], region)
            mode = draw(st.sampled_from(["gather_variable", "concate_and_append"]))
            return self.add(Join(mode=mode), [s, *ends], region)
        if kind == "switch" and depth:
            cases = draw(st.lists(scalars, max_size=3, unique_by=lambda v: (type(v), v)))
            default = draw(st.booleans()) or not cases
            selector = draw(st.sampled_from(values)) if values else self.add(Const(draw(scalars)), region=region)
            sw = self.add(Switch(cases=cases, default=default), [s, selector], region)
            for inner in sw.regions:
                r = self.add(StateIn(), region=inner)
                r = self.steps(r, list(values), inner, depth - 1)
                self.add(Output(), [r], region=inner)
            return sw
        return self.add(Append(), [s, self.add(Const(draw(texts)), region=region)], region)


@st.composite
def modules(draw) -> Module:
    graphs = []
    helper = None
    if draw(st.booleans()):
        helper = Graph(draw(st.one_of(names, texts.filter(bool))))
        b = Builder(draw, helper)
        q = b.add(Arg("q"))
        s = b.steps(b.add(StateIn()), [q], None, 1)
        b.add(Output(), [s])
        graphs.append(helper)
    main = Graph("main")
    b = Builder(draw, main)
    values = [b.add(Arg(name, **({"default": draw(json_values)} if draw(st.booleans()) else {})))
              for name in draw(st.lists(names, max_size=2, unique=True))]
    s = b.steps(b.add(draw(st.sampled_from([StateNew, StateIn]))()), values, None, 2)
    b.add(Output(), [s])
    graphs.append(main)
    if helper is not None and helper.name == "main":
        helper.name = "main_helper"
    return Module(graphs)


@settings(max_examples=examples(80), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(modules(), st.booleans())
def test_print_parse_print_is_identity(module: Module, meta: bool) -> None:
    module.verify()
    text = print_module(module, meta=meta)
    parsed = parse_module(text)  # verifies
    assert print_module(parsed, meta=meta) == text
    for original, again in zip(module, parsed):
        assert [n.op for n in again.nodes()] == [n.op for n in original.nodes()]
        assert [n.loc for n in again.nodes()] == [n.loc for n in original.nodes()]
        assert print_graph(parse_graph(print_graph(original), verify=False)) == print_graph(original)
    assert all(len(line.split("\n")) == 1 for line in text.splitlines())


@settings(max_examples=examples(40), deadline=None)
@given(modules(), st.data())
def test_damaged_text_fails_cleanly(module: Module, data) -> None:
    text = print_module(module)
    cut = data.draw(st.integers(0, len(text) - 1))
    junk = data.draw(st.sampled_from(["", "%", "{", '"', "\n", "=", "x", "#", ",", "]", "@"]))
    damaged = text[:cut] + junk + text[cut + 1:]
    try:
        parse_module(damaged)
    except IRParseError as exc:
        assert exc.line is None or exc.line >= 1
    except IRError:
        pass  # parsed, but does not verify


@given(texts)
def test_string_escapes_round_trip(text: str) -> None:
    g = Graph("f")
    g.add(Output(), [g.add(Append(), [g.add(StateNew()), g.add(Const(text))])])
    assert parse_graph(print_graph(g)).node(1).op.value == text


def test_surrogate_pairs_stay_two_code_points() -> None:
    pair = "\ud83d\ude00"  # two lone surrogates, not the emoji they would combine to in JSON
    assert format_string(pair) == '"\\ud83d\\ude00"'
    g = Graph("f")
    g.add(Output(), [g.add(Append(), [g.add(StateNew()), g.add(Const(pair + "😀"))])])
    assert parse_graph(print_graph(g)).node(1).op.value == pair + "😀"


def test_visible_unicode_prints_raw() -> None:
    assert format_string("é😀ǅ 中") == '"é😀ǅ 中"'
    assert format_string("\u2028\u200d\x00\U000e0001") == '"\\u2028\\u200d\\u0000\\U000e0001"'


@pytest.mark.parametrize("text, line, column, fragment", [
    ("func @f {\n  %0 = state_new\n  %1 = gen %0 name=\n}\n", 3, 20, "expected"),
    ("func @f {\n  %0 = state_new\n  %1 = gen %0 name=\"x\" %2\n}\n", 3, 24, "unexpected '%2'"),
    ("func @f {\n  %0 = state_new\n  %1 = gen %0 nme=\"x\"\n}\n", 3, 15, "gen has no attribute 'nme'"),
    ("func @f {\n  %0 = state_new\n  %1 = gen %7\n}\n", 3, 12, "%7 is not defined before this use"),
    ("func @f {\n  %0 = state_new\n  %0 = state_new\n}\n", 3, 3, "%0 is defined twice"),
    ("func @f {\n  %0 = zap\n}\n", 2, 8, "unknown op 'zap'"),
    ("func @f {\n  %0 = const value=\"a\\qb\"\n}\n", 2, 22, "invalid escape"),
    ("func @f {\n  %0 = const value=\"\\U00110000\"\n}\n", 2, 21, "beyond the last code point"),
    ("func @f {\n  %0 = fork n=0\n}\n", 2, 8, "n must be >= 1"),
    ("func @f {\n  %0 = gen max_tokens=1.5\n}\n", 2, 12, "'max_tokens' must be int or null"),
    ("func @f {\n  %0 = branch\n}\n", 2, 8, "needs attribute(s) index"),
    ("func @f {\n  %0 = state_new $\n}\n", 2, 18, "unexpected character '$'"),
    ("func @f {\n  %0 = state_new {\n  }\n}\n", 2, 8, "state_new has no regions"),
    ("func @f {\n  %0 = switch cases=[1] {\n  }\n}\n", 2, 15, "written as case blocks"),
    ("func @f {\n  %0 = switch {\n  }\n}\n", 2, 8, "at least one case or default"),
    ("func @f {\n}\nfunc @f {\n}\n", 3, 6, "function @f is defined twice"),
    ("func @f {\n  %0 = const value={\"a\": 1, \"a\": 2}\n}\n", 2, 29, "key 'a' is given twice"),
    ("func @f {\n  %0 = arg name=\"x\" name=\"y\"\n}\n", 2, 21, "attribute 'name' is given twice"),
])
def test_parse_errors_have_positions(text: str, line: int, column: int, fragment: str) -> None:
    with pytest.raises(IRParseError) as info:
        parse_module(text, verify=False)
    assert (info.value.line, info.value.column) == (line, column), str(info.value)
    assert f"line {line}:{column}: " in str(info.value) and fragment in str(info.value)
    assert "^" in str(info.value)  # the source line with a caret


def test_comments_blank_lines_and_crlf() -> None:
    text = (
        "// a header comment\r\n\r\nfunc @f {  // trailing\r\n  // inside\r\n\r\n  %0 = state_new  # f.py:1\r\n"
        "  %1 = arg name=\"default\" default=null\r\n  %2 = output %0\r\n}"
    )
    g = parse_graph(text)
    assert g.node(0).loc == "f.py:1" and g.node(1).op.default is None
    assert print_graph(g) == (
        'func @f {\n  %0 = state_new  # f.py:1\n  %1 = arg name="default" default=null\n  %2 = output %0\n}\n'
    )


def test_parse_graph_wants_one_function_and_verifies() -> None:
    with pytest.raises(IRParseError, match="exactly one function, found 2"):
        parse_graph("func @a {\n}\nfunc @b {\n}\n", verify=False)
    with pytest.raises(IRError, match="exactly one output"):
        parse_graph("func @a {\n  %0 = state_new\n}\n")
    assert len(parse_graph("func @a {\n  %0 = state_new\n}\n", verify=False)) == 1
    weird = Graph('my "func"\n')
    weird.add(Output(), [weird.add(StateNew())])
    assert parse_graph(print_graph(weird)).name == 'my "func"\n'
