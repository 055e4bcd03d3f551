"""An object's members as a linked DFA (`object_dfa`, `linked_dfa`): the same language as the
syntax tree it replaces, each member's value placed once.

The linked build normally starts above `LINKED_MEMBERS_MIN_POSITIONS`; the tests lower the bound to
0 so that every object of a generated schema goes through it, and compare with the tree's DFA
(both differences empty)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.constraints import ConstraintError, json_schema
from compiler.constraints.automaton import DFA, difference
from compiler.constraints.dfa_ops import byte_dfa, literal_set_dfa
from compiler.constraints.json_schema import SchemaOptions, json_schema_to_node, whitespace_policy
from compiler.constraints.linked_dfa import Entry, Link, link
from tests.test_constraints_json_schema_keywords import _object_schemas
from tests.tiers import examples


def _dfa(schema: Any, linked: bool, monkeypatch: pytest.MonkeyPatch, ws: str = "compact") -> DFA:
    bound = 0 if linked else 10**12
    monkeypatch.setattr(json_schema, "LINKED_MEMBERS_MIN_POSITIONS", bound)
    options = SchemaOptions(whitespace=whitespace_policy(ws))
    return byte_dfa(json_schema_to_node(schema, options))


def _same_language(a: DFA, b: DFA) -> bool:
    return not difference(a, b).accepting.any() and not difference(b, a).accepting.any()


def _check(schema: Any, monkeypatch: pytest.MonkeyPatch, ws: str = "compact") -> None:
    try:
        tree = _dfa(schema, False, monkeypatch, ws)
    except ConstraintError:
        with pytest.raises(ConstraintError):
            _dfa(schema, True, monkeypatch, ws)
        return
    assert _same_language(tree, _dfa(schema, True, monkeypatch, ws)), schema


@settings(max_examples=examples(60), deadline=None, suppress_health_check=list(HealthCheck))
@given(schema=_object_schemas(), ws=st.sampled_from(["compact", "flexible"]))
def test_linked_members_accept_what_the_tree_accepts(schema: dict, ws: str) -> None:
    with pytest.MonkeyPatch.context() as mp:
        _check(schema, mp, ws)


NESTED = {
    "type": "object",
    "properties": {
        "a": {"type": "integer", "minimum": 0, "maximum": 99},
        "ab": {"type": "object", "properties": {"x": {"type": "boolean"}, "y": {"type": "null"}},
               "required": ["y"], "additionalProperties": False},
        "abc": {"type": "string", "maxLength": 3},
        "b": {"type": "array", "items": {"type": "number"}, "maxItems": 2},
        "c": {"enum": ["x", 1, None]},
    },
    "required": ["abc"],
    "dependentRequired": {"a": ["c"]},
    "additionalProperties": False,
}


@pytest.mark.parametrize("ws", ["compact", "flexible"])
def test_nested_objects_numbers_and_dependencies(ws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _check(NESTED, monkeypatch, ws)
    _check({**NESTED, "minProperties": 2, "maxProperties": 3}, monkeypatch, ws)
    _check({**NESTED, "required": []}, monkeypatch, ws)


def test_each_member_is_placed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Six optional bounded strings: the tree holds member k once per member that may come first
    before it (~n^2/2 copies), the linked DFA about once."""
    schema = {
        "type": "object",
        "properties": {f"p{i}": {"type": "string", "maxLength": 40} for i in range(6)},
        "additionalProperties": False,
    }
    tree = _dfa(schema, False, monkeypatch)
    linked = _dfa(schema, True, monkeypatch)
    assert _same_language(tree, linked)
    one = byte_dfa(json_schema_to_node({"type": "string", "maxLength": 40}, SchemaOptions())).num_states
    assert linked.num_states < 7 * one + 200
    assert tree.num_states > 2 * linked.num_states
    assert linked.accepts(b'{"p1":"a","p4":""}') and not linked.accepts(b'{"p4":"","p1":"a"}')
    assert linked.accepts(b"{}") and not linked.accepts(b'{,"p1":"a"}')


def test_a_link_that_would_be_nondeterministic_is_refused() -> None:
    enum = byte_dfa(json_schema_to_node({"enum": ["x", "xy"]}, SchemaOptions()))  # '"x"' / '"xy"'
    quote = literal_set_dfa([b'"'])
    # the final states of the enum continue with nothing: linking them to a quote is fine
    ok = link([enum, quote], [[Link(np.flatnonzero(enum.accepting), Entry(1, False))], []], Entry(0, False))
    assert ok is not None and ok.accepts(b'"x""') and not ok.accepts(b'"x"')
    # after 'a' (final in 'a' | 'ab'), a 'b' could go on in the same part or enter 'bc'
    a_or_ab = literal_set_dfa([b"a", b"ab"])
    bc = literal_set_dfa([b"bc"])
    bad = link([a_or_ab, bc], [[Link(np.flatnonzero(a_or_ab.accepting), Entry(1, False))], []], Entry(0, False))
    assert bad is None
