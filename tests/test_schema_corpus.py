"""The real-world schema corpus (tests/data/schemas/, built by benchmarks/make_schema_corpus.py) is
well formed, and sgc never accepts an invalid instance of it (slow: runs the harness on a sample)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest

CORPUS = Path(__file__).resolve().parent / "data" / "schemas"
BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_schemas.py"
READINGS = Path(__file__).resolve().parent.parent / "benchmarks" / "regex_readings.py"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _docs() -> list[dict]:
    return [json.loads(f.read_text(encoding="utf-8")) for f in sorted(CORPUS.glob("*.json"))]


def test_corpus_is_well_formed() -> None:
    docs = _docs()
    readings = _load(READINGS, "regex_readings")
    assert len(docs) >= 300
    names = set()
    for doc in docs:
        assert {"name", "source", "category", "schema", "valid", "invalid"} <= set(doc), doc.get("name")
        assert doc["name"] not in names
        names.add(doc["name"])
        assert doc["valid"] and doc["invalid"], doc["name"]
        schema = doc["schema"]
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
        both = readings.BothReadings(schema)
        for inst in doc["valid"]:
            # valid under ECMA's ASCII \w/\d too, not only under Python's Unicode reading
            assert both.is_valid(inst), (doc["name"], inst)
        for inst in doc["invalid"]:
            assert not validator.is_valid(inst), (doc["name"], inst)
    sources = (CORPUS / "SOURCES.md").read_text(encoding="utf-8")
    for prefix in {d["name"].split("-")[0] for d in docs}:
        assert f"`{prefix}-" in sources, prefix


@pytest.mark.slow
def test_no_invalid_instance_is_accepted_on_a_sample() -> None:
    spec = importlib.util.spec_from_file_location("bench_schemas", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from constraint_schemas import SMOLLM2_EOS, load_smollm2_tokenizer

    from compiler.constraints import Vocabulary

    tokenizer = load_smollm2_tokenizer()
    vocab = Vocabulary.from_tokenizer(tokenizer, eos_token_id=SMOLLM2_EOS)
    args = argparse.Namespace(timeout=10.0, max_instances=5, mask_steps=0, max_frontier=500)
    docs = bench.load_corpus(None, 30, 7)
    results = [bench.run_schema(d, vocab, tokenizer, args, SMOLLM2_EOS, []) for d in docs]
    compiled = [r for r in results if r["status"] == "compiled"]
    assert compiled, "no schema of the sample compiled"
    accepted = [(r["name"], a) for r in compiled for a in r["invalid_accepted"]]
    assert not accepted, accepted
    assert not [r for r in results if r["status"] == "crashed"]
    assert not [(r["name"], r["token_walk"]) for r in compiled if r["token_walk"]]


def test_harness_accepts_a_valid_object_of_many_optional_members_in_any_key_order() -> None:
    """The harness tries the schema's key order first: with 12 optional members given in reverse,
    the greedy walk in the instance's order takes the last member first and strands the others,
    and the search over orders is cut at `max_frontier`."""
    spec = importlib.util.spec_from_file_location("bench_schemas", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from compiler.constraints.dfa_ops import byte_dfa
    from compiler.constraints.json_schema import SchemaOptions, json_schema_to_node

    names = [f"m{i:02d}" for i in range(12)]
    schema = {"type": "object", "properties": {n: {"type": "string", "maxLength": 3} for n in names},
              "additionalProperties": False}
    dfa = byte_dfa(json_schema_to_node(schema, SchemaOptions()))

    class Walker:  # the three methods the matcher uses, over the byte DFA
        initial_state = dfa.initial

        @staticmethod
        def walk_bytes(s: int, data: bytes) -> int:
            return dfa.walk(data, s)

        @staticmethod
        def is_accepting(s: int) -> bool:
            return s >= 0 and bool(dfa.accepting[s])

    instance = {n: "\u00e9" for n in reversed(names)}
    assert bench.Matcher(Walker, 500).accepted_text(Walker, instance, schema) is not None
    assert bench.Matcher(Walker, 500).accepted_text(Walker, {"m00": "x", "zz": "y"}, schema) is None


def test_a_unicode_word_character_is_valid_only_under_pythons_reading() -> None:
    """The corpus's valid instances must hold under both readings of a pattern: "洏" matches
    `^\\w+$` in Python's `re` (Unicode) but not in ECMA-262 (ASCII), which JSON Schema specifies."""
    readings = _load(READINGS, "regex_readings")
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "pattern": "^\\w+$"}},
        "patternProperties": {"^\\d+$": {"type": "integer"}},
    }
    both = readings.BothReadings(schema)
    assert both.is_valid({"name": "ab_9", "12": 3})
    assert both.unicode.is_valid({"name": "洏"}) and not both.is_valid({"name": "洏"})
    # a key of Arabic-Indic digits is under patternProperties for Python only
    assert not both.unicode.is_valid({"\u0661\u0662": "x"}) and both.ascii.is_valid({"\u0661\u0662": "x"})
    assert both.unicode.is_valid({"\u0661\u0662": 3}) and both.ascii.is_valid({"\u0661\u0662": "x"})


def test_ecma_reading_of_dot_and_dollar() -> None:
    """ECMA's `.` takes no CR (Python's does) and its `$` is the end of the text (Python's also
    matches before a final newline); both stay literal inside a class or after a backslash."""
    readings = _load(READINGS, "regex_readings")
    both = readings.BothReadings({"type": "string", "pattern": "^.+$"})
    assert both.is_valid("a b") and both.unicode.is_valid("a\rb") and not both.is_valid("a\rb")
    assert both.unicode.is_valid("ab\n") and not both.is_valid("ab\n")
    literal = readings.BothReadings({"type": "string", "pattern": r"^[.$]\.\$$"})
    assert literal.is_valid("$.$") and not literal.is_valid("$x$")


def test_harness_labels_names_an_open_object_does_not_list() -> None:
    """A valid instance rejected for a name its open object does not list is sgc's documented
    open-object policy; the harness counts it apart (`names_unlisted`)."""
    bench = _load(BENCH, "bench_schemas")
    schema = {
        "type": "object",
        "properties": {
            "meta": {"$ref": "#/$defs/meta"},
            "cells": {"type": "array", "items": {"$ref": "#/$defs/meta"}},
        },
        "$defs": {
            "meta": {
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "patternProperties": {"^x-": {}},
            }
        },
    }
    assert not bench.names_unlisted({"meta": {"name": "a", "x-y": 1}, "cells": [{}]}, schema, schema)
    assert bench.names_unlisted({"meta": {"name": "a", "other": 1}}, schema, schema)
    assert bench.names_unlisted({"cells": [{"name": "a"}, {"other": 1}]}, schema, schema)
    assert bench.names_unlisted({"extra": 1}, schema, schema)
    # a map (no names listed) takes any key
    assert not bench.names_unlisted({"a": 1}, {"type": "object", "additionalProperties": {}}, {})


def test_ecma_reading_of_spaces() -> None:
    """ECMA's \\s takes NBSP, U+202F and U+FEFF (re.ASCII's only the six ASCII spaces); \\S not."""
    readings = _load(READINGS, "regex_readings")
    space = readings.BothReadings({"type": "string", "pattern": r"^\s$"})
    assert space.ascii.is_valid("\u202f") and space.ascii.is_valid("\ufeff") and not space.ascii.is_valid("\x1c")
    other = readings.BothReadings({"type": "string", "pattern": r"^\S+$"})
    assert not other.ascii.is_valid("a\u202fb") and other.ascii.is_valid("a\x1cb")
    assert not other.unicode.is_valid("a\x1cb")  # U+001C is a space for Python only
