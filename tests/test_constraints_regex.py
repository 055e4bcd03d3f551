"""Regex -> DFA: the automata accept exactly what `re.fullmatch` accepts; rejections carry positions."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.constraints import ConstraintError, regex_to_byte_dfa, regex_to_char_dfa
from compiler.constraints.charset import CharSet, utf8_sequences
from compiler.constraints.regex_dfa import CharDFA
from tests.tiers import examples

# -- a rich family of regexes ----------------------------------------------------------------

ATOMS = [
    "a", "b", "c", "é", "日", r"\.", r"\+", r"\(", "-", " ", r"\n",
    "[abc]", "[a-c]", "[^a]", r"[^ab\n]", ".", r"\d", r"\w", r"\s", "[é-ü]", r"[\d_]", r"\x41", r"\u00e9",
]  # fmt: skip
ALPHABET = "abcé日.+(-_ \nxAü1ñ"


def _quantified(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    quantifiers = st.sampled_from(["*", "+", "?", "{2}", "{0,2}", "{1,3}", "{2,}", "*?", "{0,1}"])
    return st.builds(lambda a, q: f"(?:{a}){q}", inner, quantifiers)


REGEXES = st.recursive(
    st.sampled_from(ATOMS),
    lambda inner: st.one_of(
        st.lists(inner, min_size=2, max_size=3).map("".join),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: "(" + "|".join(xs) + ")"),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: "(?:" + "|".join(xs) + ")"),
        _quantified(inner),
    ),
    max_leaves=8,
)


_SHARED_SPACES = "[\\s\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"


def sample_accepted(dfa: CharDFA, rng: random.Random, max_len: int = 12) -> str | None:
    """A random string the CharDFA accepts (walk live classes, stop at accepting states)."""
    if dfa.num_states == 0:
        return None
    s, out = dfa.initial, []
    for _ in range(max_len):
        if dfa.accepting[s] and rng.random() < 0.35:
            return "".join(out)
        live = [c for c in range(dfa.num_classes) if dfa.transitions[s, c] >= 0]
        if not live:
            break
        c = rng.choice(live)
        ranges = [r for r in dfa.class_chars(c).ranges]
        lo, hi = rng.choice(ranges)
        ch = rng.randint(lo, min(hi, lo + 300))
        if 0xD800 <= ch <= 0xDFFF:
            ch = 0x41 if 0x41 in dfa.class_chars(c) else lo
        out.append(chr(ch))
        s = int(dfa.transitions[s, c])
    return "".join(out) if dfa.accepting[s] else None


@settings(max_examples=examples(250), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pattern=REGEXES,
    strings=st.lists(st.text(alphabet=ALPHABET, max_size=7), max_size=12),
    seed=st.integers(0, 10**6),
)
def test_dfa_accepts_exactly_what_re_fullmatch_accepts(pattern: str, strings: list[str], seed: int) -> None:
    # the oracle: re's ASCII reading, with \s widened to the spaces ECMA and Python share (the atoms
    # put \s in no class); every sampled text must match Python's Unicode reading too
    compiled = re.compile(pattern.replace("\\s", _SHARED_SPACES), re.ASCII)
    char_dfa = regex_to_char_dfa(pattern)
    byte_dfa = regex_to_byte_dfa(pattern)
    rng = random.Random(seed)
    samples = [sample_accepted(char_dfa, rng) for _ in range(6)]
    for s in strings + [x for x in samples if x is not None]:
        expected = compiled.fullmatch(s) is not None
        assert char_dfa.accepts(s) == expected, (pattern, s)
        assert byte_dfa.accepts(s.encode("utf-8")) == expected, (pattern, s)
    for x in samples:
        if x is not None:
            assert compiled.fullmatch(x), (pattern, x)
            assert re.fullmatch(pattern, x), (pattern, x)


def test_char_dfa_keeps_classes_as_classes() -> None:
    dfa = regex_to_char_dfa(r"[a-z]+@[^@]+")
    assert dfa.num_classes == 3  # a-z, @, everything else (incl. chars never mentioned)
    assert dfa.class_of("q") == dfa.class_of("a")
    assert dfa.class_of("日") == dfa.anything_else
    assert dfa.accepting_states and dfa.num_states <= 4
    assert dfa.accepts("ab@日本") and not dfa.accepts("ab@") and not dfa.accepts("@x")
    assert regex_to_char_dfa(r"(a|b)*abb").num_states == 4  # minimized


def test_anchors_at_the_ends_are_fullmatch_no_ops() -> None:
    assert regex_to_char_dfa("^ab$").accepts("ab")
    dfa = regex_to_char_dfa("^a|b$")
    assert dfa.accepts("a") and dfa.accepts("b")


def test_negated_shorthands_exclude_unicode_readings() -> None:
    # \D must not produce a character that Python's Unicode \d matches
    dfa = regex_to_char_dfa(r"\D")
    assert dfa.accepts("x") and not dfa.accepts("5") and not dfa.accepts("\u0663")
    assert not regex_to_char_dfa(r"[^\s]").accepts("\u00a0")
    assert regex_to_char_dfa(r"\w").accepts("_") and not regex_to_char_dfa(r"\w").accepts("é")


def test_space_shorthand_is_the_spaces_both_readings_share() -> None:
    """\\s takes the spaces ECMA-262 and Python's re both call spaces (NBSP, U+2028, the Zs range),
    not Python's U+001C-U+001F/NEL (not spaces in ECMA) nor ECMA's U+FEFF (not one in Python);
    \\S and [^\\s] exclude every reading's spaces, U+FEFF included."""
    space = regex_to_char_dfa(r"\s")
    for ch in " \t\u00a0\u1680\u2000\u2007\u200a\u2028\u2029\u202f\u205f\u3000":
        assert space.accepts(ch), hex(ord(ch))
    for ch in "\x1c\x1f\x85\ufeffa":
        assert not space.accepts(ch), hex(ord(ch))
    for pattern in (r"\S", r"[^\s]"):
        dfa = regex_to_char_dfa(pattern)
        assert dfa.accepts("a")
        for ch in " \u00a0\u2028\x1c\x85\ufeff":
            assert not dfa.accepts(ch), (pattern, hex(ord(ch)))
    # a class is read as a whole under each reading: [\\s\\S] is every character under both, though
    # U+001E is a space only in Python's reading and U+FEFF only in ECMA's
    for pattern in (r"[\s\S]", r"[\w\W]", r"[\d\D]"):
        dfa = regex_to_char_dfa(pattern)
        for ch in "a \x1e\x85\ufeff\u0663é\n":
            assert dfa.accepts(ch), (pattern, hex(ord(ch)))
    assert not regex_to_char_dfa(r"[^\s\S]").accepts("\x1e")
    mixed = regex_to_char_dfa(r"[\sa]")  # U+001E is not in ECMA's [\sa]: out
    assert mixed.accepts("a") and mixed.accepts("\u2028") and not mixed.accepts("\x1e")
    # the corpus case: `^[a-zA-Z0-9\s._:/=+@-]*$` with a U+2029 in a tag value
    assert regex_to_char_dfa(r"[a-zA-Z0-9\s._:/=+@-]*").accepts("oJ\n\tu\u2029\u2008042_G")


@pytest.mark.parametrize(
    "pattern, position, words",
    [
        (r"(a)\1", 3, "backreference"),
        (r"a(?=b)", 1, "lookahead"),
        (r"a(?!b)", 1, "negative lookahead"),
        (r"(?<=a)b", 0, "lookbehind"),
        (r"(?<!a)b", 0, "negative lookbehind"),
        (r"ab\bc", 2, "word boundary"),
        (r"a\b(b|c)?", 1, "word boundary"),  # the next piece may be skipped
        ("x\\b\u00e9", 1, "word boundary"),  # é is a word character for Python only
        (r"a\B:", 1, "word boundary \\B"),
        (r"(?i)abc", 0, "inline flags"),
        (r"a*+", 2, "possessive"),
        (r"(?>ab)", 0, "atomic group"),
        (r"(?P<x>a)(?P=x)", 8, "named backreference"),
        (r"\p{L}", 0, "Unicode property"),
        (r"(^a|b)", 1, "anchor ^"),
        (r"^(^a)*", 2, "anchor ^"),  # a repeated group: the second ^ is not at the start
        (r"^a(^b)", 3, "anchor ^"),
        (r"^(a$|b)c$", 3, "anchor $"),
        (r"a$b", 1, "anchor $"),
        (r"a\Z", 1, "anchor \\Z"),
        (r"[a-", 0, "unterminated character class"),
        (r"[z-a]", 1, "bad character range"),
        (r"(ab", 3, "invalid regex syntax"),
        (r"\q", 0, "bad escape"),
    ],
)
def test_unsupported_constructs_are_rejected_with_their_position(
    pattern: str, position: int, words: str
) -> None:
    with pytest.raises(ConstraintError) as info:
        regex_to_char_dfa(pattern)
    err = info.value
    assert err.position == position, str(err)
    assert words in err.message
    assert err.pattern == pattern
    assert "^" in str(err)  # the caret line under the pattern


def test_state_budget_is_a_clear_error() -> None:
    with pytest.raises(ConstraintError, match="budget"):
        regex_to_byte_dfa("(a|b)*a(a|b){14}", max_states=2000)


def test_size_budget_is_a_clear_error() -> None:
    with pytest.raises(ConstraintError, match="budget"):
        regex_to_byte_dfa("((a{1000}){1000}){1000}")


@settings(max_examples=examples(200), deadline=None)
@given(ranges=st.lists(st.tuples(st.integers(0, 0x10FFFF), st.integers(0, 3000)), min_size=1, max_size=4))
def test_utf8_sequences_encode_exactly_the_set(ranges: list[tuple[int, int]]) -> None:
    cs = CharSet.from_ranges([(lo, min(lo + w, 0x10FFFF)) for lo, w in ranges])
    seqs = utf8_sequences(cs)
    rng = random.Random(len(seqs))
    probes = (
        [lo for lo, _ in cs.ranges]
        + [hi for _, hi in cs.ranges]
        + [rng.randint(0, 0x10FFFF) for _ in range(50)]
    )
    probes += [hi + 1 for _, hi in cs.ranges if hi < 0x10FFFF] + [lo - 1 for lo, _ in cs.ranges if lo > 0]
    for c in probes:
        if 0xD800 <= c <= 0xDFFF:
            continue
        enc = chr(c).encode("utf-8")
        matched = any(
            len(seq) == len(enc) and all(a <= b <= z for (a, z), b in zip(seq, enc)) for seq in seqs
        )
        assert matched == (c in cs), hex(c)


def test_python_shorthand_sets_are_the_str_methods_over_every_code_point() -> None:
    """Python's reading of \\d, \\w, \\s (found by `re` over all code points) is exactly
    str.isdecimal, isalnum-or-underscore and isspace, code point by code point."""
    import sys

    from compiler.constraints import regex_parser

    tests = {"d": str.isdecimal, "w": lambda c: c.isalnum() or c == "_", "s": str.isspace}
    for kind, test in tests.items():
        want = CharSet.from_ranges((c, c) for c in range(sys.maxunicode + 1) if test(chr(c)))
        assert regex_parser._python_shorthand.__wrapped__(kind) == want, kind
