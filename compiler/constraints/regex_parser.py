"""Regex text -> syntax tree (`regex_ast`): our scanner for classes and rejections, interegular for
the structure.

The scanner runs first, over each top-level alternative. It

* rejects, with their offset, the constructs that cannot be compiled to a finite automaton exactly
  (backreferences, lookbehinds, word boundaries, inline flags, possessive quantifiers, atomic
  groups, conditionals, Unicode property escapes, anchors anywhere but at the ends; lookaheads
  unless the caller asks for them, and then only at an alternative's top level, see `Lookahead`);
* parses every character class (`[...]`, `\\d`, `\\W`, ...) itself into a `CharSet` and leaves a
  placeholder character (from Unicode's last private-use plane) in its stead, so the classes get
  exactly the semantics below, and huge classes never become Python sets of characters;
* rewrites what interegular lacks: `\\uXXXX` / `\\UXXXXXXXX` escapes, ECMA named groups `(?<n>...)`.

interegular then parses groups, alternation and quantifiers, and its tree becomes ours.

Semantics: Python's `re.fullmatch` (for `compile_regex`) with one twist that makes the language valid
under both Python's Unicode and ECMA-262's readings of the shorthands: a class (`\\d`, `[^\\s]`,
`[\\w.-]`) matches the characters it matches under both (`_class_set`), so `\\d` is `[0-9]`, `\\D`
never produces an Arabic-Indic digit, `\\s` takes the spaces both call spaces and `[\\s\\S]` is every
character. With `ecma_dot` (JSON Schema patterns) `.` excludes
all ECMA line terminators (\\n, \\r, U+2028, U+2029), else only \\n as in Python.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import numpy as np
from interegular import patterns as _ip

from .charset import MAX_CODE_POINT, CharSet
from .errors import ConstraintError
from .limits import check_pattern_chars, describe_regex, max_nesting, over
from .regex_ast import EPSILON, Node, alt, chars, concat, repeat

_PLACEHOLDER_BASE = 0x100000  # plane 16, private use: never a meaningful pattern character
_LITERAL_SPECIAL = set(".^$*+?{}[]\\|()")
_HEX = set("0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a"}

# ECMA-262's \s beyond ASCII: NBSP, U+FEFF, the Zs spaces and the line terminators U+2028/9.
_ECMA_SPACES = CharSet.of("\u00a0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff") | CharSet.range(
    "\u2000", "\u200a"
)

_ECMA_SHORTHAND = {
    "d": CharSet.range("0", "9"),
    "w": CharSet.from_ranges([(48, 57), (65, 90), (95, 95), (97, 122)]),
    "s": CharSet.of(" \t\n\r\f\v") | _ECMA_SPACES,
}


def _every_code_point() -> str:
    """All code points in order, surrogates included (decoded from UTF-32 in one call; not kept:
    4 MB, built at most once per shorthand letter)."""
    codes = np.arange(sys.maxunicode + 1, dtype="<u4").tobytes()
    return codes.decode("utf-32-le", "surrogatepass")


@cache
def _python_shorthand(kind: str) -> CharSet:
    """Python's Unicode reading of \\d, \\w, \\s (str.isdecimal, isalnum or _, isspace): the runs
    Python's own `re` finds among all code points (the documented same sets; a test checks them
    against the str methods). A Python loop over 1.1M code points took 0.05-0.1 s per letter, paid
    by the first schema of a process that uses it."""
    found = re.finditer("[\\" + kind + "]+", _every_code_point())
    return CharSet.from_ranges([(m.start(), m.end() - 1) for m in found])


def _reading(letter: str, python: bool) -> CharSet:
    """\\d, \\D, \\w, ... under ECMA-262's reading (ASCII classes; ECMA's spaces) or Python's."""
    kind = letter.lower()
    base = _python_shorthand(kind) if python else _ECMA_SHORTHAND[kind]
    return base.complement() if letter.isupper() else base


def _class_set(plain: list[CharSet], letters: list[str], negated: bool, inverted: bool) -> CharSet:
    """A class (`[...]`, or one shorthand) that is right under both readings: the characters it
    matches under ECMA's and under Python's (so `[\\s\\S]` is every character, and `\\w` ASCII);
    where the class is used negatively (`inverted`: inside a negative lookahead), the characters it
    matches under either reading, so that excluding them is sound under both."""
    ecma = CharSet.union(plain + [_reading(x, python=False) for x in letters])
    python = CharSet.union(plain + [_reading(x, python=True) for x in letters]) if letters else ecma
    if negated:
        ecma, python = ecma.complement(), python.complement()
    return (ecma | python) if inverted else (ecma & python)


@dataclass(frozen=True)
class Lookahead:
    """`(?=...)` or `(?!...)` at the top level of an alternative: the rest of the text (up to the
    end of the string, not of the alternative) must (must not) start with one of `body`."""

    negative: bool
    body: tuple[Alternative, ...]  # each with its own anchors; `$` means "and then the end"


@dataclass(frozen=True)
class Alternative:
    """One top-level alternative of a regex, with its own anchors (JSON Schema's search semantics
    anchor each alternative separately: `^a|b` is "starts with a, or contains b").

    Without lookaheads the alternative is `node`. With them it reads `node L1 s1 L2 s2 ...`:
    `rest` holds each lookahead with the segment after it (only when the caller allows them)."""

    node: Node
    anchored_start: bool  # it began with ^
    anchored_end: bool  # it ended with $
    rest: tuple[tuple[Lookahead, Node], ...] = ()


def parse_regex(pattern: str, ecma_dot: bool = False, lookaheads: bool = False) -> list[Alternative]:
    """Parse `pattern` into its top-level alternatives; their leading `^`/trailing `$` are recorded
    and removed. Anchors anywhere else are rejected. With `lookaheads`, `(?=...)`/`(?!...)` at the
    top level of an alternative are kept in `Alternative.rest` (the caller intersects); elsewhere,
    or nested in another lookahead, they are rejected."""
    if not isinstance(pattern, str):
        raise ConstraintError(f"a regex must be a string, not {type(pattern).__name__}")
    check_pattern_chars(len(pattern), describe_regex(pattern))
    return [
        _Scanner(pattern, lo, hi, ecma_dot, lookaheads).parse() for lo, hi in _top_level_alternatives(pattern)
    ]


def disputed_chars(pattern: str) -> tuple[CharSet, bool]:
    """The characters on which ECMA-262's and Python's readings of a JSON Schema pattern may
    disagree (those of the shorthands it uses, and CR/U+2028/U+2029 where it has a `.`), and
    whether a final newline may (Python's `$` also matches before one). On a text without them
    every reading matches alike: what a difference of two patterns' languages needs."""
    out = CharSet.nothing()
    final_newline = False
    i, n = 0, len(pattern)
    while i < n:  # `.` and `$` count inside classes too: over-counting only narrows the texts
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            kind = pattern[i + 1].lower()
            if kind in "dws":
                ecma, python = _ECMA_SHORTHAND[kind], _python_shorthand(kind)
                out = out | (ecma - python) | (python - ecma)
            i += 2
            continue
        if c == ".":
            out = out | CharSet.of("\r\u2028\u2029")
        elif c == "$":
            final_newline = True
        i += 1
    return out, final_newline


def parse_fullmatch_node(pattern: str) -> Node:
    """The syntax tree of `pattern` under `re.fullmatch` (anchors at the ends are no-ops there)."""
    return alt(*(a.node for a in parse_regex(pattern)))


def _structure(pattern: str, lo: int, hi: int) -> Iterator[tuple[int, str, int]]:
    """(index, character, group depth before it) for each character of `pattern[lo:hi]` that is
    outside character classes and escapes: what splitting alternatives and matching groups read."""
    depth = 0
    in_class = False
    class_first = -1
    i = lo
    while i < hi:
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            if c == "]" and i != class_first:
                in_class = False
        elif c == "[":
            in_class = True
            class_first = i + 2 if pattern.startswith("[^", i) else i + 1
        else:
            yield i, c, depth
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
        i += 1


def _top_level_alternatives(pattern: str, lo: int = 0, hi: int | None = None) -> list[tuple[int, int]]:
    """The spans of `pattern[lo:hi]`'s top-level alternatives."""
    n = len(pattern) if hi is None else hi
    spans = []
    for i, c, depth in _structure(pattern, lo, n):
        if c == "|" and depth == 0:
            spans.append((lo, i))
            lo = i + 1
    spans.append((lo, n))
    return spans


_NEWLINE = CharSet.of("\n")
_ECMA_LINE_TERMINATORS = CharSet.of("\n\r\u2028\u2029")


def _group_end(pattern: str, i: int, n: int) -> int:
    """The index of the `)` closing the group that opens at `i` (-1 if none before n)."""
    return next((j for j, c, depth in _structure(pattern, i, n) if c == ")" and depth == 1), -1)


_PLAIN_GROUP_PREFIX = re.compile(r"\?:|\?P?<[A-Za-z_][A-Za-z0-9_]*>")


def _redundant_anchor(pattern: str, lo: int, hi: int, i: int, at_end: bool) -> bool:
    """Whether the `^` (or, `at_end`, `$`) at `i` inside groups of the alternative `pattern[lo:hi]`
    only repeats that alternative's own anchor: nothing can come before it (after it) but group
    openings (closings) and alternative starts (ends) of groups that are not repeated, up to the
    alternative's `^` (its final `$`). `^([$]L|^[1-9]+$)$` reads as `^([$]L|[1-9]+)$`."""
    tokens = {j: (c, d) for j, c, d in _structure(pattern, lo, hi)}
    anchored = tokens.get(hi - 1, ("",))[0] == "$" if at_end else pattern.startswith("^", lo)
    if not anchored:
        return False
    start, end = lo + 1, hi - 1  # just after the alternative's ^; its final $

    def body_start(o: int) -> int | None:  # where a plain group's first alternative begins
        if pattern.startswith("?", o + 1):
            m = _PLAIN_GROUP_PREFIX.match(pattern, o + 1)
            return m.end() if m else None
        return o + 1

    def plain_once(o: int) -> bool:  # a capturing/non-capturing group taken at most once
        close = _group_end(pattern, o, hi)
        return body_start(o) is not None and close >= 0 and pattern[close + 1 : close + 2] not in ("*", "+", "{")

    k = i
    while True:
        if not at_end:
            if k == start:
                return True
            prev = tokens.get(k - 1)
            if prev is not None and prev[0] == "|":
                opener = max((o for o, (c, d) in tokens.items() if o < k - 1 and c == "(" and d == prev[1] - 1), default=-1)
            else:
                opener = max((o for o, (c, _) in tokens.items() if o < k and c == "("), default=-1)
                if opener < 0 or body_start(opener) != k:
                    return False
            if opener < 0 or not plain_once(opener):
                return False
            k = opener
        else:
            nxt = k + 1
            if nxt == end:
                return True
            token = tokens.get(nxt)
            if token is None or token[0] not in ")|":
                return False
            if token[0] == "|":
                nxt = min((j for j, (c, d) in tokens.items() if j > nxt and c == ")" and d == token[1]), default=-1)
                if nxt < 0:
                    return False
            depth = tokens[nxt][1]
            opener = max((o for o, (c, d) in tokens.items() if o < nxt and c == "(" and d == depth - 1), default=-1)
            if opener < 0 or not plain_once(opener):
                return False
            k = nxt


def _is_word(c: str) -> bool | None:
    """Whether `c` is a word character for \\b under both readings (ECMA's ASCII one, Python's
    Unicode one); None where they disagree."""
    ecma = c.isascii() and (c.isalnum() or c == "_")
    python = c.isalnum() or c == "_"
    return ecma if ecma == python else None


def _literal_at(pattern: str, j: int, lo: int, hi: int) -> str | None:
    """The character the pattern matches at `j` when it is a plain literal (or an escaped
    punctuation character), else None."""
    if not lo <= j < hi:
        return None
    slashes = 0
    while j - 1 - slashes >= lo and pattern[j - 1 - slashes] == "\\":
        slashes += 1
    c = pattern[j]
    if slashes % 2:
        return c if not c.isalnum() and c != "\\" else None
    return None if c in _LITERAL_SPECIAL else c


def _boundary_neighbors(pattern: str, lo: int, hi: int, i: int, after: bool) -> set[str] | None:
    """The characters that can sit just before (or, `after`, just after) the `\\b` at `i`, when
    the pattern fixes them (a literal, or each alternative's last (first) literal of an adjacent
    plain group; "" is the start or end of the text); None when it does not."""
    tokens = {j: (c, d) for j, c, d in _structure(pattern, lo, hi)}
    if not after:
        if i == lo + 1 and pattern.startswith("^", lo):
            return {""}
        if tokens.get(i - 1, ("",))[0] == ")":
            depth = tokens[i - 1][1]
            opener = max((o for o, (c, d) in tokens.items() if o < i - 1 and c == "(" and d == depth - 1), default=-1)
            if opener < 0 or pattern.startswith("?", opener + 1):
                return None
            ends = [j - 1 for j, (c, d) in tokens.items() if opener < j <= i - 1 and c in "|)" and d == depth]
            found = {_literal_at(pattern, j, opener + 1, i - 1) for j in ends}
            return None if None in found else found  # type: ignore[return-value]
        c = _literal_at(pattern, i - 1, lo, hi)
        return None if c is None else {c}
    j = i + 2
    if j == hi - 1 and tokens.get(j, ("",))[0] == "$":
        return {""}
    if pattern[j + 1 : j + 2] in ("?", "*", "{"):
        return None  # the next piece may be skipped
    if tokens.get(j, ("",))[0] == "(":
        if pattern.startswith("?", j + 1):
            return None
        close = _group_end(pattern, j, hi)
        if close < 0 or pattern[close + 1 : close + 2] in ("?", "*", "{"):
            return None
        depth = tokens[j][1] + 1
        starts = [j + 1] + [k + 1 for k, (c, d) in tokens.items() if j < k < close and c == "|" and d == depth]
        found = set()
        for k in starts:
            if pattern[k + 1 : k + 2] in ("?", "*", "{"):
                return None
            found.add(_literal_at(pattern, k, j + 1, close))
        return None if None in found else found  # type: ignore[return-value]
    c = _literal_at(pattern, j, lo, hi)
    return None if c is None else {c}


def _boundary_is_redundant(pattern: str, lo: int, hi: int, i: int) -> bool:
    """Whether the `\\b` (`\\B`) at `i` always holds: its neighbors are fixed characters, word
    on one side and not on the other (`\\B`: alike on both), under both readings."""
    before = _boundary_neighbors(pattern, lo, hi, i, after=False)
    after_ = _boundary_neighbors(pattern, lo, hi, i, after=True)
    if not before or not after_:
        return False
    words_before = {_is_word(c) if c else False for c in before}
    words_after = {_is_word(c) if c else False for c in after_}
    if None in words_before | words_after or len(words_before) != 1 or len(words_after) != 1:
        return False
    differ = words_before != words_after
    return differ if pattern[i + 1] == "b" else not differ


class _Scanner:
    def __init__(
        self, pattern: str, lo: int, hi: int, ecma_dot: bool, lookaheads: bool = False, inverted: bool = False
    ) -> None:
        self.pattern = pattern
        # Inside a negative lookahead the twist flips: its body must be read as the *largest*
        # set (\d = every reading's digits), so that excluding it stays sound.
        self.inverted = inverted
        self.lo = lo
        self.n = hi
        self.ecma_dot = ecma_dot
        self.lookaheads = lookaheads
        self.dot = (_ECMA_LINE_TERMINATORS if ecma_dot else _NEWLINE).complement()
        self.out: list[str] = []
        self.origin: list[int] = []
        self.classes: list[CharSet] = []
        self.segments: list[tuple[Lookahead, Node]] = []  # finished (lookahead, segment) pairs
        self.pending: Lookahead | None = None  # the lookahead before the segment being scanned
        self.head: Node | None = None  # the segment before the first lookahead

    # -- errors -----------------------------------------------------------------------------
    def error(self, message: str, pos: int) -> ConstraintError:
        return ConstraintError(message, position=pos, pattern=self.pattern)

    def unsupported(self, what: str, pos: int) -> ConstraintError:
        return self.error(f"{what} is not supported", pos)

    # -- output -----------------------------------------------------------------------------
    def emit(self, text: str, pos: int) -> None:
        self.out.append(text)
        self.origin.extend([pos] * len(text))

    def emit_class(self, cs: CharSet, pos: int) -> None:
        self.emit(chr(_PLACEHOLDER_BASE + len(self.classes)), pos)
        self.classes.append(cs)

    # -- scanning ---------------------------------------------------------------------------
    def parse(self) -> Alternative:
        p, n = self.pattern, self.n
        anchored_start = p.startswith("^", self.lo) and self.lo < n
        i = self.lo + 1 if anchored_start else self.lo
        anchored_end = False
        depth, limit = 0, max_nesting()
        while i < n:
            c = p[i]
            if c == "(":
                depth += 1
                if depth > limit:  # interegular parses groups recursively: refuse before it recurses
                    raise over("constraint_nesting", depth, "group nesting", position=i, pattern=self.pattern)
            elif c == ")":
                depth -= 1
            if c == "\\":
                i = self.escape(i)
            elif c == "[":
                i = self.char_class(i)
            elif c == "(" and depth == 1 and self.lookaheads and p.startswith(("(?=", "(?!"), i):
                i = self.top_level_lookahead(i)
                depth -= 1
            elif c == "(" and p.startswith("(?", i):
                i = self.extension_group(i)
            elif c in "*+?}" and i + 1 < n and p[i + 1] == "+":
                raise self.unsupported("possessive quantifier", i + 1)
            elif c == "^":
                if not _redundant_anchor(p, self.lo, n, i, at_end=False):
                    raise self.unsupported("anchor ^ other than at the start of the regex", i)
                i += 1  # it repeats the alternative's own ^
            elif c == "$":
                if i != n - 1:
                    if not _redundant_anchor(p, self.lo, n, i, at_end=True):
                        raise self.unsupported("anchor $ other than at the end of the regex", i)
                    i += 1  # it repeats the alternative's own final $
                    continue
                anchored_end = True
                i += 1
            elif c == ".":
                self.emit_class(self.dot, i)
                i += 1
            elif ord(c) >= _PLACEHOLDER_BASE:
                self.emit_class(CharSet.of(c), i)
                i += 1
            else:
                self.emit(c, i)
                i += 1
        last = self.interegular_parse()
        if self.head is None:
            return Alternative(last, anchored_start, anchored_end)
        assert self.pending is not None
        rest = (*self.segments, (self.pending, last))
        return Alternative(self.head, anchored_start, anchored_end, rest)

    def top_level_lookahead(self, i: int) -> int:
        """`(?=...)` / `(?!...)` at `i`: close the segment before it, parse its body, and go on
        after its `)`."""
        p = self.pattern
        close = _group_end(p, i, self.n)
        if close < 0:
            raise self.error("missing ) for the lookahead", i)
        segment = self.interegular_parse()
        if self.head is None:
            self.head = segment
        else:
            assert self.pending is not None
            self.segments.append((self.pending, segment))
        self.out, self.origin = [], []
        negative = p[i + 2] == "!"
        body = tuple(
            _Scanner(p, lo, hi, self.ecma_dot, inverted=negative != self.inverted).parse()
            for lo, hi in _top_level_alternatives(p, i + 3, close)
        )
        self.pending = Lookahead(negative=negative, body=body)
        return close + 1

    def escape(self, i: int) -> int:
        p, n = self.pattern, self.n
        if i + 1 >= n:
            raise self.error("the regex ends in a lone backslash", i)
        e = p[i + 1]
        if e in "123456789":
            raise self.unsupported(f"backreference \\{e}", i)
        if e == "k":
            raise self.unsupported("named backreference \\k", i)
        if e in "bB":
            if _boundary_is_redundant(p, self.lo, self.n, i):
                return i + 2  # its neighbors are fixed and always (\\B: never) a word boundary
            raise self.unsupported(f"word boundary \\{e}", i)
        if e in "AZzG":
            raise self.unsupported(f"anchor \\{e}", i)
        if e in "dDwWsS":
            self.emit_class(_class_set([], [e], negated=False, inverted=self.inverted), i)
            return i + 2
        ch, j = self.escaped_char(i)
        self.emit_class(CharSet.of(ch), i)
        return j

    def escaped_char(self, i: int) -> tuple[str, int]:
        """A single-character escape at `i` (the backslash): the character and the next index."""
        p, n = self.pattern, self.n
        e = p[i + 1]
        if e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = p[i + 2 : min(i + 2 + width, n)]
            if len(digits) != width or not set(digits) <= _HEX:
                raise self.error(f"\\{e} needs {width} hex digits", i)
            code = int(digits, 16)
            if code > MAX_CODE_POINT:
                raise self.error("code point out of range", i)
            return chr(code), i + 2 + width
        if e == "0":
            j = i + 2
            while j < min(i + 4, n) and p[j] in "01234567":
                j += 1
            return chr(int(p[i + 1 : j], 8)), j
        if e in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[e], i + 2
        if e in "pPN":
            raise self.unsupported(f"Unicode property escape \\{e}", i)
        if e == "c":
            raise self.unsupported("control escape \\c", i)
        if e.isalnum():
            raise self.error(f"bad escape \\{e}", i)
        return e, i + 2

    def char_class(self, i: int) -> int:
        p, n = self.pattern, self.n
        start = i
        i += 1
        negated = i < n and p[i] == "^"
        if negated:
            i += 1
        first = i
        members: list[CharSet] = []  # united once at the end: folding `|` would be quadratic
        letters: list[str] = []  # the shorthands (\\d, \\W, ...): their sets depend on the reading
        while True:
            if i >= n:
                raise self.error("unterminated character class", start)
            c = p[i]
            if c == "]" and i != first:
                i += 1
                break
            if c == "\\" and i + 1 < n and p[i + 1] in "dDwWsS":
                letters.append(p[i + 1])
                i += 2
                continue
            if c == "\\" and i + 1 < n and p[i + 1] == "b":
                lo_ch, j = "\b", i + 2
            elif c == "\\":
                if i + 1 >= n:
                    raise self.error("unterminated character class", start)
                lo_ch, j = self.escaped_char(i)
            elif c == "[" and p.startswith("[:", i):
                raise self.unsupported("POSIX class [:...:]", i)
            else:
                lo_ch, j = c, i + 1
            # a range?
            if j + 1 < n and p[j] == "-" and p[j + 1] != "]":
                k = j + 1
                if p[k] == "\\":
                    if k + 1 < n and p[k + 1] in "dDwWsS":
                        raise self.error("bad character range", i)
                    hi_ch, k2 = ("\b", k + 2) if p.startswith("\\b", k) else self.escaped_char(k)
                else:
                    hi_ch, k2 = p[k], k + 1
                if ord(hi_ch) < ord(lo_ch):
                    raise self.error(f"bad character range {lo_ch}-{hi_ch}", i)
                members.append(CharSet.range(lo_ch, hi_ch))
                i = k2
            else:
                members.append(CharSet.of(lo_ch))
                i = j
        self.emit_class(_class_set(members, letters, negated, self.inverted), start)
        return i

    def extension_group(self, i: int) -> int:
        p, n = self.pattern, self.n
        rest = p[i + 2 : min(i + 4, n)]
        if rest[:1] in ("=", "!") or rest in ("<=", "<!"):
            key = rest if rest in ("<=", "<!") else rest[:1]
            kind = {
                "=": "lookahead",
                "!": "negative lookahead",
                "<=": "lookbehind",
                "<!": "negative lookbehind",
            }
            raise self.unsupported(f"{kind[key]} (?{key}...)", i)
        if rest.startswith("P="):
            raise self.unsupported("named backreference (?P=...)", i)
        if rest.startswith("("):
            raise self.unsupported("conditional group (?(...)...)", i)
        if rest.startswith(">"):
            raise self.unsupported("atomic group (?>...)", i)
        if rest.startswith("#"):
            raise self.unsupported("comment group (?#...)", i)
        if rest.startswith(":"):
            self.emit("(?:", i)
            return i + 3
        if rest.startswith("P<") or rest.startswith("<"):
            close = p.find(">", i, n)
            if close < 0:
                raise self.error("unterminated group name", i)
            self.emit("(?:", i)  # a named group matches what an unnamed one does
            return close + 1
        raise self.unsupported("inline flags (?...)", i)

    def interegular_parse(self) -> Node:
        text = "".join(self.out)
        parser = _ip._ParsePattern(text)
        try:
            tree = parser.parse().simplify()
        except RecursionError:
            raise over("constraint_nesting", None, "regex structure", position=self.lo, pattern=self.pattern) from None
        except _ip.InvalidSyntax as e:
            pos = getattr(e.__context__, "index", parser.index)
            raise self.error(f"invalid regex syntax{': ' + str(e) if str(e) else ''}", self.at(pos)) from None
        except _ip.Unsupported as e:
            raise self.error(f"unsupported regex construct: {e}", self.at(parser.index)) from None
        return self.convert(tree)

    def at(self, pos: int) -> int:
        return self.origin[pos] if 0 <= pos < len(self.origin) else self.n

    def convert(self, p: object) -> Node:
        if isinstance(p, _ip.Pattern):
            if p.added_flags or p.removed_flags:
                raise self.unsupported("regex flags", self.lo)
            return alt(*(self.convert(o) for o in p.options))
        if isinstance(p, _ip._Concatenation):
            return concat(*(self.convert(part) for part in p.parts))
        if isinstance(p, _ip._Repeated):
            return repeat(self.convert(p.base), p.min, p.max)
        if isinstance(p, _ip._CharGroup):
            parts: list[CharSet] = []
            plain = []
            for ch in p.chars:
                k = ord(ch) - _PLACEHOLDER_BASE
                if 0 <= k < len(self.classes):
                    parts.append(self.classes[k])
                else:
                    plain.append(ch)
            parts.append(CharSet.of(plain))
            cs = CharSet.union(parts)
            return chars(cs.complement() if p.negated else cs)
        if p is _ip._DOT:
            return chars(self.dot)
        if p is _ip._EMPTY:
            return EPSILON
        raise self.unsupported(f"regex construct {type(p).__name__}", self.lo)
