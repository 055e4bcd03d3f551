"""JSON Schema -> regex syntax tree, in-house, failing closed.

The schema becomes a `regex_ast` tree, never a regex string that something re-parses: leaves that
recur (string bodies, formats, "any JSON value", numbers) are compiled once to minimized byte DFAs
and spliced in as `Automaton` nodes, and the whole tree is determinized once by our own subset
construction (see `automaton`). That is what makes the "person" schema compile in milliseconds where
handing its regex to interegular takes seconds. `json_schema_to_regex` prints the same tree as a
Python regex for display and cross-checking.

Every keyword is either compiled exactly, proven irrelevant (annotations; permissive keywords whose
effect is only to allow more than sgc generates), or rejected with a `ConstraintError` carrying its
JSON pointer. What sgc generates is always a subset of what the schema accepts:

* objects list their properties in the order of `properties`, required ones always, optional ones
  when the model chooses; properties that are not listed are never generated (whether or not
  `additionalProperties` is false), except for schemas that list none: those are maps with string
  keys whose values follow `additionalProperties` (or any JSON value);
* numbers and strings use one spelling per value (canonical integers, no exponent when bounded,
  escapes only where JSON requires them, plus `\\uXXXX` in free text);
* a schema without `type` takes every JSON type; keywords of one type constrain only that type;
* `oneOf` is accepted only when its branches are provably exclusive (disjoint types, disjoint
  literal values, or a required property whose const/enum values differ), decided type by type;
  else it is rejected;
* `if`/`then`/`else` is (if and then) or (not if and else), compiled where `not` is.

Whitespace follows a `Whitespace` policy: compact (none) by default, or a bounded run (optionally one
newline, then at most `max_spaces` spaces) wherever JSON allows whitespace between tokens, so small
models cannot loop on whitespace.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any
from urllib.parse import unquote

from . import json_structure, unique_items
from .automaton import DEFAULT_MAX_STATES, DFA, ascii_dfa_to_regex, difference, intersect, trim
from .charset import CharSet
from .dfa_ops import SMALL_POSITIONS, byte_dfa, literal_set_dfa
from .errors import ConstraintError, join_pointer
from .formats import FORMATS
from .limits import check_pattern_chars, check_positions, max_nesting, over
from .number_ranges import INTEGER, NUMBER, decimal_range, exponent_forms, int_range
from .object_dfa import Decision, members_dfa
from .regex_ast import (
    EMPTY,
    EPSILON,
    Alt,
    Automaton,
    Chars,
    Concat,
    Empty,
    Epsilon,
    Node,
    Repeat,
    alt,
    chars,
    concat,
    is_empty,
    literal,
    optional,
    repeat,
    size,
    to_regex,
)
from .regex_parser import Alternative, disputed_chars, parse_regex

# ---------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class Whitespace:
    """Whitespace allowed between JSON tokens: an optional newline (if `newline`), then at most
    `max_spaces` spaces. The default is compact JSON: none at all."""

    max_spaces: int = 0
    newline: bool = False

    def node(self) -> Node:
        spaces = repeat(literal(" "), 0, self.max_spaces)
        return concat(optional(literal("\n")), spaces) if self.newline else spaces

    @property
    def is_compact(self) -> bool:
        return self.max_spaces == 0 and not self.newline


COMPACT = Whitespace()
FLEXIBLE = Whitespace(max_spaces=8, newline=True)


def whitespace_policy(ws: str | int | Whitespace | None) -> Whitespace:
    """ "compact" (default), "flexible" (one newline + up to 8 spaces), an int (up to N spaces, no
    newline), or a `Whitespace`."""
    if ws is None or ws == "compact":
        return COMPACT
    if ws == "flexible":
        return FLEXIBLE
    if isinstance(ws, Whitespace):
        return ws
    if isinstance(ws, int) and not isinstance(ws, bool) and 0 <= ws <= 64:
        return Whitespace(max_spaces=ws)
    raise ConstraintError(
        f"invalid whitespace policy {ws!r}: use 'compact', 'flexible', an int or Whitespace"
    )


@dataclass(frozen=True)
class SchemaOptions:
    whitespace: Whitespace = COMPACT
    max_recursion: int = 3  # times one $ref may be entered on the way down one instance path
    any_depth: int = 2  # nesting of arrays/objects inside an unconstrained JSON value
    # compile_json_schema only: an unconstrained value is the bracket-counting superset of
    # `json_structure.superset_node` (no container kinds), made exact by the decode-time structure
    # check; never set for json_schema_to_node / json_schema_to_regex, which stay exact
    decode_checks: bool = False
    # Budgets; None reads compiler.budgets (constraint_nesting, constraint_positions, constraint_states)
    max_nesting: int | None = None  # nested subschemas
    max_size: int | None = None  # automaton positions after unrolling bounded repeats
    max_states: int | None = DEFAULT_MAX_STATES


# ---------------------------------------------------------------------------------------------
# Keywords

ANNOTATIONS = frozenset(
    {
        "title", "description", "default", "examples", "$comment", "$schema", "$id", "id", "deprecated",
        "readOnly", "writeOnly", "$defs", "definitions", "contentMediaType", "contentEncoding",
        "contentSchema", "$anchor", "$vocabulary",
    }
)  # fmt: skip
# Formats some JSON Schema draft defines (and jsonschema's checkers know): a value sgc does not
# enforce is rejected. Any other `format` value is an annotation (OpenAPI's int32, password, ...).
KNOWN_FORMATS = frozenset(
    {
        "date-time", "date", "time", "duration", "email", "idn-email", "hostname", "idn-hostname",
        "ipv4", "ipv6", "uri", "uri-reference", "iri", "iri-reference", "uuid", "uri-template",
        "json-pointer", "relative-json-pointer", "regex",
        # draft 3
        "host-name", "ip-address", "color", "utc-millisec", "style", "phone",
    }
)  # fmt: skip
OBJECT_KEYWORDS = frozenset(
    {
        "properties",
        "required",
        "additionalProperties",
        "minProperties",
        "maxProperties",
        "unevaluatedProperties",
        "patternProperties",
        "propertyNames",
        "dependentRequired",
        "dependencies",
        "dependentSchemas",
    }
)
ARRAY_KEYWORDS = frozenset(
    {
        "items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems", "contains",
        "minContains", "maxContains",
    }
)  # fmt: skip
STRING_KEYWORDS = frozenset({"minLength", "maxLength", "pattern", "format"})
NUMBER_KEYWORDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"})
GENERIC_KEYWORDS = frozenset({"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "not"})
CONDITIONAL_KEYWORDS = frozenset({"if", "then", "else"})
SUPPORTED_KEYWORDS = (
    ANNOTATIONS
    | OBJECT_KEYWORDS
    | ARRAY_KEYWORDS
    | STRING_KEYWORDS
    | NUMBER_KEYWORDS
    | GENERIC_KEYWORDS
    | CONDITIONAL_KEYWORDS
)
REJECTED_KEYWORDS = {
    "unevaluatedItems": "unevaluatedItems is not supported",
    "$dynamicRef": "$dynamicRef is not supported",
    "$recursiveRef": "$recursiveRef is not supported",
    "$dynamicAnchor": "$dynamicAnchor is not supported",
    "$recursiveAnchor": "$recursiveAnchor is not supported",
    # draft 3 validation keywords (a schema using them means them)
    "divisibleBy": "divisibleBy (draft 3) is not supported; use multipleOf",
    "disallow": "disallow (draft 3) is not supported",
    "extends": "extends (draft 3) is not supported; use allOf",
}
# Everything else that is not a keyword sgc compiles or rejects (vendor `x-*`, OpenAPI's `nullable`,
# `discriminator`, misspellings, ...) is ignored, as the specification says unknown keywords are.
TYPES = ("null", "boolean", "object", "array", "number", "integer", "string")
# An object body whose tree unrolls to more positions is built as a linked DFA (see object_dfa);
# smaller ones go through the subset construction, which merges the copies itself.
LINKED_MEMBERS_MIN_POSITIONS = SMALL_POSITIONS
_MEMBERS_ROOT = "root"  # the root decision's key in members_node's graph
ALL_TYPES = frozenset({"null", "boolean", "object", "array", "number", "string"})  # number covers integer
SUPPORTED_FORMATS = tuple(FORMATS)


# ---------------------------------------------------------------------------------------------
# JSON text pieces

_NEEDS_ESCAPE = CharSet.from_ranges([(0, 0x1F), (0x22, 0x22), (0x5C, 0x5C)])
_SHORT_ESCAPES = {'"': '"', "\\": "\\", "\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t"}
_HEX = chars(CharSet.from_ranges([(48, 57), (65, 70), (97, 102)]))
_HEX_NOT_D = chars(CharSet.from_ranges([(48, 57), (65, 67), (69, 70), (97, 99), (101, 102)]))
_UNICODE_ESCAPE = concat(
    literal("u"),
    alt(
        concat(_HEX_NOT_D, repeat(_HEX, 3, 3)),
        # \uD800-\uDFFF are surrogates: never generated, so a length is a count of code points
        concat(chars(CharSet.of("dD")), chars(CharSet.range("0", "7")), repeat(_HEX, 2, 2)),
    ),
)
JSON_CHAR = alt(
    chars(_NEEDS_ESCAPE.complement()),
    concat(literal("\\"), alt(chars(CharSet.of('"\\/bfnrt')), _UNICODE_ESCAPE)),
)


def encode_chars(cs: CharSet) -> Node:
    """The JSON string-body spellings of one character of `cs`: raw where JSON allows it, else its
    escape (short form where one exists, else \\u00XX)."""
    raw = cs - _NEEDS_ESCAPE
    special = cs & _NEEDS_ESCAPE
    if special.is_empty():
        return chars(raw)
    short = []
    long_by_high: dict[str, list[str]] = {}
    for ch in special.chars():
        if ch in _SHORT_ESCAPES:
            short.append(_SHORT_ESCAPES[ch])
        else:
            code = f"{ord(ch):02x}"
            long_by_high.setdefault(code[0], []).append(code[1])
    escapes: list[Node] = []
    if short:
        escapes.append(chars(CharSet.of(short)))
    for high, lows in long_by_high.items():
        escapes.append(concat(literal("u00" + high), chars(CharSet.of(lows))))
    return alt(chars(raw), concat(literal("\\"), alt(*escapes)))


def encode_node(node: Node) -> Node:
    """Map a regex over decoded string content to one over its JSON string-body spelling."""
    if isinstance(node, Chars):
        return encode_chars(node.charset)
    if isinstance(node, Concat):
        return concat(*(encode_node(p) for p in node.parts))
    if isinstance(node, Alt):
        return alt(*(encode_node(o) for o in node.options))
    if isinstance(node, Repeat):
        return repeat(encode_node(node.node), node.min, node.max)
    return node


def json_literal(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _canonical(value: Any) -> str:
    """A key under which JSON-equal values (1 and 1.0; objects in any key order) collide."""

    def norm(v: Any) -> Any:
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, list):
            return [norm(x) for x in v]
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        return v

    return json.dumps(norm(value), sort_keys=True, allow_nan=False)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    raise TypeError(value)


def _type_matches(value: Any, types: frozenset[str]) -> bool:
    t = _json_type(value)
    return t in types or (t == "integer" and "number" in types)


def _types_overlap(a: frozenset[str], b: frozenset[str]) -> bool:
    def widen(s: frozenset[str]) -> set[str]:
        out = set(s)
        if "number" in out:
            out.add("integer")
        return out

    return bool(widen(a) & widen(b))


# ---------------------------------------------------------------------------------------------
# Views: a schema's keywords with the pointer each came from (merging allOf keeps them apart)


@dataclass(frozen=True)
class _Sub:
    """A subschema together with its pointer; several when allOf branches each constrain it."""

    parts: tuple[tuple[Any, str], ...]


View = dict[str, tuple[Any, str]]


class _Cut(Exception):
    """A $ref reached its recursion limit: this subschema is treated as unsatisfiable."""


# ---------------------------------------------------------------------------------------------
# The compiler

_LEAF_CACHE: dict[tuple, DFA] = {}
_LEAF_CACHE_LIMIT = 256
_INLINE_BODY_POSITIONS = 1 << 16  # string bodies larger than this are not leaves (see compile_string)
_LEAF_CACHE_MAX_BYTES = 1 << 20  # a maxLength: 100000 body (100+ MB) is not kept after its compile


def _check_size(n: int, max_size: int | None, what: str) -> None:
    if max_size is None:
        check_positions(n)
    elif n > max_size:
        raise ConstraintError(f"{what} unrolls to {n} automaton positions, over the budget of {max_size}")


def _cached_leaf(key: tuple, build: Any, max_states: int | None, max_size: int | None = None) -> DFA:
    dfa = _LEAF_CACHE.get(key)
    if dfa is None:
        node = build()
        _check_size(_size(node), max_size, "a string or value")
        dfa = byte_dfa(node, max_states)
        if dfa.transitions.nbytes <= _LEAF_CACHE_MAX_BYTES:
            if len(_LEAF_CACHE) >= _LEAF_CACHE_LIMIT:
                _LEAF_CACHE.pop(next(iter(_LEAF_CACHE)))
            _LEAF_CACHE[key] = dfa
    return dfa


class SchemaCompiler:
    def __init__(self, root: Any, options: SchemaOptions) -> None:
        self.root = root
        self.options = options
        self.ws = options.whitespace.node()
        self.ws_key = (options.whitespace.max_spaces, options.whitespace.newline)
        self._anchors: dict[str, tuple[Any, str]] | None = None
        self._key_dfas: dict[int, tuple[Any, DFA]] = {}

    # -- entry ------------------------------------------------------------------------------
    def compile_root(self) -> Node:
        node = self.compile((self.root, ""), {}, 0)
        if is_empty(node):
            raise ConstraintError(
                "the schema has no instance sgc can generate (unsatisfiable, or it needs more "
                f"recursion than max_recursion={self.options.max_recursion})",
                pointer="",
            )
        try:
            _check_size(_size(node), self.options.max_size, "the schema")
        except ConstraintError as e:
            raise e.with_pointer("") from None
        return node

    # -- schema -> node ---------------------------------------------------------------------
    def compile(self, sub: tuple[Any, str] | _Sub, refs: dict[str, int], depth: int) -> Node:
        ptr = sub[1] if isinstance(sub, tuple) else sub.parts[0][1]
        limit = self.options.max_nesting if self.options.max_nesting is not None else max_nesting()
        if depth > limit:
            if self.options.max_nesting is not None:
                raise ConstraintError(f"schema nesting exceeds the budget of {limit}", pointer=ptr)
            raise over("constraint_nesting", depth, "schema nesting", pointer=ptr)
        parts = [sub] if isinstance(sub, tuple) else list(sub.parts)
        # The $refs entered while flattening stay counted for everything below this instance.
        refs = dict(refs)
        try:
            views: list[View | None] = []
            for schema, p in parts:
                views.extend(self.flatten(schema, p, refs))
        except _Cut:
            return EMPTY
        if any(v is None for v in views):
            return EMPTY
        view = self.merge(views, ptr) if len(views) != 1 else views[0]
        try:
            if not any(k not in ANNOTATIONS for k in view):
                return self.any_value(self.options.any_depth)
            return self.compile_view(view, ptr, refs, depth)
        except ConstraintError as e:
            if e.pointer is None:  # a budget hit while compiling a leaf: say where
                raise e.with_pointer(ptr) from None
            raise

    def flatten(self, schema: Any, ptr: str, refs: dict[str, int]) -> list[View]:
        """The schema as views to be merged: $ref targets and allOf branches inlined."""
        if schema is True:
            return [{}]
        if schema is False:
            return [None]  # type: ignore[list-item]
        if isinstance(schema, _View):
            return [schema.view]
        if isinstance(schema, _Sub):  # a merged subschema inside a view merged again
            return [v for s, p in schema.parts for v in self.flatten(s, p, refs)]
        if not isinstance(schema, dict):
            raise ConstraintError(
                f"a schema must be an object or a boolean, not {type(schema).__name__}", pointer=ptr
            )
        self.check_keywords(schema, ptr)
        view: View = {
            k: (v, join_pointer(ptr, k))
            for k, v in schema.items()
            if k not in ("$ref", "allOf") and k not in CONDITIONAL_KEYWORDS and _asserts(k, v)
        }
        if "if" in schema:  # then/else without if are ignored, as the specification says
            branches = tuple(
                (schema[k], join_pointer(ptr, k)) if k in schema else None for k in ("if", "then", "else")
            )
            view[_COND] = ((branches,), join_pointer(ptr, "if"))
        out = [view]
        if "$ref" in schema:
            ref = schema["$ref"]
            target, tptr = self.resolve(ref, join_pointer(ptr, "$ref"))
            count = refs.get(ref, 0)
            if count >= self.options.max_recursion:
                raise _Cut()
            refs[ref] = count + 1
            out.extend(self.flatten(target, tptr, refs))
        if "allOf" in schema:
            items = schema["allOf"]
            aptr = join_pointer(ptr, "allOf")
            if not isinstance(items, list) or not items:
                raise ConstraintError("allOf must be a non-empty array", pointer=aptr)
            for i, item in enumerate(items):
                out.extend(self.flatten(item, join_pointer(aptr, i), refs))
        return out

    def check_keywords(self, schema: dict, ptr: str) -> None:
        for k in schema:
            reason = REJECTED_KEYWORDS.get(k)
            if reason is not None:
                raise ConstraintError(reason, pointer=join_pointer(ptr, k))

    def resolve(self, ref: Any, ptr: str) -> tuple[Any, str]:
        if not isinstance(ref, str):
            raise ConstraintError(f"$ref must be a string, not {ref!r}", pointer=ptr)
        base = _schema_id(self.root)
        if base and ref.startswith(base.split("#")[0] + "#") and not ref.startswith("#"):
            ref = ref[len(base.split("#")[0]) :]  # the root's own URI, spelled out
        if not ref.startswith("#"):
            raise ConstraintError(f"only local $ref ('#/...') is supported, not {ref!r}", pointer=ptr)
        self.check_base(ptr)
        path = unquote(ref[1:])
        if path and not path.startswith("/"):
            found = self.anchors().get(path)
            if found is None:
                raise ConstraintError(f"$ref {ref!r}: no $anchor or $id names {path!r}", pointer=ptr)
            return found
        node = self.root
        for token in path.split("/")[1:] if path else []:
            token = token.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and token in node:
                node = node[token]
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                node = node[int(token)]
            else:
                raise ConstraintError(f"$ref {ref!r} does not resolve", pointer=ptr)
        return node, path

    def check_base(self, ptr: str) -> None:
        """A `$ref` below a nested `$id` (or draft-4 `id`) is relative to that id's URI, not to the
        document: rejected, since sgc resolves local pointers in the document only."""
        node = self.root
        tokens = ptr.split("/")[1:-1]  # the schemas enclosing the $ref keyword
        for i, token in enumerate(tokens):
            token = token.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict):
                node = node.get(token)
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                node = node[int(token)]
            else:
                return
            if isinstance(node, dict):
                nid = _schema_id(node)
                if nid and not nid.startswith("#"):
                    raise ConstraintError(
                        "a $ref inside a subschema with its own $id (a new base URI) is not supported",
                        pointer="/" + "/".join(tokens[: i + 1]),
                    )

    def anchors(self) -> dict[str, tuple[Any, str]]:
        """Plain-name fragments: `$anchor` (2019+) and `$id`/`id` of the form "#name" (drafts 4-7)."""
        if self._anchors is None:
            found: dict[str, tuple[Any, str]] = {}
            stack: list[tuple[Any, str, int]] = [(self.root, "", 0)]
            while stack:
                node, p, d = stack.pop()
                if d > 4 * max_nesting() + 8:
                    continue
                if isinstance(node, dict):
                    if isinstance(node.get("$anchor"), str):
                        found.setdefault(node["$anchor"], (node, p))
                    nid = _schema_id(node)
                    if nid and nid.startswith("#") and len(nid) > 1:
                        found.setdefault(nid[1:], (node, p))
                    for k, v in node.items():
                        if isinstance(v, (dict, list)):
                            stack.append((v, join_pointer(p, k), d + 1))
                elif isinstance(node, list):
                    for i, v in enumerate(node):
                        if isinstance(v, (dict, list)):
                            stack.append((v, join_pointer(p, i), d + 1))
            self._anchors = found
        return self._anchors

    # -- allOf merging ----------------------------------------------------------------------
    def merge(self, views: list[View], ptr: str) -> View | None:
        out: View = {}
        # Each branch closed by `additionalProperties: false` allows the names it lists and the
        # names its own patternProperties match; the merged object keeps the names all allow.
        closed_sets: list[tuple[set[str], list[str], str]] = []
        with_patterns = [v for v in views if "patternProperties" in v]
        for view in views:
            ap = view.get("additionalProperties")
            if ap is not None and ap[0] is False:
                patterns: list[str] = []
                pats_p = ap[1]
                if "patternProperties" in view:
                    if len(with_patterns) > 1:
                        raise ConstraintError(
                            "allOf with a branch closed by additionalProperties: false next to "
                            "another branch's patternProperties is not supported",
                            pointer=ap[1],
                        )
                    pats, pats_p = view["patternProperties"]
                    if not isinstance(pats, dict):
                        raise ConstraintError("patternProperties must be an object", pointer=pats_p)
                    patterns = list(pats)
                props = view.get("properties", ({}, ""))[0]
                closed_sets.append((set(props) if isinstance(props, dict) else set(), patterns, pats_p))
            for k, (v, p) in view.items():
                if k in ANNOTATIONS:
                    continue
                if k not in out:
                    out[k] = (_normalize(k, v, p), p)
                    continue
                old, _ = out[k]
                out[k] = (self.merge_keyword(k, old, v, p), p)
        if closed_sets and "properties" in out:
            props, pp = out["properties"]

            def allows(closed: tuple[set[str], list[str], str], name: str) -> bool:
                names, patterns, cptr = closed
                return name in names or any(
                    self.pattern_matches(pat, name, join_pointer(cptr, pat))
                    for pat in patterns
                )

            allowed = {name for name in props if all(allows(c, name) for c in closed_sets)}
            required = set(out.get("required", ([], ""))[0])
            missing = [name for name in props if name not in allowed and name in required]
            if missing:
                raise ConstraintError(
                    f"allOf requires property {missing[0]!r} that another branch forbids (additionalProperties: false)",
                    pointer=pp,
                )
            out["properties"] = ({k: v for k, v in props.items() if k in allowed}, pp)
        if closed_sets:
            out["additionalProperties"] = (False, ptr)
        return out

    def merge_keyword(self, k: str, a: Any, b: Any, ptr: str) -> Any:
        if isinstance(a, _Conflict) or isinstance(b, _Conflict):
            return a if isinstance(a, _Conflict) else b  # nothing matched already: still nothing
        if k == "type":
            ta = {a} if isinstance(a, str) else set(a)
            tb = {b} if isinstance(b, str) else set(b)
            both = (ta & tb) | (
                {"integer"}
                if ("integer" in ta and "number" in tb) or ("number" in ta and "integer" in tb)
                else set()
            )
            return sorted(both) if both else _Conflict()
        if k == "properties":
            if not isinstance(a, dict) or not isinstance(b, dict):
                raise ConstraintError("properties must be an object", pointer=ptr)
            merged = dict(a)
            for name, sub in b.items():
                if name in merged:
                    merged[name] = _merge_subs(merged[name], sub, ptr, name)
                else:
                    merged[name] = _Sub(((sub, join_pointer(ptr, name)),))
            return merged
        if k == "patternProperties":
            if not isinstance(a, dict) or not isinstance(b, dict):
                raise ConstraintError("patternProperties must be an object", pointer=ptr)
            merged = dict(a)
            for pat, sub in b.items():
                merged[pat] = (
                    _merge_subs(merged[pat], sub, ptr, pat)
                    if pat in merged
                    else _Sub(((sub, join_pointer(ptr, pat)),))
                )
            return merged
        if k == "propertyNames":
            return _merge_subs(a, b, ptr, None)
        if k in ("dependentRequired", "dependencies", "dependentSchemas"):
            if not isinstance(a, dict) or not isinstance(b, dict):
                raise ConstraintError(f"{k} must be an object", pointer=ptr)
            merged = dict(a)
            for name, dep in b.items():
                if name in merged and isinstance(merged[name], list) and isinstance(dep, list):
                    merged[name] = list(dict.fromkeys(merged[name] + dep))
                elif name in merged:
                    merged[name] = {"allOf": [_plain_dep(merged[name]), _plain_dep(dep)]}
                else:
                    merged[name] = dep
            return merged
        if k in (_COND, _NOT_REQUIRED):
            return tuple(a) + tuple(b)
        if k == "not":  # not A and not B: kept apart, compile_not takes them one at a time
            items = a.items if isinstance(a, _Nots) else ((a, ptr),)
            return _Nots(items + ((b, ptr),))
        if k == "required":
            return list(dict.fromkeys(list(a) + list(b)))
        if k == "additionalProperties" or k == "unevaluatedProperties":
            if a is False or b is False:
                return False
            return a if b is True else b if a is True else _merge_subs(a, b, ptr, None)
        if k == "items":
            if isinstance(a, list) or isinstance(b, list):
                if _canonical(a) == _canonical(b):
                    return a
                raise ConstraintError(
                    "allOf with tuple-form items in several branches is not supported", pointer=ptr
                )
            return _merge_subs(a, b, ptr, None)
        if k in ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"):
            if isinstance(a, bool) or isinstance(b, bool):
                return self.merge_equal(k, a, b, ptr)
            return max(a, b)
        if k in ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"):
            if isinstance(a, bool) or isinstance(b, bool):
                return self.merge_equal(k, a, b, ptr)
            return min(a, b)
        if k == "pattern":
            return _Patterns(a.items + ((b, ptr),))
        if k == "enum":
            keys = {_canonical(x) for x in b}
            return [x for x in a if _canonical(x) in keys]
        if k == "const":
            if _canonical(a) != _canonical(b):
                return _Conflict()
            return a
        return self.merge_equal(k, a, b, ptr)

    def merge_equal(self, k: str, a: Any, b: Any, ptr: str) -> Any:
        if _canonical(_plain(a)) == _canonical(_plain(b)):
            return a
        raise ConstraintError(
            f"allOf branches give different values for {k!r}; this merge is not supported", pointer=ptr
        )

    # -- a merged view -> node --------------------------------------------------------------
    def compile_view(self, view: View, ptr: str, refs: dict[str, int], depth: int) -> Node:
        if _COND in view:
            return self.compile_conditional(view, ptr, refs, depth)
        if "anyOf" in view and "oneOf" in view:
            raise ConstraintError("anyOf together with oneOf is not supported", pointer=view["oneOf"][1])
        if "oneOf" in view and _SPLIT not in view and "enum" not in view and "const" not in view:
            split = self.split_types(view, ptr)
            if split is not None:
                # one alternative per JSON type: oneOf's exclusivity is decided type by type
                return alt(*(self.compile_view(v, ptr, refs, depth) for v in split))
        for key in ("anyOf", "oneOf"):
            if key in view:
                return self.compile_branches(key, view, ptr, refs, depth)
        if any(isinstance(v, _Conflict) for v, _ in view.values()):
            return EMPTY
        if "not" in view:
            return self.compile_not(view, ptr, refs, depth)
        if "enum" in view or "const" in view:
            return self.compile_literals(view, ptr, refs, depth)
        types = self.types_of(view, ptr)
        not_types = view.get(_NOT_TYPES, (frozenset(), ptr))[0]
        if "integer" in not_types and "number" in types:
            raise ConstraintError(
                "not {type: integer} next to type number (non-integer numbers) is not supported",
                pointer=view[_NOT_TYPES][1],
            )
        types -= not_types | ({"integer"} if "number" in not_types else set())
        if _NOT_REQUIRED in view:
            types &= {"object"}  # non-objects satisfy `required`, so they fail its negation
        options = []
        for t in TYPES:
            if t in types:
                node = self.compile_type(t, view, ptr, refs, depth)
                if _NOT_VALUES in view:
                    node = self.exclude_values(node, t, *view[_NOT_VALUES])
                options.append(node)
        return alt(*options)

    def compile_conditional(self, view: View, ptr: str, refs: dict[str, int], depth: int) -> Node:
        """`if`/`then`/`else` as two exclusive alternatives: (if and then) or (not if and else).
        Exact whenever `not if` is (see compile_not: type, const, enum, required, properties of
        those); otherwise the negation is refused with its pointer."""
        conds, _ = view[_COND]
        (cond, cptr), then, els = conds[0]
        rest = {k: v for k, v in view.items() if k != _COND}
        if len(conds) > 1:
            rest[_COND] = (conds[1:], view[_COND][1])
        yes: list[tuple[Any, str]] = [(_View(rest), ptr), (cond, cptr)]
        no: list[tuple[Any, str]] = [(_View(rest), ptr), (_View({"not": (cond, cptr)}), cptr)]
        if then is not None:
            yes.append(then)
        if els is not None:
            no.append(els)
        return alt(
            self.compile(_Sub(tuple(yes)), refs, depth + 1), self.compile(_Sub(tuple(no)), refs, depth + 1)
        )

    def compile_not(self, view: View, ptr: str, refs: dict[str, int], depth: int) -> Node:
        """`not` of the forms whose negation is finite: type, const, enum, required (several
        keywords: De Morgan, one branch per keyword); `not` (double negation), `anyOf` (each
        branch negated) and `contains` (every item fails) reduce to those."""
        neg, nptr = view["not"]
        rest = {k: v for k, v in view.items() if k != "not"}
        if isinstance(neg, _Nots):
            (neg, nptr), more = neg.items[0], neg.items[1:]
            rest["not"] = (_Nots(more), more[0][1]) if len(more) > 1 else more[0]
        try:
            nviews = self.flatten(neg, nptr, dict(refs))
        except _Cut:
            nviews = [None]
        if any(v is None for v in nviews):
            return self.compile_view(rest, ptr, refs, depth)  # not false: no constraint
        nview = self.merge(nviews, nptr) if len(nviews) != 1 else nviews[0]
        branches: list[View] = []
        for k, (v, kp) in nview.items():
            if k in ANNOTATIONS:
                continue
            branch = dict(rest)
            if k == "type":
                old = branch.get(_NOT_TYPES, (frozenset(), kp))[0]
                branch[_NOT_TYPES] = (old | frozenset(_type_list(v, kp)), kp)
            elif k in ("enum", "const"):
                values = [v] if k == "const" else v
                if not isinstance(values, list):
                    raise ConstraintError("enum must be an array", pointer=kp)
                old = branch.get(_NOT_VALUES, ((), kp))[0]
                branch[_NOT_VALUES] = (tuple(old) + tuple(values), kp)
            elif k == "required":
                if not isinstance(v, list) or not all(isinstance(r, str) for r in v):
                    raise ConstraintError("required must be an array of strings", pointer=kp)
                old = branch.get(_NOT_REQUIRED, ((), kp))[0]
                branch[_NOT_REQUIRED] = (tuple(old) + (tuple(v),), kp)
            elif k == "properties":
                # not (every listed name is absent or valid) = an object with some name present
                # and invalid: one branch per name, its value under `not`
                if not isinstance(v, dict):
                    raise ConstraintError("properties must be an object", pointer=kp)
                for name, sub in v.items():
                    sp = join_pointer(kp, name)
                    negated = {
                        "type": (["object"], kp),
                        "required": ([name], kp),
                        "properties": ({name: _View({"not": (sub, sp)})}, kp),
                    }
                    merged = self.merge([rest, negated], ptr)
                    if merged is not None:
                        branches.append(merged)
                continue
            elif k == "not":
                # not not A = A (several: not (not A and not B) = A or B)
                for inner, ip in v.items if isinstance(v, _Nots) else ((v, kp),):
                    try:
                        views = self.flatten(inner, ip, dict(refs))
                    except _Cut:
                        raise ConstraintError("not not with a recursive $ref is not supported", pointer=ip) from None
                    merged = None if any(x is None for x in views) else self.merge([rest, *views], ptr)
                    if merged is not None:
                        branches.append(merged)
                continue
            elif k == "anyOf":
                # not (A or B) = not A and not B: one branch, each negation exact or refused
                if not isinstance(v, list) or not v:
                    raise ConstraintError("anyOf must be a non-empty array", pointer=kp)
                nots: list[View] = [{"not": (a, join_pointer(kp, i))} for i, a in enumerate(v)]
                merged = self.merge([rest, *nots], ptr)
                if merged is not None:
                    branches.append(merged)
                continue
            elif k == "contains":
                # not (some item matches C) = not an array, or an array whose every item fails C
                items = rest.get("items", (True, kp))[0]
                if "prefixItems" in rest or isinstance(items, list) or {"minContains", "maxContains"} & nview.keys():
                    raise ConstraintError(
                        "not with contains is supported only without prefixItems, tuple items and "
                        "min/maxContains",
                        pointer=kp,
                    )
                not_array = dict(rest)
                old = not_array.get(_NOT_TYPES, (frozenset(), kp))[0]
                not_array[_NOT_TYPES] = (old | frozenset({"array"}), kp)
                branches.append(not_array)
                every_fails: View = {"type": (["array"], kp), "items": (_View({"not": (v, kp)}), kp)}
                merged = self.merge([rest, every_fails], ptr)
                if merged is not None:
                    branches.append(merged)
                continue
            else:
                raise ConstraintError(
                    f"not with {k!r} is not supported (only type, const, enum, required, properties, not, "
                    "anyOf and contains of those negate exactly)",
                    pointer=kp,
                )
            branches.append(branch)
        return alt(*(self.compile_view(b, ptr, refs, depth) for b in branches))

    def exclude_values(self, node: Node, t: str, values: tuple, vptr: str) -> Node:
        """`node` (the values of type t) without the spellings of `values`."""
        if is_empty(node):
            return node
        spellings: list[Node] = []
        for v in values:
            if not _type_matches(v, frozenset({t})) and not (t == "number" and _json_type(v) == "integer"):
                continue
            if t in ("null", "boolean"):
                spellings.append(literal(json_literal(v)))
            elif t == "integer":
                spellings.append(literal(str(int(v))))
            elif t == "string":
                spellings.append(concat(literal('"'), *(_char_spellings(c) for c in v), literal('"')))
            else:
                raise ConstraintError(
                    f"not with a {t} value is not supported (a {t} has many spellings)", pointer=vptr
                )
        if not spellings:
            return node
        ms = self.options.max_states
        dfa = difference(byte_dfa(node, ms), byte_dfa(alt(*spellings), ms), ms)
        return EMPTY if dfa.is_empty() else Automaton(dfa, _no_regex)

    def compile_branches(self, key: str, view: View, ptr: str, refs: dict[str, int], depth: int) -> Node:
        items, kptr = view[key]
        if not isinstance(items, list) or not items:
            raise ConstraintError(f"{key} must be a non-empty array", pointer=kptr)
        rest = {k: v for k, v in view.items() if k != key and k not in ANNOTATIONS}
        branches = []
        for i, item in enumerate(items):
            parts = (
                ((_View(rest), ptr), (item, join_pointer(kptr, i)))
                if rest
                else ((item, join_pointer(kptr, i)),)
            )
            branches.append(_Sub(parts))
        required_sets = [_required_only(item) for item in items] if key == "oneOf" else []
        if len(items) >= 2 and required_sets and all(r is not None for r in required_sets):
            # oneOf of `required` lists: exactly one list complete, i.e. branch i with every other
            # list incomplete (the not-required form), which makes the branches exclusive
            branches = [
                _Sub(
                    b.parts
                    + (
                        (
                            _View(
                                {
                                    _NOT_REQUIRED: (
                                        tuple(r for j, r in enumerate(required_sets) if j != i),
                                        kptr,
                                    )
                                }
                            ),
                            kptr,
                        ),
                    )
                )
                for i, b in enumerate(branches)
            ]
        elif key == "oneOf":
            try:
                exclusive = self.check_exclusive(branches, kptr, refs)
            except ConstraintError:
                strings = self.one_of_strings(branches, kptr, refs, depth)
                if strings is None:
                    raise
                return strings
            if not exclusive:
                return EMPTY
        return alt(*(self.compile(b, refs, depth + 1) for b in branches))

    def one_of_strings(self, branches: list[_Sub], ptr: str, refs: dict[str, int], depth: int) -> Node | None:
        """oneOf of overlapping string branches (patterns, formats, lengths, enums), exactly: the
        strings exactly one branch takes, as a difference of automata. None when some branch
        constrains more than strings, or exactly one branch takes every non-string (then those
        would be valid too).

        Every value is compared in one spelling (raw characters, escapes only where JSON needs
        them, `encode_chars`'s), which each branch's automaton accepts for every string it takes
        (the completeness the tests check), so a string outside another branch's automaton in that
        spelling is outside its language. A branch's automaton holds what both readings of its
        patterns (ECMA's, Python's) take, so the strings are kept to those on which the readings
        agree (`disputed_chars`: no Unicode digit where a pattern has \\d, no final newline where
        it has `$`, ...). Formats are out: sgc enforces subsets of them."""
        untyped = 0
        disputed = CharSet.nothing()
        final_newline = False
        for b in branches:
            try:
                views = [v for schema, p in b.parts for v in self.flatten(schema, p, dict(refs))]
            except _Cut:
                return None
            if any(v is None for v in views):
                continue  # matches nothing
            view = self.merge(views, ptr) if len(views) > 1 else views[0]
            if view is None or any(isinstance(v, _Conflict) for v, _ in view.values()):
                continue
            if not set(view) - ANNOTATIONS <= _STRING_BRANCH_KEYWORDS:
                return None
            if "pattern" in view:
                v, p = view["pattern"]
                for pat, _ in v.items if isinstance(v, _Patterns) else [(v, p)]:
                    if not isinstance(pat, str):
                        return None
                    chars_, newline = disputed_chars(pat)
                    disputed, final_newline = disputed | chars_, final_newline or newline
            if "type" not in view:
                untyped += 1
            elif set(_type_list(*view["type"])) != {"string"}:
                return None
        if untyped == 1:
            return None
        ms = self.options.max_states
        as_string = (_View({"type": ("string", ptr)}), ptr)
        langs = [byte_dfa(self.compile(_Sub(b.parts + (as_string,)), refs, depth + 1), ms) for b in branches]
        agreed = _ANY_CHAR - disputed
        body = repeat(encode_node(chars(agreed)), 0, None)
        if final_newline:
            body = alt(EPSILON, concat(body, encode_node(chars(agreed - CharSet.of("\n")))))
        one_spelling = concat(literal('"'), body, literal('"'))
        canonical = byte_dfa(one_spelling, ms)
        exactly_one: list[Node] = []
        for i, lang in enumerate(langs):
            dfa = intersect(lang, canonical, ms)
            for j, other in enumerate(langs):
                if j != i and not dfa.is_empty():
                    dfa = difference(dfa, other, ms)
            if not dfa.is_empty():
                exactly_one.append(Automaton(dfa, _no_regex))
        return alt(*exactly_one) if exactly_one else EMPTY

    def check_exclusive(self, branches: list[_Sub], ptr: str, refs: dict[str, int]) -> bool:
        """Raise unless the branches are provably exclusive. False: no value matches exactly one
        branch (two branches of one type t do not constrain t at all, so every t matches both)."""
        sigs = []
        view_of: list[View | None] = []
        universal = 0
        for b in branches:
            view_of.append(None)
            try:
                views = []
                for schema, p in b.parts:
                    views.extend(self.flatten(schema, p, dict(refs)))
            except _Cut:
                sigs.append(None)
                continue
            if any(v is None for v in views):
                sigs.append(None)
                continue
            view = self.merge(views, ptr) if len(views) > 1 else views[0]
            if view is None or any(isinstance(v, _Conflict) for v, _ in view.values()):
                sigs.append(None)  # matches nothing
                continue
            if _universal_for_one_type(view):
                universal += 1
            view_of[-1] = view
            sigs.append(self.signature(view, ptr))
        if universal >= 2:
            return False
        sigs = [sig if sig is None else (*sig, self.object_shape(view_of[k], ptr, refs))
                for k, sig in enumerate(sigs)]
        for i in range(len(sigs)):
            for j in range(i + 1, len(sigs)):
                if sigs[i] is None or sigs[j] is None or _exclusive(sigs[i], sigs[j]):
                    continue
                raise ConstraintError(
                    f"oneOf branches {i} and {j} may both match one value; sgc enforces oneOf only when "
                    "branches are exclusive by type, by literal value, or by a required property with "
                    "distinct const/enum values (use anyOf if overlap is fine)",
                    pointer=ptr,
                )
        return True

    def object_shape(self, view: View | None, ptr: str, refs: dict[str, int]) -> tuple:
        """(required names, the names a closed object allows or None, the names sgc writes for it
        or None, {required name: the types its value may have}) of a branch's object keywords, for
        `_exclusive`: a name one branch requires and another's closed object does not allow, names
        each requires that the other is never written with, or a required value whose types two
        branches keep disjoint, tells objects of the two apart."""
        if view is None:
            return frozenset(), None, None, {}
        req_v = view.get("required", ([], ""))[0]
        required = frozenset(r for r in req_v if isinstance(r, str)) if isinstance(req_v, list) else frozenset()
        props = view.get("properties", ({}, ""))[0]
        props = props if isinstance(props, dict) else {}
        extra = view.get("additionalProperties", (True, ""))[0]
        closed = None
        if extra is False and "patternProperties" not in view and "unevaluatedProperties" not in view:
            closed = frozenset(props)
        written = None
        if not _NAME_ADDING_KEYWORDS & view.keys():
            # the open-object policy: an object that lists names is written with those names only
            # (properties, required, dependency targets: compile_object's `order`); a map, listing
            # none, takes any key. This bounds what sgc writes, not what the branch validates.
            try:
                deps = self.dependencies(view)
            except ConstraintError:
                deps = None
            if deps is not None:
                listed = frozenset(props) | required | frozenset(t for ts in deps.values() for t in ts)
                written = listed or None
        value_types = {}
        for name in required & frozenset(props):
            types = self.value_types(props[name], join_pointer(ptr, name), dict(refs), 3)
            if types is not None:
                value_types[name] = types
        return required, closed, written, value_types

    def value_types(self, schema: Any, ptr: str, refs: dict[str, int], budget: int) -> frozenset[str] | None:
        """The JSON types a schema's values may have when its `type` keywords (through $ref, allOf,
        and the union over anyOf/oneOf branches) say so; None when unknown."""
        if budget <= 0:
            return None
        try:
            views = self.flatten(schema, ptr, refs)
        except (_Cut, ConstraintError):
            return None
        if any(v is None for v in views):
            return frozenset()
        types: frozenset[str] | None = None
        for v in views:
            t: frozenset[str] | None = None
            if "type" in v and not isinstance(v["type"][0], _Conflict):
                t = frozenset(_type_list(*v["type"]))
            for key in ("anyOf", "oneOf"):
                if key in v and isinstance(v[key][0], list):
                    parts = [self.value_types(b, join_pointer(v[key][1], str(i)), dict(refs), budget - 1)
                             for i, b in enumerate(v[key][0])]
                    if any(x is None for x in parts):
                        continue
                    u = frozenset().union(*parts)
                    t = u if t is None else frozenset(x for x in t if _types_overlap(frozenset({x}), u))
            if t is not None:
                types = t if types is None else frozenset(x for x in types if _types_overlap(frozenset({x}), t))
        return types

    def signature(self, view: View, ptr: str) -> tuple:
        """(types, literal keys or None, {required property: literal keys})."""
        literals = _literal_keys(view)
        if "type" in view:
            types = frozenset(_type_list(view["type"][0], view["type"][1]))
        elif literals is not None:
            types = frozenset(_json_type(json.loads(k)) for k in literals)
        else:
            types = frozenset(self.inferred_types(view))
        discriminators = {}
        props = view.get("properties", ({}, ""))[0]
        required = (
            set(view.get("required", ([], ""))[0])
            if isinstance(view.get("required", ([], ""))[0], list)
            else set()
        )
        if isinstance(props, dict):
            for name, sub in props.items():
                if name in required:
                    keys = _sub_literal_keys(sub)
                    if keys is not None:
                        discriminators[name] = keys
        return types, literals, discriminators

    def compile_literals(
        self, view: View, ptr: str, refs: dict[str, int] | None = None, depth: int = 0
    ) -> Node:
        values = None
        if "enum" in view:
            enum, eptr = view["enum"]
            if not isinstance(enum, list):
                raise ConstraintError("enum must be an array", pointer=eptr)
            values = list(enum)
        if "const" in view:
            c = view["const"][0]
            values = [c] if values is None else [v for v in values if _canonical(v) == _canonical(c)]
        if "type" in view:
            types = frozenset(_type_list(*view["type"]))
            values = [v for v in values if _type_matches(v, types)]
        if _NOT_TYPES in view:
            values = [v for v in values if not _type_matches(v, view[_NOT_TYPES][0])]
        if _NOT_VALUES in view:
            gone = {_canonical(x) for x in view[_NOT_VALUES][0]}
            values = [v for v in values if _canonical(v) not in gone]
        if _NOT_REQUIRED in view:
            values = [
                v
                for v in values
                if isinstance(v, dict) and all(any(n not in v for n in g) for g in view[_NOT_REQUIRED][0])
            ]
        others = {
            k: x
            for k, x in view.items()
            if k not in ("enum", "const", "type", _NOT_TYPES, _NOT_VALUES, _NOT_REQUIRED, _SPLIT)
            and k not in ANNOTATIONS
        }
        if others and values:
            if "type" not in view:  # keywords of one type do not constrain values of another
                types = {"number" if _json_type(v) == "integer" else _json_type(v) for v in values}
                others["type"] = (sorted(types), ptr)
            # the other keywords filter the values: a value stays when its compact text is what
            # those keywords (compiled as usual, all types) accept
            rest = self.compile_view(others, ptr, refs or {}, depth)
            dfa = byte_dfa(rest, self.options.max_states)
            kept = []
            for v in values:
                try:
                    text = json_literal(v).encode("utf-8", "surrogatepass")
                except (ValueError, RecursionError):
                    kept.append(v)  # reported below
                    continue
                if dfa.accepts(text):
                    kept.append(v)
            values = kept
        texts = []
        for v in values:
            try:
                texts.append(json_literal(v))
            except ValueError:
                raise ConstraintError(f"enum/const value {v!r} is not JSON", pointer=ptr) from None
            except RecursionError:
                raise over("constraint_nesting", None, "an enum/const value's nesting", pointer=ptr) from None
        if len(texts) > _LITERAL_TRIE_MIN:
            return _literal_set(texts)
        return alt(*(literal(t) for t in texts))

    def inferred_types(self, view: View) -> set[str]:
        """Without `type`, every JSON type: type-specific keywords (`properties`, `minLength`, ...)
        constrain only instances of their type, so a non-object satisfies `properties`."""
        return set(ALL_TYPES)

    def split_types(self, view: View, ptr: str) -> list[View] | None:
        """The view once per JSON type it allows (None when it allows one type only)."""
        if "type" in view:
            v, tp = view["type"]
            if isinstance(v, _Conflict):
                return None
            types = set(_type_list(v, tp))
        else:
            types, tp = set(ALL_TYPES), ptr
        if "number" in types:
            types.discard("integer")
        if len(types) <= 1:
            return None
        return [{**view, "type": ([t], tp), _SPLIT: (True, tp)} for t in TYPES if t in types]

    def types_of(self, view: View, ptr: str) -> set[str]:
        if "type" not in view:
            return self.inferred_types(view)
        types = set(_type_list(*view["type"]))
        if "integer" in types and "number" in types:
            types.discard("integer")
        return types

    def compile_type(self, t: str, view: View, ptr: str, refs: dict[str, int], depth: int) -> Node:
        if t == "null":
            return literal("null")
        if t == "boolean":
            return alt(literal("true"), literal("false"))
        if t == "integer":
            return self.compile_integer(view)
        if t == "number":
            return self.compile_number(view)
        if t == "string":
            return self.compile_string(view)
        if t == "array":
            return self.compile_array(view, ptr, refs, depth)
        if t == "object":
            return self.compile_object(view, ptr, refs, depth)
        raise AssertionError(t)

    # -- numbers ----------------------------------------------------------------------------
    def bounds(self, view: View) -> tuple[tuple[Fraction, bool] | None, tuple[Fraction, bool] | None]:
        lower: tuple[Fraction, bool] | None = None
        upper: tuple[Fraction, bool] | None = None

        def tighter_lower(b: tuple[Fraction, bool]) -> None:
            nonlocal lower
            if lower is None or b[0] > lower[0] or (b[0] == lower[0] and b[1]):
                lower = b

        def tighter_upper(b: tuple[Fraction, bool]) -> None:
            nonlocal upper
            if upper is None or b[0] < upper[0] or (b[0] == upper[0] and b[1]):
                upper = b

        ex_min = view.get("exclusiveMinimum")
        ex_max = view.get("exclusiveMaximum")
        if "minimum" in view:
            v, p = view["minimum"]
            tighter_lower((_number(v, p), ex_min is not None and ex_min[0] is True))
        if "maximum" in view:
            v, p = view["maximum"]
            tighter_upper((_number(v, p), ex_max is not None and ex_max[0] is True))
        for key, setter in (("exclusiveMinimum", tighter_lower), ("exclusiveMaximum", tighter_upper)):
            if key in view:
                v, p = view[key]
                if isinstance(v, bool):
                    if v and key.replace("exclusiveM", "m") not in view:
                        raise ConstraintError(
                            f"boolean {key} needs {key.replace('exclusiveM', 'm')}", pointer=p
                        )
                    continue
                setter((_number(v, p), True))
        return lower, upper

    def multiple_of(self, view: View) -> int | None:
        if "multipleOf" not in view:
            return None
        v, p = view["multipleOf"]
        f = _number(v, p)
        if f <= 0:
            raise ConstraintError("multipleOf must be positive", pointer=p)
        if f.denominator != 1:
            raise ConstraintError("a non-integer multipleOf is not supported (float rounding)", pointer=p)
        if f > 10_000:
            raise ConstraintError("multipleOf above 10000 is not supported", pointer=p)
        return int(f)

    def compile_integer(self, view: View) -> Node:
        lower, upper = self.bounds(view)
        lo = None if lower is None else (math.floor(lower[0]) + 1 if lower[1] else math.ceil(lower[0]))
        hi = None if upper is None else (math.ceil(upper[0]) - 1 if upper[1] else math.floor(upper[0]))
        k = self.multiple_of(view)
        node = INTEGER if lo is None and hi is None else int_range(lo, hi)
        if k is None or k == 1 or is_empty(node):
            return node
        key = ("int", lo, hi, k)
        dfa = _LEAF_CACHE.get(key)
        if dfa is None:
            dfa = intersect(
                byte_dfa(node, self.options.max_states), _multiple_of_dfa(k), self.options.max_states
            )
            _LEAF_CACHE[key] = dfa
        if dfa.is_empty():
            return EMPTY
        return Automaton(dfa, lambda: _multiple_of_regex(dfa, lo, hi, k))

    def compile_number(self, view: View) -> Node:
        if "multipleOf" in view:
            k = self.multiple_of(view)
            return self.compile_integer(view) if k is not None else EMPTY
        lower, upper = self.bounds(view)
        if lower is None and upper is None:
            return NUMBER
        if (
            lower is not None
            and upper is not None
            and (lower[0] > upper[0] or (lower[0] == upper[0] and (lower[1] or upper[1])))
        ):
            return EMPTY
        # Integer texts parse exactly; texts with a fraction parse to the nearest float, so an
        # exclusive bound b holds for them when the decimal is beyond the midpoint between b and
        # its neighbouring float (an inclusive one: at least b, as rounding is monotone).
        return alt(
            decimal_range(lower, upper, _float_safe_bound(lower, up=True), _float_safe_bound(upper, up=False)),
            exponent_forms(lower, upper),
        )

    # -- strings ----------------------------------------------------------------------------
    def compile_string(self, view: View) -> Node:
        lo = _count(view, "minLength", 0)
        hi = _count(view, "maxLength", None)
        patterns: list[tuple[str, str]] = []
        if "pattern" in view:
            v, p = view["pattern"]
            patterns = list(v.items) if isinstance(v, _Patterns) else [(v, p)]
        fmt = None
        if "format" in view:
            fmt, fptr = view["format"]
            if fmt not in FORMATS:
                raise ConstraintError(
                    f"format {fmt!r} is not supported (supported: {', '.join(SUPPORTED_FORMATS)})",
                    pointer=fptr,
                )
        if hi is not None and lo > hi:
            return EMPTY
        quote = literal('"')
        # (cache key, node builder, regex text on demand: printing is for json_schema_to_regex only)
        pieces: list[tuple[tuple, Any, Callable[[], str]]] = []
        if fmt is not None:
            fnode = encode_node(parse_regex(FORMATS[fmt])[0].node)
            pieces.append((("format", fmt), lambda n=fnode: n, lambda n=fnode: to_regex(n)))
        for pat, pptr in patterns:
            if not isinstance(pat, str):
                raise ConstraintError("pattern must be a string", pointer=pptr)
            try:
                pnode = self.pattern_node(pat)
            except ConstraintError as e:
                raise e.with_pointer(pptr) from None
            pieces.append((("pattern", pat), lambda n=pnode: n, lambda n=pnode: to_regex(n)))
        implied = any(self.pattern_implies_length(pat, lo, hi) for pat, _ in patterns if isinstance(pat, str))
        if (lo > 0 or hi is not None or not pieces) and not implied:
            body = repeat(JSON_CHAR, lo, hi)
            pieces.append((("length", lo, hi), lambda b=body: b, lambda b=body: to_regex(b)))
        if len(pieces) == 1:
            key, build, text = pieces[0]
            if key[0] == "length":
                body_node = build()
                n = _size(body_node)
                if n > _INLINE_BODY_POSITIONS:
                    # too large to cache: left as a repetition, so the schema's automaton tiles it
                    # straight into its own table (one large table instead of two)
                    _check_size(n, self.options.max_size, "a string or value")
                    return concat(quote, body_node, quote)
            dfa = _cached_leaf(key, build, self.options.max_states, self.options.max_size)
            return concat(quote, Automaton(dfa, text), quote)
        dfa = _cached_leaf(pieces[0][0], pieces[0][1], self.options.max_states, self.options.max_size)
        for key, build, _ in pieces[1:]:
            dfa = intersect(
                dfa,
                _cached_leaf(key, build, self.options.max_states, self.options.max_size),
                self.options.max_states,
            )
        if dfa.is_empty():
            return EMPTY
        # Python can check an intersection of string bodies with lookaheads up to the closing quote.
        def text() -> str:
            return "".join(f'(?=(?:{t()})")' for _, _, t in pieces[:-1]) + f"(?:{pieces[-1][2]()})"

        return concat(quote, Automaton(dfa, text), quote)

    def pattern_implies_length(self, pattern: str, lo: int, hi: int | None) -> bool:
        """Whether every string `pattern` matches has between lo and hi characters, so that
        intersecting with minLength/maxLength would change nothing (an ARN pattern of bounded
        parts under a larger maxLength: the product automaton would count both)."""
        lengths = [
            _char_lengths(a.node) if a.anchored_start and a.anchored_end and not a.rest else (0, None)
            for a in parse_regex(pattern, ecma_dot=True, lookaheads=True)
        ]
        shortest = min(n for n, _ in lengths)
        longest = None if any(m is None for _, m in lengths) else max(m for _, m in lengths)  # type: ignore[type-var]
        return shortest >= lo and (hi is None or (longest is not None and longest <= hi))

    def pattern_node(self, pattern: str) -> Node:
        """A JSON Schema pattern (ECMA search semantics) as a node over the string body."""
        anything = repeat(JSON_CHAR, 0, None)
        alternatives = parse_regex(pattern, ecma_dot=True, lookaheads=True)
        return alt(*(self.search_node(a, anything, encode_node) for a in alternatives))

    def search_node(self, a: Alternative, anything: Node, enc: Callable[[Node], Node]) -> Node:
        """One alternative under search semantics (unanchored ends take `anything`), with its
        lookaheads: `s0 (?=L1) s1 ...` is s0 followed by the texts that are `s1 ...` and, up to
        the end of the string, start with L1 (or, for `(?!`, do not). `enc` maps the parser's
        code-point nodes to the bytes being matched (a JSON string body's escapes, or UTF-8).

        After a lookahead every character is spelled one way (`enc`'s): a difference of two
        languages is only right when both spell the same text the same way (JSON allows `\u0041`
        for `A`, which `enc` never writes)."""
        if not a.rest:
            return concat(EPSILON if a.anchored_start else anything, enc(a.node), EPSILON if a.anchored_end else anything)
        anything = repeat(enc(chars(_ANY_CHAR)), 0, None)
        tail: Node = EPSILON if a.anchored_end else anything
        for position, (look, segment) in reversed(list(enumerate(a.rest))):
            at_start = position == 0 and a.anchored_start and a.node == EPSILON
            starts: list[Node] = []
            for b in look.body:
                if b.anchored_start and not at_start:
                    raise ConstraintError("^ inside a lookahead that is not at the start of the regex")
                starts.append(concat(enc(b.node), EPSILON if b.anchored_end else anything))
            max_states = self.options.max_states
            rest = byte_dfa(concat(enc(segment), tail), max_states)
            condition = byte_dfa(alt(*starts), max_states)
            dfa = difference(rest, condition, max_states) if look.negative else intersect(rest, condition, max_states)
            tail = Automaton(dfa, _no_regex)
        return concat(EPSILON if a.anchored_start else anything, enc(a.node), tail)

    # -- arrays -----------------------------------------------------------------------------
    def compile_array(self, view: View, ptr: str, refs: dict[str, int], depth: int) -> Node:
        lo = _count(view, "minItems", 0)
        hi = _count(view, "maxItems", None)
        unique = "uniqueItems" in view and view["uniqueItems"][0] is True and (hi is None or hi > 1)
        prefix: list[tuple[Any, str] | _Sub] = []
        rest: tuple[Any, str] | _Sub = (True, ptr)
        if "prefixItems" in view:
            v, p = view["prefixItems"]
            if not isinstance(v, list):
                raise ConstraintError("prefixItems must be an array", pointer=p)
            prefix = [(s, join_pointer(p, i)) for i, s in enumerate(v)]
            if "items" in view:
                rest = _as_sub(*view["items"])
            if "additionalItems" in view:
                raise ConstraintError(
                    "additionalItems next to prefixItems is not supported", pointer=view["additionalItems"][1]
                )
        elif "items" in view and isinstance(view["items"][0], list):
            v, p = view["items"]
            prefix = [(s, join_pointer(p, i)) for i, s in enumerate(v)]
            if "additionalItems" in view:
                rest = _as_sub(*view["additionalItems"])
        elif "items" in view:
            rest = _as_sub(*view["items"])
            if "additionalItems" in view:
                pass  # ignored by the spec when items is a single schema
        if hi is not None and lo > hi:
            return EMPTY
        contains = self.contains_bounds(view, hi)
        if unique:
            uptr = view["uniqueItems"][1]
            if not prefix and contains is None:
                exact = self.unique_array(rest, lo, hi, uptr, refs, depth)
                if isinstance(exact, int):  # finitely many values, too many for the automaton
                    if lo > exact:
                        return EMPTY
                    hi = exact if hi is None else min(hi, exact)  # no unique array is longer
                elif exact is not None:
                    return exact
            if not unique_items.defer(uptr):
                if prefix:
                    raise ConstraintError("uniqueItems next to tuple-form items is not supported", pointer=uptr)
                raise ConstraintError(
                    "uniqueItems next to contains is not supported", pointer=view["contains"][1]
                )
            # Deferred: the array is compiled as if uniqueItems were absent, and the decode-time
            # check of `unique_items` (driven by the paths compile_json_schema collects) keeps its
            # items distinct.
        if contains is not None:
            if prefix:
                raise ConstraintError(
                    "contains next to tuple-form items is not supported", pointer=view["contains"][1]
                )
            return self.contains_array(rest, contains, lo, hi, refs, depth)
        prefix_nodes = [
            self.compile(s, refs, depth + 1) for s in prefix[: hi if hi is not None else len(prefix)]
        ]
        needs_rest = hi is None or hi > len(prefix)
        # compiled even when no item can follow, so that a malformed items schema is still refused
        rest_node = self.nested_value(rest, refs, depth)
        if not needs_rest:
            rest_node = EMPTY
        ws = self.ws
        sep = concat(ws, literal(","), ws)

        def element(k: int) -> Node:
            return prefix_nodes[k] if k < len(prefix_nodes) else rest_node

        def tail(k: int) -> Node:
            # the elements from index k on, given that k >= 1 elements are already written
            if hi is not None and k >= hi:
                return EPSILON
            if k >= len(prefix_nodes):
                need = max(lo - k, 0)
                return repeat(concat(sep, rest_node), need, None if hi is None else hi - k)
            node = concat(sep, prefix_nodes[k], tail(k + 1))
            return node if k < lo else optional(node)

        if hi == 0:
            items = EMPTY
        else:
            items = concat(element(0), tail(1))
        open_, close = literal("["), literal("]")
        if lo == 0:
            return concat(open_, ws, optional(concat(items, ws)), close)
        return concat(open_, ws, items, ws, close)

    def contains_bounds(self, view: View, hi: int | None) -> tuple[_Sub, int] | None:
        """(the contains schema, minContains), or None when contains does not constrain."""
        if "contains" not in view:
            for key in ("minContains", "maxContains"):
                if key in view:
                    _count(view, key, 0)  # without contains they are ignored, but must be well-formed
            return None
        sub = _as_sub(*view["contains"])
        sub = sub if isinstance(sub, _Sub) else _Sub((sub,))
        m = _count(view, "minContains", 1)
        mx = _count(view, "maxContains", None)
        if mx is not None and (hi is None or mx < hi):
            raise ConstraintError(
                "maxContains below maxItems is not supported (it needs the contains schema's complement)",
                pointer=view["maxContains"][1],
            )
        return (sub, m) if m > 0 else None

    def contains_array(
        self, rest: Any, contains: tuple[_Sub, int], lo: int, hi: int | None, refs: dict[str, int], depth: int
    ) -> Node:
        """Arrays of `rest` items, at least m of which also match the contains schema."""
        sub, m = contains
        rest_sub = rest if isinstance(rest, _Sub) else _Sub((rest,))
        hit = self.compile(_Sub(rest_sub.parts + sub.parts), refs, depth + 1)
        item = self.nested_value(rest, refs, depth)
        if hi is not None and hi < m or is_empty(hit):
            return EMPTY
        ws = self.ws
        sep = concat(ws, literal(","), ws)
        top = max(lo, m)
        memo: dict[tuple[int, int], Node] = {}

        def go(k: int, c: int) -> Node:
            # k elements written (saturating at `top` when unbounded), c of them hits (saturating at m)
            got = memo.get((k, c))
            if got is not None:
                return got
            lead = sep if k else EPSILON
            if hi is None and k >= top:
                more = repeat(concat(sep, item), 0, None)
                node = more if c >= m else concat(more, sep, hit, go(k, c + 1))
            else:
                options = []
                if k >= lo and c >= m:
                    options.append(EPSILON)
                if hi is None or k < hi:
                    nk = k + 1 if hi is not None else min(k + 1, top)
                    options.append(concat(lead, hit, go(nk, min(c + 1, m))))
                    options.append(concat(lead, item, go(nk, c)))
                node = alt(*options)
            memo[(k, c)] = node
            return node

        return concat(literal("["), ws, go(0, 0), ws, literal("]"))

    def unique_array(
        self, rest: Any, lo: int, hi: int | None, uptr: str, refs: dict[str, int], depth: int
    ) -> Node | int | None:
        """uniqueItems over items with finitely many values (enum, const, boolean, null; while
        `unique_items.deferring()`, also any item language of at most 64 strings): arrays of distinct
        values, in any order (the automaton grows with the number of subsets of values).

        Only while deferring, when the items have too many values for that (more than 6): their
        number if finite (the caller caps maxItems there), None if not; the caller then defers the
        keyword to the decode-time check of `unique_items`."""
        rest_sub = rest if isinstance(rest, _Sub) else _Sub((rest,))
        views: list[View | None] = []
        try:
            for schema, p in rest_sub.parts:
                views.extend(self.flatten(schema, p, dict(refs)))
        except _Cut:
            views = [None]
        if any(v is None for v in views):
            return concat(literal("["), self.ws, literal("]")) if lo == 0 else EMPTY
        view = self.merge(views, uptr) if len(views) != 1 else views[0]
        if "enum" in view or "const" in view:
            candidates = list(view["enum"][0]) if "enum" in view and isinstance(view["enum"][0], list) else []
            if "const" in view:
                candidates.append(view["const"][0])
        elif "type" in view and set(_type_list(*view["type"])) <= {"boolean", "null"}:
            candidates = [True, False, None]
        elif unique_items.is_deferring():
            candidates = None
        else:
            raise ConstraintError(
                "uniqueItems: true is supported only for items with finitely many values (enum, const, "
                "boolean, null) or maxItems <= 1 (compile_json_schema enforces it at decode time)",
                pointer=uptr,
            )
        item = self.compile(rest_sub, refs, depth + 1)
        groups: dict[str, list[str]] = {}
        if candidates is None:
            texts = unique_items.small_language(item, 64, self.options.max_states)
            if texts is None:
                return None
            for text in texts:
                groups.setdefault(_canonical(json.loads(text)), []).append(text)
        else:
            item_dfa = byte_dfa(item, self.options.max_states)
            for v in candidates:
                text = json_literal(v)
                if item_dfa.accepts(text.encode("utf-8", "surrogatepass")):
                    groups.setdefault(_canonical(v), [])
                    if text not in groups[_canonical(v)]:
                        groups[_canonical(v)].append(text)
        values = [alt(*(literal(t) for t in texts)) for texts in groups.values()]
        if unique_items.is_deferring() and len(values) > 6:
            return len(values)
        if len(values) > 10:
            raise ConstraintError(
                f"uniqueItems over {len(values)} distinct values is not supported (at most 10)", pointer=uptr
            )
        top = len(values) if hi is None else min(hi, len(values))
        if lo > top:
            return EMPTY
        ws = self.ws
        sep = concat(ws, literal(","), ws)
        memo: dict[frozenset[int], Node] = {}

        def go(used: frozenset[int]) -> Node:
            got = memo.get(used)
            if got is not None:
                return got
            options = [EPSILON] if len(used) >= lo else []
            if len(used) < top:
                lead = sep if used else EPSILON
                for i, v in enumerate(values):
                    if i not in used:
                        options.append(concat(lead, v, go(used | {i})))
            node = alt(*options)
            memo[used] = node
            return node

        return concat(literal("["), ws, go(frozenset()), ws, literal("]"))

    # -- objects ----------------------------------------------------------------------------
    def compile_object(self, view: View, ptr: str, refs: dict[str, int], depth: int) -> Node:
        props_v, props_p = view.get("properties", ({}, join_pointer(ptr, "properties")))
        if not isinstance(props_v, dict):
            raise ConstraintError("properties must be an object", pointer=props_p)
        req_v, req_p = view.get("required", ([], join_pointer(ptr, "required")))
        if not isinstance(req_v, list) or not all(isinstance(r, str) for r in req_v):
            raise ConstraintError("required must be an array of strings", pointer=req_p)
        required = list(dict.fromkeys(req_v))
        extra = view.get("additionalProperties", (True, join_pointer(ptr, "additionalProperties")))
        uneval = view.get("unevaluatedProperties")
        if uneval is not None and uneval[0] is not False:
            raise ConstraintError(
                "unevaluatedProperties other than false is not supported", pointer=uneval[1]
            )
        if uneval is not None:
            extra = (False, uneval[1])
        pat_v, pat_p = view.get("patternProperties", ({}, join_pointer(ptr, "patternProperties")))
        if not isinstance(pat_v, dict):
            raise ConstraintError("patternProperties must be an object", pointer=pat_p)
        patterns = [
            (pat, sub if isinstance(sub, _Sub) else _Sub(((sub, join_pointer(pat_p, pat)),)))
            for pat, sub in pat_v.items()
        ]
        names = view.get("propertyNames")
        min_p = _count(view, "minProperties", 0)
        max_p = _count(view, "maxProperties", None)
        deps = self.dependencies(view)

        def value_sub(name: str) -> _Sub | None:
            """The schemas a property's value must satisfy (None: the name is not allowed)."""
            parts: list[tuple[Any, str]] = []
            if name in props_v:
                sub = props_v[name]
                parts.extend(sub.parts if isinstance(sub, _Sub) else ((sub, join_pointer(props_p, name)),))
            matched = False
            for pat, sub in patterns:
                if self.pattern_matches(pat, name, join_pointer(pat_p, pat)):
                    parts.extend(sub.parts)
                    matched = True
            if name not in props_v and not matched:
                if extra[0] is False:
                    return None
                parts.extend(_as_sub(*extra).parts if isinstance(extra[0], _Sub) else (extra,))
            if names is not None and not self.name_allowed(names, name, refs, depth):
                return None
            return _Sub(tuple(parts) or ((True, ptr),))

        # the names sgc may generate: listed ones, then required and dependency targets not listed
        order = list(props_v)
        for name in required + [t for ts in deps.values() for t in ts]:
            if name not in order:
                order.append(name)
        ws = self.ws
        open_, close = literal("{"), literal("}")
        if not order:
            if _NOT_REQUIRED in view:
                raise ConstraintError(
                    "not with required on an object that lists no properties is not supported",
                    pointer=view[_NOT_REQUIRED][1],
                )
            return self.map_object(view, ptr, extra, patterns, names, min_p, max_p, refs, depth)
        members: list[tuple[str, Node]] = []
        values: list[Node] = []
        for name in order:
            sub = value_sub(name)
            value = EMPTY if sub is None else self.compile(sub, refs, depth + 1)
            if is_empty(value):
                if name in required:
                    return EMPTY
                continue
            members.append((name, concat(literal(json_literal(name)), ws, literal(":"), ws, value)))
            values.append(value)
        if min_p > len(members):
            if extra[0] is False and not patterns:
                return EMPTY  # only these names are allowed, and not enough of them can appear
            raise ConstraintError(
                f"minProperties {min_p} needs properties the schema does not list; sgc generates "
                "only listed (or required) properties",
                pointer=view["minProperties"][1],
            )
        groups = view.get(_NOT_REQUIRED, ((), ptr))[0]
        graph: dict[Any, Decision] = {}
        body = self.members_node(members, set(required), deps, min_p, max_p, ptr, groups, graph)
        if size(body) > LINKED_MEMBERS_MIN_POSITIONS:
            # the tree copies the members after the first present one into every choice of it:
            # place each once instead (see object_dfa); the tree stays the fallback
            whole = concat(open_, ws, body, close)
            dfa = members_dfa(
                graph,
                _MEMBERS_ROOT,
                [json_literal(name).encode("utf-8") for name, _ in members],
                concat(ws, literal(":"), ws),
                lambda i: concat(values[i], ws),
                concat(literal(","), ws),
                (concat(open_, ws), close),
                self.options.max_states,
            )
            if dfa is not None:
                return Automaton(dfa, lambda whole=whole: to_regex(whole))
            return whole
        return concat(open_, ws, body, close)

    def members_node(
        self,
        members: list[tuple[str, Node]],
        required: set[str],
        deps: dict[str, list[str]],
        min_p: int,
        max_p: int | None,
        ptr: str,
        groups: tuple[tuple[str, ...], ...] = (),
        graph: dict[Any, Decision] | None = None,
    ) -> Node:
        """Members in the listed order, each present or not, such that the required ones are, each
        present dependency trigger has its targets present, and the count is in [min_p, max_p].
        A member is followed by `ws`, so an empty body is just the closing brace. `graph` (if given)
        gets the decisions behind the tree, rooted at `_MEMBERS_ROOT` (see `object_dfa`)."""
        n = len(members)
        index = {name: i for i, (name, _) in enumerate(members)}
        must = frozenset(i for i, (name, _) in enumerate(members) if name in required)
        needs: list[frozenset[int]] = []
        impossible: set[int] = set()
        for name, _ in members:
            targets = deps.get(name, [])
            if any(t not in index for t in targets):
                impossible.add(index[name])  # a target sgc cannot generate: the trigger stays out
            needs.append(frozenset(index[t] for t in targets if t in index))
        if must & impossible:
            return EMPTY
        # `not: {required: g}`: some name of each group g stays out (names sgc never writes do)
        pending0 = frozenset(gi for gi, g in enumerate(groups) if all(name in index for name in g))
        in_groups = [frozenset(gi for gi, g in enumerate(groups) if name in g) for name, _ in members]
        needed_by: list[frozenset[int]] = [frozenset(t for t in range(n) if i in needs[t]) for i in range(n)]
        cap = max(max_p if max_p is not None else min_p, 1)
        ws = self.ws
        sep = concat(literal(","), ws)
        memo: dict[tuple, Node] = {}

        def go(i: int, c: int, req: frozenset[int], forb: frozenset[int], pending: frozenset[int]) -> Node:
            key = (i, c, req, forb, pending)
            got = memo.get(key)
            if got is not None:
                return got
            if len(memo) > 20000:
                raise ConstraintError(
                    "these properties' constraints (dependencies, counts) need too many automaton branches",
                    pointer=ptr,
                )
            if i == n:
                node = EPSILON if c >= min_p and not pending else EMPTY
                if graph is not None:
                    graph[key] = Decision(i, c > 0, None, None, not is_empty(node))
            else:
                present: Node | None = None
                absent: Node | None = None
                if i not in forb and i not in impossible and (max_p is None or c < max_p):
                    nreq = (req | needs[i]) - {i}
                    if not (nreq & forb):
                        present = go(i + 1, min(c + 1, cap), nreq, forb, pending)
                if i not in must and i not in req:
                    nforb = forb | needed_by[i]
                    if not (nforb & req):
                        absent = go(i + 1, c, req, nforb, pending - in_groups[i])
                member = concat(sep if c else EPSILON, members[i][1], ws)
                if present is not None and present is absent:
                    # the same continuation either way: written once, so that n optional members
                    # are n positions, not 2**n copies of the tail
                    node = concat(optional(member), present)
                else:
                    options = []
                    if present is not None and not is_empty(present):
                        options.append(concat(member, present))
                    if absent is not None:
                        options.append(absent)
                    node = alt(*options)
                if graph is not None:
                    graph[key] = Decision(
                        i,
                        c > 0,
                        (i + 1, min(c + 1, cap), nreq, forb, pending)
                        if present is not None and not is_empty(present) else None,
                        (i + 1, c, req, nforb, pending - in_groups[i])
                        if absent is not None and not is_empty(absent) else None,
                    )
            memo[key] = node
            return node

        root = (0, 0, frozenset(), frozenset(), pending0)
        node = go(*root)
        if graph is not None:
            graph[_MEMBERS_ROOT] = graph[root]
        return node

    def dependencies(self, view: View) -> dict[str, list[str]]:
        """dependentRequired, and the draft 4-7 `dependencies` with arrays (or schemas that only
        require properties): trigger -> the names it requires."""
        out: dict[str, list[str]] = {}
        for key in ("dependentRequired", "dependencies", "dependentSchemas"):
            if key not in view:
                continue
            v, p = view[key]
            if not isinstance(v, dict):
                raise ConstraintError(f"{key} must be an object", pointer=p)
            for trigger, dep in v.items():
                dp = join_pointer(p, trigger)
                if isinstance(dep, dict) and key != "dependentRequired":
                    if any(_asserts(k, x) for k, x in dep.items() if k != "required"):
                        raise ConstraintError(
                            f"{key} with a schema is supported only when the schema just lists "
                            "`required` names",
                            pointer=dp,
                        )
                    dep = dep.get("required", [])
                elif dep is True and key != "dependentRequired":
                    dep = []
                if not isinstance(dep, list) or not all(isinstance(t, str) for t in dep):
                    raise ConstraintError(f"{key} values must be arrays of property names", pointer=dp)
                out.setdefault(trigger, [])
                out[trigger].extend(t for t in dep if t not in out[trigger] and t != trigger)
        return out

    def pattern_matches(self, pattern: Any, name: str, ptr: str) -> bool:
        """Whether `name` matches a JSON Schema pattern (ECMA search semantics, our parser)."""
        if not isinstance(pattern, str):
            raise ConstraintError("a patternProperties key must be a pattern", pointer=ptr)
        key = ("raw-pattern", pattern)
        dfa = _LEAF_CACHE.get(key)
        if dfa is None:
            anything = repeat(chars(_ANY_CHAR), 0, None)
            try:
                alternatives = parse_regex(pattern, ecma_dot=True, lookaheads=True)
                node = alt(*(self.search_node(a, anything, lambda n: n) for a in alternatives))
            except ConstraintError as e:
                raise e.with_pointer(ptr) from None
            dfa = _cached_leaf(key, lambda: node, self.options.max_states, self.options.max_size)
        return dfa.accepts(name.encode("utf-8", "surrogatepass"))

    def key_dfa(self, names: tuple[Any, str] | _Sub, refs: dict[str, int], depth: int) -> DFA:
        """propertyNames as a byte DFA over the quoted key (only its strings matter)."""
        got = self._key_dfas.get(id(names))
        if got is None or got[0] is not names:
            sub = names if isinstance(names, _Sub) else _Sub((names,))
            got = (names, byte_dfa(self.compile(sub, refs, depth + 1), self.options.max_states))
            self._key_dfas[id(names)] = got
        return got[1]

    def name_allowed(
        self, names: tuple[Any, str] | _Sub, name: str, refs: dict[str, int], depth: int
    ) -> bool:
        return self.key_dfa(names, refs, depth).accepts(json_literal(name).encode("utf-8", "surrogatepass"))

    def map_object(
        self,
        view: View,
        ptr: str,
        extra: tuple[Any, str],
        patterns: list[tuple[str, _Sub]],
        names: tuple[Any, str] | _Sub | None,
        min_p: int,
        max_p: int | None,
        refs: dict[str, int],
        depth: int,
    ) -> Node:
        """An object that lists no names: a map whose keys are split by the patterns they match
        (keys spelled canonically, so a key's spelling decides its pattern region)."""
        if min_p >= 2 and (max_p is None or max_p >= 2):
            raise ConstraintError(
                "minProperties >= 2 on an object that lists no properties is not supported: sgc "
                "cannot keep generated keys distinct (duplicate keys collapse)",
                pointer=view["minProperties"][1],
            )
        if len(patterns) > 3:
            raise ConstraintError("more than 3 patternProperties on a map are not supported", pointer=ptr)
        regions: list[tuple[Node, Node]] = []
        if not patterns and names is None:
            if extra[0] is not False:
                key = concat(
                    literal('"'),
                    Automaton(self.string_body_dfa(), to_regex(repeat(JSON_CHAR, 0, None))),
                    literal('"'),
                )
                regions.append((key, self.nested_value(extra, refs, depth)))
        else:
            canon = _cached_leaf(("canon-body",), lambda: repeat(encode_chars(_ANY_CHAR), 0, None), None)
            pdfas = [
                _cached_leaf(("pattern", pat), lambda pat=pat: self.pattern_node_at(pat, ptr), None)
                for pat, _ in patterns
            ]
            names_dfa = self.key_dfa(names, refs, depth) if names is not None else None
            for mask in range(1 << len(patterns)):
                if mask == 0 and extra[0] is False:
                    continue
                body = canon
                for j, pd in enumerate(pdfas):
                    body = (
                        intersect(body, pd, self.options.max_states)
                        if mask >> j & 1
                        else difference(body, pd, self.options.max_states)
                    )
                    if body.is_empty():
                        break
                if body.is_empty():
                    continue
                key_dfa = byte_dfa(concat(literal('"'), Automaton(body, _no_regex), literal('"')))
                if names_dfa is not None:
                    key_dfa = intersect(key_dfa, names_dfa, self.options.max_states)
                    if key_dfa.is_empty():
                        continue
                if mask == 0:
                    value = self.nested_value(extra, refs, depth)
                else:
                    parts = tuple(
                        p for j, (_, sub) in enumerate(patterns) if mask >> j & 1 for p in sub.parts
                    )
                    value = self.compile(_Sub(parts), refs, depth + 1)
                if not is_empty(value):
                    regions.append((Automaton(key_dfa, _no_regex), value))
        ws = self.ws
        members = [concat(k, ws, literal(":"), ws, v) for k, v in regions]
        member = alt(*members)
        sep = concat(ws, literal(","), ws)
        if max_p == 0 or not members:
            body = EMPTY
        else:
            body = concat(
                member, repeat(concat(sep, member), max(min_p - 1, 0), None if max_p is None else max_p - 1)
            )
        if min_p == 0:
            return concat(literal("{"), ws, optional(concat(body, ws)), literal("}"))
        return concat(literal("{"), ws, body, ws, literal("}"))

    def pattern_node_at(self, pattern: str, ptr: str) -> Node:
        try:
            return self.pattern_node(pattern)
        except ConstraintError as e:
            raise e.with_pointer(join_pointer(ptr, "patternProperties", pattern)) from None

    def nested_value(self, sub: tuple[Any, str] | _Sub, refs: dict[str, int], depth: int) -> Node:
        """Items or map values; unconstrained ones nest one level less than a free-standing `{}`."""
        if isinstance(sub, tuple) and (sub[0] is True or sub[0] == {}):
            return self.any_value(self.options.any_depth - 1)
        return self.compile(_as_sub(*sub) if isinstance(sub, tuple) else sub, refs, depth + 1)

    def string_body_dfa(self) -> DFA:
        return _cached_leaf(("length", 0, None), lambda: repeat(JSON_CHAR, 0, None), self.options.max_states)

    # -- any JSON value ---------------------------------------------------------------------
    def any_value(self, depth: int) -> Node:
        if self.options.decode_checks:
            return self.any_superset(depth)
        key = ("any", depth, self.ws_key)
        node = self.any_value_node(depth)
        dfa = _cached_leaf(key, lambda: node, self.options.max_states, self.options.max_size)
        return Automaton(dfa, to_regex(node))

    def any_value_node(self, depth: int) -> Node:
        string = concat(literal('"'), repeat(JSON_CHAR, 0, None), literal('"'))
        scalars = alt(literal("null"), literal("true"), literal("false"), NUMBER, string)
        if depth <= 0:
            return scalars
        inner = self.any_value_node(depth - 1)
        ws = self.ws
        sep = concat(ws, literal(","), ws)
        array = concat(
            literal("["), ws, optional(concat(inner, repeat(concat(sep, inner), 0, None), ws)), literal("]")
        )
        member = concat(string, ws, literal(":"), ws, inner)
        obj = concat(
            literal("{"), ws, optional(concat(member, repeat(concat(sep, member), 0, None), ws)), literal("}")
        )
        return alt(scalars, array, obj)

    def any_superset(self, depth: int) -> Node:
        """Decode-checked "any JSON value": S_0 = scalars; S_k = scalars | [[{] ws (I (ws , ws I)*
        ws)? []}] with I = ("string" ws : ws)? S_(k-1). Brackets are counted, not told apart, so
        the automaton grows linearly with the depth (the exact one ~4x per level); the decode-time
        `json_structure` check keeps kinds, keys and colons right. Two small templates (a level
        with a placeholder byte where a nested container goes) are stacked `depth` times by
        `json_structure.nest_levels`."""
        json_structure.note_superset()
        depth = max(depth, 0)
        key = ("any-superset", depth, self.ws_key)
        dfa = _LEAF_CACHE.get(key)
        if dfa is None:
            string = concat(literal('"'), repeat(JSON_CHAR, 0, None), literal('"'))
            scalars = alt(literal("null"), literal("true"), literal("false"), NUMBER, string)
            hole = Automaton(json_structure.placeholder_dfa(), _no_superset_regex)
            ws = self.ws
            item = concat(optional(concat(string, ws, literal(":"), ws)), alt(scalars, hole))
            sep = concat(ws, literal(","), ws)
            container = concat(
                chars(CharSet.of("[{")), ws, optional(concat(item, repeat(concat(sep, item), 0, None), ws)),
                chars(CharSet.of("]}")),
            )
            top = byte_dfa(alt(scalars, hole), self.options.max_states, minimized=True)
            level = byte_dfa(container, self.options.max_states, minimized=True)
            dfa = json_structure.nest_levels(top, level, depth)
            if len(_LEAF_CACHE) >= _LEAF_CACHE_LIMIT:
                _LEAF_CACHE.pop(next(iter(_LEAF_CACHE)))
            _LEAF_CACHE[key] = dfa
        return Automaton(dfa, _no_superset_regex)


def _no_superset_regex() -> str:
    raise ConstraintError("a decode-checked JSON value (compile_json_schema's any-value superset) has no regex; "
                          "json_schema_to_regex compiles the exact any_depth automaton")


_ANY_CHAR = _NEEDS_ESCAPE | _NEEDS_ESCAPE.complement()
# view entries that `not` adds (never schema keywords: they start with a NUL)
_NOT_TYPES = "\0not-types"
_NOT_VALUES = "\0not-values"
_NOT_REQUIRED = "\0not-required"
_SPLIT = "\0split"  # a view already split by type (see split_types)
_COND = "\0conditions"  # if/then/else triples, one per schema merged into the view
# The keywords of a oneOf branch that one_of_strings decides exactly.
_STRING_BRANCH_KEYWORDS = (STRING_KEYWORDS - {"format"}) | {"type", "enum", "const", _NOT_VALUES, _NOT_TYPES, _SPLIT}
# Keywords through which a branch's objects may get names its own view does not list (compile
# resolves them after the view object_shape reads).
_NAME_ADDING_KEYWORDS = frozenset({"if", "then", "else", "anyOf", "oneOf", "allOf", "not", "$ref", _COND})


def _char_spellings(c: str) -> Node:
    """Every way sgc's string grammar can spell the character c inside a JSON string."""
    options = []
    if ord(c) not in _NEEDS_ESCAPE:
        options.append(literal(c))
    if c in _SHORT_ESCAPES or c == "/":
        options.append(literal("\\" + _SHORT_ESCAPES.get(c, "/")))
    code = ord(c)
    if code <= 0xFFFF and not 0xD800 <= code <= 0xDFFF:
        options.append(
            concat(literal("\\u"), *(chars(CharSet.of(d.lower() + d.upper())) for d in f"{code:04x}"))
        )
    return alt(*options)


def _char_lengths(node: Node) -> tuple[int, int | None]:
    """The fewest and most characters a code-point node matches (None: unbounded)."""
    if isinstance(node, Chars):
        return 1, 1
    if isinstance(node, Concat):
        parts = [_char_lengths(p) for p in node.parts]
        most = None if any(m is None for _, m in parts) else sum(m for _, m in parts)  # type: ignore[misc]
        return sum(n for n, _ in parts), most
    if isinstance(node, Alt):
        options = [_char_lengths(o) for o in node.options]
        most = None if any(m is None for _, m in options) else max(m for _, m in options)  # type: ignore[type-var]
        return min(n for n, _ in options), most
    if isinstance(node, Repeat):
        n, m = _char_lengths(node.node)
        return n * node.min, None if node.max is None or m is None else m * node.max
    if isinstance(node, Epsilon | Empty):
        return 0, 0
    return 0, None  # an automaton: unknown


def _no_regex() -> str:
    raise ConstraintError(
        "this schema has no Python regex form (a difference of automata); compile it to an FSM instead"
    )


def _asserts(k: str, v: Any) -> bool:
    """Whether keyword `k` (value `v`) constrains instances: sgc compiles it (or rejects it).
    Annotations, unknown keywords and unknown `format` values do not."""
    if k in ANNOTATIONS:
        return False
    if k == "format":
        return not isinstance(v, str) or v in FORMATS or v in KNOWN_FORMATS
    return k in SUPPORTED_KEYWORDS or k in REJECTED_KEYWORDS


def _schema_id(node: dict) -> str | None:
    """A schema's `$id`, or its draft-4 `id` when that is a string (`id` may also be a property name
    under `properties`, where it is a subschema)."""
    for key in ("$id", "id"):
        v = node.get(key)
        if isinstance(v, str):
            return v
    return None


@dataclass(frozen=True)
class _View:
    """An already-flattened view used as an allOf part (anyOf/oneOf siblings)."""

    view: View


@dataclass(frozen=True)
class _Patterns:
    items: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class _Nots:
    """Several `not`s merged by allOf: each must hold (never merged into one negation)."""

    items: tuple[tuple[Any, str], ...]


class _Conflict:
    """Two allOf branches require different constants: nothing matches."""


def _normalize(k: str, v: Any, p: str) -> Any:
    """A keyword's value in the form merging works on (subschemas keep their own pointers)."""
    if k == "properties" and isinstance(v, dict):
        return {name: _Sub(((sub, join_pointer(p, name)),)) for name, sub in v.items()}
    if k == "pattern":
        return v if isinstance(v, _Patterns) else _Patterns(((v, p),))
    if k == "patternProperties" and isinstance(v, dict):
        return {pat: _Sub(((sub, join_pointer(p, pat)),)) for pat, sub in v.items()}
    if k in ("items", "additionalItems", "additionalProperties", "propertyNames") and isinstance(v, dict):
        return _Sub(((v, p),))
    return v


def _plain_dep(dep: Any) -> Any:
    return {"required": dep} if isinstance(dep, list) else dep


def _plain(v: Any) -> Any:
    if isinstance(v, _Sub):
        return [s for s, _ in v.parts]
    if isinstance(v, _Patterns):
        return [s for s, _ in v.items]
    return v


def _as_sub(schema: Any, ptr: str) -> tuple[Any, str] | _Sub:
    return schema if isinstance(schema, _Sub) else (schema, ptr)


def _merge_subs(a: Any, b: Any, ptr: str, name: str | None) -> _Sub:
    def parts(x: Any) -> tuple[tuple[Any, str], ...]:
        if isinstance(x, _Sub):
            return x.parts
        return ((x, ptr if name is None else join_pointer(ptr, name)),)

    return _Sub(parts(a) + parts(b))


def _type_list(v: Any, ptr: str) -> list[str]:
    types = [v] if isinstance(v, str) else v
    if not isinstance(types, list) or not types:
        raise ConstraintError("type must be a type name or a non-empty array of them", pointer=ptr)
    for t in types:
        if t not in TYPES:
            raise ConstraintError(f"unknown type {t!r}", pointer=ptr)
    return types


def _number(v: Any, ptr: str) -> Fraction:
    if (
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or (isinstance(v, float) and not math.isfinite(v))
    ):
        raise ConstraintError(f"expected a number, got {v!r}", pointer=ptr)
    return Fraction(v)


def _count(view: View, key: str, default: int | None) -> int | None:
    if key not in view:
        return default
    v, p = view[key]
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ConstraintError(f"{key} must be a non-negative integer", pointer=p)
    if key.startswith("max") and v >= UNREACHABLE_COUNT:
        return None  # no generation gets there: the bound cannot bind (docs/constraints.md)
    return v


# An upper bound on characters / items / properties this large cannot bind: one generation is at
# most a model's context of tokens, and no vocabulary has tokens long enough to write 2**30
# characters in a context (API specs write 2**31 - 1 for "no limit"; unrolling it is impossible).
UNREACHABLE_COUNT = 1 << 30


def _literal_keys(view: View) -> frozenset[str] | None:
    keys = None
    if "enum" in view and isinstance(view["enum"][0], list):
        keys = frozenset(_canonical(v) for v in view["enum"][0])
    if "const" in view:
        c = frozenset({_canonical(view["const"][0])})
        keys = c if keys is None else keys & c
    return keys


def _sub_literal_keys(sub: Any) -> frozenset[str] | None:
    schemas = [s for s, _ in sub.parts] if isinstance(sub, _Sub) else [sub]
    keys = None
    for s in schemas:
        if isinstance(s, dict) and ("enum" in s or "const" in s):
            k = _literal_keys({key: (s[key], "") for key in ("enum", "const") if key in s})
            keys = k if keys is None else keys & k
    return keys


def _exclusive(a: tuple, b: tuple) -> bool:
    types_a, lit_a, disc_a, shape_a = a
    types_b, lit_b, disc_b, shape_b = b
    if not _types_overlap(types_a, types_b):
        return True
    if lit_a is not None and lit_b is not None and not (lit_a & lit_b):
        return True
    if lit_a is not None and all(not _type_matches(json.loads(k), types_b) for k in lit_a):
        return True
    if lit_b is not None and all(not _type_matches(json.loads(k), types_a) for k in lit_b):
        return True
    if not _types_overlap(types_a - {"object"}, types_b):
        # only objects are in both: a required property with disjoint literals tells them apart,
        # so does a name one requires and the other's closed object does not allow, or a
        # required value whose types the two keep apart
        if any(name in disc_b and not (keys & disc_b[name]) for name, keys in disc_a.items()):
            return True
        (req_a, closed_a, written_a, vt_a), (req_b, closed_b, written_b, vt_b) = shape_a, shape_b
        if closed_b is not None and req_a - closed_b or closed_a is not None and req_b - closed_a:
            return True
        # what sgc writes for each lacks a name the other requires (the open-object policy): no
        # written value of one matches the other, either way
        if written_a is not None and req_b - written_a and written_b is not None and req_a - written_b:
            return True
        return any(name in vt_b and not _types_overlap(t, vt_b[name]) for name, t in vt_a.items())
    return False


_KEYWORDS_OF_TYPE = {
    "object": OBJECT_KEYWORDS,
    "array": ARRAY_KEYWORDS,
    "string": STRING_KEYWORDS,
    "number": NUMBER_KEYWORDS,
    "integer": NUMBER_KEYWORDS,
    "null": frozenset(),
    "boolean": frozenset(),
}


def _universal_for_one_type(view: View) -> bool:
    """Whether a view of exactly one type accepts every value of that type: its other keywords
    all belong to other types (or are annotations)."""
    if "type" not in view:
        return False
    types = view["type"][0]
    types = [types] if isinstance(types, str) else types
    if not isinstance(types, list) or len(types) != 1 or types[0] not in _KEYWORDS_OF_TYPE:
        return False
    own = _KEYWORDS_OF_TYPE[types[0]]
    other = (OBJECT_KEYWORDS | ARRAY_KEYWORDS | STRING_KEYWORDS | NUMBER_KEYWORDS) - own
    if types[0] == "integer":
        return False  # integer is not all numbers; keep the usual check
    return all(k in ANNOTATIONS or k in (_SPLIT, "type") or (k in other and k != "format") for k in view)


def _required_only(schema: Any) -> tuple[str, ...] | None:
    """The names of a schema that only lists `required` (annotations aside), else None."""
    if not isinstance(schema, dict):
        return None
    req = schema.get("required")
    if not isinstance(req, list) or not req or not all(isinstance(r, str) for r in req):
        return None
    if any(_asserts(k, v) for k, v in schema.items() if k != "required"):
        return None
    return tuple(req)


def _float_safe_bound(b: tuple[Fraction, bool] | None, up: bool) -> tuple[Fraction, bool] | None:
    """The bound on a decimal's exact value under which the float it parses to keeps the bound
    `b` (a lower bound when `up`): beyond the midpoint between b and the next float outwards
    (inclusive: the float b itself is reached; exclusive: the next one inwards is)."""
    if b is None:
        return b
    try:
        f = float(b[0])
    except OverflowError:
        return b  # beyond every float: no decimal sgc writes gets near it
    if Fraction(f) != b[0]:
        return b  # an integer bound beyond 2**53: beyond the digits sgc writes
    inward, outward = (math.inf, -math.inf) if up else (-math.inf, math.inf)
    neighbour = math.nextafter(f, inward if b[1] else outward)
    if math.isinf(neighbour):
        return b
    return ((Fraction(f) + Fraction(neighbour)) / 2, True)


def _multiple_of_dfa(k: int) -> DFA:
    """Byte DFA for `-?[0-9]+` whose value is a multiple of k (digits read left to right)."""
    import numpy as np

    # states: 0 start, 1 after '-', 2 + r: remainder r after at least one digit
    n = 2 + k
    symbol_class = np.full(256, 0, dtype=np.int32)  # class 0: other
    symbol_class[ord("-")] = 1
    for d in range(10):
        symbol_class[48 + d] = 2 + d
    table = np.full((n, 12), -1, dtype=np.int32)
    table[0, 1] = 1
    for s in (0, 1):
        for d in range(10):
            table[s, 2 + d] = 2 + d % k
    for r in range(k):
        for d in range(10):
            table[2 + r, 2 + d] = 2 + (10 * r + d) % k
    accepting = np.zeros(n, dtype=bool)
    accepting[2] = True
    return trim(DFA(0, accepting, table, symbol_class))


def _multiple_of_regex(dfa: DFA, lo: int | None, hi: int | None, k: int) -> str:
    if lo is not None and hi is not None and (hi - lo) // k <= 2000:
        first = -(-lo // k) * k
        return "|".join(str(v) for v in range(first, hi + 1, k)) or "[^\\x00-\\U0010ffff]"
    return ascii_dfa_to_regex(dfa)


_LITERAL_TRIE_MIN = 64  # longer enums become a trie directly (no node per character)


def _literal_set(texts: list[str]) -> Node:
    """A long enum as a trie automaton: 100k values would otherwise be ~1M syntax-tree nodes."""
    check_positions(sum(len(t) for t in texts))
    dfa = literal_set_dfa([t.encode("utf-8", "surrogatepass") for t in texts])
    return Automaton(dfa, lambda: "|".join(to_regex(literal(t)) for t in sorted(set(texts))))


def _size(node: Node) -> int:
    memo: dict[int, int] = {}

    def go(n: Node) -> int:
        got = memo.get(id(n))
        if got is not None:
            return got
        if isinstance(n, (Concat, Alt)):
            r = sum(go(p) for p in (n.parts if isinstance(n, Concat) else n.options))
        elif isinstance(n, Repeat):
            r = go(n.node) * (n.max if n.max is not None else max(n.min, 1))
        else:
            r = size(n)
        memo[id(n)] = r
        return r

    return go(node)


# ---------------------------------------------------------------------------------------------
# Public entry points


def schema_options(
    whitespace: str | int | Whitespace | None = "compact",
    max_recursion: int = 3,
    any_depth: int = 2,
    max_states: int | None = DEFAULT_MAX_STATES,
) -> SchemaOptions:
    return SchemaOptions(
        whitespace=whitespace_policy(whitespace),
        max_recursion=max_recursion,
        any_depth=any_depth,
        max_states=max_states,
    )


def json_schema_to_node(schema: Any, options: SchemaOptions | None = None) -> Node:
    """The schema's syntax tree (see the module docstring for the semantics)."""
    try:
        if isinstance(schema, str):
            check_pattern_chars(len(schema), "a JSON schema's text")
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise ConstraintError(f"the schema is not valid JSON: {e}", pointer="") from None
        else:
            try:
                text = json.dumps(schema, allow_nan=True, default=str)
            except (TypeError, ValueError):
                text = ""  # not JSON-serializable: the compiler says where, with a pointer
            check_pattern_chars(len(text), "a JSON schema's text")
        return SchemaCompiler(schema, options or SchemaOptions()).compile_root()
    except RecursionError:
        # a schema nested deeper than Python's stack (json.loads, json.dumps): the nesting budget
        # stops every nesting the compiler itself walks long before this
        raise over("constraint_nesting", None, "schema nesting", pointer="") from None


def json_schema_to_regex(
    schema: Any, whitespace: str | int | Whitespace | None = "compact", max_recursion: int = 3
) -> str:
    """A Python regex (for `re.fullmatch`) matching the JSON texts sgc generates for the schema.

    Intersections (a pattern with a length, a format with a pattern) print as lookaheads.
    """
    return to_regex(json_schema_to_node(schema, schema_options(whitespace, max_recursion)))


# ---------------------------------------------------------------------------------------------
# The keyword support table (docs/constraints.md embeds its output; a test keeps them in sync)

KEYWORD_NOTES: dict[str, tuple[str, str]] = {
    "type": (
        "yes",
        "a name or a list; no `type` means every JSON type, each constrained only by the keywords of "
        "its type (`properties` does not make a schema an object)",
    ),
    "enum": ("yes", "values written compactly; sibling keywords (type, bounds, ...) filter the values"),
    "const": ("yes", "as a one-value enum"),
    "anyOf": ("yes", "alternation; sibling keywords are merged into every branch"),
    "oneOf": (
        "yes",
        "only when branches are provably exclusive (types, literals, const/enum discriminator, a "
        "required name another closed branch does not allow, names each branch requires that the "
        "other is never written with, a required name with disjoint value "
        "types), decided "
        "type by type (two branches that both take every value of a type exclude it); branches that "
        "only list `required`: exactly one list complete; overlapping string branches (pattern, "
        "length, enum; no format): the strings exactly one takes, on automata",
    ),
    "if": (
        "yes",
        "as (if and then) or (not if and else): exact when `not` negates the `if` schema exactly (see "
        "`not`); otherwise rejected at the pointer inside `if`",
    ),
    "then": ("yes", "with `if`; ignored without it"),
    "else": ("yes", "with `if`; ignored without it"),
    "allOf": ("yes", "merged: properties/required united, bounds tightened, patterns intersected"),
    "$ref": (
        "yes",
        "local JSON pointers (`#`, `#/$defs/x`, `#/definitions/x`, ...); recursion unrolled to `max_recursion`",
    ),
    "properties": ("yes", "generated in the order listed"),
    "required": (
        "yes",
        "required ones always present; names not in `properties` take `additionalProperties`",
    ),
    "additionalProperties": (
        "yes",
        "a schema or a boolean: the values of required (and dependency) names not listed, and a map's "
        "values; absent: see the open-object policy below",
    ),
    "patternProperties": (
        "yes",
        "listed names take the schemas of the patterns they match; a map's keys are split by the "
        "patterns they match (at most 3 patterns)",
    ),
    "propertyNames": ("yes", "listed names that fail it are never generated; a map's keys are intersected"),
    "dependentRequired": ("yes", "exact, in any direction (a trigger listed after its target too)"),
    "dependencies": ("yes", "array form; schema form only when the schema just lists `required`"),
    "dependentSchemas": ("partly", "only schemas that just list `required`; others rejected"),
    "unevaluatedProperties": ("false only", "same as `additionalProperties: false`"),
    "minProperties": (
        "yes",
        "counted over the generated properties; more than the schema names is rejected; maps: at most 1",
    ),
    "maxProperties": ("yes", "counted over the generated properties"),
    "items": ("yes", "a schema, or a list (tuple form, with `additionalItems`)"),
    "prefixItems": ("yes", ""),
    "additionalItems": ("yes", "with tuple-form `items`"),
    "minItems": ("yes", ""),
    "maxItems": ("yes", "unrolled (mind the size budget)"),
    "uniqueItems": (
        "yes",
        "items with few values (enum, const, boolean, null, a small finite item language) in the "
        "automaton; any other items (strings, objects, numbers, ...) by a decode-time check next to it "
        "(`compile_json_schema`; `json_schema_to_regex` refuses them): see \"checked while decoding\"",
    ),
    "contains": ("yes", "with `items` as one schema (not tuple form)"),
    "minContains": ("yes", "with `contains`"),
    "maxContains": ("partly", "only when it does not bind (>= `maxItems`): it needs a complement"),
    "not": (
        "partly",
        "finite forms: `type`, `const`, `enum` (of null, boolean, integer, string values), `required` "
        "(objects that list properties), `properties` whose values negate so; `not` (double negation), "
        "`anyOf` (every branch negated) and `contains` (every item fails; no prefixItems or "
        "min/maxContains) of those; several keywords by De Morgan; several `not`s each apply; a bare "
        "`not` is every other value",
    ),
    "minLength": ("yes", "code points; escapes count as one"),
    "maxLength": ("yes", "code points; escapes count as one"),
    "pattern": ("yes", "ECMA search semantics (unanchored ends get `.*`); see the regex syntax"),
    "format": (
        "yes",
        ", ".join(SUPPORTED_FORMATS) + "; other formats a draft defines are rejected, unknown ones "
        "(`int32`, `password`, ...) are annotations",
    ),
    "minimum": (
        "yes",
        "any bound; a bounded `number` is written without exponent, and a decimal is kept when the "
        "float it parses to is in range (`100.000000000000001` is not above 100)",
    ),
    "maximum": ("yes", "as `minimum`"),
    "exclusiveMinimum": ("yes", "number form and draft-4 boolean form"),
    "exclusiveMaximum": ("yes", "number form and draft-4 boolean form"),
    "multipleOf": (
        "integers",
        "integer divisors up to 10000 (numbers become integers); fractional ones rejected",
    ),
}


def support_table_markdown() -> str:
    """The JSON Schema keyword table for docs/constraints.md."""
    lines = ["| keyword | support | notes |", "| --- | --- | --- |"]
    for k in sorted(KEYWORD_NOTES, key=lambda k: k.lower().lstrip("$")):
        status, note = KEYWORD_NOTES[k]
        lines.append(f"| `{k}` | {status} | {note} |")
    for k in sorted(ANNOTATIONS, key=lambda k: (k.lower().lstrip("$"), k)):
        lines.append(f"| `{k}` | ignored | {ANNOTATION_NOTES.get(k, 'annotation')} |")
    for k in sorted(REJECTED_KEYWORDS, key=lambda k: k.lower().lstrip("$")):
        lines.append(f"| `{k}` | **rejected** | {REJECTED_KEYWORDS[k]} |")
    lines.append(
        "| anything else | ignored | unknown keywords (vendor `x-*`, OpenAPI's `nullable`, ...), as the "
        "specification says |"
    )
    return "\n".join(lines)


ANNOTATION_NOTES = {
    "$id": "annotation; a `$ref` below a nested `$id` is rejected (it would be relative to that id)",
    "id": "draft-4 spelling of `$id` (only when a string)",
    "$anchor": 'annotation; `$ref: "#name"` finds it',
    "$defs": "where `$ref` targets usually live",
    "definitions": "where `$ref` targets usually live (drafts 4-7)",
}
