"""JSON Schema -> token FSM: generated outputs validate; unsupported keywords fail with pointers."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import datetime
from fractions import Fraction

import jsonschema
import numpy as np
import pytest
from constraint_schemas import (
    PERSON,
    SCHEMAS,
    SMOLLM2_EOS,
    TREE,
    FSMWalker,
    load_smollm2_tokenizer,
)
from constraint_schemas import UNSUPPORTED as SHARED_UNSUPPORTED
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.budgets import budget_overrides
from compiler.constraints import (
    ConstraintError,
    Vocabulary,
    Whitespace,
    compile_json_schema,
    compile_regex,
    json_schema_to_regex,
)
from compiler.constraints.number_ranges import MAX_FRAC_DIGITS, int_range, number_range
from compiler.constraints.regex_ast import to_regex
from tests.tiers import examples

FORMAT_CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER

# RFC 3986 URI, written independently of compiler/constraints/formats.py (from the RFC's ABNF).
_U = r"[A-Za-z0-9\-._~]|%[0-9A-Fa-f]{2}|[!$&'()*+,;=]"
_PCHAR = rf"(?:{_U}|[:@])"
RFC3986_URI = re.compile(
    rf"[A-Za-z][A-Za-z0-9+\-.]*:(?://(?:(?:{_U}|:)*@)?(?:\[[0-9A-Fa-f:.]+\]|(?:{_U})*)(?::[0-9]*)?(?:/{_PCHAR}*)*"
    rf"|/(?:{_PCHAR}+(?:/{_PCHAR}*)*)?|{_PCHAR}+(?:/{_PCHAR}*)*|)(?:\?(?:{_PCHAR}|[/?])*)?(?:#(?:{_PCHAR}|[/?])*)?"
)


def check_formats(instance: object, schema: object) -> None:
    """Formats jsonschema does not check without optional packages, checked here."""
    if isinstance(schema, dict):
        fmt = schema.get("format")
        if isinstance(instance, str) and fmt:
            if fmt == "date-time":
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", instance), (
                    instance
                )
                datetime.fromisoformat(instance)
            elif fmt == "time":
                datetime.fromisoformat("2000-01-01T" + instance)
            elif fmt == "uri":
                assert RFC3986_URI.fullmatch(instance), instance
            elif fmt == "uuid":
                uuid.UUID(instance)
            elif fmt == "email":
                local, _, domain = instance.rpartition("@")
                assert local and "." in domain and not domain.startswith("-"), instance
        props = schema.get("properties", {})
        if isinstance(instance, dict):
            for k, v in instance.items():
                if k in props:
                    check_formats(v, props[k])


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.from_tokenizer(load_smollm2_tokenizer(), eos_token_id=SMOLLM2_EOS)


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_generated_outputs_validate(name: str, vocab: Vocabulary) -> None:
    schema = SCHEMAS[name]
    # any_depth=2: the decode-checked automaton of unconstrained values then takes exactly the
    # texts of the printed (exact, depth-2) regex
    fsm = compile_json_schema(schema, vocab, any_depth=2)
    regex = re.compile(json_schema_to_regex(schema))
    walker = FSMWalker(fsm, vocab, seed=hash(name) % 1000)
    for _ in range(12):
        tokens, state = walker.walk(max_steps=40)
        assert fsm.is_accepting(state)
        text = vocab.decode_bytes(tokens).decode("utf-8")
        instance = json.loads(text)
        jsonschema.validate(instance, schema, format_checker=FORMAT_CHECKER)
        check_formats(instance, schema)
        assert regex.fullmatch(text), text


# (schema, JSON pointer of the construct that must be rejected), with the shared list
# constraint_schemas.UNSUPPORTED
UNSUPPORTED: list[tuple[object, str]] = [
    ({"type": "string", "format": "hostname"}, "/format"),
    ({"type": "object", "properties": {"p": {"type": "string", "format": "ipv6"}}}, "/properties/p/format"),
    ({"type": "string", "pattern": "(a)\\1"}, "/pattern"),
    ({"type": "string", "pattern": "(a(?=b))"}, "/pattern"),  # a lookahead inside a group
    ({"type": "number", "multipleOf": 0.01}, "/multipleOf"),
    ({"$ref": "https://example.com/schema.json"}, "/$ref"),
    ({"$ref": "#/$defs/missing"}, "/$ref"),
    ({"$ref": "#nowhere"}, "/$ref"),
    ({"type": "strin"}, "/type"),
    ({"items": [{"type": "integer"}], "allOf": [{"unevaluatedItems": False}]}, "/allOf/0/unevaluatedItems"),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "/oneOf"),
    ({"anyOf": [{"type": "string"}], "oneOf": [{"type": "string"}]}, "/oneOf"),
    (
        {
            "$defs": {"x": {"type": "array", "items": {"$ref": "#/$defs/x"}, "minItems": 1}},
            "$ref": "#/$defs/x",
        },
        "",
    ),
    # known validation keywords of some draft are never ignored
    (
        {"type": "object", "dependentSchemas": {"a": {"properties": {"b": {"type": "string"}}}}},
        "/dependentSchemas/a",
    ),
    ({"type": "integer", "divisibleBy": 3}, "/divisibleBy"),
    ({"properties": {"a": {"extends": {"type": "string"}}}}, "/properties/a/extends"),
    ({"disallow": "string"}, "/disallow"),
    ({"$dynamicRef": "#meta"}, "/$dynamicRef"),
    ({"type": "array", "unevaluatedItems": False}, "/unevaluatedItems"),
    # a $ref below a nested $id would be relative to that id
    ({"properties": {"a": {"$id": "http://e.com/a", "$ref": "#/x"}}, "x": {}}, "/properties/a"),
]


UNSUPPORTED += [case for case in SHARED_UNSUPPORTED if case not in UNSUPPORTED]


@pytest.mark.parametrize("schema, pointer", UNSUPPORTED, ids=[p or "root" for _, p in UNSUPPORTED])
def test_unsupported_keywords_raise_with_their_pointer(schema: dict, pointer: str, vocab: Vocabulary) -> None:
    with pytest.raises(ConstraintError) as info:
        compile_json_schema(schema, vocab)
    assert info.value.pointer == pointer, str(info.value)


def test_pattern_error_keeps_pointer_and_position() -> None:
    with pytest.raises(ConstraintError) as info:
        json_schema_to_regex(
            {"type": "object", "properties": {"p": {"type": "string", "pattern": "^a(b(?=c))"}}}
        )
    assert info.value.pointer == "/properties/p/pattern"
    assert info.value.position == 4


def test_person_schema_compile_time(vocab: Vocabulary) -> None:
    compile_json_schema({"type": "string"}, vocab)  # warm the vocabulary trie (built once per vocabulary)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fsm = compile_json_schema(PERSON, vocab)
        times.append(time.perf_counter() - t0)
    arrays = fsm.to_arrays()
    own = sum(v.nbytes for k, v in arrays.items() if not k.startswith("vocab_"))
    print(
        f"\nperson schema -> token FSM for {vocab.size} tokens: first {times[0] * 1000:.0f} ms, "
        f"then {min(times[1:]) * 1000:.0f} ms; {fsm}; tables {own / 1e6:.2f} MB "
        f"(+ {(arrays['vocab_bytes'].nbytes + arrays['vocab_offsets'].nbytes) / 1e6:.2f} MB vocabulary bytes)"
    )
    mask = np.zeros(vocab.size, dtype=bool)
    walker = FSMWalker(fsm, vocab, seed=3)
    states = []
    for _ in range(5):
        s = fsm.initial_state
        for t in walker.walk(max_steps=60)[0]:
            states.append(s)
            s = fsm.next_state(s, t)
    for s in states:
        fsm.fill_mask(s, mask, SMOLLM2_EOS)
    t0 = time.perf_counter()
    for s in states:
        fsm.fill_mask(s, mask, SMOLLM2_EOS)
    per_fill = (time.perf_counter() - t0) / len(states)
    print(f"fill_mask: {per_fill * 1e6:.1f} us per token (numpy, {len(states)} states of real walks)")


def test_required_and_optional_properties_in_documented_order() -> None:
    regex = re.compile(json_schema_to_regex(SCHEMAS["optional_first"]))
    for text in ["{}", '{"a":1}', '{"b":true}', '{"c":"x"}', '{"a":1,"c":"x"}', '{"a":1,"b":false,"c":""}']:
        assert regex.fullmatch(text), text
    for text in ["{,}", '{"b":true,"a":1}', '{"a":1,}', '{"d":1}', '{"a":1,"a":2}']:
        assert not regex.fullmatch(text), text


def test_whitespace_policy() -> None:
    compact = re.compile(json_schema_to_regex(PERSON))
    doc = {"name": "A", "age": 3, "email": "a@b.co", "address": {"street": "s", "city": "c", "zip": "12345"}}
    assert compact.fullmatch(json.dumps(doc, separators=(",", ":")))
    assert not compact.fullmatch(json.dumps(doc))
    flexible = re.compile(json_schema_to_regex(PERSON, whitespace="flexible"))
    assert flexible.fullmatch(json.dumps(doc))
    assert flexible.fullmatch(json.dumps(doc, indent=2))
    assert not flexible.fullmatch(json.dumps(doc, indent=8).replace("\n", "\n  "))  # deeper than 8 spaces
    assert not flexible.fullmatch(json.dumps(doc).replace(", ", ",\n\n"))  # two newlines
    two = re.compile(json_schema_to_regex({"type": "array"}, whitespace=Whitespace(max_spaces=2)))
    assert two.fullmatch("[1,  2]") and not two.fullmatch("[1,   2]") and not two.fullmatch("[1,\n2]")


def test_flexible_whitespace_outputs_validate(vocab: Vocabulary) -> None:
    fsm = compile_json_schema(PERSON, vocab, whitespace="flexible")
    walker = FSMWalker(fsm, vocab, seed=5)
    saw_space = False
    for _ in range(10):
        tokens, state = walker.walk(max_steps=60)
        text = vocab.decode_bytes(tokens).decode("utf-8")
        jsonschema.validate(json.loads(text), PERSON, format_checker=FORMAT_CHECKER)
        saw_space |= bool(re.search(r"[:,{\[]\s", text))
    assert saw_space


def test_recursion_is_unrolled_to_the_configured_depth() -> None:
    shallow = re.compile(json_schema_to_regex(TREE, max_recursion=1))
    assert shallow.fullmatch('{"value":1,"children":[]}')
    assert not shallow.fullmatch('{"value":1,"children":[{"value":2}]}')
    deep = re.compile(json_schema_to_regex(TREE, max_recursion=3))
    assert deep.fullmatch('{"value":1,"children":[{"value":2,"children":[{"value":3}]}]}')
    assert not deep.fullmatch(
        '{"value":1,"children":[{"value":2,"children":[{"value":3,"children":[{"value":4}]}]}]}'
    )


def test_string_escapes_follow_the_json_spec() -> None:
    regex = re.compile(json_schema_to_regex({"type": "string", "maxLength": 3}))
    for ok in ['""', r'"\""', r'"\\\n\t"', r'"\u00e9"', '"日本語"', r'"a\/b"']:
        assert regex.fullmatch(ok), ok
    for bad in ['"\n"', r'"\x"', r'"\ud800"', '"abcd"', r'"\u12"', '"a"b"']:
        assert not regex.fullmatch(bad), bad
    pattern = re.compile(json_schema_to_regex({"type": "string", "pattern": '^[a"\\\\]+$'}))
    assert pattern.fullmatch(r'"a\"\\"') and pattern.fullmatch('"a"') and not pattern.fullmatch('"a""')


def test_pattern_search_semantics() -> None:
    regex = re.compile(json_schema_to_regex({"type": "string", "pattern": "ab"}))
    assert regex.fullmatch('"xxabyy"') and regex.fullmatch('"ab"') and not regex.fullmatch('"a b"')
    anchored = re.compile(json_schema_to_regex({"type": "string", "pattern": "^ab|cd$"}))
    assert anchored.fullmatch('"abz"') and anchored.fullmatch('"zcd"') and not anchored.fullmatch('"zabz"')


def test_one_of_overlap_is_rejected_and_exclusive_one_of_accepted() -> None:
    with pytest.raises(ConstraintError, match="oneOf branches 0 and 1"):
        json_schema_to_regex({"oneOf": [{"type": "array"}, {"type": "array", "maxItems": 3}]})
    # overlapping string branches are decided on automata (a difference): no Python regex form
    with pytest.raises(ConstraintError, match="no Python regex form"):
        json_schema_to_regex({"oneOf": [{"type": "string"}, {"type": "string", "maxLength": 3}]})
    assert json_schema_to_regex({"oneOf": [{"type": "string"}, {"type": "integer"}]})
    assert json_schema_to_regex({"oneOf": [{"const": 1}, {"const": 2}, {"enum": ["x"]}]})


def test_budgets_end_in_clear_errors(vocab: Vocabulary) -> None:
    # 1000 strings of up to 100 characters: 1.6M states (about 1 s to compile since the rows come
    # from Moore's classes); a short time budget ends it cleanly
    with budget_overrides(constraint_seconds=0.2), pytest.raises(ConstraintError, match="budget"):
        compile_json_schema(
            {"type": "array", "items": {"type": "string", "maxLength": 100}, "maxItems": 1000}, vocab
        )
    deep: dict = {"type": "integer"}
    for _ in range(100):
        deep = {"type": "array", "items": deep}
    with pytest.raises(ConstraintError, match="nesting"):
        json_schema_to_regex(deep)
    with pytest.raises(ConstraintError, match="budget") as info:
        compile_json_schema(
            {"type": "object", "properties": {"s": {"type": "string", "maxLength": 300}}},
            vocab,
            max_states=1000,
        )
    assert info.value.pointer == "/properties/s"
    t0 = time.perf_counter()
    with pytest.raises(ConstraintError, match="budget"):
        json_schema_to_regex({"type": "string", "maxLength": 10**6})
    with pytest.raises(ConstraintError, match="budget"):
        json_schema_to_regex({"type": "string", "pattern": "^a{3000000}b{3000000}$"})
    assert time.perf_counter() - t0 < 2.0
    with pytest.raises(ConstraintError, match="no string"):
        compile_regex("[^\\x00-\\U0010ffff]", vocab)


def test_all_of_conflicts() -> None:
    with pytest.raises(ConstraintError) as info:
        json_schema_to_regex({"allOf": [{"type": "string", "format": "date"}, {"format": "uuid"}]})
    assert info.value.pointer == "/allOf/1/format"
    closed = {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False},
            {"properties": {"b": {"type": "integer"}}, "required": ["b"]},
        ]
    }
    with pytest.raises(ConstraintError, match="forbids"):
        json_schema_to_regex(closed)
    with pytest.raises(ConstraintError, match="no instance"):
        json_schema_to_regex({"allOf": [{"const": 1}, {"const": 2}]})


@settings(max_examples=examples(60), deadline=None)
@given(
    lo=st.one_of(st.none(), st.integers(-400, 400)),
    hi=st.one_of(st.none(), st.integers(-400, 400)),
    values=st.lists(st.integers(-2000, 2000), min_size=20, max_size=40),
)
def test_integer_ranges(lo: int | None, hi: int | None, values: list[int]) -> None:
    regex = re.compile(to_regex(int_range(lo, hi)))
    for v in values + [x for x in (lo, hi) if x is not None]:
        for probe in (v, v - 1, v + 1):
            inside = (lo is None or probe >= lo) and (hi is None or probe <= hi)
            assert bool(regex.fullmatch(str(probe))) == inside, (lo, hi, probe)


@settings(max_examples=examples(30), deadline=None)
@given(
    lower=st.one_of(st.none(), st.tuples(st.integers(-30, 30), st.booleans())),
    upper=st.one_of(st.none(), st.tuples(st.integers(-30, 30), st.booleans())),
    values=st.lists(st.fractions(min_value=-40, max_value=40, max_denominator=8), min_size=10, max_size=25),
)
def test_number_ranges(
    lower: tuple[int, bool] | None, upper: tuple[int, bool] | None, values: list[Fraction]
) -> None:
    regex = re.compile(to_regex(number_range(lower, upper)))
    probes = values + [Fraction(b[0]) for b in (lower, upper) if b is not None]
    for v in probes:
        text = str(v.numerator // v.denominator) if v.denominator == 1 else repr(float(v))
        if "e" in text:
            continue
        inside = (lower is None or (v > lower[0] if lower[1] else v >= lower[0])) and (
            upper is None or (v < upper[0] if upper[1] else v <= upper[0])
        )
        matched = bool(regex.fullmatch(text))
        too_precise = "." in text and len(text.split(".")[1]) > MAX_FRAC_DIGITS  # the digit-bound policy
        if matched:
            assert inside, (lower, upper, text)
        elif inside:
            assert (text.startswith("-0") and v == 0) or too_precise, (lower, upper, text)


def test_docs_keyword_table_is_current() -> None:
    from pathlib import Path

    from compiler.constraints.json_schema import support_table_markdown

    doc = (Path(__file__).resolve().parent.parent / "docs" / "constraints.md").read_text()
    start = doc.index("<!-- keyword-table:start -->") + len("<!-- keyword-table:start -->")
    end = doc.index("<!-- keyword-table:end -->")
    assert doc[start:end].strip() == support_table_markdown(), "regenerate the table in docs/constraints.md"


def test_nested_id_is_an_annotation_unless_a_ref_depends_on_it() -> None:
    regex = json_schema_to_regex({"type": "object", "properties": {"a": {"$id": "x", "type": "string"}}})
    assert re.fullmatch(regex, '{"a":"q"}')
    with pytest.raises(ConstraintError) as info:
        json_schema_to_regex({"properties": {"a": {"id": "http://e/a", "items": {"$ref": "#/x"}}}, "x": {}})
    assert info.value.pointer == "/properties/a"
