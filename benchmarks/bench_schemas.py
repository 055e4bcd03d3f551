"""sgc on the real-world schema corpus (tests/data/schemas/, built by make_schema_corpus.py).

    .venv/bin/python benchmarks/bench_schemas.py            # all schemas, ~minutes on 2 cores
    .venv/bin/python benchmarks/bench_schemas.py --sample 30 --seed 1

For every schema: compile it with `compile_json_schema` for the default model's tokenizer
(SmolLM2, compact whitespace) under a per-schema `constraint_seconds` budget, and time it (the
vocabulary trie is warmed once before the first schema; leaf caches stay warm between schemas, as
in `sgc compile`). Then every instance is checked:

* an instance is *accepted* when some JSON spelling of it is accepted by the FSM: compact, objects
  in any key order (the search runs on the byte DFA over orders, pruned by dead states), strings
  with raw characters or `\\uXXXX` escapes, numbers as Python writes them or without exponent (or
  as an integer when integral). The search is exhaustive unless one object has so many orders
  alive that more than `--max-frontier` remain, or the walks of one try pass `Matcher.MAX_WALKS`
  (nested objects multiply the search; then counted as `search_cut`, and not accepted). Each object is first
  tried greedily (next key: the first, in the instance's order, the DFA takes from any of the
  states the spellings so far reach: an unminimized DFA may end a raw and an escaped spelling of
  one string in two states); the search runs
  only when that fails (a greedy order that lands in a state the rest cannot continue from would
  hide other orders: a limit of this check, never seen to matter for compact objects);
* where the schema has unique arrays checked at decode time (`TokenFSM.unique_paths`), the text must
  also pass that check (`unique_items.check_text`, the runtime's scanner): an instance with a repeated
  item is then not accepted, whatever its spelling; where the automaton has decode-checked
  unconstrained values (`TokenFSM.json_structure`), the text must pass the structure check too
  (`json_structure.check_text`; a real JSON text always does);
* an accepted valid instance's text is tokenized with the real tokenizer and walked token by token:
  at each state `fill_mask` is timed and must allow the next token (after it, the uniqueness filter
  the runtime applies, `TokenFSM.unique_guard().filter`, and the JSON structure filter,
  `TokenFSM.structure_guard().filter`, timed with it, exactly as `ConstraintCursor` applies them),
  `next_state` advances, and the final state must be accepting with EOS in its mask (EOS only where
  the structure check says the value is complete; else a `token_walk` failure: an index bug).

A schema *passes* when it compiles, accepts every valid instance and rejects every invalid one.
An accepted invalid instance is a soundness bug and is listed first in the report.

Output: `bench_results/schema_corpus.json` (per schema) and `bench_results/schema_corpus.md`
(the tables that docs/constraints.md shows), unless `--out` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import statistics
import sys
import time
import traceback
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.append(str(ROOT / "benchmarks"))  # regex_readings, when loaded by path

from regex_readings import SCHEMA_MAPS, SCHEMA_VALUES  # noqa: E402

from compiler.budgets import budget_overrides  # noqa: E402
from compiler.constraints import ConstraintError, Vocabulary, compile_json_schema  # noqa: E402
from compiler.constraints.json_structure import check_text as structure_check_text  # noqa: E402
from compiler.constraints.unique_items import check_text  # noqa: E402

CORPUS = ROOT / "tests" / "data" / "schemas"

# Keywords of JSON Schema drafts 3 to 2020-12 (the coverage table lists these one by one; anything
# else a schema uses is "non-standard").
STANDARD = {
    "$schema",
    "$id",
    "id",
    "$ref",
    "$defs",
    "definitions",
    "$anchor",
    "$dynamicRef",
    "$dynamicAnchor",
    "$recursiveRef",
    "$recursiveAnchor",
    "$vocabulary",
    "$comment",
    "type",
    "enum",
    "const",
    "multipleOf",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "items",
    "prefixItems",
    "additionalItems",
    "unevaluatedItems",
    "contains",
    "maxContains",
    "minContains",
    "maxItems",
    "minItems",
    "uniqueItems",
    "maxProperties",
    "minProperties",
    "required",
    "properties",
    "patternProperties",
    "additionalProperties",
    "unevaluatedProperties",
    "propertyNames",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "format",
    "contentEncoding",
    "contentMediaType",
    "contentSchema",
    "title",
    "description",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
    "examples",
    "extends",
    "disallow",
    "divisibleBy",
}


def keywords_used(schema: Any, out: set[str] | None = None) -> set[str]:
    """The keywords used anywhere in a schema (keyword positions only: not inside enum/const/...)."""
    out = set() if out is None else out
    if isinstance(schema, list):
        for s in schema:
            keywords_used(s, out)
        return out
    if not isinstance(schema, dict):
        return out
    for k, v in schema.items():
        out.add(k)
        if k in SCHEMA_MAPS and isinstance(v, dict):
            for sub in v.values():
                keywords_used(sub, out)
        elif k in SCHEMA_VALUES:
            keywords_used(v, out)
        elif k == "dependencies" and isinstance(v, dict):
            for sub in v.values():
                if isinstance(sub, dict):
                    keywords_used(sub, out)
    return out


# ---------------------------------------------------------------------------------------------
# Acceptance: some JSON spelling of the instance reaches an accepting state of the byte DFA.


class _OutOfWalks(Exception):
    """The matcher's walk budget for one instance ran out."""


class Matcher:
    MAX_WALKS = 300_000  # DFA walks per instance try: nested searches multiply (then `cut`)

    def __init__(self, fsm: Any, max_frontier: int) -> None:
        self._walk = fsm.walk_bytes
        self.max_frontier = max_frontier
        self.cut = False
        self.walks = 0

    def walk(self, s: int, data: bytes) -> int:
        self.walks += 1
        if self.walks > self.MAX_WALKS:
            raise _OutOfWalks
        return self._walk(s, data)

    @staticmethod
    def spellings(v: Any) -> list[bytes]:
        if v is None:
            return [b"null"]
        if v is True:
            return [b"true"]
        if v is False:
            return [b"false"]
        if isinstance(v, int):
            return [str(v).encode()]
        if isinstance(v, float):
            text = json.dumps(v)
            out = [text.encode()]
            if "e" in text or "E" in text:
                out.append(format(Decimal(text), "f").encode())
            if v.is_integer() and abs(v) < 1e16:
                out.append(str(int(v)).encode())
            return out
        if isinstance(v, str):
            raw = json.dumps(v, ensure_ascii=False).encode("utf-8")
            esc = json.dumps(v).encode("utf-8")
            return [raw] if raw == esc else [raw, esc]
        raise TypeError(type(v))

    def lit(self, states: dict[int, bytes], data: bytes) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for s, text in states.items():
            s2 = self.walk(s, data)
            if s2 >= 0 and s2 not in out:
                out[s2] = text + data
        return out

    def value(self, v: Any, states: dict[int, bytes]) -> dict[int, bytes]:
        if not states:
            return states
        if isinstance(v, dict):
            return self.obj(v, states)
        if isinstance(v, list):
            cur = self.lit(states, b"[")
            for i, item in enumerate(v):
                if i:
                    cur = self.lit(cur, b",")
                cur = self.value(item, cur)
                if not cur:
                    return cur
            return self.lit(cur, b"]")
        out: dict[int, bytes] = {}
        for sp in self.spellings(v):
            for s2, text in self.lit(states, sp).items():
                out.setdefault(s2, text)
        return out

    def obj(self, v: dict, states: dict[int, bytes]) -> dict[int, bytes]:
        # Greedy first (each next key: the first one, in the instance's order, that keeps the DFA
        # alive and whose value is accepted); the search over orders only when greedy fails.
        greedy = self.obj_greedy(v, states)
        if greedy:
            return greedy
        return self.obj_search(v, states)

    def obj_greedy(self, v: dict, states: dict[int, bytes]) -> dict[int, bytes] | None:
        # The current states are a set: a value with two spellings (raw and escaped characters)
        # can end in two states of an unminimized DFA that accept the same continuations; keeping
        # one would fail the greedy walk and leave the instance to the search, which a 12-member
        # object can cut.
        cur = self.lit(states, b"{")
        left = list(v)
        while left and cur:
            for k in left:
                start = cur if len(left) == len(v) else self.lit(cur, b",")
                after = self.value(k, start)
                after = self.lit(after, b":")
                ends = self.value(v[k], after)
                if ends:
                    cur = ends
                    left.remove(k)
                    break
            else:
                return None
        return self.lit(cur, b"}") if not left else None

    def obj_search(self, v: dict, states: dict[int, bytes]) -> dict[int, bytes]:
        keys = list(v)
        frontier: dict[tuple[frozenset, int], bytes] = {
            (frozenset(), s): t for s, t in self.lit(states, b"{").items()
        }
        for _ in keys:
            nxt: dict[tuple[frozenset, int], bytes] = {}
            for (used, s), text in frontier.items():
                for k in keys:
                    if k in used:
                        continue
                    start = {s: text}
                    if used:
                        start = self.lit(start, b",")
                    after_key: dict[int, bytes] = {}
                    for sp in self.spellings(k):
                        for s2, t2 in self.lit(start, sp + b":").items():
                            after_key.setdefault(s2, t2)
                    for s3, t3 in self.value(v[k], after_key).items():
                        nxt.setdefault((used | {k}, s3), t3)
            if len(nxt) > self.max_frontier:
                self.cut = True
                nxt = dict(list(nxt.items())[: self.max_frontier])
            frontier = nxt
            if not frontier:
                return {}
        out: dict[int, bytes] = {}
        for (_, s), text in frontier.items():
            s2 = self.walk(s, b"}")
            if s2 >= 0:
                out.setdefault(s2, text + b"}")
        return out

    def accepted_text(self, fsm: Any, instance: Any, schema: Any = None) -> bytes | None:
        # The instance with its keys in the schema's `properties` order first (sgc writes that
        # order, so the greedy walk takes every key at once; the instance's own order can make it
        # take a later optional key first and strand the earlier ones, and the search is cut for
        # objects of a dozen members), then as given.
        tries = [instance]
        if schema is not None:
            ordered = schema_ordered(instance, schema, schema)
            if ordered != instance or list(_keys(ordered)) != list(_keys(instance)):
                tries.insert(0, ordered)
        for inst in tries:
            self.walks = 0
            try:
                ends = self.value(inst, {fsm.initial_state: b""})
            except _OutOfWalks:
                self.cut = True
                continue
            for s, text in ends.items():
                if fsm.is_accepting(s):
                    return text
        return None


def _keys(v: Any) -> list:
    return list(v) if isinstance(v, dict) else []


def _resolve(schema: Any, root: Any, hops: int = 8) -> Any:
    """A local `$ref` ("#/definitions/X", "#/$defs/X", ...) followed, as far as it resolves."""
    while hops and isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#/"):
        node = root
        for part in schema["$ref"][2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            else:
                return schema
        schema, hops = node, hops - 1
    return schema


def _member_schema(schema: dict, props: dict, key: str) -> Any:
    """The schema a member's value follows: its `properties` entry, else the first
    `patternProperties` entry whose pattern it matches, else `additionalProperties`."""
    if key in props:
        return props[key]
    pats = schema.get("patternProperties")
    if isinstance(pats, dict):
        for pat, sub in pats.items():
            try:
                if re.search(pat, key):
                    return sub
            except re.error:
                continue
    return schema.get("additionalProperties")


def _listed(schema: Any, root: Any) -> tuple[set[str], list[str]]:
    """The names an object schema lists (`properties`, `required`, over `allOf`/`anyOf`/`oneOf`/
    `then`/`else` branches one level down) and its `patternProperties` patterns."""
    names: set[str] = set()
    patterns: list[str] = []
    for sub in [schema] + [
        b for k in ("allOf", "anyOf", "oneOf") for b in (schema.get(k) or []) if isinstance(schema.get(k), list)
    ] + [schema.get("then"), schema.get("else")]:
        sub = _resolve(sub, root)
        if not isinstance(sub, dict):
            continue
        props = sub.get("properties")
        names.update(props if isinstance(props, dict) else ())
        req = sub.get("required")
        names.update(r for r in (req if isinstance(req, list) else ()) if isinstance(r, str))
        pats = sub.get("patternProperties")
        patterns.extend(pats if isinstance(pats, dict) else ())
    return names, patterns


def names_unlisted(instance: Any, schema: Any, root: Any, depth: int = 0) -> bool:
    """Whether the instance has, somewhere, a member whose name its object schema does not list
    while listing others (an open object: sgc's documented policy writes only listed names)."""
    schema = _resolve(schema, root)
    if depth > 32 or not isinstance(schema, dict):
        return False
    if isinstance(instance, list):
        items = schema.get("items")
        return isinstance(items, dict) and any(names_unlisted(x, items, root, depth + 1) for x in instance)
    if not isinstance(instance, dict):
        return False
    names, patterns = _listed(schema, root)
    for key in instance:
        if names and key not in names and not any(_search(p, key) for p in patterns):
            return True
    props = schema.get("properties")
    props = props if isinstance(props, dict) else {}
    return any(
        names_unlisted(value, _member_schema(schema, props, key), root, depth + 1) for key, value in instance.items()
    )


def _search(pattern: str, text: str) -> bool:
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return False


def schema_ordered(instance: Any, schema: Any, root: Any, depth: int = 0) -> Any:
    """The instance with each object's keys in its schema's `properties` order (then the rest)."""
    schema = _resolve(schema, root)
    if depth > 32 or not isinstance(schema, dict):
        return instance
    if isinstance(instance, dict):
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        keys = [k for k in props if k in instance] + [k for k in instance if k not in props]
        return {k: schema_ordered(instance[k], _member_schema(schema, props, k), root, depth + 1) for k in keys}
    if isinstance(instance, list):
        items = schema.get("items")
        return [schema_ordered(x, items, root, depth + 1) for x in instance] if isinstance(items, dict) else instance
    return instance


# ---------------------------------------------------------------------------------------------


def refusal_group(e: ConstraintError) -> tuple[str, str]:
    """(keyword, reason) for grouping refusals."""
    msg = e.message
    ptr = e.pointer or ""
    last = ptr.rsplit("/", 1)[-1].replace("~1", "/").replace("~0", "~") if ptr else "(root)"
    m = re.search(r"budget|constraint_\w+", msg)
    if m and "constraint_" in msg:
        name = re.search(r"constraint_\w+|pattern_chars", msg)
        return "budget", f"over budget {name.group(0) if name else ''}".strip()
    if msg.startswith("unknown keyword"):
        return last, "unknown keyword"
    if msg.startswith("format "):
        return "format", re.sub(r" \(supported:.*", "", msg)
    reason = re.sub(r"'[^']*'", "'…'", msg)
    reason = re.sub(r"\d+", "N", reason)
    if not last or last.isdigit() or last not in STANDARD:
        # pointer at a property/branch, not at a keyword: name the keyword from the message
        kw = next((k for k in sorted(STANDARD, key=len, reverse=True) if k in msg), last)
        return kw, reason
    return last, reason


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    ys = sorted(xs)
    return ys[min(len(ys) - 1, int(q * len(ys)))]


def load_corpus(names: list[str] | None, sample: int, seed: int) -> list[dict]:
    files = sorted(CORPUS.glob("*.json"))
    docs = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    if names:
        docs = [d for d in docs if d["name"] in names]
    if sample and sample < len(docs):
        docs = random.Random(seed).sample(docs, sample)
    return docs


def run_schema(
    doc: dict, vocab: Vocabulary, tokenizer: Any, args: argparse.Namespace, eos: int, mask_times: list[float],
    unique_times: list[float] | None = None, structure_times: list[float] | None = None,
) -> dict:
    """One schema's row (see the module docstring). `mask_times` gets every timed mask (with the
    uniqueness and structure filters where there are some); `unique_times` / `structure_times` the
    timed masks of schemas that have one."""
    r: dict[str, Any] = {"name": doc["name"], "category": doc.get("category", "")}
    schema = doc["schema"]
    t0 = time.perf_counter()
    try:
        with budget_overrides(constraint_seconds=args.timeout):
            fsm = compile_json_schema(schema, vocab)
    except ConstraintError as e:
        r["compile_s"] = time.perf_counter() - t0
        r["status"] = "refused"
        r["keyword"], r["reason"] = refusal_group(e)
        r["error"] = str(e).splitlines()[0][:300]
        return r
    except Exception as e:  # a crash is a bug in the compiler, reported as such
        r["compile_s"] = time.perf_counter() - t0
        r["status"] = "crashed"
        r["keyword"], r["reason"] = "crash", f"{type(e).__name__}"
        r["error"] = "".join(traceback.format_exception_only(type(e), e)).strip()[:300]
        return r
    r["compile_s"] = time.perf_counter() - t0
    r["status"] = "compiled"
    r["states"] = fsm.num_states
    r["unique_paths"] = len(fsm.unique_paths)
    r["json_structure"] = fsm.json_structure
    matcher = Matcher(fsm, args.max_frontier)
    mask = np.zeros(fsm.vocab_size, dtype=bool)
    timed = mask_times if not fsm.unique_paths or unique_times is None else _Both(mask_times, unique_times)
    if fsm.json_structure and structure_times is not None:
        timed = _Both(timed, structure_times)

    def accepted(inst: Any) -> bytes | None:
        text = matcher.accepted_text(fsm, inst, schema)
        if text is not None and fsm.unique_paths and not check_text(text, fsm.unique_paths):
            return None  # a repeated item in a unique array: the runtime never lets it be written
        if text is not None and fsm.json_structure and not structure_check_text(text):
            return None  # not JSON (the superset automaton's extra texts): the runtime never writes it
        return text

    valid_rejected, token_walk, invalid_accepted, untokenizable, implied_type = [], [], [], [], []
    open_object: list[int] = []
    for i, inst in enumerate(doc["valid"][: args.max_instances]):
        text = accepted(inst)
        if text is None:
            valid_rejected.append(i)
            if "type" not in schema and "properties" in schema and not isinstance(inst, dict):
                implied_type.append(i)  # sgc writes the type its keywords imply (documented)
            elif names_unlisted(inst, schema, schema):
                open_object.append(i)  # sgc writes only the names a schema lists (documented)
            continue
        ids = tokenizer.encode(text.decode("utf-8"), add_special_tokens=False).ids
        if vocab.decode_bytes(ids) != text:
            untokenizable.append(i)  # e.g. a byte the vocabulary lacks: no model can write it
            continue
        s = fsm.initial_state
        guard = fsm.unique_guard()  # None without unique arrays: the plain table lookup
        structure = fsm.structure_guard()  # None when the automaton is exact

        def fill(state: int, guard: Any = guard, structure: Any = structure) -> None:
            # as ConstraintCursor.fill_mask: the table, the structure filter, the uniqueness filter,
            # EOS where the state accepts and the structure is complete
            fsm.fill_mask(state, mask)
            if structure is not None:
                structure.filter(mask[: fsm.vocab_size], state)
            if guard is not None:
                guard.filter(state, mask[: fsm.vocab_size])
            if fsm.is_accepting(state) and (structure is None or structure.complete):
                mask[eos] = True

        for n, t in enumerate(ids):
            if n < args.mask_steps:
                t1 = time.perf_counter()
                fill(s)
                timed.append(time.perf_counter() - t1)
            else:
                fill(s)
            if not mask[t]:
                token_walk.append((i, f"token {t} not in mask at step {n}"))
                break
            s = fsm.next_state(s, t)
            if s < 0:
                token_walk.append((i, f"next_state dead at step {n}"))
                break
            if structure is not None and not structure.feed_token(t):
                token_walk.append((i, f"token {t} breaks JSON structure at step {n}"))
                break
            if guard is not None and guard.feed(fsm.token_text(t)):
                token_walk.append((i, f"token {t} repeats an item at step {n}"))
                break
        else:
            fill(s)
            if not (fsm.is_accepting(s) and mask[eos]):
                token_walk.append((i, "final state not accepting / EOS masked"))
    for i, inst in enumerate(doc["invalid"][: args.max_instances]):
        text = accepted(inst)
        if text is not None:
            kind = (doc.get("invalid_mutations") or [""] * (i + 1))[i]
            invalid_accepted.append({"index": i, "mutation": kind, "text": text.decode("utf-8")[:300]})
    n_valid = min(len(doc["valid"]), args.max_instances)
    n_invalid = min(len(doc["invalid"]), args.max_instances)
    r.update(
        n_valid=n_valid,
        n_invalid=n_invalid,
        valid_rejected=valid_rejected,
        token_walk=token_walk,
        untokenizable=untokenizable,
        implied_type=implied_type,
        open_object=open_object,
        invalid_accepted=invalid_accepted,
        search_cut=matcher.cut,
    )
    r["passed"] = not valid_rejected and not token_walk and not invalid_accepted
    return r


class _Both(list):
    """Appends to two lists of timings at once."""

    def __init__(self, a: list[float], b: list[float]) -> None:
        super().__init__()
        self.a, self.b = a, b

    def append(self, x: float) -> None:
        self.a.append(x)
        self.b.append(x)


def summarize(
    results: list[dict], mask_times: list[float], args: argparse.Namespace, docs: list[dict],
    unique_times: list[float] | None = None, structure_times: list[float] | None = None,
) -> dict:
    n = len(results)
    compiled = [r for r in results if r["status"] == "compiled"]
    passed = [r for r in compiled if r["passed"]]
    n_valid = sum(r["n_valid"] for r in compiled)
    n_invalid = sum(r["n_invalid"] for r in compiled)
    v_rej = sum(len(r["valid_rejected"]) + len(r["token_walk"]) for r in compiled)
    inv_acc = [(r["name"], a) for r in compiled for a in r["invalid_accepted"]]
    times = [r["compile_s"] for r in compiled]
    refusals = Counter((r["keyword"], r["reason"]) for r in results if r["status"] != "compiled")
    by_kw_refused = Counter(
        r["keyword"] if r["keyword"] in STANDARD or r["keyword"] == "budget" else "(non-standard keywords)"
        for r in results
        if r["status"] != "compiled"
    )
    unknown = Counter(
        r["error"].split("'")[1]
        for r in results
        if r["status"] == "refused" and r["reason"] == "unknown keyword" and "'" in r["error"]
    )
    usage: dict[str, list[str]] = defaultdict(list)
    for d in docs:
        for k in keywords_used(d["schema"]):
            usage[k if k in STANDARD else "(non-standard keywords)"].append(d["name"])
    status = {r["name"]: r for r in results}
    coverage = []
    for k, names in usage.items():
        names = sorted(set(names))
        coverage.append(
            {
                "keyword": k,
                "schemas": len(names),
                "compiled": sum(status[x]["status"] == "compiled" for x in names),
                "passed": sum(status[x].get("passed", False) for x in names),
                "refused_here": by_kw_refused.get(k, 0),
            }
        )
    coverage.sort(key=lambda c: (-c["schemas"], c["keyword"]))
    by_cat: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_cat[r["category"]].append(r)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "command": " ".join(["benchmarks/bench_schemas.py"] + sys.argv[1:]),
        "schemas": n,
        "compiled": len(compiled),
        "passed": len(passed),
        "pass_share": len(passed) / n if n else 0.0,
        "valid_instances": n_valid,
        "valid_rejected": v_rej,
        "valid_rejected_share": v_rej / n_valid if n_valid else 0.0,
        "invalid_instances": n_invalid,
        "invalid_accepted": len(inv_acc),
        "invalid_accepted_list": [{"schema": s, **a} for s, a in inv_acc],
        "token_walk_failures": sum(len(r["token_walk"]) for r in compiled),
        "valid_rejected_implied_type": sum(len(r["implied_type"]) for r in compiled),
        "valid_rejected_open_object": sum(len(r.get("open_object", ())) for r in compiled),
        "untokenizable": sum(len(r["untokenizable"]) for r in compiled),
        "search_cut": sum(bool(r["search_cut"]) for r in compiled),
        "crashed": sum(r["status"] == "crashed" for r in results),
        "compile_p50_s": pct(times, 0.5),
        "compile_p90_s": pct(times, 0.9),
        "compile_max_s": max(times, default=float("nan")),
        "mask_mean_us": statistics.fmean(mask_times) * 1e6 if mask_times else float("nan"),
        "mask_p90_us": pct(mask_times, 0.9) * 1e6,
        "mask_samples": len(mask_times),
        "unique_schemas": sum(bool(r.get("unique_paths")) for r in compiled),
        "unique_mask_mean_us": statistics.fmean(unique_times) * 1e6 if unique_times else float("nan"),
        "unique_mask_p90_us": pct(unique_times or [], 0.9) * 1e6,
        "unique_mask_samples": len(unique_times or []),
        "structure_schemas": sum(bool(r.get("json_structure")) for r in compiled),
        "structure_mask_mean_us": statistics.fmean(structure_times) * 1e6 if structure_times else float("nan"),
        "structure_mask_p90_us": pct(structure_times or [], 0.9) * 1e6,
        "structure_mask_samples": len(structure_times or []),
        "by_category": {
            c: {
                "schemas": len(rs),
                "compiled": sum(r["status"] == "compiled" for r in rs),
                "passed": sum(r.get("passed", False) for r in rs),
            }
            for c, rs in sorted(by_cat.items())
        },
        "refusals": [{"keyword": k, "reason": why, "schemas": c} for (k, why), c in refusals.most_common()],
        "unknown_keywords": unknown.most_common(),
        "coverage": coverage,
        "results": results,
    }


def markdown(s: dict) -> str:
    L = []
    L.append(f"Run {s['date']} on {s['machine']}: `{s['command']}`\n")
    L.append("| measure | value |")
    L.append("| --- | --- |")
    L.append(f"| schemas | {s['schemas']} |")
    L.append(f"| compile (not refused) | {s['compiled']} ({s['compiled'] / s['schemas']:.1%}) |")
    L.append(
        f"| pass: compiles, accepts every valid, rejects every invalid | **{s['passed']} ({s['pass_share']:.1%})** |"
    )
    L.append(f"| invalid instances accepted | **{s['invalid_accepted']}** of {s['invalid_instances']} |")
    L.append(
        f"| valid instances rejected | {s['valid_rejected']} of {s['valid_instances']} ({s['valid_rejected_share']:.2%}) |"
    )
    L.append(
        f"| of which: a non-object instance of an untyped schema with `properties` (sgc writes the implied type) | {s['valid_rejected_implied_type']} |"
    )
    L.append(
        f"| of which: a name an open object does not list (sgc writes only listed names) | {s['valid_rejected_open_object']} |"
    )
    L.append(f"| token-walk failures (mask/next_state disagree with the DFA) | {s['token_walk_failures']} |")
    L.append(
        f"| valid instances the tokenizer cannot spell (DFA accepts; token walk skipped) | {s['untokenizable']} |"
    )
    L.append(f"| compiler crashes (not a ConstraintError) | {s['crashed']} |")
    L.append(
        f"| compile time p50 / p90 / max (compiled schemas) | {s['compile_p50_s']:.3f} s / {s['compile_p90_s']:.3f} s / {s['compile_max_s']:.2f} s |"
    )
    L.append(
        f"| `fill_mask` per token, mean / p90 ({s['mask_samples']} steps) | {s['mask_mean_us']:.1f} us / {s['mask_p90_us']:.1f} us |"
    )
    if s.get("unique_mask_samples"):
        L.append(
            f"| of which: schemas with a decode-time uniqueItems check ({s['unique_schemas']}), mask + filter, "
            f"mean / p90 ({s['unique_mask_samples']} steps) | {s['unique_mask_mean_us']:.1f} us / "
            f"{s['unique_mask_p90_us']:.1f} us |"
        )
    if s.get("structure_mask_samples"):
        L.append(
            f"| of which: schemas with the decode-time JSON structure check ({s['structure_schemas']}), mask + "
            f"filter, mean / p90 ({s['structure_mask_samples']} steps) | {s['structure_mask_mean_us']:.1f} us / "
            f"{s['structure_mask_p90_us']:.1f} us |"
        )
    L.append("")
    L.append("| category | schemas | compile | pass |")
    L.append("| --- | --- | --- | --- |")
    for c, v in s["by_category"].items():
        L.append(f"| {c} | {v['schemas']} | {v['compiled']} | {v['passed']} |")
    if s["invalid_accepted_list"]:
        L.append("\n**Invalid instances accepted (soundness bugs):**\n")
        for a in s["invalid_accepted_list"]:
            L.append(f"- `{a['schema']}` invalid #{a['index']} ({a['mutation']}): `{a['text'][:120]}`")
    L.append("\nRefusals, grouped by keyword and reason (schemas):\n")
    L.append("| keyword | reason | schemas |")
    L.append("| --- | --- | --- |")
    for r in s["refusals"][:25]:
        L.append(f"| `{r['keyword']}` | {r['reason'].replace('|', '/')} | {r['schemas']} |")
    if s["unknown_keywords"]:
        L.append(
            "\nUnknown (non-standard) keywords that stopped a compile: "
            + ", ".join(f"`{k}` {c}" for k, c in s["unknown_keywords"][:15])
        )
    L.append(
        "\nCoverage by keyword (schemas using it anywhere; refused here = schemas whose first refusal is this keyword):\n"
    )
    L.append("| keyword | schemas | compile | pass | refused here |")
    L.append("| --- | --- | --- | --- | --- |")
    for c in s["coverage"]:
        if c["keyword"] in ("title", "description", "$schema", "$comment", "examples"):
            continue
        L.append(
            f"| `{c['keyword']}` | {c['schemas']} | {c['compiled']} | {c['passed']} | {c['refused_here']} |"
        )
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample", type=int, default=0, help="run on a random sample of this many schemas")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--names", nargs="*", help="only these schemas")
    ap.add_argument("--timeout", type=float, default=10.0, help="constraint_seconds budget per compile")
    ap.add_argument("--max-instances", type=int, default=5, help="instances checked per kind and schema")
    ap.add_argument("--mask-steps", type=int, default=200, help="fill_mask calls timed per instance")
    ap.add_argument("--max-frontier", type=int, default=500)
    ap.add_argument("--out", type=Path, default=ROOT / "bench_results" / "schema_corpus")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args()

    from constraint_schemas import SMOLLM2_EOS, load_smollm2_tokenizer

    tokenizer = load_smollm2_tokenizer()
    vocab = Vocabulary.from_tokenizer(tokenizer, eos_token_id=SMOLLM2_EOS)
    compile_json_schema({"type": "string"}, vocab)  # the vocabulary trie, built once per vocabulary
    docs = load_corpus(args.names, args.sample, args.seed)
    results, mask_times, unique_times, structure_times = [], [], [], []
    t_all = time.perf_counter()
    for i, doc in enumerate(docs):
        r = run_schema(doc, vocab, tokenizer, args, SMOLLM2_EOS, mask_times, unique_times, structure_times)
        results.append(r)
        if not args.quiet:
            what = (
                (
                    "PASS"
                    if r["passed"]
                    else "FAIL "
                    + json.dumps(
                        {k: r[k] for k in ("valid_rejected", "token_walk", "invalid_accepted") if r[k]}
                    )[:200]
                )
                if r["status"] == "compiled"
                else f"{r['status'].upper()} {r['error'][:150]}"
            )
            print(f"[{i + 1}/{len(docs)}] {doc['name']} {r['compile_s']:.3f}s {what}", flush=True)
    summary = summarize(results, mask_times, args, docs, unique_times, structure_times)
    summary["wall_s"] = time.perf_counter() - t_all
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1, ensure_ascii=False, default=str))
    md = markdown(summary)
    args.out.with_suffix(".md").write_text(md)
    print()
    print(md)
    print(f"wall {summary['wall_s']:.0f} s; results in {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
