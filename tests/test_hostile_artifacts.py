"""Hostile artifacts and IR text: every tampered, oversized or malicious file is a clear ArtifactError
(or IRParseError) within a time and memory bound, and loading or running one never runs code.

The canary: `CANARY` is a file that the malicious payloads below would create (a host step calling
`exec`/`open`, a pickled array, a user function nobody opted into). Every test that tries one checks
the file is still absent afterwards.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from compiler import budgets
from compiler.codegen.artifact import ArtifactError, read_artifact, write_artifact
from compiler.constraints import Vocabulary
from compiler.ir_text import print_module
from compiler.parser.ir_reader import IRParseError, parse_module
from compiler.passes.compile_constraints import CompileConstraints
from executor.program.graph_host import PURE_FUNCTIONS, HostPolicy, HostPolicyError
from tests.hostile import bounded

PROGRAM = """\
func @main {
  %0 = arg name="topic"
  %1 = state_new
  %2 = append %1, %0
  %3 = gen %2 name="year" max_tokens=8 regex="(19|20)[0-9][0-9]"  # prog.py:4
  %4 = output %3
}
"""

TOKENS = ["0", "1", "2", "9", "19", "20", "x", "</s>"]


@pytest.fixture()
def canary(tmp_path) -> Path:
    path = tmp_path / "canary"
    yield path
    assert not path.exists(), "a hostile artifact ran code: the canary file was created"


@pytest.fixture()
def toy_vocab():
    return Vocabulary.from_strings(TOKENS, special_ids=[7], eos_token_id=7)


def build(tmp_path, program: str = PROGRAM, vocab=None, name: str = "prog.sgc", **kwargs) -> Path:
    module = parse_module(program)
    fsms = {}
    if vocab is not None:
        cc = CompileConstraints(vocab)
        for graph in module:
            cc.run(graph)
        fsms = cc.fsms
        kwargs.setdefault("tokenizer_fingerprint", vocab.fingerprint)
    return write_artifact(tmp_path / name, module, fsms, source_text="# source\n", source_name="prog.py", **kwargs)


def rewrite(path: Path, change, *, compression=zipfile.ZIP_DEFLATED) -> None:
    """Rewrite the zip with `change(name, data) -> data | None`, fixing the manifest's checksums so
    only the change itself is under test (an attacker can recompute sha256 too)."""
    with zipfile.ZipFile(path) as src:
        members = {info.filename: src.read(info.filename) for info in src.infolist()}
    members = {n: d for n, d in ((n, change(n, d)) for n, d in members.items()) if d is not None}
    if "manifest.json" in members and change("__fix_checksums__", b"") != b"keep":
        try:
            manifest = json.loads(members["manifest.json"])
            for name in manifest.get("members", {}):
                if name in members:
                    manifest["members"][name] = _sha(members[name])
            members["manifest.json"] = json.dumps(manifest).encode()
        except (ValueError, AttributeError, TypeError):
            pass
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as dst:
        for name, data in members.items():
            dst.writestr(name, data)
    path.write_bytes(buf.getvalue())


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def replace_ir(path: Path, ir_text: str) -> None:
    rewrite(path, lambda n, d: ir_text.encode() if n == "ir/main.ir" else d)


def host_program(func: str, arg: str) -> str:
    return f"""\
func @main {{
  %0 = const value={json.dumps(arg)}
  %1 = host %0 func={json.dumps(func)} returns="value"
  %2 = state_new
  %3 = output %2
}}
"""


# -- code is never run from data ---------------------------------------------------------------

DANGEROUS = ["builtins:exec", "builtins:eval", "builtins:compile", "builtins:open", "builtins:__import__",
             "builtins:getattr", "builtins:setattr", "os:system", "subprocess:run", "builtins:str.format_map",
             "pickle:loads", "importlib:import_module", "builtins:breakpoint", "operator:attrgetter",
             "operator:methodcaller", "builtins:type", "builtins:str.__class__"]


@pytest.mark.parametrize("func", DANGEROUS)
def test_a_host_step_naming_a_dangerous_function_is_refused_by_the_policy(tmp_path, canary, func):
    payload = f"open({str(canary)!r}, 'w').write('ran')"
    with bounded(seconds=5, mem_mb=50):
        module = read_artifact(build(tmp_path, host_program(func, payload))).module
        with pytest.raises(HostPolicyError, match=r"@main: %1 \(host\) calls .* which is not allowed"):
            HostPolicy().check(module)


def test_the_allow_list_names_functions_not_modules():
    assert all(":" in name and not name.endswith(":") for name in PURE_FUNCTIONS)
    reachable = {getattr(fn, "__name__", "") for fn in PURE_FUNCTIONS.values()}
    assert not reachable & {"exec", "eval", "compile", "open", "__import__", "getattr", "setattr", "format_map"}


def test_running_a_tampered_graph_directly_refuses_the_host_step(tiny_engine, canary):
    from executor.program.graph_executor import GraphExecutor
    from executor.program.graph_results import GraphExecutionError

    payload = f"open({str(canary)!r}, 'w').write('ran')"
    module = parse_module(host_program("builtins:exec", payload))
    with bounded(seconds=10, mem_mb=100), pytest.raises(GraphExecutionError, match="no allowed host function"):
        GraphExecutor(tiny_engine, module).run({})


def test_user_functions_need_an_opt_in(tiny_runtime, tmp_path, canary):
    import sgc

    path = build(tmp_path, host_program(f"{__name__}:write_canary", str(canary)))
    with bounded(seconds=20, mem_mb=200):
        with pytest.raises(ArtifactError, match=r"write_canary.*not allowed.*host_functions"):
            sgc.load(path, backend=tiny_runtime)
        assert not canary.exists()
        # opting into this module binds it: the step runs (and is then cleaned up)
        program = sgc.load(path, backend=tiny_runtime, host_functions=__import__(__name__, fromlist=["_"]))
        program.main.run()
    assert canary.read_text() == "ran"
    canary.unlink()


def test_a_function_needing_its_own_program_is_locked_until_opted_in(tiny_runtime, tmp_path, canary):
    """Host steps into the artifact's own program (source_name) lock only the functions that need them."""
    import sys
    import types

    import sgc

    program_module = types.ModuleType("hostile_prog")
    program_module.write_canary = write_canary
    sys.modules["hostile_prog"] = program_module
    try:
        text = host_program("hostile_prog:write_canary", str(canary)) + PROGRAM.replace("@main", "@pure")
        module = parse_module(text)
        path = write_artifact(tmp_path / "two.sgc", module, {}, source_name="hostile_prog.py")
        with bounded(seconds=30, mem_mb=300):
            program = sgc.load(path, backend=tiny_runtime)
            assert program.pure.run(topic="x", max_new_tokens=2, temperature=0).text().startswith("x")
            with pytest.raises(ArtifactError, match=r"@main: %1 \(host\) calls 'hostile_prog:write_canary'"):
                program.main.run()
            with pytest.raises(ArtifactError, match="not allowed"):
                program.main.run_batch([{}])
            assert not canary.exists()
            sgc.load(path, backend=tiny_runtime, host_functions=program_module).main.run()
        assert canary.read_text() == "ran"
        canary.unlink()
    finally:
        del sys.modules["hostile_prog"]


def write_canary(path: str) -> str:
    Path(path).write_text("ran")
    return "done"


def test_str_format_cannot_reach_attributes(tiny_engine):
    from executor.program.graph_executor import GraphExecutor
    from executor.program.graph_results import GraphExecutionError

    program = """\
func @main {
  %0 = const value="{0.__class__.__init__.__globals__}"
  %1 = state_new
  %2 = host %0, %1 func="builtins:str.format" returns="value"
  %3 = output %1
}
"""
    with bounded(seconds=10, mem_mb=100), pytest.raises(GraphExecutionError, match="attribute and index access"):
        GraphExecutor(tiny_engine, parse_module(program)).run({})


@pytest.mark.parametrize("func,args", [
    ("operator:mul", ['"ab"', "1000000000000"]),
    ("builtins:str.center", ['"x"', "10000000000"]),
    ("builtins:str.zfill", ['"1"', "10000000000"]),
    ("operator:mod", ['"%999999999999d"', "1"]),
    ("builtins:str.format", ['"{:>99999999999}"', '"x"']),
])
def test_host_steps_cannot_build_huge_values(tiny_engine, func, args):
    from executor.program.graph_executor import GraphExecutor
    from executor.program.graph_results import GraphExecutionError

    program = f"""\
func @main {{
  %0 = const value={args[0]}
  %1 = const value={args[1]}
  %2 = host %0, %1 func="{func}" returns="value"
  %3 = state_new
  %4 = output %3
}}
"""
    with bounded(seconds=10, mem_mb=100), pytest.raises(GraphExecutionError, match="host_value_chars"):
        GraphExecutor(tiny_engine, parse_module(program)).run({})


def test_a_pickled_array_is_refused_without_unpickling(tmp_path, toy_vocab, canary):
    import pickle

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(canary)!r}, 'w').write('ran')",))

    path = build(tmp_path, vocab=toy_vocab)
    evil = io.BytesIO()
    np.savez(evil, transitions=np.array([Payload()], dtype=object))
    assert b"exec" in pickle.dumps(Payload())
    rewrite(path, lambda n, d: evil.getvalue() if n.startswith("fsm/") else d)
    with bounded(seconds=5, mem_mb=50), pytest.raises(ArtifactError, match="dtype object"):
        read_artifact(path, tokenizer_fingerprint=toy_vocab.fingerprint)


# -- size budgets --------------------------------------------------------------------------------

def test_a_zip_bomb_member_is_refused_before_decompressing(tmp_path):
    path = build(tmp_path)
    zeros = bytes(400 << 20)
    rewrite(path, lambda n, d: zeros if n == "source.py" else d)
    assert path.stat().st_size < 2 << 20
    with bounded(seconds=5, mem_mb=150), pytest.raises(ArtifactError, match="artifact_member_bytes"):
        read_artifact(path)


def test_an_npz_array_with_a_huge_declared_shape_is_refused_before_reading(tmp_path, toy_vocab):
    path = build(tmp_path, vocab=toy_vocab)
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", compression=zipfile.ZIP_DEFLATED) as npz:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<i4", "fortran_order": False,
                                                      "shape": (1 << 40,)})
        npz.writestr("transitions.npy", b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + bytes(1000))
    rewrite(path, lambda n, d: inner.getvalue() if n.startswith("fsm/") else d)
    with bounded(seconds=5, mem_mb=50), pytest.raises(ArtifactError, match="artifact_member_bytes"):
        read_artifact(path, tokenizer_fingerprint=toy_vocab.fingerprint)


def test_the_artifact_file_size_budget(tmp_path):
    path = build(tmp_path)
    with bounded(seconds=5, mem_mb=50), budgets.budget_overrides(artifact_bytes=100):
        with pytest.raises(ArtifactError, match=r"artifact_bytes budget of 100 bytes.*SGC_MAX_ARTIFACT_BYTES"):
            read_artifact(path)


def test_too_many_members(tmp_path):
    path = build(tmp_path)
    rewrite(path, lambda n, d: d)
    with zipfile.ZipFile(path, "a") as zf:
        for i in range(50):
            zf.writestr(f"junk/{i}", b"")
    with bounded(seconds=5, mem_mb=50), budgets.budget_overrides(artifact_members=20):
        with pytest.raises(ArtifactError, match="artifact_members"):
            read_artifact(path)


def test_the_total_decompressed_size_budget(tmp_path):
    path = build(tmp_path)
    rewrite(path, lambda n, d: bytes(3 << 20) if n == "source.py" else d)
    with bounded(seconds=5, mem_mb=50), budgets.budget_overrides(artifact_total_bytes=2 << 20):
        with pytest.raises(ArtifactError, match="artifact_total_bytes"):
            read_artifact(path)


def test_the_budget_comes_from_the_environment(tmp_path, monkeypatch):
    path = build(tmp_path)
    monkeypatch.setenv("SGC_MAX_ARTIFACT_BYTES", "10")
    with pytest.raises(ArtifactError, match="budget of 10 bytes"):
        read_artifact(path)
    monkeypatch.setenv("SGC_MAX_ARTIFACT_BYTES", "lots")
    with pytest.raises(ValueError, match="SGC_MAX_ARTIFACT_BYTES='lots' is not a number"):
        read_artifact(path)


# -- malformed manifests -------------------------------------------------------------------------

def set_manifest(path: Path, text: bytes) -> None:
    rewrite(path, lambda n, d: (b"keep" if n == "__fix_checksums__" else text if n == "manifest.json" else d))


def test_a_deeply_nested_manifest(tmp_path):
    path = build(tmp_path)
    set_manifest(path, b'{"format": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    with bounded(seconds=5, mem_mb=100), pytest.raises(ArtifactError, match="manifest_depth"):
        read_artifact(path)


@pytest.mark.parametrize("text,message", [
    (b"\xff\xfe not utf-8", "not UTF-8"),
    (b'{"format": "sgc-artifact", "format_version": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (b"[1, 2, 3]", "not an sgc artifact"),
    (b"", "not valid JSON"),
])
def test_malformed_manifest_text(tmp_path, text, message):
    path = build(tmp_path)
    set_manifest(path, text)
    with bounded(seconds=5, mem_mb=50), pytest.raises(ArtifactError, match=message):
        read_artifact(path)


@pytest.mark.parametrize("field,value,message", [
    ("format_version", True, "format_version"),
    ("format_version", -1, "format_version"),
    ("format_version", 10**30, "newer sgc"),
    ("members", {"ir/main.ir": "not a digest"}, "checksums"),
    ("members", [], "checksums"),
    ("functions", [1, 2], "functions"),
    ("functions", ["main", "main"], "twice"),
    ("functions", ["other"], "no checked member"),
    ("fsms", "all", "fsms"),
    ("tokenizer_fingerprint", {"a": 1}, "tokenizer_fingerprint"),
])
def test_manifest_fields_are_checked(tmp_path, field, value, message):
    path = build(tmp_path)

    def change(name, data):
        if name != "manifest.json":
            return data
        manifest = json.loads(data)
        manifest[field] = value
        return json.dumps(manifest).encode()

    rewrite(path, lambda n, d: b"keep" if n == "__fix_checksums__" else change(n, d))
    with bounded(seconds=5, mem_mb=50), pytest.raises(ArtifactError, match=message):
        read_artifact(path)


def test_the_ir_must_define_the_functions_the_manifest_lists(tmp_path):
    path = build(tmp_path)
    replace_ir(path, PROGRAM.replace("@main", "@other"))
    with bounded(seconds=5, mem_mb=50), pytest.raises(ArtifactError, match="manifest lists"):
        read_artifact(path)


# -- hostile IR ----------------------------------------------------------------------------------

def test_non_utf8_ir(tmp_path):
    path = build(tmp_path)
    rewrite(path, lambda n, d: b"\xc3\x28 func" if n == "ir/main.ir" else d)
    with bounded(seconds=5, mem_mb=50), pytest.raises(ArtifactError, match="ir/main.ir is not UTF-8"):
        read_artifact(path)


def test_deeply_nested_ir_values(tmp_path):
    path = build(tmp_path)
    replace_ir(path, PROGRAM.replace('name="topic"', 'name="topic" meta={"x": ' + "[" * 50_000 + "]" * 50_000 + "}"))
    with bounded(seconds=5, mem_mb=100), pytest.raises(ArtifactError, match=r"line 2: 50002 levels is over the ir_depth budget of 64"):
        read_artifact(path)


def test_deeply_nested_switch_regions():
    depth = 2000
    lines = ["func @main {", "  %0 = state_new", "  %1 = const value=1"]
    for i in range(depth):
        lines.append(f"  %{i + 2} = switch %0, %1 {{")
        lines.append("  case 1 {")
    lines.append("  }\n  }" * depth)
    lines.append("}")
    with bounded(seconds=5, mem_mb=100), pytest.raises(IRParseError, match="ir_depth"):
        parse_module("\n".join(lines))


def test_too_many_ir_nodes(tmp_path):
    body = "\n".join(f'  %{i} = const value="x"' for i in range(2, 500))
    program = PROGRAM.replace("  %1 = state_new\n", "  %1 = state_new\n" + body + "\n")
    with bounded(seconds=5, mem_mb=50), budgets.budget_overrides(ir_nodes=100):
        with pytest.raises(IRParseError, match="ir_nodes budget of 100"):
            parse_module(program)


def test_ir_text_size_budget():
    with bounded(seconds=5, mem_mb=50), budgets.budget_overrides(ir_text_bytes=1000):
        with pytest.raises(IRParseError, match="ir_text_bytes"):
            parse_module(PROGRAM.replace('"topic"', '"' + "t" * 5000 + '"'))


def test_a_number_with_thousands_of_digits():
    with bounded(seconds=5, mem_mb=50), pytest.raises(IRParseError, match="5000 digits"):
        parse_module(PROGRAM.replace("max_tokens=8", "max_tokens=" + "9" * 5000))


@pytest.mark.parametrize("mutation,message", [
    (lambda p: p.replace("%2 = append %1, %0", "%2 = append %1, %9"), "not defined"),
    (lambda p: p.replace("append", "launch_missiles"), "unknown op"),
    (lambda p: p.replace("max_tokens=8", 'max_tokens="8"'), "max_tokens"),
    (lambda p: p.replace("}", ""), "unexpected"),
    (lambda p: p + "func @main {\n}\n", "defined twice"),
    (lambda p: p.replace('"topic"', '"\\uZZZZ"'), "escape"),
])
def test_malformed_ir_text_in_an_artifact(tmp_path, mutation, message):
    path = build(tmp_path)
    replace_ir(path, mutation(PROGRAM))
    with bounded(seconds=5, mem_mb=50), pytest.raises(ArtifactError, match=message):
        read_artifact(path)


# -- tampered constraint tables -------------------------------------------------------------------

def tamper_table(path: Path, change) -> None:
    def edit(name, data):
        if not name.startswith("fsm/"):
            return data
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = dict(npz)
        change(arrays)
        out = io.BytesIO()
        np.savez(out, **arrays)
        return out.getvalue()

    rewrite(path, edit)


def _first_int_array(arrays: dict) -> str:
    return next(k for k, v in arrays.items() if v.dtype.kind in "iu" and v.size)


@pytest.mark.parametrize("how", ["float", "huge", "negative", "reshape", "drop"])
def test_tampered_tables_are_load_errors(tmp_path, toy_vocab, how):
    path = build(tmp_path, vocab=toy_vocab)

    def change(arrays):
        name = "transitions" if "transitions" in arrays else _first_int_array(arrays)
        array = arrays[name]
        if how == "float":
            arrays[name] = array.astype(np.float64)
        elif how == "huge":
            arrays[name] = np.full_like(array, np.iinfo(array.dtype).max)
        elif how == "negative":
            arrays[name] = np.full_like(array, -7) if array.dtype.kind == "i" else array + 10**6
        elif how == "reshape":
            arrays[name] = array.reshape(-1)[:-1] if array.size > 1 else np.zeros((3, 3), array.dtype)
        else:
            del arrays[name]

    tamper_table(path, change)
    with bounded(seconds=5, mem_mb=50), pytest.raises(ArtifactError, match="constraint table"):
        read_artifact(path, tokenizer_fingerprint=toy_vocab.fingerprint)


# -- writing -------------------------------------------------------------------------------------

def test_artifacts_are_written_with_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = build(tmp_path)
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644


def test_the_round_trip_still_holds(tmp_path, toy_vocab):
    path = build(tmp_path, vocab=toy_vocab)
    art = read_artifact(path, tokenizer_fingerprint=toy_vocab.fingerprint)
    again = read_artifact(write_artifact(tmp_path / "again.sgc", art.module, art.fsms,
                                         tokenizer_fingerprint=toy_vocab.fingerprint))
    assert print_module(again.module) == print_module(art.module) and len(art.fsms) == 1
    for ident, fsm in art.fsms.items():
        for name, array in fsm.to_arrays().items():
            np.testing.assert_array_equal(again.fsms[ident].to_arrays()[name], array)


# -- fixtures: a tiny engine and runtime ----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dirs):
    from executor.runtime.engine import Engine

    with Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu") as engine:
        yield engine


@pytest.fixture(scope="module")
def tiny_runtime(tiny_model_dirs):
    import sgc

    runtime = sgc.Runtime(model_path=str(tiny_model_dirs["llama"]), device="cpu")
    yield runtime
    runtime.shutdown()


def test_ir_with_too_many_separators_is_refused_before_parsing():
    """A megabyte of `1,1,1,...` in one attribute would cost lark seconds and hundreds of MB."""
    text = 'func @main {\n  %0 = state_new meta={"x": [' + ",".join(["1"] * 1_500_000) + ']}\n  %1 = output %0\n}\n'
    with bounded(seconds=5, mem_mb=150), pytest.raises(IRParseError, match="ir_separators"):
        parse_module(text)


def _stale_artifact(tmp_path, regex: str) -> Path:
    program = PROGRAM.replace('regex="(19|20)[0-9][0-9]"', f"regex={json.dumps(regex)}")
    return write_artifact(tmp_path / "stale.sgc", parse_module(program), {}, source_name="prog.py",
                          tokenizer_fingerprint="0" * 16)


def test_a_stale_artifact_recompiles_its_constraints_within_budget(tiny_runtime, tmp_path):
    """`.{5000}` for another tokenizer used to cost 14 s and 2.1 GB to recompile on load."""
    import sgc

    with bounded(seconds=15, mem_mb=400):
        program = sgc.load(_stale_artifact(tmp_path, ".{5000}"), backend=tiny_runtime)
    assert len(program.compiled.fsms) == 1


def test_a_stale_artifact_whose_constraint_is_over_budget_fails_to_load(tiny_runtime, tmp_path):
    import sgc

    with bounded(seconds=10, mem_mb=300), pytest.raises(ArtifactError, match="recompiling.*constraint_positions"):
        sgc.load(_stale_artifact(tmp_path, "[a-z]{99999999}"), backend=tiny_runtime)


@pytest.mark.parametrize("bad", [42, [object()], b"bytes"])
def test_host_functions_must_be_a_mapping_or_modules(bad):
    with pytest.raises(TypeError, match="host_functions must be a mapping, a module or modules"):
        HostPolicy.make(bad)


def test_a_trusted_module_exposes_no_private_or_dunder_names():
    import types

    module = types.ModuleType("trusted_prog")
    module._secret = lambda: "ran"
    module.ok = lambda: "ok"
    import sys

    sys.modules["trusted_prog"] = module
    try:
        policy = HostPolicy.make(module)
        assert policy.resolve("trusted_prog:ok")() == "ok"
        assert policy.resolve("trusted_prog:_secret") is None
        assert policy.resolve("trusted_prog:__builtins__") is None
        assert policy.resolve("trusted_prog:ok.__globals__") is None
        assert policy.resolve("os:system") is None
    finally:
        del sys.modules["trusted_prog"]
