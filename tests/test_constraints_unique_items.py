"""uniqueItems over items with unboundedly many values: the decode-time check (`unique_items`).

The scanner (escapes, nesting, whitespace, JSON Schema equality), the paths the compiler collects,
the FSM + check as a whole (soundness and completeness on generated schemas, on the byte DFA and
token by token through `ConstraintCursor`), artifacts, dead ends, and generation with a tiny
random-weight model.
"""

from __future__ import annotations

import io
import json
import random
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_constraints_json_schema_keywords import distance_to_accept, sample, spell

from compiler.budgets import budget_overrides
from compiler.constraints import ConstraintError, TokenFSM, Vocabulary, compile_json_schema
from compiler.constraints.json_schema import json_schema_to_node
from compiler.constraints.unique_items import (
    DUPLICATE,
    FRESH,
    NOTHING,
    UniqueScanner,
    canonical,
    check_text,
    unique_at_paths,
)
from executor.runtime.constrained import ConstraintCursor, ConstraintDeadEnd, plan_jump_forward
from tests.tiers import examples

ROOT: tuple = ((),)
EOS = 0


def toy_vocab() -> Vocabulary:
    """Every byte, plus multi-byte tokens that finish one or two items at once (`","`, `"},{"`)."""
    extra = [b'","', b'"]', b'"}', b'"},{"', b'"}]', b"},{", b"],[", b'"a"', b'"a","a"', b"1,", b"1,1",
             b"1]", b"11", b"true", b"ue", b"null", b'{"k":', b'"v":', b'":"', b"ab", b'\\"', b'\\u00']
    return Vocabulary([None] + [bytes([b]) for b in range(256)] + extra, special_ids=[EOS], eos_token_id=EOS)


VOCAB = toy_vocab()


def tokenize(data: bytes) -> list[int]:
    """Greedy longest match over the toy vocabulary."""
    index = {b: i for i, b in enumerate(VOCAB.token_bytes) if b}
    out, i = [], 0
    while i < len(data):
        for n in range(min(8, len(data) - i), 0, -1):
            if data[i : i + n] in index:
                out.append(index[data[i : i + n]])
                i += n
                break
    return out


# ---------------------------------------------------------------------------------------------
# The scanner


@pytest.mark.parametrize(
    "text, unique",
    [
        ('["a","b"]', True),
        ('["a","a"]', False),
        ('["a","\\u0061"]', False),  # escapes decoded
        ('["\\"","\\\\\\""]', True),  # a quote vs a backslash and a quote
        ('["\\n","\\u000a"]', False),
        ('["é","\\u00e9"]', False),
        ('["😀","\\ud83d\\ude00"]', False),  # a surrogate pair is one character
        ('[ "a" ,\n  "a" ]', False),  # whitespace
        ("[1,1.0]", False),  # numbers by value
        ("[1,1e0]", False),
        ("[10,1e1,100e-1]", False),
        ("[0,-0]", False),
        ("[0.1,0.10]", False),
        ("[1,true]", True),  # booleans are not numbers
        ("[0,false,null]", True),
        ("[true,true]", False),
        ("[null,null]", False),
        ('[{"a":1,"b":2},{"b":2,"a":1}]', False),  # key order is irrelevant
        ('[{"a":1},{"a":1.0}]', False),
        ('[{"a":[1]},{"a":[true]}]', True),
        ('[{"a":"x}"},{"a":"x]"}]', True),  # brackets inside strings
        ("[[1,2],[2,1]]", True),
        ("[[1,2],[1,2.0]]", False),
        ("[[],{},[[]],[{}]]", True),
        ("[[],[]]", False),
        ('["1",1]', True),
    ],
)
def test_scanner_equality(text: str, unique: bool) -> None:
    assert check_text(text, ROOT) is unique
    assert unique_at_paths(json.loads(text), ROOT) is unique
    scanner = UniqueScanner(ROOT)  # byte by byte: the same answer
    assert (not any(scanner.feed(bytes([b])) for b in text.encode())) is unique


def test_scanner_paths_and_wildcards() -> None:
    tags = (("Tags",),)
    assert not check_text('{"Tags":[1,1]}', tags)
    assert check_text('{"Other":[1,1],"Tags":[1,2]}', tags)
    assert not check_text('{"T\\u0061gs":["x","x"]}', tags)  # the key is decoded
    assert check_text('{"Tags":{"x":[1,1]}}', tags)  # an object where the array was expected: no array
    nested = (("a", None, "b"),)
    assert not check_text('{"a":[{"b":[1]},{"b":[2,2]}]}', nested)
    assert check_text('{"a":[{"b":[1]},{"b":[1]}]}', nested)  # the outer array may repeat
    assert not check_text('{"a":{"k":{"b":[3,3]}}}', nested)  # None also matches a map key
    inner = ((None,),)
    assert check_text("[[1,2],[1,2]]", inner)
    assert not check_text("[[1,1]]", inner)
    both = ((), (None,))
    assert not check_text("[[1,2],[1,2]]", both)


def test_probe_changes_nothing() -> None:
    scanner = UniqueScanner(ROOT)
    assert not scanner.feed(b'["ab","c')
    assert scanner.probe(b'"') == NOTHING
    assert scanner.probe(b'",') == NOTHING
    assert not scanner.feed(b'",')
    assert scanner.probe(b'"ab"') == DUPLICATE
    assert scanner.probe(b'"a","a"') == DUPLICATE  # two items in one piece of text
    watch = scanner.uniques[-1]
    assert scanner.probe(b'"z"', watch) == FRESH
    assert scanner.probe(b'"a') == NOTHING
    assert not scanner.feed(b'"d"]')
    assert scanner.feed(b"") is False and scanner.violation is None


def test_canonical_matches_jsonschema() -> None:
    values = [1, 1.0, True, False, 0, None, "1", [1], [True], {"a": 1}, {"a": True}, [], {}, -0.0, 2.5]
    for a in values:
        for b in values:
            same = canonical(a) == canonical(b)
            valid = jsonschema.Draft202012Validator({"uniqueItems": True}).is_valid([a, b])
            assert same is not valid, (a, b)


@st.composite
def _json_values(draw: Any, depth: int = 0) -> Any:
    leaves = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([1.0, 0.5, -0.0, 2.50]),
                       st.sampled_from(["", "a", "b", "é", '"', "\\", "\n"]))
    if depth >= 2:
        return draw(leaves)
    return draw(st.one_of(leaves, st.lists(_json_values(depth + 1), max_size=3),
                          st.dictionaries(st.sampled_from(["a", "b", "c"]), _json_values(depth + 1), max_size=3)))


@settings(max_examples=examples(150), deadline=None)
@given(value=st.lists(_json_values(), max_size=5), indent=st.sampled_from([None, 1]), ascii_=st.booleans(),
       paths=st.sampled_from([ROOT, ((None,),), ((), (None,)), ((None, "a"),), ((None, None),)]))
def test_scanner_agrees_with_the_parsed_reference(value: Any, indent: Any, ascii_: bool, paths: tuple) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_)
    assert check_text(text, paths) == unique_at_paths(value, paths)


# ---------------------------------------------------------------------------------------------
# Compile time: where uniqueness is checked


def test_paths_collected() -> None:
    tags = {
        "type": "object",
        "properties": {
            "Tags": {"type": "array", "uniqueItems": True, "items": {"$ref": "#/definitions/Tag"}},
            "Names": {"type": "array", "items": {"type": "string"}},
            "Flags": {"type": "array", "uniqueItems": True, "items": {"type": "boolean"}},  # exact: no path
            "Map": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"},
                                                               "uniqueItems": True}},
        },
        "definitions": {"Tag": {"type": "object", "properties": {"Key": {"type": "string"}},
                                "required": ["Key"], "additionalProperties": False}},
    }
    fsm = compile_json_schema(tags, VOCAB)
    assert set(fsm.unique_paths) == {("Tags",), ("Map", None)}
    assert fsm.accepts_text('{"Tags":[{"Key":"a"},{"Key":"b"}],"Names":["x","x"],"Map":{"m":["x","y"]}}')
    assert not fsm.accepts_text('{"Tags":[{"Key":"a"},{"Key":"a"}]}')
    assert not fsm.accepts_text('{"Map":{"m":["x","y","x"]}}')
    # the byte DFA alone still refuses, outside compile_json_schema
    with pytest.raises(ConstraintError) as info:
        json_schema_to_node(tags)
    assert info.value.pointer == "/properties/Tags/uniqueItems"


def test_recursive_and_branching_paths() -> None:
    tree = {"$defs": {"t": {"type": "object", "properties": {
        "name": {"type": "string"},
        "kids": {"type": "array", "uniqueItems": True, "items": {"$ref": "#/$defs/t"}}}}}, "$ref": "#/$defs/t"}
    fsm = compile_json_schema(tree, VOCAB, max_recursion=3)
    assert set(fsm.unique_paths) == {("kids",), ("kids", None, "kids"), ("kids", None, "kids", None, "kids")}
    anyof = {"anyOf": [{"type": "array", "items": {"type": "string"}, "uniqueItems": True},
                       {"type": "array", "items": {"type": "integer"}}]}
    fsm = compile_json_schema(anyof, VOCAB)
    assert fsm.unique_paths == ((),)
    assert not fsm.accepts_text("[1,1]")  # over-approximated: the other branch's array too (documented)
    assert fsm.accepts_text("[1,2]") and fsm.accepts_text('["a"]')


def test_tuple_items_and_contains_next_to_unique_items() -> None:
    tup = {"type": "array", "prefixItems": [{"type": "string"}, {"type": "string"}], "uniqueItems": True}
    fsm = compile_json_schema(tup, VOCAB)
    assert fsm.accepts_text('["a","b"]') and not fsm.accepts_text('["a","a"]')
    con = {"type": "array", "items": {"type": "string"}, "contains": {"const": "x"}, "uniqueItems": True}
    fsm = compile_json_schema(con, VOCAB)
    assert fsm.accepts_text('["a","x"]') and not fsm.accepts_text('["x","x"]') and not fsm.accepts_text('["a"]')


def test_small_finite_items_stay_exact_and_larger_ones_cap_max_items() -> None:
    small = compile_json_schema({"type": "array", "uniqueItems": True,
                                 "items": {"type": "integer", "minimum": 0, "maximum": 4}}, VOCAB)
    assert small.unique_paths == ()  # in the automaton
    assert small.accepts_text("[4,0,2]") and not small.accepts_text("[4,4]")
    ten = compile_json_schema({"type": "array", "uniqueItems": True,
                               "items": {"type": "integer", "minimum": 0, "maximum": 9}}, VOCAB)
    assert ten.unique_paths == ((),)
    assert ten.accepts_text(json.dumps(list(range(10)), separators=(",", ":")))
    assert not ten.is_accepting(ten.walk_bytes(ten.initial_state, b"[0,1,2,3,4,5,6,7,8,9,9]"))  # 11 items
    with pytest.raises(ConstraintError, match="no instance"):
        compile_json_schema({"type": "array", "uniqueItems": True, "minItems": 11,
                             "items": {"type": "integer", "minimum": 0, "maximum": 9}}, VOCAB)


def test_fail_closed_where_no_path_can_be_tracked_and_over_budget() -> None:
    with pytest.raises(ConstraintError) as info:
        compile_json_schema({"not": {"type": "array", "uniqueItems": True}}, VOCAB)
    assert info.value.pointer == "/not/uniqueItems"
    many = {"type": "object", "properties": {
        n: {"type": "array", "items": {"type": "string"}, "uniqueItems": True} for n in "abc"}}
    with budget_overrides(constraint_unique_paths=2):
        with pytest.raises(ConstraintError, match="constraint_unique_paths") as info:
            compile_json_schema(many, VOCAB)
    assert info.value.pointer is not None and info.value.pointer.endswith("/uniqueItems")
    assert len(compile_json_schema(many, VOCAB).unique_paths) == 3


# ---------------------------------------------------------------------------------------------
# Artifacts: the paths are plain data


def _roundtrip(arrays: dict) -> TokenFSM:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as loaded:
        return TokenFSM.from_arrays(loaded)


def test_artifact_round_trip_and_tampering() -> None:
    schema = {"type": "object", "properties": {"t": {"type": "array", "items": {"type": "string"},
                                                     "uniqueItems": True}}}
    fsm = compile_json_schema(schema, VOCAB)
    arrays = fsm.to_arrays()
    assert int(arrays["format_version"][0]) == 3
    back = _roundtrip(arrays)
    assert back.unique_paths == (("t",),)
    assert not back.accepts_text('{"t":["x","x"]}') and back.accepts_text('{"t":["x","y"]}')
    plain = compile_json_schema({"type": "array", "items": {"type": "string"}}, VOCAB).to_arrays()
    assert int(plain["format_version"][0]) == 2 and "unique_paths" not in plain  # older readers load it

    def text(s: str) -> np.ndarray:
        return np.frombuffer(s.encode(), dtype=np.uint8).copy()

    bad = {
        "not JSON": text("[[\"t\""),
        "a list of paths": text('{"t": 1}'),
        "property name": text('[["t", 3]]'),
        "budget": text(json.dumps([["x"]] * 300)),
        "dtype": np.array([1, 2], dtype=np.int32),
    }
    for why, value in bad.items():
        tampered = dict(arrays, unique_paths=value)
        with pytest.raises(ConstraintError, match="unique_paths") as info:
            _roundtrip(tampered)
        assert "corrupt token FSM arrays" in str(info.value), why
    missing = {k: v for k, v in arrays.items() if k != "unique_paths"}
    with pytest.raises(ConstraintError, match="unique_paths"):
        _roundtrip(missing)
    downgraded = dict(arrays, format_version=np.array([2], dtype=np.int32))
    with pytest.raises(ConstraintError, match="unique_paths"):
        _roundtrip(downgraded)


# ---------------------------------------------------------------------------------------------
# Generated schemas: soundness and completeness of the FSM with the check


def _leaf() -> st.SearchStrategy[dict]:
    return st.one_of(
        st.builds(lambda n: {"type": "string", "maxLength": n}, st.integers(1, 3)),
        st.builds(lambda n: {"type": "string", "maxLength": n, "pattern": "^[ab]*$"}, st.integers(1, 3)),
        st.builds(lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
                  st.integers(-5, 5), st.sampled_from([3, 8, 40])),
        st.just({"type": "integer"}),
        st.just({"type": "boolean"}),
    )


@st.composite
def _item(draw: Any, depth: int = 0) -> dict:
    kind = draw(st.sampled_from(["leaf", "object", "array", "anyOf"] if depth == 0 else ["leaf"]))
    if kind == "leaf":
        return draw(_leaf())
    if kind == "object":
        names = draw(st.lists(st.sampled_from(["k", "v", "w"]), min_size=1, max_size=2, unique=True))
        return {"type": "object", "properties": {n: draw(_leaf()) for n in names},
                "required": draw(st.lists(st.sampled_from(names), max_size=2, unique=True)),
                "additionalProperties": False}
    if kind == "array":
        return {"type": "array", "items": draw(_item(depth + 1)), "maxItems": 3,
                "uniqueItems": draw(st.booleans())}
    return {"anyOf": [draw(_leaf()), draw(_leaf())]}


@st.composite
def _unique_schemas(draw: Any) -> dict:
    item = draw(_item())
    arr: dict[str, Any] = {"type": "array", "items": item, "uniqueItems": True}
    if draw(st.booleans()):
        arr["minItems"] = draw(st.integers(0, 2))
    if draw(st.booleans()):
        arr["maxItems"] = draw(st.integers(2, 5))
    if draw(st.booleans()):
        return arr
    # a unique array next to a plain one with the same items: only the first must be unique
    return {"type": "object", "properties": {"u": arr, "p": {"type": "array", "items": item, "maxItems": 4}},
            "additionalProperties": False}


def _value(schema: dict, rng: random.Random, depth: int = 0) -> Any:
    """A value that is often valid for `_item` schemas, drawn from few values (so repeats happen)."""
    if "anyOf" in schema:
        return _value(rng.choice(schema["anyOf"]), rng, depth)
    t = schema.get("type")
    if t == "object":
        props = schema["properties"]
        return {k: _value(s, rng, depth + 1) for k, s in props.items() if k in schema["required"] or rng.random() < 0.5}
    if t == "array":
        return [_value(schema["items"], rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if t == "string":
        return "".join(rng.choice('ab"\\é') for _ in range(rng.randint(0, schema["maxLength"])))
    if t == "integer":
        lo, hi = schema.get("minimum", -3), schema.get("maximum", 3)
        return rng.randint(lo, min(hi, lo + 3))
    return rng.random() < 0.5


def _candidates(schema: dict, rng: random.Random, n: int = 40) -> list[Any]:
    arr = schema if schema.get("type") == "array" else schema["properties"]["u"]
    out = []
    for _ in range(n):
        items = [_value(arr["items"], rng) for _ in range(rng.randint(0, 4))]
        if items and rng.random() < 0.3:
            items.append(rng.choice(items))  # a repeat
        if schema.get("type") == "array":
            out.append(items)
        else:
            out.append({"u": items, "p": [_value(arr["items"], rng) for _ in range(rng.randint(0, 2))] * 2})
    return out


def _compile(schema: dict) -> TokenFSM | None:
    try:
        return compile_json_schema(schema, VOCAB)
    except ConstraintError as e:
        assert "no instance" in str(e), (schema, e)
        return None


@settings(max_examples=examples(50), deadline=None, suppress_health_check=list(HealthCheck))
@given(schema=_unique_schemas(), seed=st.integers(0, 10_000))
def test_generated_unique_schemas_are_sound_and_complete(schema: dict, seed: int) -> None:
    fsm = _compile(schema)
    validator = jsonschema.Draft202012Validator(schema)
    rng = random.Random(seed)
    if fsm is not None:
        dist = distance_to_accept(fsm.dfa)
        for _ in range(25):  # soundness: texts of the DFA that pass the check validate, and only they
            text = sample(fsm.dfa, rng, dist)
            assert validator.is_valid(json.loads(text)) == check_text(text, fsm.unique_paths), (schema, text)
    for instance in _candidates(schema, rng):  # completeness (and the check rejects the repeats)
        valid = validator.is_valid(instance)
        accepted = fsm is not None and fsm.accepts_text(spell(instance, schema))
        assert accepted == valid, (schema, instance, valid)


def _walk(fsm: TokenFSM, tokens: list[int]) -> bool:
    """Feed tokens through a cursor, each one checked against the filtered mask."""
    cursor = ConstraintCursor(fsm, frozenset({EOS}))
    row = torch.zeros(VOCAB.size, dtype=torch.bool)
    for t in tokens + [EOS]:
        cursor.fill_mask(row)
        if not row[t]:
            return False
        cursor.advance(t)
    return True


def _random_walk(fsm: TokenFSM, rng: random.Random, dist: np.ndarray, steps: int = 120) -> bytes | None:
    cursor = ConstraintCursor(fsm, frozenset({EOS}))
    row = torch.zeros(VOCAB.size, dtype=torch.bool)
    for step in range(steps):
        cursor.fill_mask(row)
        ids = row.nonzero().flatten().tolist()
        if step > 30:  # head for the end
            def cost(t: int) -> int:
                return -1 if t == EOS else int(dist[fsm.next_state(cursor.state, t)])
            best = min(cost(t) for t in ids)
            ids = [t for t in ids if cost(t) == best]
        t = rng.choice(ids)
        if t == EOS:
            return VOCAB.decode_bytes(cursor.output)
        cursor.advance(t)
        assert cursor.state >= 0
    return None


@settings(max_examples=examples(30), deadline=None, suppress_health_check=list(HealthCheck))
@given(schema=_unique_schemas(), seed=st.integers(0, 10_000))
def test_token_walks_through_the_cursor(schema: dict, seed: int) -> None:
    """Token level, with multi-byte tokens that finish one or two items: every valid instance's
    tokens pass the filtered masks, and random walks end in valid outputs."""
    fsm = _compile(schema)
    if fsm is None:
        return
    validator = jsonschema.Draft202012Validator(schema)
    rng = random.Random(seed)
    for instance in _candidates(schema, rng, n=15):
        text = spell(instance, schema)
        if validator.is_valid(instance) and fsm.accepts_text(text):
            assert _walk(fsm, tokenize(text)), (schema, text)
    dist = distance_to_accept(fsm.dfa)
    for _ in range(6):
        try:
            out = _random_walk(fsm, rng, dist)
        except ConstraintDeadEnd:
            continue  # bounded items can run out of fresh values (documented); never an invalid output
        if out is not None:
            assert validator.is_valid(json.loads(out)), (schema, out)


# ---------------------------------------------------------------------------------------------
# Dead ends and jump-forward


def test_dead_end_and_forced_repeat_are_clear_errors() -> None:
    schema = {"type": "array", "items": {"type": "string", "maxLength": 1}, "uniqueItems": True}
    fsm = compile_json_schema(schema, VOCAB)
    cursor = ConstraintCursor(fsm, frozenset({EOS}))
    for t in tokenize(b'["a","\\u0061'):  # the same character, spelled as an escape: `"` is all that is left
        cursor.advance(t)
    assert cursor.state >= 0
    with pytest.raises(ConstraintDeadEnd, match=r"repeat an earlier item of the array at /"):
        cursor.fill_mask(torch.zeros(VOCAB.size, dtype=torch.bool))
    with pytest.raises(ConstraintDeadEnd, match="forces"):
        plan_jump_forward(cursor, cursor.output, None, None, 0)
    # a token outside the filtered mask that repeats an item leaves the language
    cursor = ConstraintCursor(fsm, frozenset({EOS}))
    for t in tokenize(b'["a",'):
        cursor.advance(t)
    cursor.advance(tokenize(b'"a"')[0])
    assert cursor.state == -1


def test_look_ahead_avoids_forced_repeats() -> None:
    """`"a` cannot be finished but by `"`; once "a" is written, a token spelling `a` there is cleared."""
    schema = {"type": "array", "items": {"type": "string", "maxLength": 1}, "uniqueItems": True}
    fsm = compile_json_schema(schema, VOCAB)
    cursor = ConstraintCursor(fsm, frozenset({EOS}))
    for t in tokenize(b'["a","'):
        cursor.advance(t)
    row = torch.zeros(VOCAB.size, dtype=torch.bool)
    cursor.fill_mask(row)
    assert not row[VOCAB.token_bytes.index(b"a")] and row[VOCAB.token_bytes.index(b"b")]
    assert not row[VOCAB.token_bytes.index(b'"a"')]


# ---------------------------------------------------------------------------------------------
# Generation with a tiny random-weight model


def test_generation_keeps_items_unique(tiny_model_dirs) -> None:
    from executor.runtime.engine import Engine

    schema = {"type": "object", "properties": {
        "tags": {"type": "array", "uniqueItems": True, "minItems": 4, "maxItems": 6,
                 "items": {"type": "string", "pattern": "^[a-c]{1,2}$"}},
        "ids": {"type": "array", "uniqueItems": True, "minItems": 3, "maxItems": 5,
                "items": {"type": "integer", "minimum": 0, "maximum": 9}}},
        "required": ["tags", "ids"], "additionalProperties": False}
    with Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu") as engine:
        params = [{"json_schema": json.dumps(schema), "max_new_tokens": 96, "temperature": 1.0, "seed": i}
                  for i in range(6)]
        outs = engine.generate(["List some tags:"] * 6, params)
    finished = 0
    for out in outs:
        text = out["text"]
        if out["meta_info"]["finish_reason"]["type"] == "stop":
            jsonschema.validate(json.loads(text), schema)
            finished += 1
        else:
            assert check_text(text, (("tags",), ("ids",))), text  # cut by the length limit, still no repeat
    assert finished >= 3


def test_counting_a_language_is_linear_in_a_shared_tree() -> None:
    # Compiled trees share subtrees (a DAG): 40 levels of a node used twice would be 2**40 visits
    # counted as a tree; memoized by node it is 40 (schemastore-changie's items hung here).
    from compiler.constraints.regex_ast import alt, concat, literal
    from compiler.constraints.unique_items import _count

    node = literal("a")
    for _ in range(40):
        node = alt(concat(node, literal("b")), concat(literal("c"), node))
    assert _count(node, 64) == 65
