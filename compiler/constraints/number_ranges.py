"""Digit-range regexes: JSON integers and decimals between bounds, built from the bounds' digits.

`int_range(3, 142)` is `[3-9]|[1-9][0-9]|1[0-3][0-9]|14[0-2]`: split by digit count, then by leading
digit, recursively (the classic construction). Numbers are written canonically (no leading zeros, no
`-0`), which is a subset of the JSON spellings of the same values, so everything generated is valid.

`number_range` handles decimals between integer-valued bounds: a value is an integer part and a
fraction, and only the bounds' own integer parts need a condition on the fraction (zero or non-zero).
Bounded decimals are written without an exponent, except where every exponent form of one sign is
in range (`exponent_forms`: `minimum: 0` takes `1.5e+300`, `[0, 100]` takes `1.2e-07`).

`decimal_range` takes any bounds (fractions too): the integer part decides unless it equals a bound's,
and then the fraction's digits are compared with the bound's, digit by digit (at most
MAX_FRAC_DIGITS of them). Integer texts and texts with a fraction get separate bounds, since a JSON
parser reads the first exactly and rounds the second to a float (json_schema.py picks the bounds).
"""

from __future__ import annotations

import math
from fractions import Fraction

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
    alt(
        *(
            concat(repeat(literal("0"), k, k), NONZERO_DIGIT, repeat(DIGIT, 0, MAX_FRAC_DIGITS - 1 - k))
            for k in range(MAX_FRAC_DIGITS)
        )
    ),
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


# ---------------------------------------------------------------------------------------------
# Decimals between arbitrary (fractional) bounds, exact for the value a JSON parser reads

Bound = tuple[Fraction, bool]  # (value, strict)


def _nonzero_digits(m: int) -> Node:
    """Digit strings of length <= m with a nonzero digit."""
    return alt(
        *(concat(repeat(literal("0"), k, k), NONZERO_DIGIT, repeat(DIGIT, 0, m - 1 - k)) for k in range(m))
    )


def _frac_ge(d: str, m: int, strict: bool, first: bool) -> Node:
    """Digit strings g, 1 (if first) or 0 to m long, with 0.g >= 0.d (> when strict)."""
    d = d.rstrip("0")
    if not d:
        return _nonzero_digits(m) if strict else repeat(DIGIT, 1 if first else 0, m)
    if m == 0:
        return EMPTY
    k = int(d[0])
    options = [concat(literal(d[0]), _frac_ge(d[1:], m - 1, strict, False))]
    if k < 9:
        options.append(concat(_digit_class(k + 1, 9), repeat(DIGIT, 0, m - 1)))
    return alt(*options)


def _frac_le(d: str, m: int, strict: bool, first: bool) -> Node:
    """Digit strings g, 1 (if first) or 0 to m long, with 0.g <= 0.d (< when strict)."""
    d = d.rstrip("0")
    if not d:
        return EMPTY if strict else repeat(literal("0"), 1 if first else 0, m)
    options: list[Node] = [] if first else [literal("")]  # the empty rest is 0 < 0.d
    if m == 0:
        return alt(*options)
    k = int(d[0])
    if k > 0:
        options.append(concat(_digit_class(0, k - 1), repeat(DIGIT, 0, m - 1)))
    options.append(concat(literal(d[0]), _frac_le(d[1:], m - 1, strict, False)))
    return alt(*options)


def _frac_between(lo: str, lo_strict: bool, hi: str, hi_strict: bool, m: int, first: bool) -> Node:
    """Digit strings g (1 or 0 to m long) with 0.lo <= 0.g <= 0.hi (strict as told)."""
    lo, hi = lo.rstrip("0"), hi.rstrip("0")
    if not lo and not lo_strict:
        return _frac_le(hi, m, hi_strict, first)
    if not hi or m == 0:
        return EMPTY  # g > 0 (or > 0.lo > 0) cannot be <= 0, and the empty g is 0
    a, b = int(lo[0]) if lo else 0, int(hi[0])
    if a > b:
        return EMPTY
    if a == b:
        return concat(literal(str(a)), _frac_between(lo[1:], lo_strict, hi[1:], hi_strict, m - 1, False))
    options = [concat(literal(str(a)), _frac_ge(lo[1:], m - 1, lo_strict, False))]
    if b - a > 1:
        options.append(concat(_digit_class(a + 1, b - 1), repeat(DIGIT, 0, m - 1)))
    options.append(concat(literal(str(b)), _frac_le(hi[1:], m - 1, hi_strict, False)))
    return alt(*options)


def _split(x: Fraction, lower: bool, strict: bool) -> tuple[int, str, bool]:
    """x as (integer part, MAX_FRAC_DIGITS fraction digits, strict): a fraction of at most
    MAX_FRAC_DIGITS digits compares with x as it does with the truncated digits, once strictness
    is adjusted for a nonzero remainder."""
    n = math.floor(x)
    q = (x - n) * 10**MAX_FRAC_DIGITS
    digits = math.floor(q)
    if q != digits:
        strict = lower  # g >= x <=> g > trunc(x); g <= x <=> g <= trunc(x)
    return n, str(digits).rjust(MAX_FRAC_DIGITS, "0"), strict


def _tighter(a: Bound | None, b: Bound | None, lower: bool) -> Bound | None:
    if a is None or b is None:
        return a if b is None else b
    if a[0] != b[0]:
        return a if (a[0] > b[0]) == lower else b
    return (a[0], a[1] or b[1])


def _nonneg_decimals(lo_int: Bound, hi_int: Bound | None, lo_frac: Bound, hi_frac: Bound | None) -> Node:
    """Non-negative decimals (no sign): integer texts within the *_int bounds, texts with a
    fraction within the *_frac bounds (lower bounds >= 0)."""
    ilo = math.floor(lo_int[0]) + 1 if lo_int[1] else math.ceil(lo_int[0])
    ihi = None if hi_int is None else (math.ceil(hi_int[0]) - 1 if hi_int[1] else math.floor(hi_int[0]))
    parts: list[Node] = []
    if ihi is None or ilo <= ihi:
        parts.append(nonneg_int_range(max(ilo, 0), ihi))
    na, da, sa = _split(lo_frac[0], True, lo_frac[1])
    m = MAX_FRAC_DIGITS
    if hi_frac is None:
        parts.append(concat(nonneg_int_range(na + 1, None), literal("."), repeat(DIGIT, 1, m)))
        parts.append(concat(literal(str(na)), literal("."), _frac_ge(da, m, sa, True)))
    else:
        nb, db, sb = _split(hi_frac[0], False, hi_frac[1])
        if na < nb:
            if na + 1 <= nb - 1:
                parts.append(concat(nonneg_int_range(na + 1, nb - 1), literal("."), repeat(DIGIT, 1, m)))
            parts.append(concat(literal(str(na)), literal("."), _frac_ge(da, m, sa, True)))
            parts.append(concat(literal(str(nb)), literal("."), _frac_le(db, m, sb, True)))
        elif na == nb:
            parts.append(concat(literal(str(na)), literal("."), _frac_between(da, sa, db, sb, m, True)))
    return alt(*parts)


def decimal_range(
    lo_int: Bound | None, hi_int: Bound | None, lo_frac: Bound | None, hi_frac: Bound | None
) -> Node:
    """JSON numbers without exponent: integer texts (`-12`) within the *_int bounds, texts with a
    fraction (`-12.5`) within the *_frac bounds; a bound is (value, strict) or None. Two pairs
    because a parser reads the two kinds differently (exact integers, rounded floats): the caller
    chooses bounds under which both read as in range."""
    zero: Bound = (Fraction(0), False)
    parts: list[Node] = []
    # x >= 0: the lower bounds become at least 0
    if (hi_int is None or hi_int[0] >= 0) or (hi_frac is None or hi_frac[0] >= 0):
        parts.append(
            _nonneg_decimals(
                _tighter(lo_int, zero, True) or zero,
                hi_int,
                _tighter(lo_frac, zero, True) or zero,
                hi_frac,
            )
        )

    # x = -y with y > 0: x >= L <=> y <= -L, x <= U <=> y >= -U
    def flip(b: Bound | None) -> Bound | None:
        return None if b is None else (-b[0], b[1])

    positive: Bound = (Fraction(0), True)
    if (lo_int is None or lo_int[0] < 0) or (lo_frac is None or lo_frac[0] < 0):
        parts.append(
            concat(
                literal("-"),
                _nonneg_decimals(
                    _tighter(flip(hi_int), positive, True) or positive,
                    flip(lo_int),
                    _tighter(flip(hi_frac), positive, True) or positive,
                    flip(lo_frac),
                ),
            )
        )
    return alt(*parts)


def _exponent_digits_not_zero() -> Node:
    """1 to MAX_EXP_DIGITS digits, not all zero (`07` as Python writes `1e-07`)."""
    return alt(
        *(
            concat(repeat(literal("0"), z, z), NONZERO_DIGIT, repeat(DIGIT, 0, MAX_EXP_DIGITS - 1 - z))
            for z in range(MAX_EXP_DIGITS)
        )
    )


def exponent_forms(lower: Bound | None, upper: Bound | None) -> Node:
    """Numbers with an exponent that lie in the range whatever their digits, for the bounds real
    schemas write (`minimum: 0`, `[0, 100]`, `minimum: 1000`): the range holds all of [0, inf),
    all of [0, 1), or all of [10**E, inf) (and their negatives). Every other exponent form is left out (the range is then written
    without exponent by `decimal_range`). A bound is (value, strict) or None.

    Overflow and underflow are harmless here: 1e999 parses to inf, which is in a range with no
    upper bound; 1e-999 parses to 0.0, which these ranges hold."""

    def holds_zero_from_below() -> bool:
        return lower is None or lower[0] < 0 or (lower[0] == 0 and not lower[1])

    def holds_zero_from_above() -> bool:
        return upper is None or upper[0] > 0 or (upper[0] == 0 and not upper[1])

    any_exponent = concat(chars(CharSet.of("eE")), optional(chars(CharSet.of("+-"))), repeat(DIGIT, 1, MAX_EXP_DIGITS))
    negative_exponent = concat(chars(CharSet.of("eE")), literal("-"), _exponent_digits_not_zero())
    large = concat(UNSIGNED_INT, FRAC_ANY, any_exponent)  # any magnitude
    small = concat(DIGIT, FRAC_ANY, negative_exponent)  # below 1: one digit, then e-1 or less
    forms: list[Node] = []
    # Only a lower bound L > 0 (`minimum: 1000`): d.ddd e+E with d >= 1 is at least 10**E, which is
    # above L once E has more digits than L's integer part (and the same mirrored below -L).
    for bound, sign, other in ((lower, "", upper), (upper, "-", lower)):
        if other is None and bound is not None and (bound[0] > 0 if sign == "" else bound[0] < 0):
            magnitude = abs(bound[0])
            e_min = len(str(math.floor(magnitude))) if magnitude >= 1 else 0
            if e_min < 10**MAX_EXP_DIGITS:
                exponent = concat(chars(CharSet.of("eE")), optional(literal("+")), optional(literal("0")),
                                  int_range(e_min, 10**MAX_EXP_DIGITS - 1))
                forms.append(concat(literal(sign), NONZERO_DIGIT, FRAC_ANY, exponent))
    if holds_zero_from_below():
        if upper is None:
            forms.append(large)
        elif upper[0] > 1 or (upper[0] == 1 and not upper[1]):
            forms.append(small)
    if holds_zero_from_above():
        if lower is None:
            forms.append(concat(literal("-"), large))
        elif lower[0] < -1 or (lower[0] == -1 and not lower[1]):
            forms.append(concat(literal("-"), small))
    return alt(*forms) if forms else EMPTY
