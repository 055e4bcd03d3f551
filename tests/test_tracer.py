"""The tracer: programs in `tests/golden/tracer/*.py`, printed IR out (`*.ir`), graph breaks explained
(`*.explain`); every traced graph runs to the same text and variables as the eager interpreter; bad
programs fail with one line naming the user's line.

Regenerate the golden files with `SGC_UPDATE_GOLDEN=1 pytest tests/test_tracer.py` and review the diff.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from test_lang_support import FakeEngine, run_graph

import sgc
from compiler import ir
from compiler.errors import CompileError
from compiler.ir_text import print_module
from compiler.lang_sampling import RunDefaults
from compiler.parser.ir_reader import parse_module
from compiler.parser.tracer import compile_file, compile_function, explain, load_program_file
from executor.runtime.tokenizer import Tokenizer

GOLDEN = Path(__file__).parent / "golden" / "tracer"
PROGRAMS = sorted(p.stem for p in GOLDEN.glob("*.py"))
ERRORS = sorted(p.stem for p in (GOLDEN / "errors").glob("*.py"))
UPDATE = bool(os.environ.get("SGC_UPDATE_GOLDEN"))


def _check_golden(path: Path, text: str) -> None:
    if UPDATE:
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path.name} is missing (SGC_UPDATE_GOLDEN=1 writes it)"
    assert text == path.read_text(encoding="utf-8"), f"{path.name} changed (SGC_UPDATE_GOLDEN=1 to accept)"


def _compile(stem: str):
    module = load_program_file(GOLDEN / f"{stem}.py")
    return compile_file(GOLDEN / f"{stem}.py", bind=getattr(module, "BIND", None))


@pytest.fixture(scope="module")
def tokenizer(default_model_dir) -> Tokenizer:
    return Tokenizer(default_model_dir)


def test_golden_programs_exist() -> None:
    assert {"straight_line", "roles_scopes", "fork_join", "nested_call", "loop_bound", "switch_select",
            "host_step"} <= set(PROGRAMS)


@pytest.mark.parametrize("stem", PROGRAMS)
def test_golden_ir(stem: str) -> None:
    module, breaks = _compile(stem)
    text = print_module(module)
    _check_golden(GOLDEN / f"{stem}.ir", text)
    assert print_module(parse_module(text)) == text  # what the tracer prints, the reader reads
    _check_golden(GOLDEN / f"{stem}.explain", _portable(explain(breaks)) + "\n")


def _portable(text: str) -> str:
    return text.replace(str(GOLDEN) + os.sep, "").replace(os.path.relpath(GOLDEN) + os.sep, "")


def test_switch_on_select_traces_every_outcome() -> None:
    module, breaks = _compile("switch_select")
    graph = module["triage"]
    switches = [n for n in graph.nodes() if isinstance(n.op, ir.Switch)]
    outer = switches[0]
    assert outer.op.cases == ("bug", "feature", "question") and not outer.op.default
    assert isinstance(outer.operands[1].op, ir.GetVar) and outer.operands[1].op.name == "kind"
    # The `in` test on free text is a host step whose bool is switched on.
    bool_switches = [n for n in switches if n.op.cases and n.op.cases[0] is True]
    assert bool_switches and all(isinstance(n.operands[1].op, ir.Host) for n in bool_switches)
    assert not graph.meta["needs_host"] and all(b.kind == "host step" for b in breaks)


def test_host_steps_and_explain() -> None:
    module, breaks = _compile("host_step")
    assert not module["cleanup"].meta["needs_host"]
    assert module["count_items"].meta["needs_host"] and module["unbound_list"].meta["needs_host"]
    host = [n for n in module["count_items"].nodes() if isinstance(n.op, ir.Host)]
    assert len(host) == 1 and host[0].op.func == "host_step:count_items" and host[0].op.returns == "state"
    text = explain(breaks, "count_items")
    assert re.search(r"host_step\.py:17: \[host function\] int\(\) of s\['n'\] needs its value", text)
    assert "bind it" not in text
    assert "iterating over argument 'aspects' needs its value in Python (bind the argument" in explain(breaks, "unbound_list")
    with pytest.raises(CompileError, match=r"host_step\.py:9: graph break in cleanup \(strict\)"):
        compile_file(GOLDEN / "host_step.py", strict=True)


def test_bound_loop_unrolls_and_unbound_falls_back() -> None:
    module, _ = _compile("loop_bound")
    graph = module["grade_essay"]
    assert [n.op.name for n in graph.args] == ["essay"]  # the bound argument is baked in
    assert sum(isinstance(n.op, ir.Branch) for n in graph.nodes()) == 2
    fn = load_program_file(GOLDEN / "loop_bound.py").grade_essay
    unbound, breaks = compile_function(fn)
    assert unbound["grade_essay"].meta["needs_host"] and "len() of argument 'aspects'" in breaks[0].reason
    three, _ = compile_function(fn, bind={"aspects": ["A", "B", "C"]})
    assert sum(isinstance(n.op, ir.Branch) for n in three["grade_essay"].nodes()) == 3


@pytest.mark.parametrize("stem", ERRORS)
def test_bad_programs_name_the_users_line(stem: str) -> None:
    path = GOLDEN / "errors" / f"{stem}.py"
    lines = path.read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "# error: " in text)
    expected = lines[line - 1].split("# error: ", 1)[1]
    with pytest.raises(CompileError) as info:
        compile_file(path)
    err = info.value
    assert err.file is not None and Path(err.file).resolve() == path.resolve() and err.line == line, str(err)
    assert expected in err.message and "\n" not in str(err)
    assert str(err).endswith(f"{stem}.py:{line}: {err.message}")


def test_syntax_error_in_a_file(tmp_path) -> None:
    path = tmp_path / "broken_program.py"
    path.write_text("import sgc\n\n\n@sgc.function\ndef f(s):\n    s += 'x' +\n")
    with pytest.raises(CompileError, match=r"broken_program\.py:6: syntax error: invalid syntax"):
        compile_file(path)


def test_main_block_does_not_run_and_bind_errors(tmp_path) -> None:
    path = tmp_path / "with_main.py"
    path.write_text("import sgc\n\n\n@sgc.function\ndef f(s, q):\n    s += q\n\n\n"
                    "if __name__ == '__main__':\n    raise SystemExit('ran main')\n")
    module, breaks = compile_file(path)
    assert list(module.graphs) == ["f"] and not breaks
    with pytest.raises(CompileError, match="cannot bind unknown argument 'x'"):
        compile_file(path, bind={"f": {"x": 1}})
    with pytest.raises(CompileError, match="no @function"):
        empty = tmp_path / "empty_program.py"
        empty.write_text("x = 1\n")
        compile_file(empty)


def test_nondeterministic_program_is_rejected() -> None:
    import itertools

    counter = itertools.count()

    @sgc.function
    def flaky(s):
        s += "q" + sgc.select("x", ["a", "b"])
        if s["x"] == "a":
            s += "A"
        s += str(next(counter))

    module, _ = compile_function(flaky)  # the counter only changes after the branch point: fine
    assert any(isinstance(n.op, ir.Switch) for n in module["flaky"].nodes())

    @sgc.function
    def flakier(s):
        s += str(next(counter)) + sgc.select("x", ["a", "b"])
        if s["x"] == "a":
            s += "A"

    with pytest.raises(CompileError, match="traced differently on two runs"):
        compile_function(flakier)


def test_branch_with_open_forks_falls_back() -> None:
    @sgc.function
    def prog(s):
        forks = s.fork(2)
        for f in forks:
            f += "q" + sgc.select("x", ["a", "b"])
            if f["x"] == "a":
                f += "A"
        forks.join()

    module, breaks = compile_function(prog)
    assert module["prog"].meta["needs_host"] and "several states are live" in breaks[0].reason


def test_too_many_decisions_fall_back() -> None:
    @sgc.function
    def loop(s):
        s += "go" + sgc.gen("x", max_tokens=2)
        while s["x"] != "stop":
            s += sgc.gen("x", max_tokens=2)

    module, breaks = compile_function(loop)
    assert module["loop"].meta["needs_host"] and "branches on generated values" in breaks[0].reason


def test_python_using_generated_text_falls_back() -> None:
    import json

    @sgc.function
    def parse(s):
        s += "{" + sgc.gen("j", max_tokens=8)
        data = json.loads(s["j"])
        s += data["k"]

    @sgc.function
    def printed(s):
        s += "x" + sgc.gen("a")
        print(f"got {s['a']}")

    _, breaks = compile_function(parse)
    assert breaks[0].kind == "host function" and "TypeError" in breaks[0].reason
    _, breaks = compile_function(printed)
    assert "an f-string of s['a'] is used outside the prompt" in breaks[0].reason


# -- compiled == eager ------------------------------------------------------------------------------

CASES = {
    "straight_line": [("qa", {"question": "Why?"}), ("qa", {"question": "How?", "context": "docs"})],
    "roles_scopes": [("chat", {"topic": "owls"})],
    "fork_join": [("brainstorm", {"subject": "tea"})],
    "nested_call": [("interview", {"name": "Ada"})],
    "loop_bound": [("grade_essay", {"essay": "Short essay."})],
    "switch_select": [("triage", {"ticket": f"ticket {i}"}) for i in range(12)],
    "host_step": [("cleanup", {"text": "a"}), ("cleanup", {"text": "bb"}), ("count_items", {"topic": "cats"}),
                  ("unbound_list", {"aspects": ["a", "b"]})],
}


@pytest.mark.parametrize("stem", sorted(CASES))
def test_compiled_graph_runs_like_eager(stem: str, tokenizer) -> None:
    engine = FakeEngine(tokenizer)
    program = load_program_file(GOLDEN / f"{stem}.py")
    module, _ = _compile(stem)
    bind = getattr(program, "BIND", {})
    defaults = RunDefaults(temperature=0.0)
    outcomes = set()
    for name, args in CASES[stem]:
        fn = getattr(program, name)
        eager = fn.run(**args, **bind.get(name, {}), backend=engine, temperature=0.0)
        compiled = run_graph(module[name], args, engine, defaults)
        assert compiled.text() == eager.text(), (name, args)
        assert compiled.snapshot()["variables"] == eager.snapshot()["variables"]
        assert compiled.messages() == eager.messages()
        outcomes.add(tuple(sorted((k, str(v)) for k, v in eager.snapshot()["variables"].items() if k == "kind")))
    if stem == "switch_select":
        assert len(outcomes) == 3  # every select outcome was exercised


def test_sglang_program_compiles_and_runs_unchanged(tmp_path, tokenizer, tiny_model_dirs) -> None:
    path = tmp_path / "sglang_program.py"
    path.write_text('''import sglang as sgl


@sgl.function
def multi_turn(s, question_1, question_2):
    s += sgl.system("You are a helpful assistant.")
    s += sgl.user(question_1)
    s += sgl.assistant(sgl.gen("answer_1", max_tokens=16))
    s += sgl.user(question_2)
    s += sgl.assistant(sgl.gen("answer_2", max_tokens=16))
    s += "Mood: " + sgl.select("mood", choices=["good", "bad"], choices_method=sgl.greedy_token_selection)


if __name__ == "__main__":
    sgl.set_default_backend(sgl.Runtime(model_path="smollm2-135m-instruct"))
    state = multi_turn.run(question_1="Hi", question_2="Bye")
    print(state["answer_1"])
''')
    module, breaks = compile_file(path)
    assert not breaks and [n.op.name for n in module["multi_turn"].args] == ["question_1", "question_2"]
    program = load_program_file(path)
    engine = FakeEngine(tokenizer)
    args = {"question_1": "Hi", "question_2": "Bye"}
    eager = program.multi_turn.run(**args, backend=engine)
    compiled = run_graph(module["multi_turn"], args, engine)
    assert compiled.text() == eager.text() and eager["mood"] in ("good", "bad")
    import sglang

    # On a real (tiny) model, greedy: the eager run and the traced graph give the same text.
    with sglang.Runtime(str(tiny_model_dirs["llama"]), device="cpu", max_total_tokens=2048) as runtime:
        eager = program.multi_turn.run(**args, backend=runtime, temperature=0)
        compiled = run_graph(module["multi_turn"], args, runtime, RunDefaults(temperature=0.0))
        assert compiled.text() == eager.text() and compiled.messages() == eager.messages()
        assert eager.messages()[0]["role"] == "system" and eager.messages()[-1]["role"] == "assistant"

    assert sglang.function is sgc.function and sglang.Runtime is sgc.Runtime
    with pytest.raises(ConnectionError, match="no sgc server at http://127.0.0.1:9"):
        sglang.RuntimeEndpoint("http://127.0.0.1:9")  # the discard port: nothing serves there


def test_traced_fork_group_iadd_and_public_names(tokenizer) -> None:
    @sgc.function
    def prog(s):
        s += "Q:"
        forks = s.fork(2)
        forks += [" a", " b"]
        forks += lambda i: f" #{i}" + sgc.gen("x", max_tokens=2)
        forks.join("concate_and_append")

    module, breaks = sgc.compile_function(prog)
    assert not breaks and "prog: no graph breaks" in sgc.explain(breaks, "prog")
    engine = FakeEngine(tokenizer)
    assert run_graph(module["prog"], {}, engine).text() == prog.run(backend=engine).text()


def test_branch_variables_after_join_and_setitem_compile(tokenizer) -> None:
    """SGLang allows `forks[i]["x"]` after `forks.join()` and `s["k"] = v`: ordinary dataflow (a
    getvar of the branch's final state, a set_var), with no graph break."""
    @sgc.function
    def prog(s):
        s += "Q:"
        forks = s.fork(2)
        forks += lambda i: f" #{i}" + sgc.gen("x", max_tokens=2)
        forks.join()
        s["first"] = forks[0]["x"]
        s += " second:" + forks[1]["x"]
        with s.copy() as side:
            side += sgc.gen("y", max_tokens=2)

    module, breaks = sgc.compile_function(prog)
    assert not breaks
    graph = module["prog"]
    joins = [n for n in graph.nodes() if isinstance(n.op, ir.Join)]
    getvars = [n for n in graph.nodes() if isinstance(n.op, ir.GetVar)]
    assert len(joins) == 2 and {g.operands[0] for g in getvars} <= set(joins[0].operands[1:])
    assert any(isinstance(n.op, ir.SetVar) and n.op.name == "first" for n in graph.nodes())
    engine = FakeEngine(tokenizer)
    eager, compiled = prog.run(backend=engine), run_graph(graph, {}, engine)
    assert compiled.text() == eager.text()
    assert compiled.snapshot()["variables"] == eager.snapshot()["variables"]
    assert eager["first"] == eager["x"][0] and eager["y"] == [eager["y"][0]]
