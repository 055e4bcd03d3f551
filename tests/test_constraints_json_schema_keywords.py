"""JSON Schema keywords as the specification defines them, checked on the schema's byte DFA.

For each keyword: valid instances (spelled the way sgc writes them: compact, properties in the
schema's order) are accepted, invalid ones rejected, and random strings the DFA accepts validate
with `jsonschema` (soundness). Hypothesis then generates schemas that combine the keywords and
checks soundness and completeness (every valid instance among random candidates, within the documented
policies, is accepted; hypothesis-jsonschema 0.23 does not run with this hypothesis version).
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

import jsonschema
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.constraints import ConstraintError
from compiler.constraints.automaton import DFA
from compiler.constraints.dfa_ops import byte_dfa
from compiler.constraints.json_schema import SchemaOptions, json_schema_to_node
from tests.tiers import examples


def dfa_of(schema: Any, **options: Any) -> DFA:
    return byte_dfa(json_schema_to_node(schema, SchemaOptions(**options)))


def spell(instance: Any, schema: Any = None) -> bytes:
    """Compact JSON, objects' keys in the order of the schema's `properties` (then the rest)."""
    return json.dumps(_ordered(instance, schema), separators=(",", ":"), ensure_ascii=False).encode()


def _ordered(instance: Any, schema: Any) -> Any:
    if isinstance(instance, dict):
        props = schema.get("properties", {}) if isinstance(schema, dict) else {}
        keys = [k for k in props if k in instance] + [k for k in instance if k not in props]
        return {k: _ordered(instance[k], props.get(k)) for k in keys}
    if isinstance(instance, list):
        items = schema.get("items") if isinstance(schema, dict) else None
        return [_ordered(x, items if isinstance(items, dict) else None) for x in instance]
    return instance


def distance_to_accept(dfa: DFA) -> np.ndarray:
    n = dfa.num_states
    dist = np.where(dfa.accepting, 0, np.iinfo(np.int32).max).astype(np.int64)
    t = dfa.transitions
    for _ in range(n + 1):
        succ = np.where(t >= 0, dist[np.maximum(t, 0)] + 1, np.iinfo(np.int32).max)
        new = np.minimum(dist, succ.min(axis=1))
        if np.array_equal(new, dist):
            break
        dist = new
    return dist


def sample(dfa: DFA, rng: random.Random, dist: np.ndarray, soft_len: int = 60) -> bytes:
    """A random string the DFA accepts: random moves, then moves toward acceptance."""
    by_class: dict[int, list[int]] = {}
    for b, c in enumerate(dfa.symbol_class.tolist()):
        by_class.setdefault(c, []).append(b)
    s, out = dfa.initial, bytearray()
    while True:
        if dfa.accepting[s] and (rng.random() < 0.25 or len(out) > soft_len):
            return bytes(out)
        row = dfa.transitions[s]
        live = [c for c in np.flatnonzero(row >= 0).tolist()]
        if not live:
            assert dfa.accepting[s]
            return bytes(out)
        if len(out) > soft_len:
            best = min(dist[row[c]] for c in live)
            live = [c for c in live if dist[row[c]] == best]
        c = rng.choice(live)
        out.append(rng.choice(by_class[c]))
        s = int(row[c])


def check_sound(schema: Any, dfa: DFA, n: int = 40, seed: int = 0) -> None:
    rng = random.Random(seed)
    dist = distance_to_accept(dfa)
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)(schema)
    for _ in range(n):
        text = sample(dfa, rng, dist)
        instance = json.loads(text.decode("utf-8"))
        assert validator.is_valid(instance), (text, schema)


def check(schema: Any, valid: list[Any], invalid: list[Any], **options: Any) -> DFA:
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)(schema)
    dfa = dfa_of(schema, **options)
    for v in valid:
        assert validator.is_valid(v), v
        assert dfa.accepts(spell(v, schema)), spell(v, schema)
    for v in invalid:
        assert not validator.is_valid(v), v
        assert not dfa.accepts(spell(v, schema)), spell(v, schema)
    check_sound(schema, dfa)
    return dfa


# ---------------------------------------------------------------------------------------------
# Annotations and unknown keywords are ignored; known validation keywords are not


def test_annotations_and_unknown_keywords_are_ignored() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "id": "http://example.com/root.json",
        "title": "t",
        "x-vendor": {"anything": [1, 2]},
        "self": {"href": "x"},
        "_format": "weird",
        "method": "GET",
        "type": "object",
        "properties": {
            "a": {"type": "string", "maxLength": 3, "readOnly": True, "examples": ["x"], "$comment": "c"},
            "b": {"type": "integer", "format": "int64", "nullable": True, "deprecated": True},
            "c": {"type": "string", "format": "password", "writeOnly": True},
        },
        "required": ["a", "b"],
    }
    check(schema, [{"a": "ab", "b": 3}, {"a": "", "b": -1, "c": "pw"}], [{"a": "abcd", "b": 3}, {"a": "x"}])


@pytest.mark.parametrize(
    "schema, pointer",
    [
        ({"type": "string", "format": "hostname"}, "/format"),
        ({"type": "integer", "divisibleBy": 3}, "/divisibleBy"),
        ({"type": "array", "unevaluatedItems": False}, "/unevaluatedItems"),
        ({"properties": {"a": {"$recursiveRef": "#"}}}, "/properties/a/$recursiveRef"),
    ],
)
def test_known_validation_keywords_fail_closed(schema: Any, pointer: str) -> None:
    with pytest.raises(ConstraintError) as info:
        json_schema_to_node(schema)
    assert info.value.pointer == pointer


# ---------------------------------------------------------------------------------------------
# $ref anywhere, ids, anchors, escapes, recursion


def test_refs_with_escapes_anchors_and_ids() -> None:
    schema = {
        "$id": "https://example.com/s.json",
        "definitions": {
            "a/b": {"type": "integer", "minimum": 1, "maximum": 3},
            "t~x": {"$ref": "#/definitions/a~1b"},
        },
        "$defs": {
            "named": {"$anchor": "nm", "enum": ["p", "q"]},
            "old": {"$anchor": "old", "type": "boolean"},
        },
        "type": "object",
        "properties": {
            "i": {"$ref": "#/definitions/t~0x"},
            "n": {"$ref": "https://example.com/s.json#nm"},
            "o": {"$ref": "#old"},
            "deep": {"$ref": "#/properties/i"},
            "pct": {"$ref": "#/definitions/a%7E1b"},
        },
        "required": ["i", "n", "o"],
        "additionalProperties": False,
    }
    check(
        schema,
        [{"i": 2, "n": "p", "o": True}, {"i": 1, "n": "q", "o": False, "deep": 3, "pct": 2}],
        [{"i": 4, "n": "p", "o": True}, {"i": 2, "n": "r", "o": True}, {"i": 2, "n": "p", "o": 1}],
    )


def test_draft7_plain_name_ids() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "definitions": {"flag": {"$id": "#flag", "type": "boolean"}},
        "type": "array",
        "items": {"$ref": "#flag"},
        "maxItems": 2,
    }
    check(schema, [[], [True, False]], [[1], [True, True, True]])


def test_recursion_depth_is_configurable() -> None:
    schema = {
        "definitions": {
            "node": {
                "type": "object",
                "properties": {
                    "v": {"type": "integer"},
                    "kids": {"type": "array", "items": {"$ref": "#/definitions/node"}},
                },
                "required": ["v"],
                "additionalProperties": False,
            }
        },
        "$ref": "#/definitions/node",
    }
    deep = {"v": 1, "kids": [{"v": 2, "kids": [{"v": 3, "kids": [{"v": 4}]}]}]}
    assert not dfa_of(schema, max_recursion=3).accepts(spell(deep, schema))
    check(schema, [deep, {"v": 0}], [{"kids": []}], max_recursion=4)


def test_exclusive_bounds_both_drafts() -> None:
    draft4 = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "integer",
        "minimum": 1,
        "exclusiveMinimum": True,
        "maximum": 5,
        "exclusiveMaximum": True,
    }
    check(draft4, [2, 4], [1, 5])
    check({"type": "integer", "exclusiveMinimum": 1, "exclusiveMaximum": 5}, [2, 4], [1, 5])


# ---------------------------------------------------------------------------------------------
# Objects


def test_additional_properties_as_a_schema() -> None:
    map_ = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}, "maxProperties": 2}
    check(map_, [{}, {"a": 1}, {"a": 1, "b": 2}], [{"a": -1}, {"a": 1, "b": 2, "c": 3}])
    listed = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "required": ["a", "z"],
        "additionalProperties": {"type": "boolean"},
    }
    check(listed, [{"a": "x", "z": True}], [{"a": "x", "z": 1}, {"a": "x"}])


def test_pattern_properties() -> None:
    map_ = {
        "type": "object",
        "patternProperties": {"^x": {"type": "integer"}, "y$": {"type": "integer", "minimum": 5}},
        "additionalProperties": {"type": "string"},
        "maxProperties": 3,
    }
    check(
        map_,
        [{}, {"xa": 1}, {"ay": 6}, {"xy": 7}, {"q": "s"}, {"x\u00e9": 3, 'k"': "v"}],
        [{"xa": "s"}, {"xy": 4}, {"q": 1}, {"\u0078": "s"}],
    )
    listed = {
        "properties": {"foo1": {"type": "integer"}, "bar": {"type": "integer"}},
        "patternProperties": {"[0-9]$": {"minimum": 3}},
        "required": ["bar2"],
        "additionalProperties": False,
    }
    check(listed, [{"bar2": 3}, {"foo1": 4, "bar": 0, "bar2": 3}], [{"bar2": 2}, {"foo1": 1, "bar2": 3}])
    closed = {
        "type": "object",
        "patternProperties": {"^[a-z]+$": {"type": "null"}},
        "additionalProperties": False,
    }
    check(closed, [{}, {"ab": None}], [{"Ab": None}, {"ab": 1}])


def test_all_of_with_a_closed_branch_that_has_pattern_properties() -> None:
    # The CloudFormation shape: a `$ref` to a closed map next to sibling keywords (two views).
    tag_map = {
        "type": "object",
        "patternProperties": {"^.{2,5}$": {"type": "string", "maxLength": 3}},
        "additionalProperties": False,
    }
    ref_with_siblings = {"$defs": {"T": tag_map}, "$ref": "#/$defs/T", "description": "tags", "maxProperties": 2}
    check(ref_with_siblings, [{}, {"ab": "x"}, {"ab": "x", "cde": ""}], [{"a": "x"}, {"ab": "long"}])
    # Another branch lists names: those the closed branch's patterns reject are never written.
    listed = {
        "allOf": [
            {"properties": {"ab": {"type": "string"}, "x": {"type": "string"}}},
            {"patternProperties": {"^[a-z]{2}$": {"minLength": 1}}, "additionalProperties": False},
        ]
    }
    dfa = check(listed, [{}, {"ab": "s"}], [{"ab": ""}, {"x": "s"}])
    assert not dfa.accepts(b'{"x":"s"}')
    with pytest.raises(ConstraintError, match="forbids"):
        dfa_of({"allOf": [listed, {"required": ["x"]}]})
    # Two branches with patterns of their own stay refused (the names allowed are not a listing).
    two = {"allOf": [tag_map, {"patternProperties": {"^z": {}}}]}
    with pytest.raises(ConstraintError, match="another branch's patternProperties"):
        dfa_of(two)


@pytest.mark.parametrize(
    "pattern, valid, invalid",
    [
        # the shapes real schemas use (AWS CloudFormation), checked against Python's re.search
        (r"^(?!d-)([\da-zA-Z]+)([-]*[\da-zA-Z])*$", ["ab", "d1", "a-b", "dd-x"], ["d-x", "", "-a"]),
        (r"^[^\u0000-\u001F]*(?![\s\S])", ["abc", "", "\u00a0x"], ["a\nb", "\u00a0\b"]),
        (r"^(?!(.*[.\/\\]|aws:)).*$", ["abc", "aw:s"], ["a.b", "aws:x", "x/y", "a\\b"]),
        (r"^(?!^[0-9]+$)([a-zA-Z0-9\-_' ']+)$", ["a1", "1a", "12 "], ["123", ""]),
        (r"^(?=^[a-z0-9-]+$).{3,64}$", ["abc", "a-9"], ["ab", "ABC", "abc!"]),
        (r"a(?=b)", ["ab", "xabc"], ["a", "ac"]),
        (r"(?!a)b", ["b", "ab"], ["a", ""]),
        (r"^x(?=\d)\w(?!\d)", ["x1a", "x1"], ["x12", "xa", "x"]),
        # AWS tag values: [\s\S] is every character under both readings, U+001E (a space in
        # Python's \s only) and U+FEFF (in ECMA's only) included (cfn-aws-eventsv2-eventbus)
        (r"^(\S([\s\S]*\S)?)?(?![\s\S])", ["", "a", "a\x1eb", "a\ufeff b", "\u00e9"], [" a", "a ", "a\n"]),
        # a ^ (a $) in a group that only repeats the regex's own anchor (cfn-aws-config-conformancepack)
        (r"^([$]LATEST|[$]DEFAULT|^[1-9][0-9]*$)$", ["$LATEST", "12", "$DEFAULT"], ["012", "x12", "12x", "$LATESTx"]),
        (r"^(?:(?:^a)|b)c", ["ac", "bcx"], ["xac", "c"]),
        # \b between fixed neighbors, a word character on one side only: always a boundary
        # (cfn-aws-cloudformation-changeset)
        (r"^([a-zA-Z][-a-zA-Z0-9]*)|(arn:\b(aws|aws-us-gov|aws-cn)\b:[-a-zA-Z0-9:/._+]*)$",
         ["abc", "a!", "arn:aws:x", "1arn:aws-cn:a/b"], ["1", "", "1arn:aws", "1arn:awsx:"]),
        (r"^\bab\b$", ["ab"], ["a", "abc"]),
    ],
)
def test_top_level_lookaheads(pattern: str, valid: list[str], invalid: list[str]) -> None:
    for v in valid:
        assert re.search(pattern, v), v
    check({"type": "string", "pattern": pattern}, valid, invalid)


def test_lookaheads_that_stay_refused() -> None:
    for pattern, what in [
        ("a(b(?=c))", "lookahead"),  # not at the top level of its alternative
        ("(?=a(?!b))", "negative lookahead"),  # nested
        ("x(?=^a)", "^ inside a lookahead"),
        ("(?<=a)b", "lookbehind"),
    ]:
        with pytest.raises(ConstraintError, match=re.escape(what)) as e:
            dfa_of({"properties": {"p": {"type": "string", "pattern": pattern}}})
        assert e.value.pointer == "/properties/p/pattern", e.value


def test_unreachable_upper_bounds_do_not_bind() -> None:
    # API specs write 2**31 - 1 for "no limit": no generation reaches it, so it is not unrolled.
    big = 2**31 - 1
    for key, schema in [("maxLength", {"type": "string"}), ("maxItems", {"type": "array", "items": {"type": "integer"}})]:
        bounded = dfa_of({**schema, key: big})
        free = dfa_of(schema)
        assert bounded.num_states == free.num_states
    with pytest.raises(ConstraintError, match="constraint_positions"):
        dfa_of({"type": "string", "maxLength": 2**30 - 1})  # still a bound: too large to unroll


def test_bounded_numbers_take_the_exponent_forms_that_stay_in_range() -> None:
    # Python writes large and small floats with an exponent; a bounded number took none before.
    check({"type": "number", "minimum": 0}, [1.710460441284528e308, 2.5e-300, 0, 3.5], [-1.0, -2e5])
    check({"type": "number", "minimum": 0, "maximum": 100}, [1.192092896e-07, 99.5, 0], [1e5, -1e-07, 100.5])
    check({"type": "number", "maximum": 0}, [-1.7e308, -2e-09], [1e-07, 5.0])
    check({"type": "number", "minimum": -5, "maximum": 0}, [-1e-05, 0], [2e-05, -6.0])
    check({"type": "number", "minimum": 1000}, [2.953062206306268e307, 1e4, 1000], [999.5, 9.99e2, -1e300])
    check({"type": "number", "exclusiveMaximum": -999.5}, [-1.5e10, -1000], [-999.5, -9e2, 1e300])
    dfa = dfa_of({"type": "number", "exclusiveMinimum": 0})  # 1e-999 parses to 0.0: no exponents
    assert not dfa.accepts(b"1e-999") and dfa.accepts(b"0.5")
    dfa = dfa_of({"type": "number", "minimum": 0, "exclusiveMaximum": 1})  # 9.99...e-1 could round to 1
    assert not dfa.accepts(b"9.9999999999999999e-1")


def test_property_names() -> None:
    map_ = {"type": "object", "propertyNames": {"pattern": "^[a-c]+$", "maxLength": 2}, "maxProperties": 2}
    check(map_, [{}, {"ab": 1}, {"c": [], "a": None}], [{"abc": 1}, {"d": 1}])
    listed = {
        "type": "object",
        "properties": {"ok": {"type": "integer"}, "too_long": {"type": "integer"}},
        "propertyNames": {"maxLength": 3},
    }
    check(listed, [{}, {"ok": 1}], [{"too_long": 1}])
    enum_names = {
        "type": "object",
        "propertyNames": {"enum": ["a", "b"]},
        "additionalProperties": {"type": "integer"},
    }
    check(enum_names, [{"a": 1}, {"b": 2}], [{"c": 1}])


def test_min_and_max_properties() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}, "c": {"type": "integer"}},
        "required": ["b"],
        "minProperties": 2,
        "maxProperties": 2,
        "additionalProperties": False,
    }
    check(
        schema, [{"a": 1, "b": 2}, {"b": 2, "c": 3}], [{"b": 2}, {"a": 1, "b": 2, "c": 3}, {"a": 1, "c": 3}]
    )
    with pytest.raises(ConstraintError) as info:
        json_schema_to_node({"type": "object", "properties": {"a": {}}, "minProperties": 2})
    assert info.value.pointer == "/minProperties"
    with pytest.raises(ConstraintError) as info:
        json_schema_to_node(
            {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 2}
        )
    assert info.value.pointer == "/minProperties"


def test_dependent_required_and_dependencies() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "string"}, "c": {"type": "boolean"}},
        "dependentRequired": {"c": ["a"], "a": ["b"]},
        "additionalProperties": False,
    }
    check(
        schema,
        [{}, {"b": "x"}, {"a": 1, "b": "x"}, {"a": 1, "b": "x", "c": True}],
        [{"a": 1}, {"c": True}, {"a": 1, "c": True}, {"b": "x", "c": True}],
    )
    draft7 = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"card": {"type": "integer"}, "address": {"type": "string"}, "zip": {"type": "string"}},
        "dependencies": {"card": ["address"], "zip": {"required": ["address"]}},
    }
    check(draft7, [{"card": 1, "address": "x"}, {"address": "x", "zip": "z"}], [{"card": 1}, {"zip": "z"}])
    with pytest.raises(ConstraintError) as info:
        json_schema_to_node({"dependencies": {"a": {"properties": {"b": {"type": "string"}}}}})
    assert info.value.pointer == "/dependencies/a"


def test_open_object_policy_generates_only_named_properties() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    dfa = dfa_of(schema)
    assert dfa.accepts(b'{"a":1}') and dfa.accepts(b"{}")
    assert not dfa.accepts(b'{"a":1,"b":2}')  # valid, but outside the documented policy


# ---------------------------------------------------------------------------------------------
# Property tests: generated schemas, soundness and completeness


_NAMES = st.sampled_from(["a", "b", "c", "d", "x1", "y2"])


def _leaf() -> st.SearchStrategy[dict]:
    return st.one_of(
        st.builds(
            lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
            st.integers(-50, 50),
            st.integers(0, 100),
        ),
        st.builds(lambda n: {"type": "string", "maxLength": n}, st.integers(0, 4)),
        st.just({"type": "boolean"}),
        st.just({"type": "null"}),
        st.lists(
            st.one_of(st.integers(-3, 3), st.sampled_from(["p", "q", "r"])),
            min_size=1,
            max_size=4,
            unique=True,
        ).map(lambda vs: {"enum": vs}),
    )


@st.composite
def _object_schemas(draw: Any) -> dict:
    names = draw(st.lists(_NAMES, min_size=0, max_size=4, unique=True))
    schema: dict[str, Any] = {"type": "object"}
    if names:
        schema["properties"] = {n: draw(_leaf()) for n in names}
        schema["required"] = draw(st.lists(st.sampled_from(names), max_size=2, unique=True))
        schema["additionalProperties"] = False
        if draw(st.booleans()) and len(names) >= 2:
            trigger, target = draw(st.permutations(names))[:2]
            key = draw(st.sampled_from(["dependentRequired", "dependencies"]))
            schema[key] = {trigger: [target]}
            if key == "dependencies":  # a draft-7 keyword (2020-12 validators ignore it)
                schema["$schema"] = "http://json-schema.org/draft-07/schema#"
        if draw(st.booleans()):
            schema["patternProperties"] = {"[0-9]$": draw(_leaf())}
        if draw(st.booleans()):
            schema["propertyNames"] = {"maxLength": 1}
        if draw(st.booleans()):
            lo = draw(st.integers(0, len(names)))
            schema["minProperties"] = lo
            if draw(st.booleans()):
                schema["maxProperties"] = draw(st.integers(lo, len(names)))
    else:
        if draw(st.booleans()):
            schema["patternProperties"] = {"^x": draw(_leaf())}
        schema["additionalProperties"] = draw(st.one_of(st.just(False), _leaf()))
        if draw(st.booleans()):
            schema["propertyNames"] = draw(st.sampled_from([{"maxLength": 2}, {"enum": ["x", "y", "xz"]}]))
        schema["maxProperties"] = draw(st.integers(0, 3))
    return schema


def _compile_or_skip(schema: dict) -> DFA | None:
    try:
        return dfa_of(schema)
    except ConstraintError as e:
        # unsatisfiable here, or the documented open-object policy (only named properties); nothing
        # else may refuse these schemas
        assert "no instance" in str(e) or "does not list" in str(e), (schema, e)
        return None


@settings(max_examples=examples(60), deadline=None, suppress_health_check=list(HealthCheck))
@given(schema=_object_schemas(), seed=st.integers(0, 1000))
def test_generated_object_schemas_are_sound(schema: dict, seed: int) -> None:
    dfa = _compile_or_skip(schema)
    if dfa is not None:
        check_sound(schema, dfa, n=15, seed=seed)


def _leaf_value(schema: dict, rng: random.Random) -> Any:
    """A value that is usually valid for a `_leaf` schema (sometimes of another type)."""
    if rng.random() < 0.1:
        return rng.choice([None, True, 0, "s", [], {}])
    if "enum" in schema:
        return rng.choice(schema["enum"])
    t = schema["type"]
    if t == "integer":
        return rng.randint(schema["minimum"], schema["maximum"])
    if t == "string":
        return "".join(rng.choice('ab"\\\n\u00e9\u2028 ') for _ in range(rng.randint(0, schema["maxLength"])))
    return {"boolean": rng.random() < 0.5, "null": None}[t]


def _candidates(schema: dict, rng: random.Random, n: int = 60) -> list[Any]:
    props = schema.get("properties", {})
    out = []
    for _ in range(n):
        if props:
            names = [k for k in props if rng.random() < 0.6] + [k for k in ("z1", "zz") if rng.random() < 0.1]
            pats = schema.get("patternProperties", {})
            out.append(
                {
                    k: _leaf_value(props.get(k) or next(iter(pats.values()), {"type": "null"}), rng)
                    for k in names
                }
            )
        else:
            pats = schema.get("patternProperties", {})
            extra = schema.get("additionalProperties")
            inst = {}
            for _ in range(rng.randint(0, 3)):
                key = rng.choice(["x", "xz", "y", "xa", "ab", "x\u00e9", 'q"', "xyz"])
                sub = pats.get("^x") if key.startswith("x") and pats else extra
                inst[key] = _leaf_value(sub if isinstance(sub, dict) else {"type": "null"}, rng)
            out.append(inst)
    return out


@settings(max_examples=examples(80), deadline=None, suppress_health_check=list(HealthCheck))
@given(schema=_object_schemas(), seed=st.integers(0, 1000))
def test_generated_object_schemas_are_complete(schema: dict, seed: int) -> None:
    """Every valid instance whose property names the schema lists (the open-object policy) is
    accepted, spelled compactly in the schema's order."""
    dfa = _compile_or_skip(schema)
    validator = jsonschema.validators.validator_for(schema)(schema)
    rng = random.Random(seed)
    props = schema.get("properties")
    for instance in _candidates(schema, rng):
        if not validator.is_valid(instance):
            continue
        if props is not None and any(k not in props for k in instance):
            continue  # outside the open-object policy: sgc generates only the names a schema lists
        assert dfa is not None, (schema, instance)
        assert dfa.accepts(spell(instance, schema)), (schema, spell(instance, schema))


def test_enum_next_to_other_keywords_filters_the_values() -> None:
    schema = {"enum": ["a", "abcd", 1, 7, None], "maxLength": 3, "minimum": 2}
    check(schema, ["a", 7, None], ["abcd", 1])
    check({"type": "integer", "enum": [3, 4, 6], "multipleOf": 3}, [3, 6], [4])


# ---------------------------------------------------------------------------------------------
# not (finite forms)


def test_not_type_const_enum_required() -> None:
    check({"type": ["string", "integer", "null"], "not": {"type": "null"}}, ["a", 1], [None])
    check(
        {"type": "string", "maxLength": 2, "not": {"enum": ["a", "/", "\u00e9", 'x"']}},
        ["", "b", "ab", "\u00e8"],
        ["a", "/", "\u00e9", 'x"'],
    )
    dfa = dfa_of({"type": "string", "maxLength": 2, "not": {"const": "a/"}})
    for spelling in [b'"a/"', b'"\\u0061/"', b'"a\\/"', b'"\\u0061\\u002F"']:
        assert not dfa.accepts(spelling), spelling
    assert dfa.accepts(b'"a\\u0030"')
    check({"type": "integer", "minimum": 0, "maximum": 5, "not": {"enum": [0, 3]}}, [1, 2, 4, 5], [0, 3])
    check({"type": ["boolean", "null"], "not": {"const": False}}, [True, None], [False])
    mutually_exclusive = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}, "c": {"type": "integer"}},
        "not": {"required": ["a", "b"]},
        "additionalProperties": False,
    }
    check(mutually_exclusive, [{}, {"a": 1}, {"b": 2, "c": 3}, {"a": 1, "c": 3}], [{"a": 1, "b": 2}])
    de_morgan = {
        "type": "object",
        "properties": {"kind": {"enum": ["x", "y"]}, "v": {"type": "integer"}},
        "required": ["kind"],
        "additionalProperties": False,
        "not": {"properties": {"kind": {"const": "x"}}, "required": ["v"]},
    }
    check(de_morgan, [{"kind": "x"}, {"kind": "y"}, {"kind": "y", "v": 1}], [{"kind": "x", "v": 1}])
    check(
        {"type": "integer", "maximum": 3, "minimum": 0, "not": {"type": "integer", "const": 2}},
        [0, 1, 3],
        [2],
    )
    enum_not = {"enum": ["a", "b", 1], "not": {"type": "integer"}}
    check(enum_not, ["a", "b"], [1])
    # a bare `not`: every other JSON type (any value nested at most any_depth levels)
    check({"not": {"type": "string"}}, [None, True, 1, 1.5, [1, "a"], {"a": "b"}], ["", "a"])
    check({"not": {"enum": ["a", None]}}, ["b", "", False, 2, [], {}], ["a", None])
    check({"not": {"required": ["a"]}, "properties": {"b": {}}}, [{}, {"b": 1}], [{"a": 1}, "a", 1, None, []])
    with pytest.raises(ConstraintError) as info:  # a map's keys are free: not-required is not kept
        json_schema_to_node({"type": "object", "not": {"required": ["a"]}})
    assert info.value.pointer == "/not/required"
    with pytest.raises(ConstraintError) as info:
        json_schema_to_node({"type": "number", "not": {"const": 1}})
    assert info.value.pointer == "/not/const"


# ---------------------------------------------------------------------------------------------
# Arrays: contains / minContains, uniqueItems over finitely many values


def test_contains_and_min_contains() -> None:
    schema = {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 9},
        "contains": {"minimum": 5},
    }
    check(schema, [[5], [1, 7], [9, 1, 2, 3], [0, 0, 0, 0, 6]], [[], [1, 2], [0, 0, 0, 0, 4]])
    two = {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 9},
        "contains": {"const": 3},
        "minContains": 2,
        "maxItems": 4,
    }
    check(two, [[3, 3], [1, 3, 2, 3]], [[3], [3, 1, 1, 1, 3], [1, 2]])
    no_items = {"type": "array", "contains": {"type": "string", "maxLength": 1}, "minItems": 2}
    check(no_items, [["a", 1], [None, "b", []]], [["ab", 1], [1, 2]])
    with pytest.raises(ConstraintError) as info:
        json_schema_to_node({"type": "array", "contains": {"type": "integer"}, "maxContains": 1})
    assert info.value.pointer == "/maxContains"


def test_unique_items_over_finite_values() -> None:
    schema = {"type": "array", "items": {"enum": ["a", "b", 1, 1.0, None]}, "uniqueItems": True}
    check(schema, [[], ["a"], ["b", "a", 1], [None, 1, "a", "b"]], [["a", "a"], [1, 1.0], [None, None]])
    flags = {"type": "array", "items": {"type": "boolean"}, "uniqueItems": True, "minItems": 2}
    check(flags, [[True, False], [False, True]], [[True], [True, True]])
    with pytest.raises(ConstraintError) as info:
        json_schema_to_node({"type": "array", "items": {"type": "string"}, "uniqueItems": True})
    assert info.value.pointer == "/uniqueItems"


def test_merged_properties_merged_again() -> None:
    # a $ref with sibling properties (merged), whose property holds an anyOf next to another keyword
    schema = {
        "definitions": {
            "d": {"type": "object", "properties": {"t": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}}
        },
        "$ref": "#/definitions/d",
        "properties": {"t": {"maxLength": 2}},
        "additionalProperties": False,
    }
    check(schema, [{}, {"t": "ab"}, {"t": 5}], [{"t": "abc"}])


# ---------------------------------------------------------------------------------------------
# Schemas without `type`: type-specific keywords constrain only their own type


def test_untyped_schema_accepts_every_type() -> None:
    cfn = {"properties": {"Key": {"type": "string"}, "Value": {"type": "integer"}}, "required": ["Key"]}
    check(
        cfn,
        ["", "x", 1e-05, 3, None, True, [], [1, "a"], {"Key": "k"}, {"Key": "k", "Value": 2}],
        [{}, {"Key": 1}, {"Key": "k", "Value": "v"}],
    )
    check({"minLength": 2, "maximum": 3}, ["ab", 3, 2.5, None, [], {}], ["a", 4, 3.5])
    check({"items": {"type": "integer"}, "minItems": 1}, [[1], "", 0, {}], [[], ["a"]])
    # oneOf of untyped branches: decided type by type (every non-object matches both branches here)
    tagged = {
        "oneOf": [
            {"properties": {"k": {"const": "a"}, "v": {"type": "integer"}}, "required": ["k"]},
            {"properties": {"k": {"const": "b"}, "v": {"type": "string"}}, "required": ["k"]},
        ]
    }
    check(tagged, [{"k": "a"}, {"k": "a", "v": 1}, {"k": "b", "v": "x"}], ["", 1, None, [], {}, {"k": "c"}])
    check({"oneOf": [{"type": "string"}, {"minimum": 3}]}, [3, 10, None, [], {}], ["", "abc", 2.5])
    # oneOf of required lists: exactly one list complete
    one_of_names = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}, "c": {}},
        "required": ["c"],
        "oneOf": [{"required": ["a"]}, {"required": ["b"]}, {"required": ["a", "c"], "title": "t"}],
    }
    check(one_of_names, [{"b": 1, "c": 1}], [{"c": 1}, {"a": 1, "c": 1}, {"a": 1, "b": 1, "c": 1}])
    check(
        {"properties": {"a": {}, "b": {}}, "oneOf": [{"required": ["a"]}, {"required": ["b"]}]},
        [{"a": 1}, {"b": None}],
        [{}, {"a": 1, "b": 2}, "", 0, None, []],
    )
    # both branches take strings of length >= 3: those are out, shorter ones and non-strings in
    check({"oneOf": [{"type": "string"}, {"minLength": 3}]}, ["ab", "", 5, None, {}], ["abc", "abcd"])


_UNTYPED_PARTS: list[dict[str, Any]] = [
    {"properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["a"]},
    {"properties": {"a": {"type": "string", "maxLength": 2}, "b": {"type": "null"}}},
    {"minLength": 1, "maxLength": 3},
    {"minimum": 1, "maximum": 5},
    {"items": {"type": "boolean"}, "maxItems": 2},
    {"not": {"type": "array"}},
    {"not": {"enum": ["a", None, True]}},
    {"anyOf": [{"type": "null"}, {"minimum": 2}]},
    {"oneOf": [{"type": "string"}, {"type": "integer", "maximum": 3}]},
    {
        "oneOf": [
            {"properties": {"a": {"const": 1}}, "required": ["a"]},
            {"properties": {"a": {"const": 2}}, "required": ["a"]},
        ]
    },
    {"enum": ["a", 3, None, {"a": 1}]},
    {"oneOf": [{"required": ["a"]}, {"required": ["b"]}]},
]
_UNTYPED_VALUES: list[Any] = [
    None, True, False, 0, 2, 3, 7, 1.5, -1, "", "a", "ab", "abcd", [], [True], [True, False, True], ["a"],
    {}, {"a": 1}, {"a": 2}, {"a": "x"}, {"a": "xyz"}, {"a": 1, "b": None}, {"b": None},
]  # fmt: skip


@settings(max_examples=examples(60), deadline=None, suppress_health_check=list(HealthCheck))
@given(
    parts=st.lists(st.sampled_from(range(len(_UNTYPED_PARTS))), min_size=1, max_size=3, unique=True),
    seed=st.integers(0, 1000),
)
def test_generated_untyped_schemas_are_sound_and_complete(parts: list[int], seed: int) -> None:
    schema: dict[str, Any] = (
        {"allOf": [_UNTYPED_PARTS[i] for i in parts]} if len(parts) > 1 else _UNTYPED_PARTS[parts[0]]
    )
    try:
        dfa = dfa_of(schema)
    except ConstraintError as e:
        # refused: a oneOf whose branches overlap, a merge sgc does not do, or nothing to generate
        assert "oneOf" in str(e) or "allOf" in str(e) or "no instance" in str(e), (schema, e)
        return
    check_sound(schema, dfa, n=20, seed=seed)
    validator = jsonschema.Draft202012Validator(schema)
    named = {k for i in parts for k in _UNTYPED_PARTS[i].get("properties", {})}
    named |= {k for i in parts for b in _UNTYPED_PARTS[i].get("oneOf", []) for k in b.get("properties", {})}
    for v in _UNTYPED_VALUES:
        if isinstance(v, dict) and not set(v) <= named:
            continue  # the open-object policy: sgc writes only the names a schema lists
        if validator.is_valid(v):
            assert dfa.accepts(spell(v, {"properties": {"a": {}, "b": {}}})), (schema, v)
        else:
            assert not dfa.accepts(spell(v, {"properties": {"a": {}, "b": {}}})), (schema, v)


# ---------------------------------------------------------------------------------------------
# if / then / else: (if and then) or (not if and else), when `not if` is exact


def test_if_then_else() -> None:
    check(
        {"if": {"type": "integer"}, "then": {"minimum": 3}, "else": {"type": "string"}},
        [3, 7, "", "x"],
        [1, None, 1.5, [], {}],
    )
    install = {
        "type": "object",
        "properties": {
            "command": {"enum": ["sync", "pip"]},
            "requirements": {"type": "string"},
            "groups": {"type": "string"},
            "path": {"type": "string"},
        },
        "allOf": [
            {
                "if": {"properties": {"command": {"const": "sync"}}},
                "then": {"not": {"required": ["requirements"]}},
            },
            {
                "if": {"properties": {"command": {"const": "pip"}}},
                "then": {
                    "not": {"required": ["groups"]},
                    "anyOf": [{"required": ["requirements"]}, {"required": ["path"]}],
                },
            },
        ],
    }
    check(
        install,
        [
            {"command": "sync"},
            {"command": "pip", "path": "p"},
            {"command": "pip", "requirements": "r"},
            {"path": "p"},
        ],
        [
            {},
            {"groups": "g", "path": "p"},
            {"command": "sync", "requirements": "r"},
            {"command": "pip"},
            {"command": "pip", "groups": "g", "path": "p"},
        ],
    )
    tagged = {
        "type": "object",
        "properties": {"kind": {"enum": ["a", "b"]}, "v": {}},
        "required": ["kind", "v"],
        "if": {"properties": {"kind": {"const": "a"}}, "required": ["kind"]},
        "then": {"properties": {"v": {"type": "integer"}}},
        "else": {"properties": {"v": {"type": "string"}}},
    }
    check(
        tagged,
        [{"kind": "a", "v": 1}, {"kind": "b", "v": "x"}],
        [{"kind": "a", "v": "x"}, {"kind": "b", "v": 1}],
    )
    # then/else without if are ignored; an `if` whose negation is not exact is refused inside `if`
    check({"type": "integer", "then": {"minimum": 5}, "else": False}, [1], ["a"])
    with pytest.raises(ConstraintError) as info:
        json_schema_to_node({"type": "string", "if": {"minLength": 3}, "then": {"pattern": "^a"}})
    assert info.value.pointer == "/if/minLength"
    # several `not`s merged by allOf each apply
    check(
        {
            "type": "integer",
            "minimum": 0,
            "maximum": 4,
            "not": {"const": 1},
            "allOf": [{"not": {"const": 2}}],
        },
        [0, 3, 4],
        [1, 2],
    )


_IF_PARTS: list[dict[str, Any]] = [
    {"type": "integer"},
    {"type": ["string", "null"]},
    {"const": "a"},
    {"enum": [1, "b", None]},
    {"required": ["a"]},
    {"properties": {"a": {"const": 1}}},
    {"properties": {"a": {"type": "string"}, "b": {"enum": [1, 2]}}, "required": ["b"]},
]
_THEN_PARTS: list[Any] = [
    True,
    False,
    {"minimum": 2},
    {"maxLength": 1},
    {"properties": {"a": {"type": "integer"}}},
    {"required": ["b"], "properties": {"b": {"const": 2}}},
    {"type": ["object", "array"]},
]


@settings(max_examples=examples(40), deadline=None, suppress_health_check=list(HealthCheck))
@given(
    cond=st.sampled_from(_IF_PARTS),
    then=st.one_of(st.none(), st.sampled_from(_THEN_PARTS)),
    els=st.one_of(st.none(), st.sampled_from(_THEN_PARTS)),
    seed=st.integers(0, 1000),
)
def test_generated_conditionals_are_sound_and_complete(cond: dict, then: Any, els: Any, seed: int) -> None:
    schema: dict[str, Any] = {"properties": {"a": {}, "b": {}}, "if": cond}
    if then is not None:
        schema["then"] = then
    if els is not None:
        schema["else"] = els
    try:
        dfa = dfa_of(schema)
    except ConstraintError as e:
        # unsatisfiable, or a negation sgc does not compile (number but not integer), at its pointer
        assert "no instance" in str(e) or (e.pointer or "").startswith("/if"), (schema, e)
        return
    check_sound(schema, dfa, n=20, seed=seed)
    validator = jsonschema.Draft202012Validator(schema)
    for v in _UNTYPED_VALUES + [{"a": 1, "b": 2}, {"b": 1}, {"a": "x", "b": 2}, {"b": 2}]:
        assert dfa.accepts(spell(v, schema)) == validator.is_valid(v), (schema, v)


# ---------------------------------------------------------------------------------------------
# Numbers between fractional bounds: exact for the float a parser reads


def test_fractional_bounds() -> None:
    check(
        {"type": "number", "minimum": 0.5, "maximum": 2.25},
        [0.5, 0.75, 1, 2, 2.25, 1.999],
        [0.49, 2.26, 3, -1, 0],
    )
    check(
        {"type": "number", "exclusiveMinimum": -0.1, "exclusiveMaximum": 0.1},
        [0, -0.05, 0.099],
        [-0.1, 0.1, 1],
    )
    check({"type": "number", "minimum": -1.5, "multipleOf": 1}, [-1, 0, 7], [-2, -1.5])
    # an exclusive bound holds for the float a decimal parses to (100 + 1e-15 reads as 100.0)
    dfa = dfa_of({"type": "number", "exclusiveMinimum": 100, "exclusiveMaximum": 200.5})
    for text in [b"100.000000000000001", b"100", b"200.5", b"200.49999999999999", b"200.50000000000000"]:
        assert not dfa.accepts(text), text
    for text in [b"100.00000000000002", b"200.4999999999999", b"150", b"100.5"]:
        assert dfa.accepts(text), text


_BOUNDS = st.one_of(
    st.integers(-300, 300).map(lambda k: k / 4),
    st.integers(-3000, 3000).map(lambda k: k / 100),
    st.sampled_from([0.1, -0.1, 1e-7, 0.3, 12345.678, 100, -100, 2.5e-3]),
)


@settings(max_examples=examples(80), deadline=None, suppress_health_check=list(HealthCheck))
@given(
    lo=st.one_of(st.none(), _BOUNDS),
    hi=st.one_of(st.none(), _BOUNDS),
    lo_ex=st.booleans(),
    hi_ex=st.booleans(),
    probes=st.lists(
        st.decimals(min_value=-400, max_value=400, places=4, allow_nan=False), min_size=10, max_size=30
    ),
    seed=st.integers(0, 1000),
)
def test_generated_fractional_bounds(
    lo: Any, hi: Any, lo_ex: bool, hi_ex: bool, probes: list, seed: int
) -> None:
    schema: dict[str, Any] = {"type": "number"}
    if lo is not None:
        schema["exclusiveMinimum" if lo_ex else "minimum"] = lo
    if hi is not None:
        schema["exclusiveMaximum" if hi_ex else "maximum"] = hi
    try:
        dfa = dfa_of(schema)
    except ConstraintError as e:
        assert "no instance" in str(e), (schema, e)
        return
    check_sound(schema, dfa, n=30, seed=seed)
    validator = jsonschema.Draft202012Validator(schema)
    texts = [str(p) for p in probes] + [repr(float(b)) for b in (lo, hi) if b is not None]
    texts += [repr(float(b) + d) for b in (lo, hi) if b is not None for d in (1e-9, -1e-9, 1e-3, -1e-3)]
    for text in texts:
        if "e" in text or "E" in text or text.startswith("-0") and float(text) == 0:
            continue
        value = json.loads(text)
        canonical = "." not in text or len(text.split(".")[1]) <= 15
        if (
            canonical
            and text.lstrip("-").split(".")[0] == str(abs(int(float(text))))
            and value != 0
            or text in ("0", "0.0")
        ):
            assert dfa.accepts(text.encode()) == validator.is_valid(value), (schema, text)
        elif dfa.accepts(text.encode()):
            assert validator.is_valid(value), (schema, text)


def test_one_of_objects_told_apart_by_a_closed_object_or_a_required_value_type() -> None:
    """oneOf branches of objects are exclusive when one requires a name the other's closed object
    does not allow (`cfn-aws-iotfleetwise-campaign`), or both require a name whose values' types
    are disjoint, through $ref and anyOf (`schemastore-taskfile`)."""
    closed = {
        "oneOf": [
            {"type": "object", "properties": {"t": {"type": "integer"}}, "required": ["t"],
             "additionalProperties": False},
            {"type": "object", "properties": {"c": {"type": "string"}}, "required": ["c"],
             "additionalProperties": False},
        ]
    }
    check(closed, [{"t": 1}, {"c": "x"}], [{}, {"t": 1, "c": "x"}, {"t": "x"}])
    typed = {
        "$defs": {"call": {"type": "object", "properties": {"x": {"type": "null"}}}},
        "oneOf": [
            {"type": "object", "properties": {"d": {"anyOf": [{"$ref": "#/$defs/call"}]}, "s": {"type": "boolean"}},
             "required": ["d"], "additionalProperties": False},
            {"type": "object", "properties": {"d": {"type": "string"}, "s": {"type": "boolean"}},
             "required": ["d"], "additionalProperties": False},
        ],
    }
    check(typed, [{"d": {}}, {"d": "x", "s": True}, {"d": {"x": None}}], [{"d": 1}, {"s": True}, {}])
    # the closed branch allows {"c": "x"}, which the open one (requiring nothing) takes too
    open_ = {
        "oneOf": [
            {"type": "object", "properties": {"t": {"type": "integer"}}},
            {"type": "object", "properties": {"c": {"type": "string"}}, "required": ["c"],
             "additionalProperties": False},
        ]
    }
    with pytest.raises(ConstraintError, match="may both match"):
        dfa_of(open_)
    # both open: each is written with its listed names only, and each requires a name the other
    # never writes, so no written value matches both (`schemastore-bitbucket-pipelines`' aws);
    # {"a": "x", "b": "y"} matches both, and is never written
    written = {
        "oneOf": [
            {"type": "object", "properties": {"a": {"type": "string"}, "k": {"type": "string"}},
             "required": ["a", "k"]},
            {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]},
        ]
    }
    check(written, [{"a": "x", "k": "y"}, {"b": "y"}], [{"a": "x", "k": "y", "b": "z"}, {}, {"a": "x"}])
    # one way only: {"c": "x"} of the closed branch matches the open one (it requires nothing)
    one_way = {"oneOf": [open_["oneOf"][0], {"type": "object", "properties": {"c": {"type": "string"}},
                                             "required": ["c"]}]}
    with pytest.raises(ConstraintError, match="may both match"):
        dfa_of(one_way)
    # a closed object with patternProperties may allow the name ({"t": 1} matches both): refused
    patterned = {"oneOf": [closed["oneOf"][0], {"type": "object", "properties": {"c": {"type": "string"}},
                                                "patternProperties": {"^t": {}}, "additionalProperties": False}]}
    with pytest.raises(ConstraintError, match="may both match"):
        dfa_of(patterned)


def dfa_accepts_all(dfa: DFA, values: list[Any]) -> bool:
    return all(dfa.accepts(spell(v)) for v in values)


def test_one_of_overlapping_string_branches_is_the_strings_exactly_one_takes() -> None:
    """oneOf of string branches that overlap (two patterns, a pattern and a length) is decided
    on automata: a string matching both is out (`cfn-aws-docdb-globalcluster`)."""
    both_patterns = {"type": "string", "oneOf": [{"pattern": "^[a-z]+$"}, {"pattern": "^a"}]}
    check(both_patterns, ["b", "a1", "a\t", "zz"], ["ab", "a", "1", ""])
    # untyped branches: every non-string matches both, so only strings are left
    untyped = {"oneOf": [{"pattern": "^a"}, {"maxLength": 2}]}
    check(untyped, ["abc", "b", "\u00e9\u00e9", "a\"\\x"], ["ab", "a", 5, None, {}, []])
    # one untyped branch takes every non-string alone: those are valid (the schema is split by type)
    check({"oneOf": [{"type": "string", "pattern": "^a"}, {"maxLength": 2}]}, [5, None, "abc", "b"], ["ab"])
    # only texts on which ECMA's and Python's readings agree: "a\n" matches `^[a-z]+$` in Python
    # (its `$` takes a final newline) and not in ECMA, so it is left out (as are Unicode digits
    # for \\d); a format (sgc enforces a subset of it) stays refused
    dfa = dfa_of(both_patterns)
    assert not dfa.accepts(spell("a\n")) and dfa.accepts(spell("a\t"))
    digits = dfa_of({"type": "string", "oneOf": [{"pattern": "^\\d+$"}, {"pattern": "^1"}]})
    assert dfa_accepts_all(digits, ["2", "1a"]) and not digits.accepts(spell("\u0663"))
    with pytest.raises(ConstraintError, match="may both match"):
        dfa_of({"type": "string", "oneOf": [{"format": "email"}, {"pattern": "@"}]})
    # overlapping object branches stay refused
    with pytest.raises(ConstraintError, match="may both match"):
        dfa_of({"oneOf": [{"type": "object", "properties": {"a": {}}}, {"type": "object", "maxProperties": 1}]})


def test_not_of_not_any_of_and_contains() -> None:
    """`not` of `not` (double negation), of `anyOf` (each branch negated) and of `contains` (every
    item fails) reduce to the exact negations (`schemastore-gitlab-ci`, `schemastore-readthedocs`)."""
    check({"not": {"not": {"type": "string", "maxLength": 2}}}, ["", "ab"], ["abc", 1, None, [], {}])
    check({"not": {"anyOf": [{"type": "boolean"}, {"const": "x"}]}}, [2, None, [], {}, "y"], ["x", True, False])
    check(
        {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 5}, "not": {"contains": {"const": 3}}},
        [[], [1, 2], [5, 5, 0]],
        [[3], [1, 3], "x"],
    )
    # gitlab-ci: then applies when `type` is absent
    gitlab = {
        "type": "object",
        "properties": {"type": {"enum": ["string", "number"]}, "default": {}},
        "if": {"not": {"required": ["type"]}},
        "then": {"properties": {"default": {"type": ["string", "null"]}}},
    }
    check(gitlab, [{"default": "x"}, {"type": "number", "default": 1}, {}], [{"default": 1}])
    # readthedocs: an install list with a uv item has exactly one item
    readthedocs = {
        "type": "array",
        "items": {"type": "object", "properties": {"method": {"enum": ["uv", "pip"]}}, "required": ["method"],
                  "additionalProperties": False},
        "allOf": [{"if": {"contains": {"type": "object", "properties": {"method": {"const": "uv"}},
                                       "required": ["method"]}},
                   "then": {"minItems": 1, "maxItems": 1}}],
    }
    check(readthedocs, [[{"method": "uv"}], [{"method": "pip"}, {"method": "pip"}], []],
          [[{"method": "uv"}, {"method": "pip"}], [{"method": "pip"}, {"method": "uv"}]])
    with pytest.raises(ConstraintError, match="not with contains") as e:
        dfa_of({"type": "array", "not": {"contains": {"const": 1}, "minContains": 2}})
    assert e.value.pointer == "/not/contains"


# RFC 3986 relative-ref and URI, written from the RFC's ABNF (independently of formats.py)
_RFC_U = r"[A-Za-z0-9\-._~]|%[0-9A-Fa-f]{2}|[!$&'()*+,;=]"
_RFC_PCHAR = rf"(?:{_RFC_U}|[:@])"
_RFC_AUTHORITY = rf"(?:(?:{_RFC_U}|:)*@)?(?:\[[0-9A-Fa-f:.]+\]|(?:{_RFC_U})*)(?::[0-9]*)?"
_RFC_TAIL = rf"(?:\?(?:{_RFC_PCHAR}|[/?])*)?(?:#(?:{_RFC_PCHAR}|[/?])*)?"
RFC3986_URI_REFERENCE = re.compile(
    rf"(?:[A-Za-z][A-Za-z0-9+\-.]*:(?://{_RFC_AUTHORITY}(?:/{_RFC_PCHAR}*)*|/(?:{_RFC_PCHAR}+(?:/{_RFC_PCHAR}*)*)?"
    rf"|{_RFC_PCHAR}+(?:/{_RFC_PCHAR}*)*|)"
    rf"|//{_RFC_AUTHORITY}(?:/{_RFC_PCHAR}*)*|/(?:{_RFC_PCHAR}+(?:/{_RFC_PCHAR}*)*)?"
    rf"|(?:{_RFC_U}|@)+(?:/{_RFC_PCHAR}*)*|){_RFC_TAIL}"
)


@pytest.mark.parametrize(
    "fmt, valid, invalid, holds",
    [
        ("uri-reference", ["http://a.b/c?d#e", "#frag", "", "a/b:c", "../x", "//host:80/p", "/p?q"],
         ["a b", "a:b c", ":x", "%zz", "http://a b"], lambda s: RFC3986_URI_REFERENCE.fullmatch(s)),
        ("json-pointer", ["", "/a", "/a~0b/~1/", "//"], ["a", "/~2", "/~"],
         lambda s: re.fullmatch(r"(/([^~/]|~[01])*)*", s)),
        ("relative-json-pointer", ["0", "1#", "2/a/b", "10/"], ["", "01", "-1", "#", "/a"],
         lambda s: re.fullmatch(r"(0|[1-9][0-9]*)(#|(/([^~/]|~[01])*)*)", s)),
        ("regex", ["", "^a$", "^[a-z0-9_\\-]+$", r"\d{3,}?", "(?:ab|c)*x", "a|^b$", "[^.]"],
         ["(", "a**", "[z-a]", "a{3,1}", "^*", "[]", "(?<=a)b"], lambda s: re.compile(s) is not None),
    ],
)
def test_formats_uri_reference_json_pointers_and_regex(fmt: str, valid: list[str], invalid: list[str], holds: Any) -> None:
    """Each format's automaton takes only strings valid for it (a subset for uri-reference and
    regex; checked on samples of the automaton with an independent check), and these."""
    schema = {"type": "string", "format": fmt}
    dfa = dfa_of(schema)
    for v in valid:
        assert holds(v) and dfa.accepts(spell(v)), v
    for v in invalid:
        assert not dfa.accepts(spell(v)), v
    rng = random.Random(0)
    dist = distance_to_accept(dfa)
    for _ in range(200):
        text = json.loads(sample(dfa, rng, dist).decode("utf-8"))
        assert holds(text), text


def test_a_conflict_merged_again_is_still_a_conflict() -> None:
    """allOf with conflicting types (or consts) merged with a third schema is unsatisfiable: a
    ConstraintError naming it, never a TypeError from merging the conflict marker."""
    for schema in (
        {"allOf": [{"type": "string"}, {"type": "integer"}, {"type": "string"}]},
        {"allOf": [{"const": 1}, {"const": 2}, {"const": 1}]},
        {"allOf": [{"type": "string"}, {"type": "integer"}], "oneOf": [{"type": "string"}, {"minLength": 2}]},
    ):
        with pytest.raises(ConstraintError, match="no instance"):
            dfa_of(schema)


_PATTERN_PAIRS = [
    ("^\\d+$", "^1"), ("^\\w+$", "a"), ("^.+$", "^a"), ("\\s", "^a"), ("^[a-z]*$", "b$"), ("^\\S+$", "x"),
]


@pytest.mark.parametrize("first, second", _PATTERN_PAIRS)
def test_one_of_string_branches_sound_under_both_readings(first: str, second: str) -> None:
    """Every string the oneOf automaton takes matches exactly one branch under Python's reading
    and under ECMA's (ASCII classes, `.` without CR, `$` only at the end): samples checked with both."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "regex_readings.py"
    spec = importlib.util.spec_from_file_location("regex_readings", path)
    readings = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(readings)
    schema = {"type": "string", "oneOf": [{"pattern": first}, {"pattern": second, "maxLength": 4}]}
    both = readings.BothReadings(schema)
    dfa = dfa_of(schema)
    rng = random.Random(1)
    dist = distance_to_accept(dfa)
    for _ in range(150):
        text = json.loads(sample(dfa, rng, dist).decode("utf-8"))
        assert both.is_valid(text), (schema, text)
