"""The decode-time JSON structure check (`compiler.constraints.json_structure`).

The scanner and the per-vocabulary signature cache against a byte-by-byte reference, the superset
automaton plus the check against the exact automaton, soundness and completeness token by token
through `ConstraintCursor` with the default model's vocabulary, artifacts, and generation with a
tiny random-weight model.
"""

from __future__ import annotations

import json
import random
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_constraints_json_schema_keywords import distance_to_accept, sample

from compiler.constraints import ConstraintError, TokenFSM, Vocabulary, as_vocabulary, compile_json_schema
from compiler.constraints.dfa_ops import byte_dfa
from compiler.constraints.json_schema import (
    SchemaCompiler,
    SchemaOptions,
    json_schema_to_node,
    json_schema_to_regex,
)
from compiler.constraints.json_structure import (
    ESC,
    OUT,
    P_AFTER,
    STR,
    SUPERSET_DEPTH,
    StructureGuard,
    StructureScanner,
    StructureTables,
    check_text,
    signature,
)
from executor.runtime.constrained import ConstraintCursor, ConstraintDeadEnd, plan_jump_forward
from tests.constraint_schemas import SMOLLM2_EOS, load_smollm2_tokenizer
from tests.tiers import examples

SETTINGS = settings(max_examples=examples(200), deadline=None, suppress_health_check=list(HealthCheck))
JSONISH = b'[]{},:"\\ \n' + b"a1e-.tru"


def _reference_run(data: bytes) -> tuple[int, StructureScanner]:
    """Index of the first byte that breaks structure (len(data) if none), and the state before it."""
    sc = StructureScanner()
    for i in range(len(data)):
        before = sc.copy()
        if not sc.feed_events(signature(data[i : i + 1], sc.mode)[0]):
            return i, before
    return len(data), sc


def _state(sc: StructureScanner) -> tuple:
    return sc.mode, sc.phase, tuple(sc.stack)


# ---------------------------------------------------------------------------------------------
# The scanner


@SETTINGS
@given(data=st.binary(max_size=60).map(lambda b: bytes(JSONISH[x % len(JSONISH)] for x in b)),
       cuts=st.lists(st.integers(0, 60), max_size=12))
def test_chunked_scanner_matches_byte_by_byte_reference(data: bytes, cuts: list[int]) -> None:
    bad, ref = _reference_run(data)
    sc = StructureScanner()
    pos = 0
    for cut in sorted({c for c in cuts if 0 < c < len(data)}) + [len(data)]:
        chunk = data[pos:cut]
        ok = sc.feed(chunk)
        if pos <= bad < cut:
            assert not ok and sc.violation and f"offset {bad}" in sc.violation
            return
        assert ok
        pos = cut
    assert bad == len(data) and _state(sc) == _state(ref)


PIECES = ["[", "]", "{", "}", ",", ":", '"k"', "1", " ", '"a\\"b"', "true"]


@SETTINGS
@given(st.lists(st.sampled_from(PIECES), max_size=14))
def test_structure_equals_json_on_separated_scalars(pieces: list[str]) -> None:
    """With scalars that are valid on their own (and glue only into valid numbers), the check
    accepts a whole text exactly when it parses as JSON."""
    text = "".join(pieces)
    if "1true" in text or "true1" in text or "truetrue" in text:
        return  # glued literals: the automaton's business, not structure's
    try:
        json.loads(text)
        valid = True
    except ValueError:
        valid = False
    assert check_text(text) == valid, text


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12)
    | st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",)), max_size=6),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(st.characters(max_codepoint=0x7F), max_size=4), children, max_size=3),
    max_leaves=12,
)


def _depth(v: Any) -> int:
    if isinstance(v, list):
        return 1 + max((_depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((_depth(x) for x in v.values()), default=0)
    return 0


def _deepen(v: Any, levels: list[bool], key: str = "k") -> Any:
    for obj in levels:
        v = {key: v} if obj else [v]
    return v


@SETTINGS
@given(v=JSON_VALUES, indent=st.sampled_from([None, 1]))
def test_every_prefix_of_json_passes(v: Any, indent: int | None) -> None:
    text = json.dumps(v, indent=indent).encode()
    sc = StructureScanner()
    for i in range(len(text)):
        assert sc.feed(text[i : i + 1]), (text, i)
    assert sc.complete


def _toy_tokens(rng: random.Random, n: int = 300) -> list[bytes]:
    alphabet = b'[]{},:"\\ a1'
    toks = {bytes([b]) for b in alphabet} | {b'":', b'","', b'"}', b"},{", b"]]", b"}}}", b"]}", b'\\"', b'":"', b'"]',
                                             b'{"', b'["', b"1,", b'":{"', b"}]}", b'"\\'}
    while len(toks) < n:
        toks.add(bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 6))))
    return [b""] + sorted(toks)


@settings(max_examples=examples(60), deadline=None, suppress_health_check=list(HealthCheck))
@given(v=JSON_VALUES, seed=st.integers(0, 1000), frac=st.floats(0, 1))
def test_signature_cache_matches_reference(v: Any, seed: int, frac: float) -> None:
    """After any prefix of a JSON text, the tokens the cache clears are exactly those whose bytes the
    byte-by-byte reference rejects from there."""
    tokens = _toy_tokens(random.Random(seed))
    tables = StructureTables(tokens)
    text = json.dumps(v, separators=(",", ":")).encode()
    cut = int(frac * len(text))
    sc = StructureScanner()
    assert sc.feed(text[:cut])
    ids, keep = tables.clear_ids(sc)
    want = []
    for i, t in enumerate(tokens):
        probe = sc.copy()
        for j in range(len(t)):
            if not probe.feed_events(signature(t[j : j + 1], probe.mode)[0]):
                want.append(i)
                break
    assert ids.tolist() == want
    mask = np.ones(len(tokens), dtype=bool)
    guard = StructureGuard.__new__(StructureGuard)
    guard.tables, guard.scanner = tables, sc
    guard.filter(mask)
    assert sorted(np.flatnonzero(~mask).tolist()) == want


def test_signatures_of_modes() -> None:
    assert signature(b'":"', OUT) == (b'""', OUT)
    assert signature(b'":"', STR) == (b'":"', STR)
    assert signature(b"abc 12", OUT) == (b"a a", OUT)
    assert signature(b'x\\', STR) == (b"\\", ESC)
    assert signature(b'"}', ESC) == (b"", STR)  # the escaped quote does not close


# ---------------------------------------------------------------------------------------------
# The superset automaton with the check is the exact automaton (byte level)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_superset_plus_check_is_exact(depth: int) -> None:
    exact = byte_dfa(SchemaCompiler({}, SchemaOptions()).any_value_node(depth))
    sup = SchemaCompiler({}, SchemaOptions(decode_checks=True)).any_superset(depth).dfa
    assert sup.num_states < exact.num_states or depth < 2
    rng = random.Random(depth)
    d_sup, d_exact = distance_to_accept(sup), distance_to_accept(exact)
    for _ in range(300):
        text = sample(sup, rng, d_sup, soft_len=40)
        assert check_text(text) == exact.accepts(text), text
        text = sample(exact, rng, d_exact, soft_len=40)
        assert sup.accepts(text) and check_text(text), text


def test_superset_grows_linearly() -> None:
    sizes = [SchemaCompiler({}, SchemaOptions(decode_checks=True)).any_superset(d).dfa.num_states
             for d in (4, 8, 12)]
    assert sizes[2] - sizes[1] == sizes[1] - sizes[0]
    assert SchemaCompiler({}, SchemaOptions(decode_checks=True)).any_superset(SUPERSET_DEPTH).dfa.num_states < 1500


def test_exact_entry_points_are_unchanged() -> None:
    """json_schema_to_node / json_schema_to_regex keep the exact any_depth automaton."""
    assert "[" in json_schema_to_regex({}) and "\\{" in json_schema_to_regex({})
    node = json_schema_to_node({})
    dfa = byte_dfa(node)
    assert dfa.accepts(b'[{"a":1}]') and not dfa.accepts(b'[{"a":[[1]]}]') and not dfa.accepts(b"[1}")


# ---------------------------------------------------------------------------------------------
# Token level, the default model's vocabulary


@pytest.fixture(scope="module")
def tokenizer():
    return load_smollm2_tokenizer()


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return Vocabulary.from_tokenizer(tokenizer, eos_token_id=SMOLLM2_EOS)


SCHEMAS = [{}, {"type": "object"}, {"properties": {"a": {}}}]


@pytest.fixture(scope="module")
def fsms(vocab):
    return [compile_json_schema(s, vocab) for s in SCHEMAS]


def test_flag_set_only_where_needed(vocab, fsms) -> None:
    assert all(f.json_structure for f in fsms)
    plain = compile_json_schema({"type": "object", "properties": {"a": {"type": "integer"}}}, vocab)
    assert not plain.json_structure and plain.structure_guard() is None
    assert int(plain.to_arrays()["format_version"][0]) == 2


def _random_walk(fsm: TokenFSM, rng: np.random.Generator, dist: np.ndarray, steps: int = 150) -> bytes | None:
    cursor = ConstraintCursor(fsm, frozenset({SMOLLM2_EOS}))
    row = torch.zeros(fsm.vocab_size, dtype=torch.bool)
    for step in range(steps):
        cursor.fill_mask(row)
        ids = row.nonzero().flatten().numpy()
        if step > 40 or rng.random() < 0.3:  # head for the end: the tokens that get closest
            after = np.array([0 if t == SMOLLM2_EOS else dist[fsm.next_state(cursor.state, int(t))] for t in ids])
            ids = ids[after == after.min()]
        t = int(rng.choice(ids))
        if t == SMOLLM2_EOS:
            return b"".join(fsm.token_text(x) for x in cursor.output)
        cursor.advance(t)
        assert cursor.state >= 0
    return None


@pytest.mark.parametrize("which", range(len(SCHEMAS)))
def test_random_token_walks_are_valid_json(fsms, which: int) -> None:
    fsm, schema = fsms[which], SCHEMAS[which]
    dist = distance_to_accept(fsm.dfa)
    rng = np.random.default_rng(which)
    finished = 0
    walks = examples(25, 10)  # 10 in the fast tier
    for _ in range(walks):
        out = _random_walk(fsm, rng, dist)
        if out is None:
            continue
        finished += 1
        value = json.loads(out)
        jsonschema.validate(value, schema)
        assert fsm.accepts_text(out)
    assert finished >= walks * 3 // 5


def _walk_all(fsm: TokenFSM, ids: list[int]) -> bool:
    cursor = ConstraintCursor(fsm, frozenset({SMOLLM2_EOS}))
    row = torch.zeros(fsm.vocab_size, dtype=torch.bool)
    for t in ids + [SMOLLM2_EOS]:
        cursor.fill_mask(row)
        if not row[t]:
            return False
        cursor.advance(t)
    return True


NUMBERS = st.integers(-(10**12), 10**12) | st.sampled_from([0.5, -2.25, 1e-07, 3.0e20])
BMP = st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",))  # bytes SmolLM2 can spell
LEAVES = st.none() | st.booleans() | NUMBERS | st.text(BMP, max_size=5)
DEEP = st.recursive(LEAVES, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(BMP, max_size=3), c, max_size=3),
                    max_leaves=10)


@settings(max_examples=examples(25), deadline=None, suppress_health_check=list(HealthCheck))
@given(v=DEEP, levels=st.lists(st.booleans(), max_size=SUPERSET_DEPTH))
def test_deep_json_walks_through_the_cursor(fsms, tokenizer, v: Any, levels: list[bool]) -> None:
    """Completeness: valid JSON nested up to the limit, tokenized by the real tokenizer, passes every
    filtered mask, EOS at the end; one level more is refused."""
    value = _deepen(v, levels[: max(SUPERSET_DEPTH - _depth(v), 0)])
    if _depth(value) > SUPERSET_DEPTH:
        return
    for fsm, wrap in zip(fsms, (lambda x: x, lambda x: {"m": x}, lambda x: {"a": x})):
        doc = wrap(value)
        if _depth(doc) > SUPERSET_DEPTH:
            continue
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert _walk_all(fsm, ids), text
    too_deep = json.dumps(_deepen(0, [True] * (SUPERSET_DEPTH + 1)), separators=(",", ":"))
    assert not fsms[0].accepts_text(too_deep)


def test_wrong_closer_and_key_are_masked(fsms, tokenizer) -> None:
    fsm = fsms[0]
    cursor = ConstraintCursor(fsm, frozenset({SMOLLM2_EOS}))
    for t in tokenizer.encode('{"a":[1', add_special_tokens=False).ids:
        cursor.advance(t)
    row = torch.zeros(fsm.vocab_size, dtype=torch.bool)
    cursor.fill_mask(row)
    vb = as_vocabulary(tokenizer)
    allowed = {vb.token_text(int(t)) for t in row.nonzero().flatten()}
    assert b"]" in allowed and b"}" not in allowed and b":" not in allowed and b"," in allowed
    assert not row[SMOLLM2_EOS]
    # a token that breaks structure outside the mask leaves the language
    brace = vb.token_bytes.index(b"}")
    cursor.advance(brace)
    assert cursor.state == -1
    cursor = ConstraintCursor(fsm, frozenset({SMOLLM2_EOS}))
    cursor.advance(vb.token_bytes.index(b"{"))
    cursor.fill_mask(row)
    allowed = {vb.token_text(int(t)) for t in row.nonzero().flatten()}
    assert b"1" not in allowed and b'"' in allowed and b"}" in allowed and b"]" not in allowed


def test_forced_text_that_breaks_structure_is_a_dead_end(fsms, tokenizer) -> None:
    fsm = fsms[0]
    cursor = ConstraintCursor(fsm, frozenset({SMOLLM2_EOS}))
    vb = as_vocabulary(tokenizer)
    for t in tokenizer.encode("[tr", add_special_tokens=False).ids:
        cursor.advance(t)
    assert fsm.jump_forward(cursor.state)[0] == "ue"
    cursor.structure.scanner.phase = P_AFTER  # pretend a string just ended: scalar bytes may not follow
    with pytest.raises(ConstraintDeadEnd, match="breaks JSON structure"):
        plan_jump_forward(cursor, cursor.output, None, None, 0)
    assert vb.token_bytes.index(b"[") >= 0


# ---------------------------------------------------------------------------------------------
# Artifacts


def test_artifact_round_trip_keeps_the_flag_and_refuses_tampering(fsms, tmp_path) -> None:
    fsm = fsms[1]
    arrays = fsm.to_arrays()
    assert int(arrays["format_version"][0]) == 4 and arrays["json_structure"].tolist() == [1]
    path = tmp_path / "fsm.npz"
    np.savez(path, **arrays)
    back = TokenFSM.from_arrays(np.load(path, allow_pickle=False))
    assert back.json_structure and back.structure_guard() is not None
    assert back.accepts_text('{"k":[{"a":[]}]}') and not back.accepts_text('{"k":[{"a":[}]}')
    bad = [
        dict(arrays, json_structure=np.array([0], dtype=np.uint8)),
        dict(arrays, json_structure=np.array([1, 1], dtype=np.uint8)),
        dict(arrays, json_structure=np.array([1], dtype=np.int32)),
        dict(arrays, format_version=np.array([3], dtype=np.int32)),
        dict(arrays, format_version=np.array([2], dtype=np.int32)),
        dict(arrays, format_version=np.array([5], dtype=np.int32)),
        {k: v for k, v in arrays.items() if k != "json_structure"},
    ]
    for tampered in bad:
        with pytest.raises(ConstraintError, match="json_structure|format_version|lack"):
            TokenFSM.from_arrays(tampered)


def test_unique_paths_and_structure_together(vocab) -> None:
    schema = {"type": "array", "items": {}, "uniqueItems": True}
    fsm = compile_json_schema(schema, vocab)
    assert fsm.json_structure and fsm.unique_paths
    back = TokenFSM.from_arrays(fsm.to_arrays())
    assert back.unique_paths == fsm.unique_paths and back.json_structure
    assert back.accepts_text('[{"a":[1]},{"a":[2]}]') and not back.accepts_text('[{"a":[1]},{"a":[1]}]')
    assert not back.accepts_text('[{"a":[1}]')


# ---------------------------------------------------------------------------------------------
# Generation with a tiny random-weight model


@pytest.mark.slow  # 8 x 400 sampled tokens (~3 s); the cursor walks above check the same filter token by token
def test_generation_with_unconstrained_values_validates(tiny_model_dirs) -> None:
    from executor.runtime.engine import Engine

    schema = {"type": "object", "properties": {"meta": {}, "rest": {"type": "array"}},
              "required": ["meta", "rest"], "additionalProperties": False}
    with Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu") as engine:
        params = [{"json_schema": json.dumps(schema), "max_new_tokens": 400, "temperature": 1.0, "seed": i}
                  for i in range(8)]
        outs = engine.generate(["Some JSON:"] * 8, params)
    finished = 0
    for out in outs:
        text = out["text"]
        if out["meta_info"]["finish_reason"]["type"] == "stop":
            jsonschema.validate(json.loads(text), schema)
            finished += 1
        else:
            sc = StructureScanner()
            assert sc.feed(text.encode()), text  # cut by the length limit: still a JSON prefix
    assert finished >= 1  # a random model writes long strings: most outputs hit the length limit


def test_sparse_row_filter_equals_full_filter(fsms, tokenizer) -> None:
    """The per-row fast path (the FSM state's short token list) clears what the full AND clears."""
    for fsm, text in zip(fsms, ('[{"a":[1,"x",{"b":null}]},true]', '{"m":{"k":[[],{}]},"n":"v"}', '{"a":{"b":[1]}}')):
        guard = fsm.structure_guard()
        s = fsm.initial_state
        for t in tokenizer.encode(text, add_special_tokens=False).ids + [None]:
            full = np.zeros(fsm.vocab_size, dtype=bool)
            fsm.fill_mask(s, full)
            fast = full.copy()
            guard.filter(full)
            guard.filter(fast, s)
            assert np.array_equal(full, fast), (text, t)
            if t is None:
                break
            s = fsm.next_state(s, t)
            assert guard.feed_token(t)


def test_torch_filter_equals_numpy_filter(fsms, tokenizer) -> None:
    """The device path (a cached keep-mask per device, here on CPU) clears what the numpy path clears."""
    fsm = fsms[0]
    guard = fsm.structure_guard()
    s = fsm.initial_state
    for t in tokenizer.encode('{"a":[1,{"b":"c"}],"d":{}}', add_special_tokens=False).ids:
        ref = np.zeros(fsm.vocab_size, dtype=bool)
        fsm.fill_mask(s, ref)
        row = torch.from_numpy(ref.copy())
        guard.filter(ref)
        guard.filter_torch(row)
        assert np.array_equal(ref, row.numpy())
        s = fsm.next_state(s, t)
        assert guard.feed_token(t)
