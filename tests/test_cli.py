"""The CLI end to end on a tiny random model (the default model's tokenizer): compile -> show -> run
JSONL, user errors as one `file:line: message` line with exit code 1, and an artifact run in a fresh
process == in process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sgc
from compiler.codegen.artifact import ArtifactError, read_artifact, write_artifact
from sgc.cli import main

ROOT = Path(__file__).resolve().parent.parent

PROGRAM = '''\
import sgc


@sgc.function
def qa(s, question):
    s += sgc.user(question)
    s += sgc.assistant(sgc.gen("answer", max_tokens=8))
    s += " Year: " + sgc.gen("year", regex=r"(19|20)[0-9]{2}", max_tokens=6)
    s += " Good? " + sgc.select("ok", choices=["yes", "no"])


@sgc.function
def tool(s, city):
    s += "Letters in " + city + ": " + sgc.gen("n", regex=r"[0-9]", max_tokens=2)
    s += " doubled " + str(int(s["n"]) * 2)
'''

ROWS = [{"question": "Name a fruit."}, {"question": "Name a car."}]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dirs) -> Path:
    return tiny_model_dirs["llama"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, model_dir):
    root = tmp_path_factory.mktemp("cli")
    (root / "cliprog.py").write_text(PROGRAM)
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "not json\n{\"nope\": 1}\n")
    assert main(["compile", str(root / "cliprog.py"), "-o", str(root / "cliprog.sgc"),
                 "--model", str(model_dir)]) == 0
    return root


@pytest.fixture(scope="module")
def runtime(model_dir):
    rt = sgc.Runtime(str(model_dir), device="cpu")
    yield rt
    rt.shutdown()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_help_has_examples(capsys) -> None:
    for command in ("compile", "show", "run"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "example" in capsys.readouterr().out


def test_compile_writes_an_artifact_with_tables(workdir, capsys) -> None:
    art = read_artifact(workdir / "cliprog.sgc")
    assert [g.name for g in art.module] == ["qa", "tool"]
    assert len(art.fsms) == 1 and art.manifest["tokenizer_fingerprint"]  # tool runs on the host
    assert any(node.op.opname == "host" for node in art.module["tool"].nodes())


def test_compile_options(workdir, model_dir, capsys) -> None:
    out = workdir / "only_qa.sgc"
    assert main(["compile", str(workdir / "cliprog.py"), "-o", str(out), "--function", "qa", "-O0",
                 "--print-after-all", "--explain", "--model", str(model_dir)]) == 0
    err = capsys.readouterr().err
    assert "// after compile-constraints" in err and "no graph breaks" in err
    assert [g.name for g in read_artifact(out).module] == ["qa"]


@pytest.mark.parametrize("fmt", ["text", "dot", "html"])
def test_show(workdir, fmt, capsys) -> None:
    out = workdir / f"show.{fmt}"
    assert main(["show", str(workdir / "cliprog.sgc"), "--format", fmt, "-o", str(out)]) == 0
    text = out.read_text()
    assert {"text": "func @qa", "dot": "digraph", "html": "<html"}[fmt] in text


def test_show_a_program_file_after_a_pass(workdir, capsys) -> None:
    assert main(["show", str(workdir / "cliprog.py"), "--function", "qa", "--after", "lower-select"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("func @qa") and "score" in out and "@tool" not in out


def test_run_jsonl_reports_every_instance(workdir, model_dir, runtime, capsys) -> None:
    out = workdir / "results.jsonl"
    assert main(["run", str(workdir / "cliprog.sgc"), "--function", "qa", "--args", str(workdir / "rows.jsonl"),
                 "--out", str(out), "--model", str(model_dir), "--device", "cpu",
                 "--max-new-tokens", "16"]) == 1  # two rows failed
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in lines] == [0, 1, 2, 3]
    assert "bad arguments line" in lines[2]["error"] and "unknown argument 'nope'" in lines[3]["error"]
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("sgc run: 2 of 4 instance(s) failed; the first is row 2 (") and "rows.jsonl:3" in err
    from compiler.parser.tracer import load_program_file

    qa = load_program_file(workdir / "cliprog.py").qa
    eager = [qa.run(**row, backend=runtime, temperature=0, max_new_tokens=16, eager=True) for row in ROWS]
    for line, state in zip(lines, eager):
        assert line["text"] == state.text() and line["variables"] == state.snapshot()["variables"]


@pytest.mark.slow  # a fresh interpreter, torch and a model (~4 s); test_artifact loads in a fresh process fast
def test_artifact_in_a_fresh_process_equals_in_process(workdir, model_dir, runtime) -> None:
    program = sgc.load(workdir / "cliprog.sgc", backend=runtime)
    local = [s.snapshot() for s in program.qa.run_batch(ROWS, temperature=0, max_new_tokens=16)]
    rows = workdir / "good.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = workdir / "fresh.jsonl"
    proc = subprocess.run([sys.executable, "-m", "sgc.cli", "run", str(workdir / "cliprog.sgc"), "--function", "qa",
                           "--args", str(rows), "--out", str(out), "--model", str(model_dir),
                           "--device", "cpu", "--max-new-tokens", "16"],
                          capture_output=True, text=True, env=_env(), cwd=workdir, timeout=300)
    assert proc.returncode == 0, proc.stderr
    fresh = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["text"], r["variables"]) for r in fresh] == [(s["text"], s["variables"]) for s in local]


def test_loaded_host_function_needs_its_source(workdir, runtime) -> None:
    program = sgc.load(workdir / "cliprog.sgc", backend=runtime, import_source=True)
    state = program.tool.run(city="Rome", temperature=0)
    assert state.text().endswith(" doubled " + str(int(state["n"]) * 2))


def test_tokenizer_mismatch_recompiles_or_refuses(workdir, runtime) -> None:
    art = read_artifact(workdir / "cliprog.sgc")
    other = workdir / "other_tok.sgc"
    write_artifact(other, art.module, art.fsms, source_text=art.source or "", source_name="cliprog.py",
                   tokenizer_fingerprint="0" * 64)
    with pytest.raises(ArtifactError, match="tokenizer"):
        sgc.load(other, backend=runtime, strict_tokenizer=True)
    program = sgc.load(other, backend=runtime)
    assert set(program.compiled.fsms) == set(art.fsms)
    expected = sgc.load(workdir / "cliprog.sgc", backend=runtime).qa.run(temperature=0, **ROWS[0])
    assert program.qa.run(temperature=0, **ROWS[0]).text() == expected.text()


BAD = {
    "syntax": ("import sgc\n\n@sgc.function\ndef f(s, q)\n    s += q\n", "bad.py:4: syntax error"),
    "first_param": ("import sgc\n\n@sgc.function\ndef f(x, q):\n    x += q\n",
                    "bad.py:4: @function f: the first parameter must be the state `s`"),
    "nested_roles": ("import sgc\n\n@sgc.function\ndef f(s, q):\n    s += sgc.user_begin()\n"
                     "    s += sgc.assistant_begin()\n    s += q\n", "bad.py:6: nested roles"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_program_is_one_line_and_exit_1(tmp_path, case) -> None:
    source, expected = BAD[case]
    (tmp_path / "bad.py").write_text(source)
    proc = subprocess.run([sys.executable, "-m", "sgc.cli", "show", "bad.py"], capture_output=True, text=True,
                          env=_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_program_argument_may_be_named_cancel(tmp_path, model_dir, runtime) -> None:
    """`cancel=` is the server's handle on a run (`LoadedFunction.run_arguments`), not a keyword of
    `run`: a program whose argument is named `cancel` loads and runs like any other."""
    (tmp_path / "cancelprog.py").write_text(
        "import sgc\n\n@sgc.function\ndef echo(s, cancel):\n    s += 'Say ' + cancel + ':' + sgc.gen('out', max_tokens=3)\n")
    assert main(["compile", str(tmp_path / "cancelprog.py"), "-o", str(tmp_path / "cancelprog.sgc"),
                 "--model", str(model_dir)]) == 0
    echo = sgc.load(tmp_path / "cancelprog.sgc", backend=runtime).echo
    by_keyword = echo.run(cancel="no", temperature=0)
    by_dict = echo.run_arguments({"cancel": "no"}, temperature=0)
    assert by_keyword.text().startswith("Say no:") and by_keyword.text() == by_dict.text()


@pytest.mark.parametrize(("flags", "message"), [
    (["--replicas", "0"], "--replicas must be at least 1"),
    (["--replicas", "-2"], "--replicas must be at least 1"),
    (["--replicas", "2", "--cores-per-replica", "0"], "--cores-per-replica must be at least 1"),
    (["--replicas", "2", "--gpus-per-replica", "-1"], "--gpus-per-replica at least 0"),
    (["--replicas", "2"], "--replicas needs --out FILE"),
])
def test_run_refuses_bad_replica_options(workdir, model_dir, capsys, flags, message) -> None:
    """Bad replica options are refused with one line before any cluster or model starts."""
    code = main(["run", str(workdir / "cliprog.sgc"), "--function", "qa", "--args", str(workdir / "rows.jsonl"),
                 "--model", str(model_dir), *flags])
    assert code != 0 and message in capsys.readouterr().err
