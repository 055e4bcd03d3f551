"""Golden files: the printer's output for hand-written graphs is stable, and each golden file parses
back to a graph that prints identically. Regenerate with `SGC_UPDATE_GOLDEN=1 pytest tests/test_ir_golden.py`
and review the diff."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
    Join,
    Module,
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
from compiler.ir_text import print_graph, print_module
from compiler.parser.ir_reader import parse_module

GOLDEN = Path(__file__).parent / "golden" / "ir"


def essay() -> Module:
    """The grade_essay program of docs/ir.md, as the tracer would build it."""
    g = Graph("grade_essay")
    essay = g.add(Arg("essay"), loc="essay.py:4")
    s = g.add(StateNew(), loc="essay.py:4")
    s = g.add(RoleBegin("system"), [s], loc="essay.py:5")
    s = g.add(Append(), [s, g.add(Const("You are a strict grader."), loc="essay.py:5")], loc="essay.py:5")
    s = g.add(RoleEnd("system"), [s], loc="essay.py:5")
    s = g.add(RoleBegin("user"), [s], loc="essay.py:6")
    s = g.add(Append(), [s, g.add(Const("Evaluate this essay:\n"), loc="essay.py:6")], loc="essay.py:6")
    s = g.add(Append(), [s, essay], loc="essay.py:6")
    s = g.add(RoleEnd("user"), [s], loc="essay.py:6")
    fork = g.add(Fork(2), [s], loc="essay.py:7")
    ends = []
    for i, aspect in enumerate(["Clarity", "Evidence"]):
        b = g.add(Branch(i), [fork], loc="essay.py:7")
        b = g.add(RoleBegin("assistant"), [b], loc="essay.py:9")
        b = g.add(Append(), [b, g.add(Const(f"{aspect}: "), loc="essay.py:9")], loc="essay.py:9")
        b = g.add(Gen("score", regex="[1-5]"), [b], loc="essay.py:9")
        b = g.add(Append(), [b, g.add(Const("\n"), loc="essay.py:9")], loc="essay.py:9")
        b = g.add(Gen("why", max_tokens=48, stop="\n"), [b], loc="essay.py:10")
        b = g.add(RoleEnd("assistant"), [b], loc="essay.py:9")
        ends.append(b)
    s = g.add(Join(mode="gather_variable"), [s, *ends], loc="essay.py:11")
    s = g.add(Gen("verdict", choices=["accept", "revise", "reject"]), [s], loc="essay.py:12")
    g.add(Output(), [s])
    return Module([g])


def switch_on_select() -> Module:
    """A branch on a select result: every outcome traced into a case region."""
    g = Graph("triage")
    s = g.add(StateNew())
    s = g.add(Append(), [s, g.add(Const('Is this "urgent"? Answer yes or no.\n'))], loc="triage.py:3")
    s = g.add(Select("urgent", ["yes", "no"], method="greedy_token_selection", temperature=0), [s],
              loc="triage.py:4")
    answer = g.add(GetVar("urgent"), [s], loc="triage.py:5")
    sw = g.add(Switch(cases=["yes", "no"], default=True), [s, answer], loc="triage.py:5")
    for region, text in zip(sw.regions, ["Escalate: ", "Queue: ", "Unknown: "]):
        r = g.add(StateIn(), region=region)
        r = g.add(Append(), [r, g.add(Const(text), region=region)], region=region, loc="triage.py:6")
        r = g.add(Gen("action", max_tokens=16, temperature=0.7, top_p=0.9, stop=["\n", "."]), [r],
                  region=region, loc="triage.py:7")
        g.add(Output(), [r], region=region)
    g.add(Output(), [sw])
    return Module([g])


def lowered() -> Module:
    """What the passes produce: a prefill before the fork, fused branch gens, select lowered to score."""
    g = Graph("lowered")
    s = g.add(StateNew())
    s = g.add(Append(), [s, g.add(Const("Shared prefix. "))])
    s = g.add(Prefill(), [s])
    fork = g.add(Fork(3), [s])
    branches = [g.add(Branch(i), [fork]) for i in range(3)]
    for i, b in enumerate(branches):
        branches[i] = g.add(Append(), [b, g.add(Const(f"Item {i}: "))])
    batch = g.add(BatchGen(name="item", max_tokens=8, json_schema='{"type": "integer"}',
                           fsm="fsm0", stop_token_ids=[2]), branches)
    ends = [g.add(Branch(i), [batch]) for i in range(3)]
    s = g.add(Join(mode="concate_and_append"), [s, *ends])
    s = g.add(Score("best", ["first", "second", "third"], method="unconditional_likelihood_normalized"), [s])
    g.add(Output(), [s])
    return Module([g])


def host_steps() -> Module:
    """Graph breaks (host steps) with their reasons: a whole function run on the host, and a value."""
    helper = Graph("ask")
    q = helper.add(Arg("question"))
    n = helper.add(Arg("tries", default=3))
    s = helper.add(StateIn())
    s = helper.add(RoleBegin("user"), [s])
    s = helper.add(Append(), [s, q])
    s = helper.add(RoleEnd("user"), [s])
    s = helper.add(Host("qa:retry_loop", reason="while loop on generated text", line=14,
                        args=["s", "tries"]), [s, n], loc="qa.py:14")
    helper.add(Output(), [s])

    main = Graph("main")
    topic = main.add(Arg("topic"))
    s = main.add(StateIn())
    s = main.add(Host("qa:ask", reason="calls a function that needs the host", line=20, args=["s", "question"]),
                 [s, topic], loc="qa.py:20")
    s = main.add(Gen("answer", max_tokens=64, dtype="int", return_logprob=True, ignore_eos=False), [s])
    number = main.add(Host("qa:main.<locals>.<lambda>", reason="int() of a generated text", line=22,
                           returns="value"), [s], loc="qa.py:22")
    s = main.add(Append(), [s, main.add(Const({"k": [1, 2.5, None, True], "s": "é\u2028"}))])
    s = main.add(Append(), [s, number])
    main.add(Output(), [s])
    return Module([helper, main])


def with_meta() -> Module:
    g = Graph("meta")
    s = g.add(StateNew(), meta={"num_cached_tokens": 0})
    s = g.add(Gen("x", max_tokens=5, min_tokens=1, frequency_penalty=-0.5), [s],
              meta={"estimate": {"tokens": 5, "cost": 1.5e-07}, "note": "a\tb", "skipped": object()})
    g.add(Output(), [s])
    return Module([g])


EXAMPLES = {
    "essay": (essay, False),
    "switch": (switch_on_select, False),
    "lowered": (lowered, False),
    "host_steps": (host_steps, False),
    "meta": (with_meta, True),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_printer_matches_golden(name: str) -> None:
    build, meta = EXAMPLES[name]
    module = build()
    module.verify()
    text = print_module(module, meta=meta)
    path = GOLDEN / f"{name}.ir"
    if os.environ.get("SGC_UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_golden_parses_back_identically(name: str) -> None:
    _, meta = EXAMPLES[name]
    text = (GOLDEN / f"{name}.ir").read_text(encoding="utf-8")
    module = parse_module(text)
    assert print_module(module, meta=meta) == text
    for graph in module:
        assert print_graph(graph, meta=meta) in text


def test_golden_ids_and_locs_survive() -> None:
    module = parse_module((GOLDEN / "essay.ir").read_text(encoding="utf-8"))
    original = essay()["grade_essay"]
    parsed = module["grade_essay"]
    assert [n.id for n in parsed.nodes()] == [n.id for n in original.nodes()]
    assert [n.loc for n in parsed.nodes()] == [n.loc for n in original.nodes()]
    assert [n.op for n in parsed.nodes()] == [n.op for n in original.nodes()]


DOCS = Path(__file__).parent.parent / "docs" / "ir.md"


def test_docs_example_round_trips_and_every_op_is_documented() -> None:
    import dataclasses
    import re

    from compiler.ir import OPS

    docs = DOCS.read_text(encoding="utf-8")
    example = re.search(r"```\n(func @grade_essay \{.*?\n\})\n```", docs, re.S).group(1) + "\n"
    assert print_module(parse_module(example)) == example
    for name, cls in OPS.items():
        assert f"| `{name}` |" in docs, name
        for field in dataclasses.fields(cls):
            assert f"`{field.name}" in docs, (name, field.name)
