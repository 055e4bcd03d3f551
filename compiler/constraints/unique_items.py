"""`uniqueItems` over items with unboundedly many values, enforced exactly while decoding.

No finite automaton keeps an unbounded set of strings (or objects, or numbers) distinct, so sgc
splits the keyword in two:

* Compile time. Items with a small finite set of values (enum, const, boolean, null, a short integer
  range, any item language of a few strings) keep the exact automaton construction of
  `json_schema.unique_array`: no run-time check. For every other `uniqueItems: true`,
  `json_schema.compile_array` compiles the array as if the keyword were absent and calls `defer`
  with its pointer (only inside `deferring()`, which `compile_json_schema` opens; the regex printer
  and `json_schema_to_node` still refuse it). `collect_unique_paths` then walks the schema for the
  *instance paths* of those arrays: tuples of segments, each a property name or `None` (any array
  index or any map key). Every deferred pointer must be found by the walk, else the compile fails
  closed at that pointer. The paths are plain data on the `TokenFSM` (`unique_paths`, stored as JSON
  text in its arrays).
* Decode time. A `UniqueScanner` follows the output bytes (container stack, instance path). In an
  array whose path matches, it records each finished item's canonical value (`canonical`: JSON Schema
  equality, so `1 == 1.0`, object key order is ignored, escapes are decoded, `true != 1`).
  `UniqueGuard.filter` runs after the FSM's mask and clears every allowed token that would finish an
  item equal to an earlier item of the same array (a string finishes at its closing quote, an
  object or array at its closing bracket, `true`/`false`/`null` at their last letter, a number at the
  byte after it). Only tokens that can finish an item are looked at (per-vocabulary classes of token
  ids, `TokenClasses`), and only while some unique array is open.

Over-approximation: a path segment `None` matches every key, so where `additionalProperties` or
`patternProperties` asks for unique items, arrays under the listed names are kept unique too; where one
`anyOf` branch asks for it, the other branches' arrays at that path are kept unique as well. Both
only cost completeness in such corners (documented in docs/constraints.md), never soundness.

Dead ends: when every continuation of an item repeats an earlier one (bounded items, e.g. strings of
`maxLength: 2` with all short values used, or an integer range smaller than `minItems`), no token is
left and the runtime raises `ConstraintDeadEnd`. `UniqueGuard.filter` looks one forced chain ahead
(a token after which the DFA forces the rest of an earlier item is cleared too), which covers the
common case of a bounded string forced to close.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any

import numpy as np

from compiler import budgets

from .dfa import DFA
from .dfa_ops import byte_dfa
from .errors import ConstraintError, join_pointer
from .limits import check_time, max_nesting, over
from .regex_ast import Alt, Automaton, Chars, Concat, Empty, Epsilon, Node, Repeat

Segment = str | None  # a property name, or None: any array index / any map key
Path = tuple[Segment, ...]

# ---------------------------------------------------------------------------------------------
# Compile time: which uniqueItems are deferred to decode time


_DEFERRED: ContextVar[set[str] | None] = ContextVar("sgc_unique_items_deferred", default=None)


@contextlib.contextmanager
def deferring() -> Iterator[set[str]]:
    """Within this block, `json_schema.compile_array` compiles `uniqueItems` over items with
    unboundedly many values as plain arrays and records the keyword's pointer in the yielded set."""
    token = _DEFERRED.set(set())
    try:
        yield _DEFERRED.get()  # type: ignore[misc]
    finally:
        _DEFERRED.reset(token)


def is_deferring() -> bool:
    return _DEFERRED.get() is not None


def defer(pointer: str) -> bool:
    """Record that the `uniqueItems` at `pointer` is enforced at decode time; False (nothing
    recorded) outside `deferring()`, where the caller must refuse the keyword instead."""
    deferred = _DEFERRED.get()
    if deferred is None:
        return False
    deferred.add(pointer)
    return True


def small_language(node: Node, cap: int, max_states: int | None = None) -> list[str] | None:
    """The strings of `node` when it has at most `cap` of them (then the items of a unique array
    have few enough values for the exact construction of `json_schema.unique_array`), else None.
    An upper bound is counted on the tree first, so an unbounded or large language costs nothing."""
    if _count(node, cap) > cap:
        return None
    dfa = byte_dfa(node, max_states)
    by_class: dict[int, list[int]] = {}
    for b, c in enumerate(dfa.symbol_class.tolist()):
        by_class.setdefault(c, []).append(b)
    out: list[bytes] = []
    table = dfa.transitions
    todo: list[tuple[int, bytes]] = [(dfa.initial, b"")] if dfa.num_states else []
    while todo:
        s, text = todo.pop()
        if len(text) > 4096:
            return None
        if dfa.accepting[s]:
            out.append(text)
            if len(out) > cap:
                return None
        for c in np.flatnonzero(table[s] >= 0).tolist():
            nxt = int(table[s, c])
            todo.extend((nxt, text + bytes((b,))) for b in by_class[c])
        if len(todo) > 64 * cap:
            return None
    try:
        return sorted(t.decode("utf-8") for t in out)
    except UnicodeDecodeError:
        return None


def _count(node: Node, cap: int, memo: dict[int, int] | None = None) -> int:
    """An upper bound on the number of strings of `node`, saturating at cap + 1. Trees share
    subtrees (a DAG), so counts are memoized by node: counted as a tree, sharing is exponential."""
    memo = {} if memo is None else memo
    got = memo.get(id(node))
    if got is None:
        check_time()
        got = memo[id(node)] = _count_node(node, cap, memo)
    return got


def _count_node(node: Node, cap: int, memo: dict[int, int]) -> int:
    big = cap + 1
    if isinstance(node, Empty):
        return 0
    if isinstance(node, Epsilon):
        return 1
    if isinstance(node, Chars):
        return min(node.charset.size(), big)
    if isinstance(node, Concat):
        n = 1
        for part in node.parts:
            n = min(n * _count(part, cap, memo), big)
            if n == 0:
                return 0
        return n
    if isinstance(node, Alt):
        return min(sum(_count(o, cap, memo) for o in node.options), big)
    if isinstance(node, Repeat):
        c = _count(node.node, cap, memo)
        if c == 0:
            return 1 if node.min == 0 else 0
        if node.max is None:
            return big
        total, power = 0, 1
        for k in range(node.max + 1):
            if k >= node.min:
                total = min(total + power, big)
            power = min(power * c, big)
            if total >= big:
                return big
        return total
    if isinstance(node, Automaton):
        return _dfa_count(node.dfa, cap)
    return big


def _dfa_count(dfa: DFA, cap: int) -> int:
    big = cap + 1
    if dfa.num_states > 4096:
        return big
    sizes = np.bincount(dfa.symbol_class, minlength=dfa.num_classes).tolist()
    table = dfa.transitions.tolist()
    accepting = dfa.accepting.tolist()
    memo: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[int, int]] = [(dfa.initial, 0)]
    while stack:  # iterative post-order: count(s) = accepting + sum size(c) * count(t[s][c])
        s, i = stack.pop()
        row = table[s]
        if i == 0:
            if s in memo:
                continue
            on_path.add(s)
        while i < len(row) and (row[i] < 0 or row[i] in memo):
            i += 1
        if i < len(row):
            t = row[i]
            if t in on_path:
                return big  # a cycle: unbounded (or dead; counted as unbounded either way)
            stack.append((s, i))
            stack.append((t, 0))
            continue
        on_path.discard(s)
        n = int(accepting[s])
        for c, t in enumerate(row):
            if t >= 0:
                n = min(n + sizes[c] * memo[t], big)
        memo[s] = n
    return memo.get(dfa.initial, 0)


_SAME_PLACE_LISTS = ("allOf", "anyOf", "oneOf")
_CHILD_SCHEMAS = ("additionalProperties", "unevaluatedProperties", "additionalItems", "contains")


def collect_unique_paths(
    root: Any, deferred: set[str], max_recursion: int, resolve: Callable[[Any, str], tuple[Any, str]]
) -> tuple[Path, ...]:
    """The instance paths of the arrays whose `uniqueItems` pointer is in `deferred`.

    Walks what the compiler walks (properties, patternProperties, additionalProperties, items,
    prefixItems, additionalItems, contains, allOf/anyOf/oneOf, then/else, dependentSchemas and
    `$ref`, each `$ref` entered at most `max_recursion` times along a path). `not` and `if` are not
    walked: an array under them that the compiler deferred is not found, and is refused. Raises
    `ConstraintError` at a deferred pointer the walk does not reach, and at the pointer that takes
    the number of paths over the `constraint_unique_paths` budget. `resolve(ref, pointer)` is the
    compiler's own `$ref` resolution (`SchemaCompiler.resolve`).
    """
    limit = int(budgets.value("constraint_unique_paths"))
    depth_limit = max_nesting()
    paths: dict[Path, None] = {}
    found: set[str] = set()
    seen: set[tuple[str, Path, tuple]] = set()
    stack: list[tuple[Any, str, Path, dict[str, int], int]] = [(root, "", (), {}, 0)]
    steps = 0
    while stack:
        schema, ptr, path, refs, depth = stack.pop()
        if not isinstance(schema, dict) or depth > 4 * depth_limit:
            continue
        key = (ptr, path, tuple(sorted(refs.items())))
        if key in seen:
            continue
        seen.add(key)
        steps += 1
        if steps % 256 == 0:
            check_time()
        uptr = join_pointer(ptr, "uniqueItems")
        if schema.get("uniqueItems") is True and uptr in deferred:
            found.add(uptr)
            if path not in paths:
                if len(paths) >= limit:
                    raise over("constraint_unique_paths", len(paths) + 1, "instance paths of unique arrays",
                               pointer=uptr)
                if len(path) > depth_limit:
                    raise over("constraint_nesting", len(path), "instance path of a unique array", pointer=uptr)
                paths[path] = None
        d = depth + 1

        def push(sub: Any, sptr: str, spath: Path, srefs: dict[str, int] = refs, d: int = d) -> None:
            if isinstance(sub, dict):
                stack.append((sub, sptr, spath, srefs, d))

        if "$ref" in schema:
            ref = schema["$ref"]
            count = refs.get(ref, 0) if isinstance(ref, str) else 0
            if count < max_recursion:
                try:
                    target, tptr = resolve(ref, join_pointer(ptr, "$ref"))
                except ConstraintError:
                    target = None  # the compiler reports it
                if target is not None:
                    push(target, tptr, path, {**refs, ref: count + 1})
        for k in _SAME_PLACE_LISTS:
            if isinstance(schema.get(k), list):
                for i, sub in enumerate(schema[k]):
                    push(sub, join_pointer(ptr, k, i), path)
        for k in ("then", "else"):
            if "if" in schema and k in schema:
                push(schema[k], join_pointer(ptr, k), path)
        for k in ("dependentSchemas", "dependencies"):
            if isinstance(schema.get(k), dict):
                for name, sub in schema[k].items():
                    push(sub, join_pointer(ptr, k, name), path)
        if isinstance(schema.get("properties"), dict):
            for name, sub in schema["properties"].items():
                push(sub, join_pointer(ptr, "properties", name), path + (name,))
        if isinstance(schema.get("patternProperties"), dict):
            for name, sub in schema["patternProperties"].items():
                push(sub, join_pointer(ptr, "patternProperties", name), path + (None,))
        for k in _CHILD_SCHEMAS:
            push(schema.get(k), join_pointer(ptr, k), path + (None,))
        for k in ("items", "prefixItems"):
            v = schema.get(k)
            if isinstance(v, list):
                for i, sub in enumerate(v):
                    push(sub, join_pointer(ptr, k, i), path + (None,))
            else:
                push(v, join_pointer(ptr, k), path + (None,))
    for p in sorted(deferred - found):
        raise ConstraintError(
            "uniqueItems here is compiled in a place whose instance path sgc cannot track at decode "
            "time (under not/if)", pointer=p)
    return tuple(paths)


def paths_to_json(paths: Iterable[Path]) -> str:
    return json.dumps([list(p) for p in paths], ensure_ascii=True, separators=(",", ":"))


def paths_from_json(text: str) -> tuple[Path, ...]:
    """Parse and validate stored paths (untrusted: from an artifact); ValueError names the problem."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"not valid JSON ({type(e).__name__})") from None
    return validate_paths(data)


def validate_paths(data: Any) -> tuple[Path, ...]:
    """Paths as tuples, checked: a list (at most `constraint_unique_paths`) of lists (at most
    `constraint_nesting` long) of strings or nulls; ValueError otherwise."""
    if not isinstance(data, (list, tuple)):
        raise ValueError(f"expected a list of paths, not {type(data).__name__}")
    limit = int(budgets.value("constraint_unique_paths"))
    if len(data) > limit:
        raise ValueError(f"{len(data)} paths is over the constraint_unique_paths budget of {limit}")
    depth = max_nesting()
    out: list[Path] = []
    for p in data:
        if not isinstance(p, (list, tuple)):
            raise ValueError(f"a path must be a list, not {type(p).__name__}")
        if len(p) > depth:
            raise ValueError(f"a path of {len(p)} segments is over the constraint_nesting budget of {depth}")
        if not all(s is None or isinstance(s, str) for s in p):
            raise ValueError("a path segment must be a property name (string) or null")
        out.append(tuple(p))
    return tuple(out)


def path_pointer(path: Iterable[Any]) -> str:
    """An instance path as a JSON pointer (`*` for a wildcard segment)."""
    return join_pointer("", *("*" if s is None else s for s in path)) or "/"


# ---------------------------------------------------------------------------------------------
# Canonical values: JSON Schema equality


def canonical(value: Any) -> Any:
    """A hashable key under which exactly the JSON-Schema-equal values collide: numbers by value
    (`1 == 1.0`, as Python compares int and float), booleans apart from numbers, objects by their
    set of (name, value), arrays elementwise."""
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, bool):
        return ("b", value)
    if value is None:
        return ("z",)
    if isinstance(value, (int, float)):
        return ("n", value)
    if isinstance(value, list):
        return ("a", tuple(canonical(v) for v in value))
    if isinstance(value, dict):
        return ("o", frozenset((k, canonical(v)) for k, v in value.items()))
    raise TypeError(type(value).__name__)


def unique_at_paths(instance: Any, paths: Iterable[Path]) -> bool:
    """Reference check on a parsed instance (tests): every array at a matching path has distinct
    items."""
    trie = _build_trie(paths)

    def go(v: Any, nodes: tuple[_Trie, ...]) -> bool:
        if not nodes:
            return True
        if isinstance(v, list):
            if any(n.unique for n in nodes):
                keys = [canonical(x) for x in v]
                if len(set(keys)) != len(keys):
                    return False
            child = _step_index(nodes)
            return all(go(x, child) for x in v)
        if isinstance(v, dict):
            return all(go(x, _step_key(nodes, k)) for k, x in v.items())
        return True

    return go(instance, (trie,))


# ---------------------------------------------------------------------------------------------
# Paths as a trie


class _Trie:
    __slots__ = ("names", "any", "unique")

    def __init__(self) -> None:
        self.names: dict[str, _Trie] = {}
        self.any: _Trie | None = None
        self.unique = False


def _build_trie(paths: Iterable[Path]) -> _Trie:
    root = _Trie()
    for p in paths:
        node = root
        for seg in p:
            if seg is None:
                if node.any is None:
                    node.any = _Trie()
                node = node.any
            else:
                nxt = node.names.get(seg)
                if nxt is None:
                    nxt = node.names[seg] = _Trie()
                node = nxt
        node.unique = True
    return root


def _step_key(nodes: tuple[_Trie, ...], key: str) -> tuple[_Trie, ...]:
    out = []
    for n in nodes:
        c = n.names.get(key)
        if c is not None:
            out.append(c)
        if n.any is not None:
            out.append(n.any)
    return tuple(out)


def _step_index(nodes: tuple[_Trie, ...]) -> tuple[_Trie, ...]:
    return tuple(n.any for n in nodes if n.any is not None)


# ---------------------------------------------------------------------------------------------
# Decode time: the incremental scanner

_N, _S, _E, _NUM, _LIT = range(5)  # lexical state: neutral, string, after a backslash, number, literal
_VAL, _AFTER, _KEY, _COLON = range(4)  # what a container expects next
_NUMBER_BYTES = frozenset(b"0123456789+-.eE")
_WS = frozenset(b" \t\n\r")
_LITERALS = frozenset({b"true", b"false", b"null"})
_QUOTE, _BACKSLASH, _COMMA, _COLON_B = 0x22, 0x5C, 0x2C, 0x3A
NOTHING, DUPLICATE, FRESH = 0, 1, 2  # what `UniqueScanner.probe` reports
_OPEN = {0x7B: True, 0x5B: False}  # { [ -> is an object
_CLOSE = frozenset((0x7D, 0x5D))


class _Frame:
    """One open container (or the root, which holds the document's value)."""

    __slots__ = ("obj", "nodes", "child", "unique", "seen", "seen_str", "seen_raw", "item_start",
                 "expect", "key_start")

    def __init__(self, obj: bool, nodes: tuple[_Trie, ...]) -> None:
        self.obj = obj
        self.nodes = nodes
        self.unique = not obj and any(n.unique for n in nodes)
        self.child: tuple[_Trie, ...] = () if obj else _step_index(nodes)
        self.seen: set | None = set() if self.unique else None
        self.seen_str: list[bytes] = []  # string items, UTF-8 (the string fast path)
        self.seen_raw: list[bytes] = []  # items as written, sorted (the look-ahead)
        self.item_start = -1
        self.expect = _KEY if obj else _VAL
        self.key_start = -1


class UniqueScanner:
    """Follows JSON text byte by byte and keeps the items of the unique arrays (see the module
    docstring). `feed` returns True when the bytes finish an item equal to an earlier one of its
    array (`violation` says where); `probe` asks what bytes would do without changing anything.

    The text is assumed to be a prefix of valid JSON (the byte DFA guarantees it); on anything else
    the scanner stops checking (`broken`), and the DFA rejects the text anyway.
    """

    def __init__(self, paths: Iterable[Path]) -> None:
        self.paths = tuple(paths)
        self._trie = _build_trie(self.paths)
        self.reset()

    def reset(self, data: bytes = b"") -> bool:
        """Start over (then feed `data`); returns what `feed` returns."""
        self.log = bytearray()
        root = _Frame(False, ())
        root.child = (self._trie,)
        root.unique = False
        self.stack: list[_Frame] = [root]
        self.uniques: list[_Frame] = []  # the unique arrays among the open containers, outermost first
        self.lex = _N
        self.start = -1  # where the current number or literal began
        self.broken = False
        self.violation: str | None = None
        self._probe: dict[_Frame, set] | None = None
        self._watch: _Frame | None = None
        self._event = NOTHING
        return self.feed(data) if data else False

    # -- feeding ------------------------------------------------------------------------------
    def feed(self, data: bytes) -> bool:
        if self.broken:
            return False
        log = self.log
        base = len(log)
        log += data
        stack = self.stack
        for i, b in enumerate(data):
            lex = self.lex
            if lex == _S:
                if b == _QUOTE:
                    if self._string_end(base + i):
                        return True
                elif b == _BACKSLASH:
                    self.lex = _E
                continue
            if lex == _E:
                self.lex = _S
                continue
            if lex == _NUM:
                if b in _NUMBER_BYTES:
                    continue
                self.lex = _N
                if self._value_end(base + i):
                    return True
            elif lex == _LIT:
                n = base + i + 1 - self.start
                if n >= 4 and bytes(log[self.start : base + i + 1]) in _LITERALS:
                    self.lex = _N
                    if self._value_end(base + i + 1):
                        return True
                elif n >= 5:
                    self.broken = True
                    return False
                continue
            if b in _WS:
                continue
            top = stack[-1]
            if b == _COMMA:
                top.expect = _KEY if top.obj else _VAL
            elif b == _COLON_B:
                top.expect = _VAL
            elif b in _CLOSE:
                if len(stack) == 1:
                    self.broken = True
                    return False
                frame = stack.pop()
                if frame.unique:
                    self.uniques.pop()
                if self._value_end(base + i + 1):
                    return True
            elif top.obj and top.expect == _KEY:
                if b != _QUOTE:
                    self.broken = True
                    return False
                top.key_start = base + i
                self.lex = _S
            else:
                self._value_start(top, b, base + i)
                if self.broken:
                    return False
        return False

    def _value_start(self, top: _Frame, b: int, pos: int) -> None:
        if top.unique:
            top.item_start = pos
        if b in _OPEN:
            obj = _OPEN[b]
            frame = _Frame(obj, top.child)
            self.stack.append(frame)
            if frame.unique:
                self.uniques.append(frame)
        elif b == _QUOTE:
            self.lex = _S
        elif b == 0x2D or 0x30 <= b <= 0x39:
            self.lex = _NUM
            self.start = pos
        elif 0x61 <= b <= 0x7A:
            self.lex = _LIT
            self.start = pos
        else:
            self.broken = True

    def _string_end(self, pos: int) -> bool:
        self.lex = _N
        top = self.stack[-1]
        if top.obj and top.expect == _KEY:
            if top.nodes:
                try:
                    key = json.loads(bytes(self.log[top.key_start : pos + 1]))
                except ValueError:
                    self.broken = True
                    return False
                top.child = _step_key(top.nodes, key)
            else:
                top.child = ()
            top.expect = _COLON
            return False
        return self._value_end(pos + 1)

    def _value_end(self, end: int) -> bool:
        """A value that ends before `end` was the current value of the container on top."""
        top = self.stack[-1]
        top.expect = _AFTER
        if not top.unique or top.item_start < 0:
            return False
        raw = bytes(self.log[top.item_start : end])
        top.item_start = -1
        try:
            value = json.loads(raw)
            key = canonical(value)
        except (ValueError, TypeError, RecursionError):
            self.broken = True
            return False
        probe = self._probe
        if probe is not None:
            extra = probe.setdefault(top, set())  # keyed by the frame itself: ids of dropped frames recur
            if key in top.seen or key in extra:  # type: ignore[operator]
                self._event = DUPLICATE
                return True
            if top is self._watch:
                self._event = FRESH
                return True
            extra.add(key)
            return False
        if key in top.seen:  # type: ignore[operator]
            self.violation = (f"item {raw.decode('utf-8', 'replace')[:80]} repeats an earlier item of the "
                              f"array at {self.pointer(top)}, whose items must be unique")
            return True
        top.seen.add(key)  # type: ignore[union-attr]
        if isinstance(value, str):
            top.seen_str.append(value.encode("utf-8", "surrogatepass"))
        bisect.insort(top.seen_raw, raw)
        return False

    def pointer(self, frame: _Frame | None = None) -> str:
        """The instance path of an open container (default: the innermost unique array) as a JSON
        pointer, `*` standing for an array index; rebuilt from the text when asked."""
        frame = frame or (self.uniques[-1] if self.uniques else None)
        parts: list[str] = []
        for outer, inner in zip(self.stack, self.stack[1:]):
            if outer is not self.stack[0]:
                parts.append(self._last_key(outer) if outer.obj else "*")
            if inner is frame:
                break
        return join_pointer("", *parts) or "/"

    def _last_key(self, frame: _Frame) -> str:
        if frame.key_start < 0:
            return "?"
        end = self.log.find(b'"', frame.key_start + 1)
        while end > 0 and self.log[end - 1] == _BACKSLASH:
            end = self.log.find(b'"', end + 1)
        try:
            return json.loads(bytes(self.log[frame.key_start : end + 1]))
        except ValueError:
            return "?"

    # -- probing ------------------------------------------------------------------------------
    def probe(self, data: bytes, watch: _Frame | None = None) -> int:
        """What feeding `data` would do, without changing anything: DUPLICATE if it finishes an item
        equal to an earlier one of its array (or to another item `data` finishes), FRESH if it
        first finishes the current item of `watch` (an open unique array) without a repeat, else
        NOTHING."""
        if self.broken or not data:
            return NOTHING
        n = len(self.log)
        stack = list(self.stack)
        fields = [(f.child, f.item_start, f.expect, f.key_start) for f in stack]
        uniques = list(self.uniques)
        lex, start = self.lex, self.start
        self._probe, self._watch, self._event = {}, watch, NOTHING
        try:
            self.feed(data)
            return self._event
        finally:
            self._probe = self._watch = None
            del self.log[n:]
            self.stack = stack
            for f, (child, item_start, expect, key_start) in zip(stack, fields):
                f.child, f.item_start, f.expect, f.key_start = child, item_start, expect, key_start
            self.uniques = uniques
            self.lex, self.start = lex, start
            self.broken = False

    # -- where the output is, for the mask filter ------------------------------------------------
    def partial_string(self) -> bytes | None:
        """The decoded UTF-8 bytes of the string item being written in the innermost unique array,
        or None when that is not exactly known (an escape in progress, a surrogate half)."""
        u = self.uniques[-1]
        raw = bytes(self.log[u.item_start + 1 :])
        if _BACKSLASH not in raw:
            return raw
        if self.lex != _S:
            return None
        for cut in range(len(raw), max(len(raw) - 4, -1), -1):  # a token may end inside a character
            try:
                raw[:cut].decode("utf-8")
                break
            except UnicodeDecodeError:
                continue
        try:
            text = json.loads(b'"' + raw[:cut] + b'"')  # fails on an escape in progress
        except ValueError:
            return None
        if text and 0xD800 <= ord(text[-1]) <= 0xDBFF:
            return None  # half a surrogate pair: the next escape changes the character
        return text.encode("utf-8", "surrogatepass") + raw[cut:]


# ---------------------------------------------------------------------------------------------
# Decode time: token classes and the mask filter

_LIT_TAILS = (b"rue", b"ue", b"e", b"alse", b"lse", b"se", b"ull", b"ll", b"l")
_NUM_CLOSE = re.compile(rb"[0-9+\-.eE]*(?:[,\]]|[ \t\n\r]+(?:[,\]]|$))")
_VAL_NUMBER = re.compile(rb"[0-9][ \t\n\r]*(?:[,\]]|$)")
_SECOND_ITEM = re.compile(rb",[^\"}\]0-9el]*[\"}\]0-9el]")  # a comma, then a byte that can end an item
# After a string item's closing quote: separators and closing brackets, then at most the opening
# quote of the next string item: nothing that finishes another item.
_SIMPLE_TAIL = re.compile(rb"[,\]} \t\n\r]*(?:\"[^\"\\]*)?")
_CLASS_CACHE: dict[tuple[str, int], TokenClasses] = {}
_SEARCH_BYTES = 48  # the look-ahead gives up (assumes a fresh item is reachable) past this many bytes
_CLOSERS = frozenset(b'"}],el \t\n\r')  # the bytes on which an item can finish (e, l: true, false, null)


def _first_unescaped_quote(t: bytes) -> int:
    """Where a token read inside a string (not after a backslash) closes it, or -1."""
    i = 0
    while i < len(t):
        b = t[i]
        if b == _QUOTE:
            return i
        i += 2 if b == _BACKSLASH else 1
    return -1


class TokenClasses:
    """Per vocabulary: which tokens can finish an item from each kind of position (supersets), as
    sorted id arrays, and the index of simple string closers for the string fast path."""

    def __init__(self, tokens: list[bytes]) -> None:
        self.tokens = tokens
        names = ("str", "str_esc", "qb", "brk", "comma", "num", "lit", "val")
        sets: dict[str, list[int]] = {k: [] for k in names}
        self.str_close: dict[bytes, list[int]] = {}  # text before the closing quote -> simple closers
        str_complex: list[int] = []
        self.by_bytes: dict[bytes, list[int]] = {}
        self.prefixes: set[bytes] = set()  # every prefix of every token (the look-ahead stops early)
        longest = 1
        for i, t in enumerate(tokens):
            if not t:
                continue
            self.by_bytes.setdefault(t, []).append(i)
            longest = max(longest, len(t))
            self.prefixes.update(t[:j] for j in range(1, min(len(t), 48) + 1))
            brk = b"}" in t or b"]" in t
            if b'"' in t:
                sets["str_esc"].append(i)
                q = _first_unescaped_quote(t)
                if q >= 0:
                    sets["str"].append(i)
                    if _BACKSLASH not in t[:q] and _SIMPLE_TAIL.fullmatch(t, q + 1):
                        self.str_close.setdefault(t[:q], []).append(i)
                    else:
                        str_complex.append(i)
                q = t.find(b'"')
                if b"}" in t[q:] or b"]" in t[q:]:
                    sets["qb"].append(i)
            if brk:
                sets["brk"].append(i)
            if _SECOND_ITEM.search(t):
                sets["comma"].append(i)
            if _NUM_CLOSE.match(t):
                sets["num"].append(i)
            if t.startswith(_LIT_TAILS):
                sets["lit"].append(i)
            if (t.count(b'"') >= 2 or brk or _VAL_NUMBER.search(t)
                    or b"true" in t or b"false" in t or b"null" in t):
                sets["val"].append(i)
        self.longest = min(longest, 48)
        self.sets = {k: np.array(v, dtype=np.int64) for k, v in sets.items()}
        self.str_complex = np.array(str_complex, dtype=np.int64)
        self._unions: dict[tuple[str, ...], np.ndarray] = {}

    @classmethod
    def of(cls, fsm: Any) -> TokenClasses:
        """The classes of an FSM's vocabulary (cached by its fingerprint and size)."""
        tokens = fsm._lists()[2]
        key = (fsm.fingerprint, len(tokens))
        hit = _CLASS_CACHE.get(key)
        if hit is None or hit.tokens is not tokens and hit.tokens != tokens:
            if len(_CLASS_CACHE) >= 4:
                _CLASS_CACHE.pop(next(iter(_CLASS_CACHE)))
            hit = _CLASS_CACHE[key] = cls(tokens)
        return hit

    def union(self, key: tuple[str, ...]) -> np.ndarray:
        got = self._unions.get(key)
        if got is None:
            got = self.sets[key[0]] if len(key) == 1 else np.unique(np.concatenate([self.sets[k] for k in key]))
            self._unions[key] = got
        return got


class UniqueGuard:
    """One output's uniqueness check: a `UniqueScanner` over it, and the mask filter."""

    def __init__(self, fsm: Any) -> None:
        self.fsm = fsm
        self.scanner = UniqueScanner(fsm.unique_paths)
        table, symbol_class, tokens = fsm._lists()
        self._table, self._symbol_class, self._tokens = table, symbol_class, tokens
        derived = getattr(fsm, "_unique_derived", None)
        if derived is None:  # per FSM: token classes, bytes of each byte class, live bytes per state
            dfa = fsm.dfa
            class_bytes: list[list[int]] = [[] for _ in range(dfa.num_classes)]
            for b, c in enumerate(dfa.symbol_class.tolist()):
                class_bytes[c].append(b)
            sizes = np.array([len(x) for x in class_bytes], dtype=np.int64)
            live = np.empty(dfa.num_states, dtype=np.int64)
            for lo in range(0, dfa.num_states, 1 << 16):
                live[lo : lo + (1 << 16)] = (dfa.transitions[lo : lo + (1 << 16)] >= 0) @ sizes
            derived = (TokenClasses.of(fsm), class_bytes, live.tolist(), fsm.forced.tolist())
            fsm._unique_derived = derived
        self.classes, self._class_bytes, self._live_bytes, self._forced = derived

    # -- the output ---------------------------------------------------------------------------
    def feed(self, data: bytes) -> bool:
        """Append output bytes; True if they repeat an earlier item (see `violation`)."""
        return self.scanner.feed(data)

    def reset(self, data: bytes) -> bool:
        return self.scanner.reset(data)

    @property
    def violation(self) -> str | None:
        return self.scanner.violation

    def completes_duplicate(self, data: bytes) -> bool:
        return self.scanner.probe(data) == DUPLICATE

    @property
    def active(self) -> bool:
        """Some unique array is open (only then can a token be cleared)."""
        return bool(self.scanner.uniques) and not self.scanner.broken

    def where(self) -> str:
        return self.scanner.pointer()

    # -- the mask -----------------------------------------------------------------------------
    def filter(self, state: int, mask: np.ndarray) -> int:
        """Clear in `mask` (bool, indexed by token id, already the FSM's mask of `state`) every
        token that would finish an item equal to an earlier item of its unique array, and the
        tokens from which every way to finish the item repeats one (`_look_ahead`). Returns how many
        were cleared."""
        sc = self.scanner
        if not sc.uniques or sc.broken:
            return 0
        top = sc.stack[-1]
        in_string = sc.lex in (_S, _E)
        keys: set[str] = set()
        for u in sc.uniques:
            if not u.seen:
                keys.add("comma")  # finishing two items in one token needs a comma between them
            elif u is not top:
                keys.add("qb" if in_string else "brk")
            elif in_string:
                keys.add("str" if sc.lex == _S else "str_esc")
            elif sc.lex == _NUM:
                keys.add("num")
            elif sc.lex == _LIT:
                keys.add("lit")
            elif u.expect == _VAL:
                keys.add("val")
            else:
                keys.add("comma")
        cleared = 0
        classes = self.classes
        key = tuple(sorted(keys))
        ids = None
        if key == ("str",) and len(sc.uniques) == 1:
            partial = sc.partial_string()
            if partial is not None:  # the fast path: simple closers by the text they end the item with
                limit = mask.shape[0]
                for s in sc.uniques[0].seen_str:
                    if s.startswith(partial):
                        for t in classes.str_close.get(s[len(partial):], ()):
                            if t < limit and mask[t]:
                                mask[t] = False
                                cleared += 1
                ids = classes.str_complex
        if ids is None:
            ids = classes.union(key)
        if ids.size and ids[-1] >= mask.shape[0]:
            ids = ids[ids < mask.shape[0]]
        tokens = self._tokens
        for t in ids[mask[ids]].tolist():
            if sc.probe(tokens[t]) == DUPLICATE:
                mask[t] = False
                cleared += 1
        return cleared + self._look_ahead(state, mask)

    def _look_ahead(self, state: int, mask: np.ndarray) -> int:
        """Clear the tokens that continue the innermost unique array's item the way an earlier item
        was written when, after them, every way the DFA allows to finish the item repeats an item
        (a bounded string forced to close, a number that can take no more digits). Exhaustive up to
        `_SEARCH_BYTES` bytes explored per token; past that a fresh item is assumed reachable."""
        sc = self.scanner
        u = sc.uniques[-1]
        if not u.seen_raw:
            return 0
        if u.item_start >= 0:
            partial = bytes(sc.log[u.item_start :])
        elif u is sc.stack[-1] and sc.lex == _N and u.expect == _VAL:
            partial = b""
        else:
            return 0
        cleared = 0
        by_bytes, prefixes = self.classes.by_bytes, self.classes.prefixes
        limit = mask.shape[0]
        tried: set[bytes] = set()
        next_state, live = self.fsm.next_state, self._live_bytes
        n = len(partial)
        raws = u.seen_raw
        for k in range(bisect.bisect_left(raws, partial), len(raws)):
            raw = raws[k]
            if not raw.startswith(partial):
                break  # sorted: the items written so far that start like this one are a run
            for j in range(n + 1, min(len(raw), n + self.classes.longest) + 1):
                piece = raw[n:j]
                if piece not in prefixes:
                    break
                if piece in tried:
                    continue
                tried.add(piece)
                for t in by_bytes.get(piece, ()):
                    if t >= limit or not mask[t]:
                        continue
                    after = next_state(state, t)
                    if after < 0 or live[after] > _SEARCH_BYTES:
                        continue
                    if not self._fresh_reachable(after, piece, u):
                        mask[t] = False
                        cleared += 1
        return cleared

    def _fresh_reachable(self, state: int, text: bytes, watch: _Frame) -> bool:
        """Whether some continuation from DFA `state` (after `text`) finishes `watch`'s current
        item without repeating one; True also when that is not decided within the budget."""
        sc, table, live = self.scanner, self._table, self._live_bytes
        forced, symbol_class = self._forced, self._symbol_class
        todo = [(state, text, 0)]  # (DFA state, bytes after the output, bytes already probed)
        budget = _SEARCH_BYTES
        while todo:
            s, data, probed = todo.pop()
            b = forced[s]
            if b >= 0:  # a forced chain decides nothing: follow it, then probe once
                chain = bytearray()
                while b >= 0 and len(chain) < 4096:
                    chain.append(b)
                    s = int(table[s][symbol_class[b]])
                    b = forced[s]
                data += bytes(chain)
            if live[s] > budget:
                return True  # wide open (inside a free string): assumed to reach a fresh item
            if any(c in _CLOSERS for c in data[probed:]):  # nothing finishes on other bytes
                got = sc.probe(data, watch)
                if got == FRESH:
                    return True
                if got == DUPLICATE:
                    continue
            budget -= live[s]
            row = table[s]
            for c, bs in enumerate(self._class_bytes):
                nxt = int(row[c])
                if nxt >= 0:
                    todo.extend((nxt, data + bytes((b,)), len(data)) for b in bs)
        return False


def check_text(text: bytes | str, paths: Iterable[Path]) -> bool:
    """True if no array at a unique path of the JSON `text` repeats an item: the decode-time check
    run over a whole text (the same scanner), for tests and benchmarks."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    return not UniqueScanner(paths).feed(data)
