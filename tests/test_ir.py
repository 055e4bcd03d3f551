"""The graph IR: building graphs, the verifier's invariants (each error names its node), mutation and order."""

from __future__ import annotations

import dataclasses

import pytest

from compiler.ir import (
    NO_DEFAULT,
    OPS,
    Append,
    Arg,
    BatchGen,
    Branch,
    Const,
    Fork,
    FrozenDict,
    Gen,
    GetVar,
    Graph,
    Host,
    IRError,
    Join,
    Kind,
    Output,
    Prefill,
    RoleBegin,
    Score,
    Select,
    StateIn,
    StateNew,
    Switch,
    branch_origin,
    state_lineage,
    thaw_json,
)


def linear() -> tuple[Graph, dict[str, object]]:
    g = Graph("f")
    x = g.add(Arg("x"))
    s0 = g.add(StateNew())
    c = g.add(Const("Hi "))
    s1 = g.add(Append(), [s0, c])
    s2 = g.add(Append(), [s1, x])
    s3 = g.add(Gen("out", max_tokens=4), [s2], loc="f.py:3")
    out = g.add(Output(), [s3])
    return g, {"x": x, "s0": s0, "c": c, "s1": s1, "s2": s2, "s3": s3, "out": out}


def forked(n: int = 2) -> tuple[Graph, dict[str, object]]:
    g = Graph("f")
    s = g.add(StateNew())
    fork = g.add(Fork(n), [s])
    ends = []
    for i in range(n):
        b = g.add(Branch(i), [fork])
        ends.append(g.add(Gen("v", max_tokens=2), [b]))
    join = g.add(Join(), [s, *ends])
    out = g.add(Output(), [join])
    return g, {"s": s, "fork": fork, "ends": ends, "join": join, "out": out}


def switched() -> tuple[Graph, dict[str, object]]:
    g = Graph("f")
    x = g.add(Arg("x"))
    s = g.add(StateNew())
    s = g.add(Select("pick", ["a", "b"]), [s])
    v = g.add(GetVar("pick"), [s])
    sw = g.add(Switch(cases=["a", "b"]), [s, v], loc="f.py:9")
    for region in sw.regions:
        r = g.add(StateIn(), region=region)
        r = g.add(Append(), [r, x], region=region)
        g.add(Output(), [r], region=region)
    out = g.add(Output(), [sw])
    return g, {"x": x, "sel": s, "v": v, "sw": sw, "out": out}


def expect_error(graph: Graph, node, *fragments: str) -> IRError:
    with pytest.raises(IRError) as info:
        graph.verify()
    text = str(info.value)
    if node is not None:
        assert info.value.node is node
        assert f"%{node.id} ({node.op.opname})" in text
        marked = [line for line in text.splitlines() if line.startswith(">>")]
        assert marked and f"%{node.id} = {node.op.opname}" in marked[0]
    for fragment in fragments:
        assert fragment in text, text
    return info.value


# -- building ----------------------------------------------------------------------------------------


def test_build_and_inspect() -> None:
    g, n = linear()
    g.verify()
    assert len(g) == 7 and [a.id for a in g.args] == [n["x"].id]
    assert g.entry is n["s0"] and g.output is n["out"]
    assert n["s3"].kind is Kind.STATE and n["c"].kind is Kind.TEXT and n["x"].kind is Kind.VALUE
    assert n["out"].kind is Kind.NONE and Const([1]).result_kind() is Kind.VALUE
    assert g.users(n["s2"]) == [n["s3"]] and g.users(n["out"]) == []
    assert set(g.dataflow.edges) == {(o.id, u.id) for u in g.nodes() for o in u.operands}
    assert str(n["s3"]) == '%5 = gen %4 name="out" max_tokens=4  # f.py:3'
    assert repr(n["s3"]) == "<Node %5 = gen>" and n["s3"].parent is None


def test_ops_are_frozen_validated_and_hashable() -> None:
    gen = Gen("x", stop="\n", temperature=0, choices=None)
    assert gen.stop == ("\n",) and isinstance(gen.temperature, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        gen.name = "y"  # type: ignore[misc]
    assert hash(Const({"a": [1, {"b": None}]})) == hash(Const({"a": [1, {"b": None}]}))
    assert isinstance(Const({"a": 1}).value, FrozenDict)
    assert thaw_json(Const({"a": [1, 2]}).value) == {"a": [1, 2]}
    assert Arg("x").default is NO_DEFAULT and Arg("x", default=None).default is None
    assert len({Gen("a"), Gen("a"), Gen("b")}) == 2
    assert set(OPS) == {
        "arg", "const", "state_new", "state_in", "append", "role_begin", "role_end", "gen", "getvar",
        "select", "score", "fork", "branch", "join", "switch", "prefill", "batch_gen", "host", "output",
        "set_var", "var_scope_begin", "var_scope_end",
    }


@pytest.mark.parametrize("make, fragment", [
    (lambda: Gen("x", max_tokens="5"), "attribute 'max_tokens' must be int or null"),
    (lambda: Gen("x", max_tokens=True), "attribute 'max_tokens'"),
    (lambda: Gen("x", regex="a", choices=["a"]), "at most one constraint"),
    (lambda: Gen("x", choices=[]), "choices must not be empty"),
    (lambda: Gen("x", stop=[""]), "stop strings must not be empty"),
    (lambda: Gen("x", temperature=float("nan")), "attribute 'temperature'"),
    (lambda: Gen("x", top_p=0), "top_p"),
    (lambda: Gen("x", max_tokens=2, min_tokens=3), "exceeds max_tokens"),
    (lambda: Gen("x", fsm="f0"), "no constraint"),
    (lambda: Gen("x", dtype="list"), "one of 'int', 'float', 'str', 'bool'"),
    (lambda: Select("x", ["a", "a"]), "distinct"),
    (lambda: Select("x", ["a"], method="best"), "attribute 'method'"),
    (lambda: Fork(0), "n must be >= 1"),
    (lambda: Branch(-1), "index must be >= 0"),
    (lambda: Join(mode="zip"), "attribute 'mode'"),
    (lambda: Switch(cases=["a", "a"]), "distinct"),
    (lambda: Switch(cases=[]), "at least one case"),
    (lambda: Switch(cases=[["a"]]), "not a scalar"),
    (lambda: Host("nocolon"), "module:qualname"),
    (lambda: Arg("not an ident"), "identifier"),
    (lambda: Const(object()), "attribute 'value' must be a JSON value"),
    (lambda: Const(float("inf")), "attribute 'value'"),
    (lambda: RoleBegin("us er"), "identifier"),
])
def test_op_attribute_errors(make, fragment: str) -> None:
    with pytest.raises(IRError) as info:
        make()
    assert fragment in str(info.value)


def test_bad_loc_and_foreign_operands() -> None:
    g, n = linear()
    for bad in ["", " f.py:1", "f.py:1\n", "a\u2028b", "x\ud800"]:
        with pytest.raises(IRError, match="loc must be"):
            g.add(Const("a"), loc=bad)
    other, _ = linear()
    with pytest.raises(IRError, match="not a node of graph"):
        g.add(Append(), [n["s0"], other.node(0)])
    with pytest.raises(IRError, match="has no node %99"):
        g.add(Append(), [n["s0"], 99])
    with pytest.raises(IRError, match="already used"):
        g.add(Const("a"), id=3)
    with pytest.raises(TypeError):
        g.add("gen")  # type: ignore[arg-type]


# -- the verifier: one test per invariant ------------------------------------------------------------


def test_defined_before_use() -> None:
    g, n = linear()
    late = g.add(Const("late"), before=n["out"])
    g.set_operands(n["s2"], [n["s1"], late])
    expect_error(g, n["s2"], "operand 1 (%7) is not defined before this use")


def test_operand_kinds() -> None:
    g, n = linear()
    g.set_operands(n["s2"], [n["s1"], n["s0"]])
    expect_error(g, n["s2"], "operand 1 (%1) must be a text or value", "is a state")
    g, n = linear()
    g.set_operands(n["s3"], [n["c"]])
    expect_error(g, n["s3"], "operand 0 (%2) must be a state")


def test_arity() -> None:
    g, n = linear()
    g.set_operands(n["s3"], [n["s2"], n["s2"]])
    expect_error(g, n["s3"], "takes 1 operand, got 2")
    g, n = forked()
    g.set_operands(n["join"], [n["s"]])
    expect_error(g, n["join"], "takes at least 2 operands")


def test_exactly_one_output_last() -> None:
    g, n = linear()
    g.erase(n["out"])
    expect_error(g, None, "the function body must have exactly one output, found 0")
    g, n = linear()
    extra = g.add(Output(), [n["s3"]], before=n["out"])
    expect_error(g, n["out"], "exactly one output, found 2")
    g, n = linear()
    g.move(n["c"], after=n["out"])
    g.set_operands(n["s1"], [n["s0"], n["x"]])
    expect_error(g, n["c"], "the output must be the last node of the function body")
    del extra


def test_exactly_one_entry() -> None:
    g, n = linear()
    second = g.add(StateNew(), before=n["out"])
    expect_error(g, second, "exactly one a state_new or state_in, found 2")


def test_ill_typed_attributes_are_caught_even_when_bypassed() -> None:
    g, n = linear()
    object.__setattr__(n["s3"].op, "max_tokens", "many")
    expect_error(g, n["s3"], "ill-typed attributes", "max_tokens")
    g, n = linear()
    object.__setattr__(n["s3"].op, "stop", ["x"])  # a list where a tuple belongs
    expect_error(g, n["s3"], "ill-typed attributes")


def test_regions_well_formed() -> None:
    g, n = switched()
    g.verify()
    region = n["sw"].regions[1]
    g.erase(region.nodes[-1])
    expect_error(g, n["sw"], "region 1 of %4 must have exactly one output")
    g, n = switched()
    entry = n["sw"].regions[0].nodes[0]
    g.set_operands(n["sw"].regions[0].nodes[1], [n["sel"], n["x"]])
    g.erase(entry)
    expect_error(g, n["sw"].regions[0].nodes[0], "is a state from outside region 0 of %4")
    g, n = switched()
    inner = g.add(Arg("y"), before=n["sw"].regions[0].nodes[0])
    expect_error(g, inner, "arg may only appear in the function body")
    g, n = switched()
    g.add(StateNew(), before=n["sw"].regions[0].nodes[0])
    expect_error(g, None, "state_new may only appear in the function body")


def test_region_values_do_not_leak() -> None:
    g, n = switched()
    inner_const = g.add(Const("in"), before=n["sw"].regions[0].nodes[-1])
    user = g.add(Append(), [n["out"].operands[0], inner_const], before=n["out"])
    g.set_operands(n["out"], [user])
    expect_error(g, user, f"operand 1 (%{inner_const.id}) is not defined before this use")


def test_branch_index_in_range_and_unique() -> None:
    g, n = forked()
    g.set_op(n["ends"][1].operands[0], Branch(2))
    expect_error(g, n["ends"][1].operands[0], "index 2 is out of range: %1 has 2 branches")
    g, n = forked()
    dup = g.add(Branch(0), [n["fork"]], before=n["out"])
    expect_error(g, dup, "branch 0 of %1 is already taken by %2")


def test_join_invariants() -> None:
    g, n = forked(3)
    g.set_operands(n["join"], [n["s"], n["ends"][0], n["ends"][1]])
    expect_error(g, n["join"], "joins 2 branch states but fork %1 has n=3")
    g, n = forked()
    g.set_operands(n["join"], [n["s"], n["ends"][1], n["ends"][0]])
    expect_error(g, n["join"], "descends from branch 1; branch states must be given in index order")
    g, n = forked()
    other = g.add(Fork(2), [n["s"]], before=n["join"])
    b = g.add(Branch(1), [other], before=n["join"])
    g.set_operands(n["join"], [n["s"], n["ends"][0], b])
    expect_error(g, n["join"], f"descends from fork %{other.id}, operand 1 from fork %1")
    g, n = forked()
    s2 = g.add(Append(), [n["s"], g.add(Const("x"), before=n["join"])], before=n["join"])
    g.set_operands(n["join"], [n["s"], n["ends"][0], s2])
    expect_error(g, n["join"], "operand 2 (%9) does not descend from a branch of a fork")


def test_join_parent_must_continue_the_forked_state() -> None:
    g = Graph("f")
    s = g.add(StateNew())
    fork = g.add(Fork(1), [s])
    b = g.add(Branch(0), [fork])
    inner = g.add(Fork(1), [b])
    ib = g.add(Branch(0), [inner])
    bad = g.add(Join(), [s, ib])  # joins the inner fork's branch into the outer state
    g.add(Output(), [bad])
    expect_error(g, bad, "operand 0 (%0) does not continue %2, the state fork %3 forked")
    g2, n = forked()
    later = g2.add(Append(), [n["s"], g2.add(Const("x"), before=n["join"])], before=n["join"])
    g2.set_operands(n["join"], [later, *n["ends"]])
    g2.verify()  # the parent may have grown since the fork
    g3, n = forked()
    g3.set_operands(n["join"], [n["ends"][0], *n["ends"]])
    expect_error(g3, n["join"], "operand 0 (%3) does not continue %0")


def test_linearity() -> None:
    g, n = linear()
    dup = g.add(Gen("again"), [n["s2"]], before=n["out"])
    expect_error(g, dup, "state %4 is already continued by %5")
    g, n = linear()
    g.add(GetVar("out"), [n["s2"]], before=n["out"])  # reading is fine
    g.add(Fork(2), [n["s2"]], before=n["out"])  # forking reads too
    g.add(Host("m:f", returns="value"), [n["s2"]], before=n["out"])
    g.verify()


def test_batch_gen_states_must_be_taken() -> None:
    g, n = forked()
    ends = [e.operands[0] for e in n["ends"]]
    for e in n["ends"]:
        g.replace_all_uses(e, e.operands[0])
        g.erase(e)
    batch = g.add(BatchGen(name="v", max_tokens=2), ends, before=n["join"])
    b0 = g.add(Branch(0), [batch], before=n["join"])
    b1 = g.add(Branch(1), [batch], before=n["join"])
    g.set_operands(n["join"], [n["s"], b0, b1])
    g.verify()
    assert branch_origin(b1) == (n["fork"], 1)
    assert [x.id for x in state_lineage(b1)] == [b1.id, ends[1].id]
    g2 = Graph("f")
    s = g2.add(StateNew())
    fork = g2.add(Fork(2), [s])
    batch = g2.add(BatchGen(name="v"), [g2.add(Branch(0), [fork]), g2.add(Branch(1), [fork])])
    g2.add(Output(), [g2.add(Branch(0), [batch])])
    expect_error(g2, batch, "its state 1 is never taken by a branch (its text would be lost)")


def test_host_arity() -> None:
    g, n = linear()
    h = g.add(Host("m:f", args=["a", "b"]), [n["s2"]], before=n["out"])
    expect_error(g, h, "names 2 args but has 1 operands")
    g, n = linear()
    h = g.add(Host("m:f"), [n["x"]], before=n["out"])
    expect_error(g, h, "operand 0 must be the state it continues")


def test_duplicate_arguments() -> None:
    g, n = linear()
    dup = g.add(Arg("x"), before=n["out"])
    expect_error(g, dup, "argument 'x' is already defined by %0")


def test_dataflow_out_of_sync() -> None:
    g, _ = linear()
    g.dataflow.add_edge(0, 6)
    expect_error(g, None, "out of sync", "extra [(0, 6)]")


def test_error_excerpt_marks_the_node_inside_regions() -> None:
    g, n = switched()
    bad = n["sw"].regions[1].nodes[1]
    g.set_operands(bad, [bad.operands[0], bad.operands[0]])
    err = expect_error(g, bad, "@f: %9 (append): operand 1 (%8) must be a text or value")
    assert err.graph is g
    assert ">>       %9 = append %8, %8" in str(err)


# -- mutation and order ------------------------------------------------------------------------------


def test_replace_all_uses_and_erase() -> None:
    g, n = linear()
    other = g.add(Const("Hello "), before=n["s1"])
    assert g.replace_all_uses(n["c"], other) == 1
    assert n["s1"].operands == (n["s0"], other) and g.users(n["c"]) == []
    g.erase(n["c"])
    assert n["c"] not in g and 2 not in g.dataflow
    g.verify()
    with pytest.raises(IRError, match=r"cannot erase %3: it is still used by %4"):
        g.erase(n["s1"])
    assert g.replace_all_uses(n["s1"], n["s1"]) == 0


def test_replace_in_regions_and_erase_switch() -> None:
    g, n = switched()
    y = g.add(Arg("y"), after=n["x"])
    assert g.replace_all_uses(n["x"], y) == 2
    assert [u.id for u in g.users(y)] == [6, 9]
    g.verify()
    inner_ids = [m.id for r in n["sw"].regions for m in r]
    g.replace_all_uses(n["sw"], n["sel"])
    g.erase(n["sw"])
    g.erase(n["v"])
    assert not any(i in g for i in inner_ids) and g.users(y) == []
    g.verify()


def test_set_op_and_move() -> None:
    g, n = linear()
    g.set_op(n["s3"], Gen("out", max_tokens=8, regex=r"\d+"))
    assert n["s3"].op.max_tokens == 8
    g2, m = switched()
    with pytest.raises(IRError, match="needs 3 regions"):
        g2.set_op(m["sw"], Switch(cases=["a", "b", "c"]))
    with pytest.raises(IRError, match="into its own region"):
        g2.move(m["sw"], region=m["sw"].regions[0])
    const = g2.add(Const("z"))
    g2.move(const, region=m["sw"].regions[0], before=None)
    assert const.region is m["sw"].regions[0] and const.parent is m["sw"]


def test_topological_order_lifts_region_uses() -> None:
    g, n = switched()
    # put x after the switch in list order: the switch's region uses it, so x must come first
    g.move(n["x"], before=n["out"])
    order = [m.id for m in g.topological_order()]
    assert order.index(n["x"].id) < order.index(n["sw"].id)
    assert [m.id for m in g.topological_order(n["sw"].regions[0])] == [5, 6, 7]
    with pytest.raises(IRError):
        g.verify()  # list order is still wrong, topological_order does not reorder


def test_topological_order_reports_cycles() -> None:
    g, n = linear()
    g.set_operands(n["s1"], [n["s0"], n["s2"]])
    with pytest.raises(IRError, match="cycle"):
        g.topological_order()


def test_copy_is_deep_and_keeps_ids() -> None:
    g, n = switched()
    n["sel"].meta["k"] = 1
    clone = g.copy()
    assert str(clone) == str(g) and clone.node(2).meta == {"k": 1} and clone.node(2) is not n["sel"]
    clone.erase(clone.node(clone.output.id))
    g.verify()
    assert clone.add(Const("new")).id == g._next_id


def test_prefill_and_score_signatures() -> None:
    g, n = linear()
    p = g.add(Prefill(), [n["s2"]], before=n["s3"])
    g.set_operands(n["s3"], [p])
    sc = g.add(Score("pick", ["a", "b"]), [n["s3"]], before=n["out"])
    g.set_operands(n["out"], [sc])
    g.verify()
    assert [x.id for x in state_lineage(sc)] == [sc.id, n["s3"].id, p.id, n["s2"].id, n["s1"].id, n["s0"].id]


def test_prefill_value_operands_and_select_prefix() -> None:
    """The two hooks of hoist-prefix: a prefill may carry the hinted prefix as value operands, and a
    select/score may carry the choices' hoisted prefix (printed, parsed and checked like any attribute)."""
    from compiler.ir_text import print_graph
    from compiler.parser.ir_reader import parse_graph

    g, n = forked()
    c = g.add(Const("Shared: "), before=n["fork"])
    p = g.add(Prefill(), [n["s"], c, c], before=n["fork"])
    g.set_operands(n["fork"], [p])
    g.set_operands(n["join"], [p, *n["ends"]])
    sel = g.add(Select("pick", ["yes", "no"], prefix="The answer is "), [n["join"]], before=n["out"])
    g.set_operands(n["out"], [sel])
    g.verify()
    text = print_graph(g)
    assert 'prefill %0, %' in text and 'prefix="The answer is "' in text
    assert print_graph(parse_graph(text)) == text
    assert Score("x", ["a"], prefix="p").prefix == "p" and Select("x", ["a"]).prefix == ""
    with pytest.raises(IRError, match="prefix"):
        Select("x", ["a"], prefix=3)
    g.set_operands(p, [n["s"], n["s"]])
    expect_error(g, p, "operand 1", "must be a text or value")


def test_variable_ops_and_anonymous_select_round_trip() -> None:
    from compiler.ir import SetVar, VarScopeBegin, VarScopeEnd
    from compiler.parser.ir_reader import parse_graph

    g = Graph("vars")
    s = g.add(StateNew())
    s = g.add(VarScopeBegin("span"), [s], loc="v.py:2")
    s = g.add(Select(None, ["a", "b"]), [s])
    s = g.add(VarScopeEnd("span"), [s])
    s = g.add(SetVar("k"), [s, g.add(Const(3))])
    g.add(Output(), [s])
    g.verify()
    text = str(g)
    assert 'select %1 name=null choices=["a", "b"]' in text and 'set_var %3, %4 name="k"' in text
    assert str(parse_graph(text)) == text
    with pytest.raises(IRError, match="name must not be empty"):
        SetVar("")
