"""The JSON Schema `format`s sgc enforces, as regexes over the decoded string.

Each regex matches only strings that are valid for the format (a subset where the full grammar is
impractical), so generated values always pass a strict checker:

* `date`: RFC 3339 full-date, years 0001-9999, real month lengths, Feb 29 only in leap years.
* `time`: RFC 3339 full-time, `HH:MM:SS`, optional 1-9 fraction digits, `Z` or `+HH:MM`/`-HH:MM`
  (no leap second 60, no lowercase `z`).
* `date-time`: `date` + `T` + `time`.
* `uuid`: RFC 4122 textual form, 8-4-4-4-12 hex digits, any case.
* `email`: RFC 5321 `Mailbox` syntax with a dot-atom local part `@` a domain of at least two labels
  (letters, digits, inner hyphens), the last one alphabetic. No quoted local parts, no address
  literals. Like the RFC's syntax, it does not bound lengths (the 64/63/255-octet limits live in
  the RFC's separate size-limit section); an unbounded label keeps the automaton small.
* `uri`: RFC 3986 `scheme://host[:port]/path?query#fragment` with a registered-name host (no user
  info, no IP literal); percent-escapes are `%` + two hex digits.
* `ipv4`: dotted quad, no leading zeros.
* `uri-reference`: a `uri` as above, or an RFC 3986 relative reference of the same parts
  (`//host[:port]/path`, `/path`, `path` whose first segment has no colon, or empty; then
  `?query`, `#fragment`).
* `json-pointer`: RFC 6901, exactly. `relative-json-pointer`: a non-negative integer, then `#` or
  a JSON pointer (no index manipulation).
* `regex`: regexes that ECMA-262 and Python's `re` both compile: top-level alternatives with their
  own `^`/`$`; pieces are a literal, an escaped special character or shorthand (`\\d`, `\\.`, ...),
  `.`, a class of literals, escapes and the ranges `a-z`, `A-Z`, `0-9` (`^` to negate), or a group
  (plain or `(?:`) of such pieces and alternatives, one level deep; a quantifier `*`, `+`, `?`,
  `{n}` or `{n,}` (up to 3 digits), optionally lazy.

The schema compiler rejects a format some JSON Schema draft defines that is not listed here (fail
closed: a schema that names it means it); any other `format` value is an annotation.
"""

from __future__ import annotations

_YEAR = r"(?:000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"
_MONTH_DAY = (
    r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    r"|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
DATE = rf"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"
TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
DATE_TIME = rf"{DATE}T{TIME}"
UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
_TOP_LABEL = r"[A-Za-z]{2,}"
_LOCAL = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
EMAIL = rf"{_LOCAL}@(?:{_LABEL}\.)+{_TOP_LABEL}"
_PCT = r"%[0-9A-Fa-f]{2}"
_UNRESERVED_SUB = r"[A-Za-z0-9\-._~!$&'()*+,;=]"
_PCHAR = rf"(?:{_UNRESERVED_SUB}|[:@]|{_PCT})"
URI = (
    rf"[A-Za-z][A-Za-z0-9+.\-]*://(?:{_UNRESERVED_SUB}|{_PCT})*(?::[0-9]*)?"
    rf"(?:/{_PCHAR}*)*(?:\?(?:{_PCHAR}|[/?])*)?(?:#(?:{_PCHAR}|[/?])*)?"
)
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"

# uri-reference: a relative reference (RFC 3986 section 4.2) of the parts `URI` allows
_SEGMENT_NC = rf"(?:{_UNRESERVED_SUB}|@|{_PCT})"  # a segment character other than ':'
_RELATIVE_PART = (
    rf"(?://(?:{_UNRESERVED_SUB}|{_PCT})*(?::[0-9]*)?(?:/{_PCHAR}*)*"
    rf"|/(?:{_PCHAR}+(?:/{_PCHAR}*)*)?"
    rf"|{_SEGMENT_NC}+(?:/{_PCHAR}*)*)?"
)
URI_REFERENCE = rf"(?:{URI}|{_RELATIVE_PART}(?:\?(?:{_PCHAR}|[/?])*)?(?:#(?:{_PCHAR}|[/?])*)?)"
JSON_POINTER = r"(?:/(?:[^~/]|~[01])*)*"
RELATIVE_JSON_POINTER = rf"(?:0|[1-9][0-9]*)(?:#|{JSON_POINTER})"
# regex: see the module docstring
_RE_LITERAL = r"[^\\.^$*+?()\[\]{}|]"
_RE_ESCAPE = r"\\[\\.^$*+?()\[\]{}|/\-dDwWsSnrtf]"
_RE_CLASS = rf"\[\^?(?:[^\\\]\[\-^&~|]|{_RE_ESCAPE}|a-z|A-Z|0-9)+\]"
_RE_ATOM = rf"(?:{_RE_LITERAL}|{_RE_ESCAPE}|\.|{_RE_CLASS})"
_RE_QUANTIFIER = r"(?:[*+?]|\{[0-9]{1,3},?\})\??"
_RE_FLAT = rf"(?:{_RE_ATOM}(?:{_RE_QUANTIFIER})?)*"
_RE_GROUP = rf"\((?:\?:)?{_RE_FLAT}(?:\|{_RE_FLAT})*\)"
_RE_BRANCH = rf"\^?(?:(?:{_RE_ATOM}|{_RE_GROUP})(?:{_RE_QUANTIFIER})?)*\$?"
REGEX = rf"{_RE_BRANCH}(?:\|{_RE_BRANCH})*"

FORMATS: dict[str, str] = {
    "date": DATE,
    "time": TIME,
    "date-time": DATE_TIME,
    "uuid": UUID,
    "email": EMAIL,
    "uri": URI,
    "ipv4": IPV4,
    "uri-reference": URI_REFERENCE,
    "json-pointer": JSON_POINTER,
    "relative-json-pointer": RELATIVE_JSON_POINTER,
    "regex": REGEX,
}
