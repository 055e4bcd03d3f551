"""Hostile and careless programs: every one is a clear `CompileError` naming the user's file:line (or a
one-line CLI error with a non-zero exit), never an empty program, a RecursionError, a traceback or a hang.

Programs are written to files under `tmp_path` and imported (`load_program_file`), so the file:line in
each message is real. Every case runs under `bounded(seconds=..., mem_mb=...)` (`tests/hostile.py`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from compiler import budgets
from compiler.errors import CompileError
from compiler.parser.tracer import compile_file, compile_function, load_program_file
from sgc.cli import main
from tests import tiers
from tests.hostile import bounded


def _write(tmp_path: Path, source: str, name: str = "prog.py") -> Path:
    path = tmp_path / name
    path.write_text(source)
    return path


def _line(path: Path, marker: str) -> int:
    """The 1-based line of `path` that contains `marker` (so tests do not hard-code line numbers)."""
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if marker in text:
            return number
    raise AssertionError(f"{marker!r} not in {path}")


def _error_at(path: Path, marker: str, gist: str) -> str:
    """The regex `prog.py:LINE: ...gist` for the line holding `marker`."""
    return rf"{re.escape(path.name)}:{_line(path, marker)}: .*{gist}"


# ---------------------------------------------------------------------------------------------------
# Function forms that cannot be programs: refused when decorated (import of the file)

FORMS = {
    "generator": ("@sgc.function(\n    num_api_spec_tokens=4,\n)\ndef prog(s, q):  # here\n    s += q\n    yield s\n",
                  "is a generator"),
    "async": ("@sgc.function\nasync def prog(s, q):  # here\n    s += q\n", "is an async def"),
    "async_generator": ("@sgc.function\nasync def prog(s, q):  # here\n    s += q\n    yield 1\n",
                        "is an async generator"),
    "lambda": ("prog = sgc.function(lambda s: None)  # here\n", "cannot decorate a lambda"),
    "class": ("@sgc.function\nclass Prog:  # here\n    def __init__(self, s):\n        s += 'x'\n",
              "got class Prog"),
    "builtin": ("prog = sgc.function(len)  # here\n", "got the builtin len"),
    "partial": ("import functools\n\ndef base(s, q, r):\n    s += q\n\n\n"
                "prog = sgc.function(functools.partial(base, r=1))  # here\n", "got an object of type partial"),
    "var_positional": ("@sgc.function\ndef prog(s, *rest):  # here\n    s += 'x'\n", r"\*rest is not supported"),
    "var_keyword": ("@sgc.function\ndef prog(s, **options):  # here\n    s += 'x'\n",
                    r"\*\*options is not supported"),
    "positional_only": ("@sgc.function\ndef prog(s, q, /):  # here\n    s += q\n", "'q' is positional-only"),
    "no_state": ("@sgc.function\ndef prog():  # here\n    pass\n", "the first parameter must be the state `s`"),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_unsupported_function_forms_are_refused_at_the_def_line(tmp_path, form) -> None:
    body, gist = FORMS[form]
    path = _write(tmp_path, "import sgc\n\n\n" + body)
    with bounded(seconds=5, mem_mb=100), pytest.raises(CompileError, match=_error_at(path, "# here", gist)):
        load_program_file(path)


def test_a_generator_never_runs_eagerly_as_an_empty_program(tmp_path) -> None:
    """The same refusal covers the eager interpreter: there is no Function to run at all."""
    import sgc

    def gen(s):
        s += "x"
        yield

    with bounded(seconds=5, mem_mb=100), pytest.raises(CompileError, match=r"test_hostile_programs\.py:\d+: "
                                                                           ".*is a generator"):
        sgc.function(gen)


# ---------------------------------------------------------------------------------------------------
# Recursion and deep nesting of @function calls

RECURSIVE = '''\
import sgc


@sgc.function
def rec(s, q):
    s += q
    rec(s, q)  # rec-call


@sgc.function
def ping(s):
    s += "a"
    pong(s)  # ping-call


@sgc.function
def pong(s):
    s += "b"
    ping(s)  # pong-call


@sgc.function
def countdown(s, n=3):
    if n > 0:
        s += str(n)
        countdown(s, n - 1)


def helper(s):
    s += "h"
    helper(s)  # helper-call


@sgc.function
def plain(s):
    helper(s)
'''


@pytest.fixture
def recursive(tmp_path):
    path = _write(tmp_path, RECURSIVE)
    return path, load_program_file(path)


def test_direct_recursion_is_a_compile_error_at_the_recursive_call(recursive) -> None:
    path, module = recursive
    expected = _error_at(path, "# rec-call", r"recursive @function calls rec -> rec .*program_depth budget of 200")
    with bounded(seconds=5, mem_mb=150), pytest.raises(CompileError, match=expected):
        compile_function(module.rec)


def test_mutual_recursion_names_the_cycle(recursive) -> None:
    path, module = recursive
    # 200 nested calls pong, ping, ..., the 201st (a pong) is called from ping's line
    expected = _error_at(path, "# ping-call", r"recursive @function calls pong -> ping -> pong")
    with bounded(seconds=5, mem_mb=150), pytest.raises(CompileError, match=expected):
        compile_function(module.ping)


def test_recursion_with_a_base_case_on_a_bound_argument_compiles(recursive) -> None:
    _, module = recursive
    with bounded(seconds=5, mem_mb=150):
        graph_module, breaks = compile_function(module.countdown, bind={"n": 3})
    consts = [n.op.value for n in graph_module["countdown"].nodes() if n.op.opname == "const"]
    assert breaks == [] and "".join(consts) == "321"


def test_recursion_of_a_plain_helper_points_at_its_recursive_call(recursive) -> None:
    path, module = recursive
    with bounded(seconds=5, mem_mb=150), pytest.raises(CompileError, match=_error_at(path, "# helper-call",
                                                                                    "RecursionError")):
        compile_function(module.plain)


def test_eager_recursion_is_the_same_compile_error(recursive, tokenizer) -> None:
    from test_lang_support import FakeEngine

    path, module = recursive
    fake = FakeEngine(tokenizer)
    with bounded(seconds=5, mem_mb=150):
        with pytest.raises(CompileError, match=_error_at(path, "# rec-call", "recursive @function calls rec")):
            module.rec.run(q="x", backend=fake, eager=True)
        with pytest.raises(CompileError, match=_error_at(path, "# helper-call", "RecursionError")):
            module.plain.run(backend=fake, eager=True)


def test_deep_non_recursive_nesting_is_over_the_program_depth_budget(tmp_path) -> None:
    depth = 250  # 250 distinct functions, each calling the next
    parts = ["import sgc\n"]
    for i in range(depth):
        call = f"    f{i + 1}(s)  # call-{i + 1}\n" if i + 1 < depth else ""
        parts.append(f"\n@sgc.function\ndef f{i}(s):\n    s += 'x'\n{call}")
    path = _write(tmp_path, "".join(parts))
    module = load_program_file(path)
    expected = _error_at(path, "# call-201", r"nested @function calls f1 -> f2 -> f3 -> \.\.\. -> f200 -> f201: "
                                             "201 levels is over the program_depth budget")
    with bounded(seconds=10, mem_mb=200), pytest.raises(CompileError, match=expected):
        compile_function(module.f0)
    with budgets.budget_overrides(program_depth=300), bounded(seconds=20, mem_mb=300):
        compiled, _ = compile_function(module.f0)  # within a raised budget it compiles
    assert sum(1 for n in compiled["f0"].nodes() if n.op.opname == "append") == depth


# ---------------------------------------------------------------------------------------------------
# Deeply nested expressions and values


def test_a_source_expression_too_deep_for_python_is_a_compile_error(tmp_path) -> None:
    path = _write(tmp_path, "import sgc\n\n\n@sgc.function\ndef prog(s):\n    s += " + " + ".join(['"a"'] * 10_000) + "\n")
    with bounded(seconds=10, mem_mb=300), pytest.raises(CompileError, match=r"prog\.py: .*nested too deeply"):
        compile_file(path)


def test_too_many_nested_parentheses_is_a_syntax_error_at_its_line(tmp_path) -> None:
    path = _write(tmp_path, "import sgc\n\n\n@sgc.function\ndef prog(s):\n    s += " + "(" * 300 + '"a"' + ")" * 300
                  + "  # here\n")
    with bounded(seconds=5, mem_mb=100), pytest.raises(CompileError, match=_error_at(path, "# here", "syntax error")):
        compile_file(path)


def test_a_deeply_nested_value_appended_is_a_compile_error_at_its_line(tmp_path) -> None:
    path = _write(tmp_path, '''\
import sgc


@sgc.function
def prog(s):
    value = []
    for _ in range(10_000):
        value = [value]
    s += value  # here
''')
    with bounded(seconds=5, mem_mb=200), pytest.raises(CompileError, match=_error_at(path, "# here",
                                                                                    "nested too deeply")):
        compile_file(path)


def test_a_deeply_nested_default_is_a_compile_error_at_the_def_line(tmp_path) -> None:
    path = _write(tmp_path, '''\
import sgc

DEEP = []
for _ in range(10_000):
    DEEP = [DEEP]


@sgc.function
def prog(s, q=DEEP):  # here
    s += "x"
''')
    with bounded(seconds=5, mem_mb=200), pytest.raises(CompileError, match=_error_at(path, "# here",
                                                                                    "nested too deeply")):
        compile_file(path)


LONG = '''\
import contextlib

import sgc

N = {n}


@sgc.function
def concat(s):
    expr = ""
    for i in range(N):
        expr = expr + sgc.gen(f"g{i}", max_tokens=1)
    s += expr


@sgc.function
def host_chain(s):
    s += sgc.gen("a", max_tokens=4)
    x = s["a"]
    for _ in range(N):
        x = x.strip()
    s += x


@sgc.function
def scopes(s):
    with contextlib.ExitStack() as stack:
        for i in range(N):
            stack.enter_context(s.var_scope(f"v{i}"))
            s += "x"
'''


@pytest.mark.parametrize("name", ["concat", "host_chain", "scopes"])
def test_long_and_deeply_nested_programs_trace_in_bounded_time_and_memory(tmp_path, name) -> None:
    """10k gens in one concatenation, a chain of 10k host steps, 10k nested var_scopes: linear.
    (3k in the fast tier: still three times Python's recursion limit.)"""
    n = 3_000 if tiers.FAST else 10_000
    module = load_program_file(_write(tmp_path, LONG.replace("{n}", str(n))))
    with bounded(seconds=15, mem_mb=400):
        compiled, _ = compile_function(getattr(module, name))
    assert len(list(compiled[name].nodes())) > n


# ---------------------------------------------------------------------------------------------------
# Programs that fail to import


@pytest.mark.parametrize("source, gist", [
    ("import sgc\nraise RuntimeError('boom')  # here\n", "importing the program raised RuntimeError: boom"),
    ("import sys\nsys.exit(3)  # here\n", r"importing the program called sys\.exit\(3\)"),
    ("import sgc\n\n@sgc.function\ndef prog(s, q)  # here\n    s += q\n", "syntax error"),
    ("import no_such_module_sgc  # here\n", "No module named 'no_such_module_sgc'"),
])
def test_a_program_that_fails_to_import_names_its_line(tmp_path, source, gist) -> None:
    path = _write(tmp_path, source)
    with bounded(seconds=5, mem_mb=100), pytest.raises(CompileError, match=_error_at(path, "# here", gist)):
        compile_file(path)


# ---------------------------------------------------------------------------------------------------
# The CLI: one line on stderr, a non-zero exit code


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from executor.runtime.tokenizer import Tokenizer

    return Tokenizer(default_model_dir)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


GOOD = "import sgc\n\n\n@sgc.function\ndef qa(s, q):\n    s += 'Q: ' + q + ' A:' + sgc.gen('a', max_tokens=4)\n"


def test_show_svg_without_graphviz_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    path = _write(tmp_path, GOOD)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with bounded(seconds=5, mem_mb=100):
        assert main(["show", str(path), "--format", "svg"]) == 1
    line = _one_error_line(capsys)
    assert "Graphviz's `dot`" in line and "apt-get install graphviz" in line and "--format dot" in line


@pytest.mark.parametrize("case", ["missing", "directory", "not_python", "syntax", "import_raises", "generator"])
def test_compile_a_bad_input_file_is_one_line(tmp_path, default_model_dir, capsys, case) -> None:
    files = {
        "missing": (None, "sgc: error: .*missing.py: no such file"),
        "directory": (None, "sgc: error: .*: is a directory"),
        "not_python": ("{}", r"sgc: error: .*rows\.jsonl: expected a Python program file"),
        "syntax": ("import sgc\n\ndef f(s, q)\n    pass\n", r"prog\.py:3: syntax error"),
        "import_raises": ("import sgc\n\nraise KeyError('nope')\n", r"prog\.py:3: importing the program raised KeyError"),
        "generator": ("import sgc\n\n@sgc.function\ndef f(s):\n    yield\n", r"prog\.py:4: @function f is a generator"),
    }
    source, expected = files[case]
    if case == "missing":
        target = tmp_path / "missing.py"
    elif case == "directory":
        target = tmp_path
    else:
        target = _write(tmp_path, source, "rows.jsonl" if case == "not_python" else "prog.py")
    with bounded(seconds=10, mem_mb=300):
        assert main(["compile", str(target), "--model", str(default_model_dir)]) == 1
    assert re.search(expected, _one_error_line(capsys))


@pytest.mark.parametrize("command", ["show", "run"])
def test_a_file_that_is_not_an_artifact_is_one_line(tmp_path, capsys, command) -> None:
    path = _write(tmp_path, "not a zip", "prog.sgc")
    rows = _write(tmp_path, '{"q": "a"}\n', "rows.jsonl")
    argv = {"show": ["show", str(path)],
            "run": ["run", str(path), "--function", "qa", "--args", str(rows), "--model", str(tmp_path / "nope")]}
    with bounded(seconds=10, mem_mb=200):
        assert main(argv[command]) == 1
    line = _one_error_line(capsys)
    assert line.startswith("sgc: error: ")
    assert "not a valid sgc artifact" in line or "no such model" in line


def test_verbose_shows_the_traceback(tmp_path, capsys) -> None:
    path = _write(tmp_path, "not a zip", "prog.sgc")
    assert main(["-v", "show", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("sgc: error: ")


def test_run_reports_failed_rows_and_exits_non_zero(tmp_path, tiny_model_dirs, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SGC_MAX_ARGS_LINE_BYTES", "5000")
    program = _write(tmp_path, GOOD + "    if q == 'boom':\n        raise ValueError('boom row')\n")
    rows = _write(tmp_path, "\n".join([
        json.dumps({"q": "hi"}),             # 0: runs
        "not json",                          # 1: not JSON
        json.dumps({"zz": 1}),               # 2: unknown argument
        "[1, 2]",                            # 3: not an object
        json.dumps({"q": "x" * 6000}),       # 4: over the line limit
        "[" * 4000,                          # 5: nested too deeply for json
        json.dumps({"q": "boom"}),           # 6: raises while running
        "",                                  # (blank: skipped)
        json.dumps({"q": "bye"}),            # 7: runs
    ]) + "\n", "rows.jsonl")
    out = tmp_path / "results.jsonl"
    with bounded(seconds=60, mem_mb=1500):
        code = main(["run", str(program), "--function", "qa", "--args", str(rows), "--out", str(out),
                     "--model", str(tiny_model_dirs["llama"]), "--device", "cpu", "--max-new-tokens", "4"])
    assert code == 1
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in results] == list(range(8))
    assert [("error" in r) for r in results] == [False, True, True, True, True, True, True, False]
    assert results[0]["text"].startswith("Q: hi A:")
    assert "bad arguments line" in results[1]["error"]
    assert "unknown argument 'zz'" in results[2]["error"]
    assert "not a JSON object" in results[3]["error"]
    assert "args_line_bytes budget of 5000 bytes" in results[4]["error"]
    assert "nested too deeply" in results[5]["error"]
    assert "boom row" in results[6]["error"]
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(r"sgc run: 6 of 8 instance\(s\) failed; the first is row 1 \(.*rows\.jsonl:2\): bad arguments",
                    summary)


def test_run_with_a_missing_args_file_is_one_line(tmp_path, capsys) -> None:
    program = _write(tmp_path, GOOD)
    assert main(["run", str(program), "--function", "qa", "--args", str(tmp_path / "none.jsonl")]) == 1
    assert re.match(r"sgc: error: .*none\.jsonl: No such file", _one_error_line(capsys))
