"""Digit-range regexes: JSON integers and decimals between bounds, built from the bounds' digits.

`int_range(3, 142)` is `[3-9]|[1-9][0-9]|1[0-3][0-9]|14[0-2]`: split by digit count, then by leading
digit, recursively (the classic construction). Numbers are written canonically (no leading zeros, no
`-0`), which is a subset of the JSON spellings of the same values, so everything generated is valid.

`number_range` handles decimals between integer-valued bounds: a value is an integer part and a
fraction, and only the bounds' own integer parts need a condition on the fraction (zero or non-zero).
Bounded decimals are written without an exponent.
"""

from __future__ import annotations

from .charset import CharSet
from .regex_ast import EMPTY, Node, alt, chars, concat, literal, optional, repeat

DIGIT = chars(CharSet.range("0", "9"))
NONZERO_DIGIT = chars(CharSet.range("1", "9"))
# Numbers are bounded by default: a small model under a number constraint otherwise tends to emit
# digits until the token limit. 15 significant digits is all a float64 (and a JavaScript integer)
# holds anyway; the exponent gets 3. docs/constraints.md documents this policy.
MAX_INT_DIGITS = 15
MAX_FRAC_DIGITS = 15
MAX_EXP_DIGITS = 3
FRAC_ANY = optional(concat(literal("."), repeat(DIGIT, 1, MAX_FRAC_DIGITS)))
FRAC_ZERO = optional(concat(literal("."), repeat(literal("0"), 1, MAX_FRAC_DIGITS)))
# A fraction with a nonzero digit, at most MAX_FRAC_DIGITS long, spelled by its count of leading
# zeros: `[0-9]{0,14}[1-9][0-9]{0,14}` would need a DFA state per position of the nonzero digit in
# the window (~49k states) and would allow 29 digits.
FRAC_NONZERO = concat(
    literal("."),
    alt(*(concat(repeat(literal("0"), k, k), NONZERO_DIGIT, repeat(DIGIT, 0, MAX_FRAC_DIGITS - 1 - k))
          for k in range(MAX_FRAC_DIGITS))),
)
EXPONENT = optional(
    concat(chars(CharSet.of("eE")), optional(chars(CharSet.of("+-"))), repeat(DIGIT, 1, MAX_EXP_DIGITS))
)
UNSIGNED_INT = alt(literal("0"), concat(NONZERO_DIGIT, repeat(DIGIT, 0, MAX_INT_DIGITS - 1)))
INTEGER = concat(optional(literal("-")), UNSIGNED_INT)
NUMBER = concat(INTEGER, FRAC_ANY, EXPONENT)


def _digit_class(lo: int, hi: int) -> Node:
    return chars(CharSet.range(str(lo), str(hi)))


def fixed_width_range(x: str, y: str) -> Node:
    """Digit strings of len(x) == len(y) between x and y inclusive (leading zeros allowed)."""
    assert len(x) == len(y) and x <= y
    d = len(x)
    if d == 0:
        return literal("")
    if x == y:
        return literal(x)
    if x[0] == y[0]:
        return concat(literal(x[0]), fixed_width_range(x[1:], y[1:]))
    parts: list[Node] = []
    lo_d, hi_d = int(x[0]), int(y[0])
    rest = d - 1
    if x[1:] != "0" * rest:
        parts.append(concat(literal(x[0]), fixed_width_range(x[1:], "9" * rest)))
        lo_d += 1
    upper_part = None
    if y[1:] != "9" * rest:
        upper_part = concat(literal(y[0]), fixed_width_range("0" * rest, y[1:]))
        hi_d -= 1
    if lo_d <= hi_d:
        parts.append(concat(_digit_class(lo_d, hi_d), repeat(DIGIT, rest, rest)))
    if upper_part is not None:
        parts.append(upper_part)
    return alt(*parts)


def nonneg_int_range(lo: int, hi: int | None) -> Node:
    """Canonical decimal integers in [lo, hi] (hi None: unbounded), lo >= 0."""
    assert lo >= 0
    if hi is not None and lo > hi:
        return EMPTY
    parts: list[Node] = []
    if lo == 0:
        parts.append(literal("0"))
        lo = 1
        if hi is not None and hi < 1:
            return alt(*parts)
    len_lo = len(str(lo))
    len_hi = len(str(hi)) if hi is not None else len_lo
    for d in range(len_lo, len_hi + 1):
        a = max(lo, 10 ** (d - 1))
        b = 10**d - 1 if hi is None else min(hi, 10**d - 1)
        if a <= b:
            parts.append(fixed_width_range(str(a), str(b)))
    if hi is None and len_lo < MAX_INT_DIGITS:
        parts.append(concat(NONZERO_DIGIT, repeat(DIGIT, len_lo, MAX_INT_DIGITS - 1)))
    return alt(*parts)


def int_range(lo: int | None, hi: int | None) -> Node:
    """JSON integers in [lo, hi] (None: unbounded on that side), written canonically."""
    if lo is not None and hi is not None and lo > hi:
        return EMPTY
    parts: list[Node] = []
    if hi is None or hi >= 0:
        parts.append(nonneg_int_range(max(lo, 0) if lo is not None else 0, hi))
    if lo is None or lo < 0:
        m_lo = 1 if hi is None or hi >= 0 else -hi
        m_hi = None if lo is None else -lo
        parts.append(concat(literal("-"), nonneg_int_range(m_lo, m_hi)))
    return alt(*parts)


def _nonneg_decimal(a: int, a_excl: bool, b: int | None, b_excl: bool) -> Node:
    """Decimals x >= 0 with x >= a (x > a if a_excl) and x <= b (x < b if b_excl); a, b integers."""
    parts: list[Node] = []
    any_lo = a + 1 if a_excl else a
    any_hi = None if b is None else b - 1
    if any_hi is None or any_lo <= any_hi:
        parts.append(concat(nonneg_int_range(any_lo, any_hi), FRAC_ANY))
    if a_excl and (b is None or a < b):
        parts.append(concat(literal(str(a)), FRAC_NONZERO))
    if b is not None and not b_excl and (b > a or (b == a and not a_excl)):
        parts.append(concat(literal(str(b)), FRAC_ZERO))
    return alt(*parts)


def number_range(lower: tuple[int, bool] | None, upper: tuple[int, bool] | None) -> Node:
    """JSON numbers between integer-valued bounds, each (value, exclusive) or None."""
    if lower is None and upper is None:
        return NUMBER
    parts: list[Node] = []
    if upper is None or upper[0] > 0 or (upper[0] == 0 and not upper[1]):
        a, a_excl = (0, False) if lower is None or lower[0] < 0 else lower
        b, b_excl = (None, False) if upper is None else upper
        parts.append(_nonneg_decimal(a, a_excl, b, b_excl))
    if lower is None or lower[0] < 0:
        # x = -m with m > 0
        if upper is None or upper[0] >= 0:
            a, a_excl = 0, True
        else:
            a, a_excl = -upper[0], upper[1]
        b, b_excl = (None, False) if lower is None else (-lower[0], lower[1])
        parts.append(concat(literal("-"), _nonneg_decimal(a, a_excl, b, b_excl)))
    return alt(*parts)
