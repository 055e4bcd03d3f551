"""Property tests: a damaged or tampered artifact loads to the same program or raises ArtifactError.

Random byte flips of the file, member swaps, manifest field mutations and edits of the IR text are
applied to a valid artifact (IR with a constrained gen and a pure host step, one FSM table). Whatever
the change, `read_artifact` returns a program equal to the original or raises `ArtifactError`, never
another exception, and the host policy then admits only sgc's pure functions (no code named by data
can run). A canary file that a code-running payload would create must never appear.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.codegen.artifact import ArtifactError, read_artifact, write_artifact
from compiler.constraints import Vocabulary
from compiler.ir import IRError
from compiler.ir_text import print_module
from compiler.parser.ir_reader import parse_module
from compiler.passes.compile_constraints import CompileConstraints
from executor.program.graph_host import HostPolicy, HostPolicyError
from tests.tiers import examples

PROGRAM = """\
func @main {
  %0 = arg name="topic"
  %1 = state_new
  %2 = append %1, %0
  %3 = host %0 func="builtins:str.upper" returns="value"
  %4 = append %2, %3
  %5 = gen %4 name="year" max_tokens=8 regex="(19|20)[0-9][0-9]"  # prog.py:4
  %6 = output %5
}
"""
TOKENS = ["0", "1", "2", "9", "19", "20", "x", "</s>"]
VOCAB = Vocabulary.from_strings(TOKENS, special_ids=[7], eos_token_id=7)
SETTINGS = settings(max_examples=examples(120), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _original(tmp: Path) -> tuple[bytes, str, dict]:
    module = parse_module(PROGRAM)
    cc = CompileConstraints(VOCAB)
    for graph in module:
        cc.run(graph)
    path = write_artifact(tmp / "base.sgc", module, cc.fsms, source_text="# src\n", source_name="prog.py",
                          tokenizer_fingerprint=VOCAB.fingerprint)
    arrays = {ident: fsm.to_arrays() for ident, fsm in cc.fsms.items()}
    return path.read_bytes(), print_module(module), arrays


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    return _original(tmp_path_factory.mktemp("props"))


def load_outcome(data: bytes, tmp: Path, expected_ir: str, expected_arrays: dict) -> str:
    """'equal' or 'error'; fails the test on any other outcome."""
    path = tmp / "mutated.sgc"
    path.write_bytes(data)
    try:
        art = read_artifact(path, tokenizer_fingerprint=VOCAB.fingerprint)
    except ArtifactError:
        return "error"
    try:
        HostPolicy().check(art.module)
    except HostPolicyError:
        return "error"  # data named a function outside the allow-list: refused, nothing ran
    assert print_module(art.module) == expected_ir
    if art.fsms_stale:
        assert art.fsms == {}
    else:
        assert set(art.fsms) == set(expected_arrays)
        for ident, arrays in expected_arrays.items():
            for name, array in arrays.items():
                np.testing.assert_array_equal(art.fsms[ident].to_arrays()[name], array)
    return "equal"


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {info.filename: zf.read(info.filename) for info in zf.infolist()}


def _zip(members: dict[str, bytes], fix_checksums: bool) -> bytes:
    if fix_checksums and "manifest.json" in members:
        try:
            manifest = json.loads(members["manifest.json"])
        except ValueError:  # a swapped-in member is not a manifest: nothing to fix
            manifest = None
        if manifest is not None:
            for name in manifest["members"]:
                if name in members:
                    manifest["members"][name] = hashlib.sha256(members[name]).hexdigest()
            members = {**members, "manifest.json": json.dumps(manifest).encode()}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return buf.getvalue()


@SETTINGS
@given(flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)),
                      min_size=1, max_size=6))
def test_byte_flips(original, tmp_path, flips):
    data, ir, arrays = original
    mutated = bytearray(data)
    for position, xor in flips:
        mutated[position % len(mutated)] ^= xor
    load_outcome(bytes(mutated), tmp_path, ir, arrays)


@SETTINGS
@given(data=st.data(), fix_checksums=st.booleans())
def test_member_swaps(original, tmp_path, data, fix_checksums):
    raw, ir, arrays = original
    members = _members(raw)
    names = sorted(members)
    a = data.draw(st.sampled_from(names))
    b = data.draw(st.sampled_from(names))
    members[a], members[b] = members[b], members[a]
    outcome = load_outcome(_zip(members, fix_checksums), tmp_path, ir, arrays)
    if a != b and members[a] != members[b]:
        assert outcome == "error"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
MANIFEST_KEYS = ["format", "format_version", "sgc_version", "created", "source_name", "source_sha256",
                 "tokenizer_fingerprint", "functions", "fsms", "members", "extra_field"]


@SETTINGS
@given(key=st.sampled_from(MANIFEST_KEYS), value=JSON_VALUES | st.sampled_from([["main"], [], "0" * 64]),
       delete=st.booleans())
def test_manifest_field_mutations(original, tmp_path, key, value, delete):
    raw, ir, arrays = original
    members = _members(raw)
    manifest = json.loads(members["manifest.json"])
    if delete:
        manifest.pop(key, None)
    else:
        manifest[key] = value
    members["manifest.json"] = json.dumps(manifest).encode()
    load_outcome(_zip(members, fix_checksums=False), tmp_path, ir, arrays)


@SETTINGS
@given(data=st.data())
def test_ir_text_edits_parse_or_fail_cleanly(data):
    """Random edits of IR text either parse and verify or raise an IRError (never anything else)."""
    text = PROGRAM
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        at = data.draw(st.integers(min_value=0, max_value=len(text)))
        width = data.draw(st.integers(min_value=0, max_value=8))
        insert = data.draw(st.text(alphabet=st.sampled_from(list('%0129={}[]"\\ \nabcx#:,.-e')), max_size=10))
        text = text[:at] + insert + text[at + width:]
    try:
        module = parse_module(text)
    except IRError:
        return
    assert print_module(parse_module(print_module(module))) == print_module(module)
