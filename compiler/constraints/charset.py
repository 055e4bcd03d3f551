"""Sets of Unicode code points as sorted, disjoint, inclusive ranges, and their UTF-8 byte form.

A regex character class like `[^"\\]` covers more than a million code points, so it is kept as a
handful of ranges, never as a set of characters. `utf8_sequences` turns a set into the byte-range
sequences that encode exactly its characters: that is how character automata become byte automata,
so that a token ending in the middle of a multi-byte character lands in a real intermediate state.
Surrogates (U+D800..U+DFFF) have no UTF-8 encoding and are never part of a byte-level language.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

MAX_CODE_POINT = 0x10FFFF
SURROGATES = (0xD800, 0xDFFF)


def _normalize(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[list[int]] = []
    for lo, hi in sorted(r for r in ranges if r[0] <= r[1]):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return tuple((lo, hi) for lo, hi in merged)


@dataclass(frozen=True)
class CharSet:
    """An immutable set of code points: `ranges` sorted, disjoint, non-adjacent, inclusive."""

    ranges: tuple[tuple[int, int], ...]

    @staticmethod
    def of(chars: str | Iterable[str]) -> CharSet:
        return CharSet(_normalize((ord(c), ord(c)) for c in chars))

    @staticmethod
    def range(lo: str | int, hi: str | int) -> CharSet:
        lo_i = ord(lo) if isinstance(lo, str) else lo
        hi_i = ord(hi) if isinstance(hi, str) else hi
        return CharSet(_normalize([(lo_i, hi_i)]))

    @staticmethod
    def from_ranges(ranges: Iterable[tuple[int, int]]) -> CharSet:
        return CharSet(_normalize(ranges))

    @staticmethod
    def everything() -> CharSet:
        return CharSet(((0, MAX_CODE_POINT),))

    @staticmethod
    def nothing() -> CharSet:
        return CharSet(())

    def is_empty(self) -> bool:
        return not self.ranges

    def __contains__(self, ch: str | int) -> bool:
        c = ord(ch) if isinstance(ch, str) else ch
        for lo, hi in self.ranges:
            if c < lo:
                return False
            if c <= hi:
                return True
        return False

    def __or__(self, other: CharSet) -> CharSet:
        if not other.ranges:
            return self
        if not self.ranges:
            return other
        return CharSet(_normalize(self.ranges + other.ranges))

    @staticmethod
    def union(sets: Iterable[CharSet]) -> CharSet:
        """The union of many sets with one sort and merge. Folding `|` over n sets re-sorts the
        growing result n times (quadratic for a class of thousands of ranges); this does not."""
        return CharSet(_normalize(r for cs in sets for r in cs.ranges))

    def complement(self) -> CharSet:
        out = []
        prev = 0
        for lo, hi in self.ranges:
            if lo > prev:
                out.append((prev, lo - 1))
            prev = hi + 1
        if prev <= MAX_CODE_POINT:
            out.append((prev, MAX_CODE_POINT))
        return CharSet(tuple(out))

    def __and__(self, other: CharSet) -> CharSet:
        out = []
        i = j = 0
        a, b = self.ranges, other.ranges
        while i < len(a) and j < len(b):
            lo = max(a[i][0], b[j][0])
            hi = min(a[i][1], b[j][1])
            if lo <= hi:
                out.append((lo, hi))
            if a[i][1] < b[j][1]:
                i += 1
            else:
                j += 1
        return CharSet(tuple(out))

    def __sub__(self, other: CharSet) -> CharSet:
        return self & other.complement()

    def size(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.ranges)

    def chars(self, limit: int = 1 << 20) -> list[str]:
        """The members as characters (for small sets: tests, literal detection)."""
        out: list[str] = []
        for lo, hi in self.ranges:
            for c in range(lo, hi + 1):
                if len(out) >= limit:
                    return out
                if not SURROGATES[0] <= c <= SURROGATES[1]:
                    out.append(chr(c))
        return out

    def single_char(self) -> str | None:
        if len(self.ranges) == 1 and self.ranges[0][0] == self.ranges[0][1]:
            return chr(self.ranges[0][0])
        return None

    def to_regex(self) -> str:
        """A Python `re` expression for the set (a literal for one char, else a class)."""
        one = self.single_char()
        if one is not None:
            return _escape_literal(one)
        if not self.ranges:
            return "[^\\x00-\\U0010ffff]"
        comp = self.complement()
        if len(comp.ranges) < len(self.ranges):
            return "[^" + "".join(_class_range(lo, hi) for lo, hi in comp.ranges) + "]"
        return "[" + "".join(_class_range(lo, hi) for lo, hi in self.ranges) + "]"


_LITERAL_SPECIAL = set(".^$*+?{}[]\\|()")


def _escape_char_code(c: int) -> str:
    if c < 0x20 or c == 0x7F:
        return f"\\x{c:02x}"
    if 0xD800 <= c <= 0xDFFF or c > 0xFFFF:
        return f"\\U{c:08x}" if c > 0xFFFF else f"\\u{c:04x}"
    if c > 0x7E and not chr(c).isprintable():
        return f"\\u{c:04x}"
    return chr(c)


def _escape_literal(ch: str) -> str:
    if ch in _LITERAL_SPECIAL:
        return "\\" + ch
    if ch in " #&~-":  # fine in Python re, escaped anyway so the text also reads well in verbose tools
        return ch
    return _escape_char_code(ord(ch))


def _class_char(c: int) -> str:
    if chr(c) in "]\\^-[":
        return "\\" + chr(c)
    return _escape_char_code(c)


def _class_range(lo: int, hi: int) -> str:
    if lo == hi:
        return _class_char(lo)
    if hi == lo + 1:
        return _class_char(lo) + _class_char(hi)
    return _class_char(lo) + "-" + _class_char(hi)


# ---------------------------------------------------------------------------------------------
# UTF-8


def _encode(c: int) -> bytes:
    return chr(c).encode("utf-8")


def _split_utf8(lo: int, hi: int, out: list[tuple[tuple[int, int], ...]]) -> None:
    # Each emitted sequence is a product of byte ranges, so it is one path of byte-class edges.
    for boundary in (0x7F, 0x7FF, 0xFFFF):
        if lo <= boundary < hi:
            _split_utf8(lo, boundary, out)
            _split_utf8(boundary + 1, hi, out)
            return
    if hi < 0x80:
        out.append(((lo, hi),))
        return
    for i in (1, 2, 3):
        m = (1 << (6 * i)) - 1
        if lo & ~m != hi & ~m:
            if lo & m:
                _split_utf8(lo, lo | m, out)
                _split_utf8((lo | m) + 1, hi, out)
                return
            if hi & m != m:
                _split_utf8(lo, (hi & ~m) - 1, out)
                _split_utf8(hi & ~m, hi, out)
                return
    a, b = _encode(lo), _encode(hi)
    out.append(tuple((a[k], b[k]) for k in range(len(a))))


@lru_cache(maxsize=4096)
def utf8_sequences(cs: CharSet) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Byte-range sequences whose union encodes exactly the (non-surrogate) characters of `cs`."""
    out: list[tuple[tuple[int, int], ...]] = []
    s_lo, s_hi = SURROGATES
    for lo, hi in cs.ranges:
        if lo <= s_hi and hi >= s_lo:
            if lo < s_lo:
                _split_utf8(lo, s_lo - 1, out)
            if hi > s_hi:
                _split_utf8(s_hi + 1, hi, out)
        else:
            _split_utf8(lo, hi, out)
    return tuple(out)
