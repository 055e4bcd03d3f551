"""Token index: sound (allowed tokens only spell prefixes of matches) and complete (every tokenization
of every match is allowed), on toy vocabularies exhaustively and on the real 49,152-token one."""

from __future__ import annotations

import io
import itertools
import json
import re

import numpy as np
import pytest
from constraint_schemas import BOUNDED_STRING_SCHEMAS, PERSON, SMOLLM2_EOS, FSMWalker, load_smollm2_tokenizer

from compiler.constraints import (
    ConstraintError,
    TokenFSM,
    Vocabulary,
    compile_json_schema,
    compile_regex,
)
from compiler.constraints.vocabulary import BYTE_TO_UNICODE, byte_level_decode, sentencepiece_decode

# -- toy vocabularies ------------------------------------------------------------------------

E_ACUTE = "é".encode()  # b"\xc3\xa9"
TOY_BYTES: list[bytes | None] = [
    None,  # 0: <eos>, special
    b"a", b"b", b"c", b"ab", b"bc", b"abc", b"ca", b"aa",
    E_ACUTE, E_ACUTE[:1], E_ACUTE[1:], E_ACUTE[1:] + b"a", b"a" + E_ACUTE[:1], E_ACUTE * 2,
    b" ", b" a", b"-", b"bcab",
]  # fmt: skip
TOY_ALPHABET = ["a", "b", "c", "é", " ", "-"]


def toy_vocab() -> Vocabulary:
    return Vocabulary(TOY_BYTES, special_ids=[0], eos_token_id=0)


def sentencepiece_vocab() -> Vocabulary:
    pieces = [
        "<unk>",
        "<s>",
        "</s>",
        "\u2581a",
        "a",
        "b",
        "\u2581",
        "<0xC3>",
        "<0xA9>",
        "é",
        "ab",
        "\u2581ab",
        "c",
        "-",
    ]
    return Vocabulary.from_strings(pieces, kind="sentencepiece", special_ids=[0, 1, 2], eos_token_id=2)


TOY_REGEXES = [
    r"(ab|c)*é?",
    r"a{2,3}b*",
    r"[a-c]+é[ab]",
    r"é+",
    r"(a|b)*abb",
    r"( a|b)+-?",
    r"[^ab]{1,3}",
    r"c?(éa)?b",
]


def _matches(pattern: str, max_len: int) -> list[str]:
    rx = re.compile(pattern)
    out = []
    for n in range(max_len + 1):
        for chars in itertools.product(TOY_ALPHABET, repeat=n):
            s = "".join(chars)
            if rx.fullmatch(s):
                out.append(s)
    return out


_VIABLE: dict[tuple[str, bytes], bool] = {}


def _viable(rx: re.Pattern, prefix: bytes, horizon: int = 3) -> bool:
    """Is `prefix` (bytes, maybe ending inside a character) the start of some match? (The toy
    regexes always have a completion of at most 3 characters when they have one.)"""
    key = (rx.pattern, prefix)
    if key not in _VIABLE:
        _VIABLE[key] = _viable_uncached(rx, prefix, horizon)
    return _VIABLE[key]


def _viable_uncached(rx: re.Pattern, prefix: bytes, horizon: int) -> bool:
    try:
        text = prefix.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start != len(prefix) - 1 or prefix[-1:] != E_ACUTE[:1]:
            return False
        text = prefix[:-1].decode("utf-8") + "é"
    for n in range(horizon + 1):
        for chars in itertools.product(TOY_ALPHABET, repeat=n):
            if rx.fullmatch(text + "".join(chars)):
                return True
    return False


def _tokenizations(data: bytes, vocab: Vocabulary) -> list[list[int]]:
    out: list[list[int]] = []

    def go(pos: int, acc: list[int]) -> None:
        if pos == len(data):
            out.append(list(acc))
            return
        for i, tb in enumerate(vocab.token_bytes):
            if tb and data.startswith(tb, pos):
                acc.append(i)
                go(pos + len(tb), acc)
                acc.pop()

    go(0, [])
    return out


@pytest.mark.parametrize("vocab_factory", [toy_vocab, sentencepiece_vocab], ids=["bytes", "sentencepiece"])
@pytest.mark.parametrize("pattern", TOY_REGEXES)
def test_toy_vocab_sound_and_complete(pattern: str, vocab_factory) -> None:
    vocab = vocab_factory()
    fsm = compile_regex(pattern, vocab)
    rx = re.compile(pattern)
    # Soundness, exhaustively up to 4 tokens (breadth capped): every allowed token extends a viable
    # prefix, every viable extension is allowed, and an accepting state's text is a match.
    frontier = [(fsm.initial_state, b"")]
    for _ in range(4):
        nxt = []
        for state, text in frontier:
            assert fsm.is_accepting(state) == bool(_safe_fullmatch(rx, text)), (pattern, text)
            allowed = set(fsm.allowed_tokens(state).tolist())
            for t, tb in enumerate(vocab.token_bytes):
                if tb is None:
                    assert t not in allowed
                    continue
                ok = _viable(rx, text + tb)
                assert (t in allowed) == ok, (pattern, text, tb)
                if ok:
                    ns = fsm.next_state(state, t)
                    assert ns >= 0
                    if len(nxt) < 120:
                        nxt.append((ns, text + tb))
                else:
                    assert fsm.next_state(state, t) == -1
        frontier = nxt
    # Completeness: every tokenization of every short match walks to an accepting state.
    for m in _matches(pattern, 3):
        for toks in _tokenizations(m.encode(), vocab):
            s = fsm.initial_state
            for t in toks:
                assert t in set(fsm.allowed_tokens(s).tolist()), (pattern, m, toks)
                s = fsm.next_state(s, t)
            assert fsm.is_accepting(s), (pattern, m, toks)


def _safe_fullmatch(rx: re.Pattern, data: bytes) -> bool:
    try:
        return rx.fullmatch(data.decode("utf-8")) is not None
    except UnicodeDecodeError:
        return False


def test_partial_utf8_tokens_are_real_intermediate_states() -> None:
    vocab = toy_vocab()
    fsm = compile_regex("é+", vocab)
    lead = TOY_BYTES.index(E_ACUTE[:1])
    cont = TOY_BYTES.index(E_ACUTE[1:])
    s = fsm.next_state(fsm.initial_state, lead)
    assert s >= 0 and not fsm.is_accepting(s)
    assert set(fsm.allowed_tokens(s).tolist()) == {cont}  # b"\xa9a" would leave the character class
    assert fsm.is_accepting(fsm.next_state(s, cont))
    assert fsm.forced_string(s) == ""  # the middle of a character forces no text


def test_vocabulary_decoding_tables() -> None:
    assert len(set(BYTE_TO_UNICODE.values())) == 256
    assert byte_level_decode("\u0120hello") == b" hello"
    assert byte_level_decode("\u010a") == b"\n"
    assert sentencepiece_decode("\u2581hello") == b" hello"
    assert sentencepiece_decode("<0x0A>") == b"\n"
    sp = sentencepiece_vocab()
    assert sp.token_bytes[3] == b" a" and sp.token_bytes[7] == b"\xc3" and sp.token_bytes[0] is None
    assert sp.fingerprint != toy_vocab().fingerprint
    assert toy_vocab().fingerprint == toy_vocab().fingerprint
    assert len(toy_vocab().fingerprint) == 64


# -- the real vocabulary ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return load_smollm2_tokenizer()


@pytest.fixture(scope="module")
def vocab(tokenizer) -> Vocabulary:
    return Vocabulary.from_tokenizer(tokenizer, eos_token_id=SMOLLM2_EOS)


def test_real_vocabulary(vocab: Vocabulary) -> None:
    assert vocab.size == 49152 and vocab.kind == "byte_level"
    assert vocab.token_bytes[0] is None and vocab.token_bytes[2] is None  # special tokens
    assert (
        vocab.encode(" hello")
        and vocab.decode_bytes(vocab.encode('{"a": "日本"}')) == '{"a": "日本"}'.encode()
    )


@pytest.fixture(scope="module")
def person_fsm(vocab: Vocabulary) -> TokenFSM:
    return compile_json_schema(PERSON, vocab)


PERSON_DOCS = [
    {"name": "Zoë Ångström", "age": 150, "email": "z.a@mail.example.org",
     "address": {"street": "Rue de l'Église 4", "city": "日本 😀 Ōsaka", "zip": "01234"}},
    {"name": "Bob \"The\" Builder\\", "age": 0, "email": "bob+x@b.co", "phone": "+123456789",
     "address": {"street": "", "city": "Tab\there", "zip": "99999"}, "tags": ["a", "é", "🙂🙃", "", "x"]},
    {"name": "x" * 40, "age": 42, "email": "q@w.er", "address": {"street": "s", "city": "c", "zip": "10000"}, "tags": []},
]  # fmt: skip


@pytest.mark.parametrize("doc", PERSON_DOCS)
def test_canonical_tokenization_of_valid_documents_is_allowed(
    doc: dict, vocab: Vocabulary, person_fsm: TokenFSM
) -> None:
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    ids = vocab.encode(text)
    assert vocab.decode_bytes(ids) == text.encode()
    s = person_fsm.initial_state
    for i, t in enumerate(ids):
        allowed = person_fsm.allowed_tokens(s)
        assert t in set(allowed.tolist()), (text, i, vocab.token_bytes[t])
        s = person_fsm.next_state(s, t)
    assert person_fsm.is_accepting(s)
    mask = np.zeros(vocab.size + 7, dtype=bool)
    person_fsm.fill_mask(s, mask, SMOLLM2_EOS)
    assert mask[SMOLLM2_EOS] and not mask[vocab.size :].any()


def test_invalid_documents_are_rejected(vocab: Vocabulary, person_fsm: TokenFSM) -> None:
    bad = {
        "name": "x" * 41,
        "age": 42,
        "email": "q@w.er",
        "address": {"street": "s", "city": "c", "zip": "10000"},
    }
    for text in [json.dumps(bad, separators=(",", ":")), '{"name":"a","age":151', '{"age":1']:
        s = person_fsm.initial_state
        for t in vocab.encode(text):
            s = person_fsm.next_state(s, t)
            if s < 0:
                break
        assert s < 0 or not person_fsm.is_accepting(s)


def test_index_agrees_with_brute_force_on_sampled_states(vocab: Vocabulary, person_fsm: TokenFSM) -> None:
    rng = np.random.default_rng(7)
    states = rng.choice(person_fsm.num_states, size=12, replace=False).tolist() + [person_fsm.initial_state]
    tokens = vocab.token_bytes
    for s in states:
        expected = [t for t, tb in enumerate(tokens) if tb and person_fsm.walk_bytes(s, tb) >= 0]
        assert person_fsm.allowed_tokens(s).tolist() == expected, s


def test_random_walks_on_real_vocab_regex(vocab: Vocabulary) -> None:
    pattern = r"[a-z]{2,8}(\.[a-z]+)?@[a-z]+\.(com|org)|[0-9]{3}-[0-9]{4}"
    fsm = compile_regex(pattern, vocab)
    walker = FSMWalker(fsm, vocab, seed=11)
    for _ in range(25):
        tokens, state = walker.walk(max_steps=20, p_random=0.7)
        assert re.fullmatch(pattern, vocab.decode_bytes(tokens).decode())
    for text in ["abc@def.com", "ab.cd@x.org", "123-4567"]:
        s = fsm.initial_state
        for t in vocab.encode(text):
            s = fsm.next_state(s, t)
        assert fsm.is_accepting(s), text


def test_arrays_roundtrip_through_npz(person_fsm: TokenFSM, vocab: Vocabulary) -> None:
    buf = io.BytesIO()
    np.savez(buf, **person_fsm.to_arrays())
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as data:
        loaded = TokenFSM.from_arrays(data)
    assert loaded.fingerprint == vocab.fingerprint
    assert loaded.eos_token_id == SMOLLM2_EOS
    rng = np.random.default_rng(1)
    for s in rng.choice(person_fsm.num_states, size=20, replace=False).tolist():
        a = person_fsm.allowed_tokens(s)
        assert np.array_equal(loaded.allowed_tokens(s), a)
        for t in a[:: max(1, len(a) // 7)].tolist():
            assert loaded.next_state(s, t) == person_fsm.next_state(s, t)
        assert loaded.jump_forward(s) == person_fsm.jump_forward(s)
        assert loaded.is_accepting(s) == person_fsm.is_accepting(s)


@pytest.mark.parametrize(
    "name, corrupt",
    [
        ("transitions", lambda a: a.__setitem__("transitions", a["transitions"] + 10_000)),
        ("sparse_tokens", lambda a: a.__setitem__("sparse_tokens", a["sparse_tokens"] + 10**6)),
        ("initial", lambda a: a.__setitem__("initial", np.array([-5], dtype=np.int32))),
        ("format_version", lambda a: a.__setitem__("format_version", np.array([99], dtype=np.int32))),
        ("dense_id", lambda a: a.__setitem__("dense_id", a["dense_id"] + 1000)),
        ("missing", lambda a: a.pop("accepting")),
    ],
)
def test_corrupt_arrays_are_rejected(name: str, corrupt, vocab: Vocabulary) -> None:
    arrays = compile_regex("(ab|cd)[0-9]{2}", vocab).to_arrays()
    assert arrays["sparse_tokens"].size
    corrupt(arrays)
    with pytest.raises(ConstraintError):
        TokenFSM.from_arrays(arrays)


def test_fill_mask_numpy_and_torch(person_fsm: TokenFSM, vocab: Vocabulary) -> None:
    torch = pytest.importorskip("torch")
    walker = FSMWalker(person_fsm, vocab, seed=2)
    tokens, _ = walker.walk(max_steps=30)
    s = person_fsm.initial_state
    for t in tokens[:40]:
        allowed = person_fsm.allowed_tokens(s)
        m = np.ones(vocab.size, dtype=bool)
        person_fsm.fill_mask(s, m)
        assert np.array_equal(np.flatnonzero(m), allowed)
        tm = torch.ones(vocab.size + 64, dtype=torch.bool)
        person_fsm.fill_mask(s, tm)
        assert np.array_equal(np.flatnonzero(tm.numpy()), allowed)
        # a strided tensor takes the pure-torch path (the one CUDA tensors take)
        strided = torch.ones(2 * (vocab.size + 64), dtype=torch.bool)[::2]
        person_fsm.fill_mask(s, strided)
        assert np.array_equal(np.flatnonzero(strided.numpy()), allowed)
        s = person_fsm.next_state(s, t)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 5},
        {"type": "array", "items": {"type": "integer", "maximum": 300}, "maxItems": 4},
        {
            "type": "object",
            "properties": {"a": {"type": "string", "maxLength": 9}, "b": {"enum": ["x", "yy"]}},
        },
        {"type": "string", "pattern": '^[a-z"#=-]{0,40}$'},
        {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string", "maxLength": 50}},
                                    "required": ["k"], "additionalProperties": False}, "maxItems": 2},
    ],
)
def test_positional_row_classes_give_the_same_rows_as_moore(
    vocab: Vocabulary, schema: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows split by the bytes tokens have at each position (coarser classes) allow exactly the
    tokens that rows split by Moore's refinement over every string allow, state by state."""
    from compiler.constraints import token_index

    fsm = compile_json_schema(schema, vocab)
    fast = token_index.build_token_index(fsm.dfa, vocab)
    monkeypatch.setattr(token_index, "_POSITIONAL_MAX_WORK", -1)
    quotient = token_index.build_token_index(fsm.dfa, vocab)  # Moore, then positional on its classes
    monkeypatch.setattr(token_index, "_QUOTIENT_POSITIONAL_MAX_WORK", -1)
    slow = token_index.build_token_index(fsm.dfa, vocab)
    assert fast.num_rows <= slow.num_rows
    assert quotient.num_rows <= slow.num_rows
    if schema.get("maxItems") == 2:  # strings near their bound: Moore tells apart what no token sees
        assert quotient.num_rows < slow.num_rows
    for s in range(fsm.dfa.num_states):
        assert np.array_equal(fast.allowed(s), slow.allowed(s)), s
        assert np.array_equal(quotient.allowed(s), slow.allowed(s)), s


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string", "maxLength": 3}},
                                    "required": ["k"], "additionalProperties": False}, "maxItems": 40},
        {"type": "array", "items": {"type": "string", "maxLength": 2}, "maxItems": 70},
        {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 90},
        {"type": "array", "items": {"enum": ["a", "bb", None]}, "minItems": 3, "maxItems": 80},
    ],
)
def test_short_repetitions_share_rows_exactly(
    vocab: Vocabulary, schema: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copies of a repeated item far from both ends of the repetition share their rows (the period
    hint, with the reach bounded by the bytes a copy takes to cross): state by state, the same
    tokens as the index built without the hint. (Tiled, as large trees are, not determinized.)"""
    import dataclasses

    from compiler.constraints import dfa_ops, token_index

    monkeypatch.setattr(dfa_ops, "SMALL_POSITIONS", 8)
    fsm = compile_json_schema(schema, vocab)
    assert fsm.dfa.periods
    rep = token_index._period_representatives(fsm.dfa, token_index.vocabulary_trie(vocab).depth)
    assert rep is not None and (rep != np.arange(fsm.num_states)).sum() > fsm.num_states // 4
    hinted = token_index.build_token_index(fsm.dfa, vocab)
    plain = token_index.build_token_index(dataclasses.replace(fsm.dfa, periods=()), vocab)
    for s in range(fsm.dfa.num_states):
        assert np.array_equal(hinted.allowed(s), plain.allowed(s)), s


@pytest.mark.parametrize(
    "schema", [*BOUNDED_STRING_SCHEMAS, {"type": "array", "items": {"type": "integer", "maximum": 300}, "maxItems": 4}]
)
def test_long_tokens_walked_apart_give_the_same_rows(
    vocab: Vocabulary, schema: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows built from short-token classes plus each row's long tokens (`_rows_from_moore`) allow, state
    by state, exactly the tokens of rows walked over the whole trie: strings near their bound are
    where long tokens (`"----...----"`, runs of spaces) tell rows apart and short tokens do not."""
    from compiler.constraints import token_index

    split = token_index.token_split(vocab)
    assert split is not None and 0 < len(split.long_ids) < 1000
    assert split.short.depth == token_index.SHORT_TOKEN_BYTES
    fsm = compile_json_schema(schema, vocab)
    monkeypatch.setattr(token_index, "SPLIT_MIN_STATES", 0)
    walked_apart = token_index.build_token_index(fsm.dfa, vocab)
    monkeypatch.setattr(token_index, "SPLIT_MIN_STATES", 10**12)
    whole = token_index.build_token_index(fsm.dfa, vocab)
    for s in range(fsm.dfa.num_states):
        assert np.array_equal(walked_apart.allowed(s), whole.allowed(s)), s


def test_long_token_split_of_a_vocabulary_without_long_tokens_is_none() -> None:
    from compiler.constraints import token_index

    assert token_index.token_split(toy_vocab()) is None


def test_blocked_row_hash_equals_the_widened_product() -> None:
    """`_hash_rows` (a block of rows at a time through a reused 64-bit buffer) equals
    `(succ + 2) @ multipliers` mod 2^64 on one widened copy, dead (-1) cells included, for row
    counts around the block size."""
    from compiler.constraints import token_index as ti

    rng = np.random.default_rng(3)
    for n in [0, 1, ti._HASH_BLOCK_ROWS - 1, ti._HASH_BLOCK_ROWS, 2 * ti._HASH_BLOCK_ROWS + 5]:
        c = int(rng.integers(1, 70))
        succ = rng.integers(-1, 2**31 - 1, size=(n, c)).astype(np.int32)
        mult = ti._MULTIPLIERS[1 : c + 1]
        want = (succ.astype(np.int64) + 2).astype(np.uint64) @ mult
        assert np.array_equal(ti._hash_rows(succ, mult), want)


def test_column_popcounts_on_the_packing_equal_the_bool_sums() -> None:
    """`_column_popcounts` (bit counts of the token-axis packing) equals the per-column sum of the
    bool masks, for token counts that are and are not multiples of 8."""
    from compiler.constraints import token_index as ti

    rng = np.random.default_rng(5)
    for v, g in [(1, 1), (7, 3), (8, 5), (49_153, 17)]:
        masks = rng.random((v, g)) < rng.random()
        want = masks.sum(axis=0)
        assert np.array_equal(ti._column_popcounts(ti._pack_token_axis(masks), masks), want)
