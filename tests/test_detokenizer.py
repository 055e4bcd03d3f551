import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from executor.runtime.detokenizer import IncrementalDetokenizer
from tests.tiers import examples

CORPUS = [
    "The café served crème brûlée to the naïve résumé writer. ",
    "日本語を話します。日本 is Japan; 東京 is its capital, 日本の首都. ",
    "Hello world! 😀 smile 😀😀 again, hello there, world of words. ",
    "Answer: 42\nQuestion: why?\n\nEND of the élan and façade.",
]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: printable bytes map to themselves, the rest to code points from 256 on."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    """A small byte-level BPE trained here (milliseconds, no downloads)."""
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<eos>"], show_progress=False)
    t.train_from_iterator(CORPUS * 20, trainer)
    return t


@pytest.fixture(scope="module")
def byte_ids(tok) -> dict[int, int]:
    """byte value -> id of the single-byte token."""
    return {b: tok.token_to_id(c) for b, c in bytes_to_unicode().items()}


def per_byte(byte_ids, text: str) -> list[int]:
    return [byte_ids[b] for b in text.encode()]


def stream(det: IncrementalDetokenizer, ids, check_stops=()) -> list[str]:
    """Feed ids one at a time, popping a delta after each; checks the streaming invariants."""
    deltas = []
    for i in ids:
        det.add(i)
        deltas.append(det.pop_delta())
        so_far = "".join(deltas)
        assert det.text.startswith(so_far)
        assert "\ufffd" not in so_far or "\ufffd" in det.text
        for s in check_stops:
            assert s not in so_far
        if det.stopped:
            break
    det.finish()
    deltas.append(det.pop_delta())
    return deltas


def reference(full: str, stops, no_stop_trim=False) -> str:
    """Cut at the stop occurrence that completes first (then the longest)."""
    best = None
    for s in stops:
        i = full.find(s)
        if i >= 0 and (best is None or (i + len(s), -len(s)) < best):
            best = (i + len(s), -len(s))
    if best is None:
        return full
    end, neg = best
    return full[:end] if no_stop_trim else full[:end + neg]


def test_tokenizer_splits_characters(tok):
    # The fixture must really exercise the hard cases: an unseen emoji decodes byte by byte.
    ids = tok.encode("🎉").ids
    assert len(ids) >= 2 and all("\ufffd" in tok.decode([i]) for i in ids)
    # ... and some learned tokens end in the middle of a character.
    assert any(tok.decode([i]).endswith("\ufffd") and len(tok.decode([i])) > 1
               for i in range(tok.get_vocab_size()))


def test_no_stop_deltas_concatenate_to_text(tok):
    text = "café 日本 🎉 and 😀 élan"
    ids = tok.encode(text).ids
    det = IncrementalDetokenizer(tok, [])
    deltas = stream(det, ids)
    assert "".join(deltas) == det.text == text
    assert not det.stopped and det.matched_stop is None
    assert all("\ufffd" not in d for d in deltas)


def test_emoji_split_across_tokens_never_yields_replacement(tok, byte_ids):
    ids = tok.encode("a ").ids + per_byte(byte_ids, "🎉😀日本é") + tok.encode(" b").ids
    det = IncrementalDetokenizer(tok, [])
    deltas = stream(det, ids)
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == det.text == "a 🎉😀日本é b"
    # Nothing is emitted while a character is incomplete.
    det = IncrementalDetokenizer(tok, [])
    for i in per_byte(byte_ids, "🎉")[:3]:
        det.add(i)
        assert det.pop_delta() == ""
    det.add(per_byte(byte_ids, "🎉")[3])
    assert det.pop_delta() == "🎉"


def test_stop_spanning_tokens(tok):
    text = "Hello world! 😀 smile"
    ids = tok.encode(text).ids
    det = IncrementalDetokenizer(tok, ["lo wor"])
    deltas = stream(det, ids, check_stops=["lo wor"])
    assert det.stopped and det.matched_stop == "lo wor"
    assert det.text == "".join(deltas) == "Hel"
    # It stopped on the token completing the stop, not at the end.
    assert len(det.token_ids) < len(ids)


def test_stop_in_the_middle_of_a_token(tok):
    ids = tok.encode(" élan").ids
    assert len(ids) == 1  # one token holds the whole word
    det = IncrementalDetokenizer(tok, ["la"])
    det.add(ids[0])
    assert det.stopped and det.text == " é"
    det.finish()
    assert det.pop_delta() == " é" and det.pop_delta() == ""


def test_stop_inside_a_split_character_token(tok, byte_ids):
    # The token completing the stop also starts an incomplete character: stop is seen at once.
    ids = tok.encode("xy").ids + [byte_ids[b] for b in "日".encode()[:1]]
    det = IncrementalDetokenizer(tok, ["y"])
    for i in ids:
        det.add(i)
    assert det.stopped and det.text == "x"


def test_stop_never_leaks_into_deltas(tok):
    text = "Answer: 42\nQuestion: why?\n\nEND"
    ids = tok.encode(text).ids
    for stop in ["\n\n", "Question", "42\nQ", "why?\n\nEND", "?"]:
        det = IncrementalDetokenizer(tok, [stop])
        deltas = stream(det, ids, check_stops=[stop])
        assert "".join(deltas) == det.text == text[:text.index(stop)]


def test_no_stop_trim_keeps_the_stop(tok):
    text = "Answer: 42\nQuestion: why?"
    det = IncrementalDetokenizer(tok, ["42"], no_stop_trim=True)
    deltas = stream(det, tok.encode(text).ids)
    assert det.stopped and det.text == "".join(deltas) == "Answer: 42"


def test_finish_flushes_held_back_stop_prefix(tok):
    det = IncrementalDetokenizer(tok, ["world peace"])
    for i in tok.encode("hello world").ids:
        det.add(i)
    assert det.pop_delta() == "hello "  # " world" might begin the stop
    assert det.pop_delta() == ""
    det.finish()
    assert det.pop_delta() == "world"
    assert det.text == "hello world" and not det.stopped


def test_first_completed_stop_wins(tok):
    det = IncrementalDetokenizer(tok, ["abcd", "bc"])
    for i in tok.encode("xabcdy").ids:
        det.add(i)
    assert det.matched_stop == "bc" and det.text == "xa"


def test_special_tokens(tok):
    eos = tok.token_to_id("<eos>")
    ids = tok.encode("hi").ids + [eos]
    det = IncrementalDetokenizer(tok, [])
    assert "".join(stream(det, ids)) == "hi"
    det = IncrementalDetokenizer(tok, [], skip_special_tokens=False)
    assert "".join(stream(det, ids)) == "hi<eos>"


def test_invalid_bytes_do_not_stall(tok, byte_ids):
    lead = byte_ids["日".encode()[0]]
    ids = [lead] * 20 + tok.encode("ok").ids
    det = IncrementalDetokenizer(tok, [])
    deltas = stream(det, ids)
    assert "".join(deltas) == det.text == tok.decode(ids)


class CountingTokenizer:
    def __init__(self, tok):
        self.tok = tok
        self.lengths: list[int] = []

    def decode(self, ids, skip_special_tokens=True):
        self.lengths.append(len(ids))
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


def test_decode_window_stays_small(tok, byte_ids):
    counting = CountingTokenizer(tok)
    text = " ".join(CORPUS) * 8
    ids = tok.encode(text).ids + per_byte(byte_ids, "🎉" * 20)
    det = IncrementalDetokenizer(counting, ["never appears"])
    deltas = stream(det, ids)
    assert "".join(deltas) == det.text == text + "🎉" * 20
    assert len(ids) > 500 and max(counting.lengths) <= 8
    assert len(counting.lengths) <= 2 * len(ids)


ALPHABET = list("ab c\n") + ["é", "日", "本", "😀", "🎉"]


@st.composite
def token_stream(draw, byte_ids_map, tokenizer):
    segments = draw(st.lists(st.text(alphabet=ALPHABET, max_size=8), max_size=8))
    ids = []
    for seg in segments:
        if draw(st.booleans()):
            ids += tokenizer.encode(seg).ids
        else:
            ids += [byte_ids_map[b] for b in seg.encode()]
        if draw(st.integers(0, 9)) == 0:
            ids.append(tokenizer.token_to_id("<eos>"))  # special tokens decode to nothing
    return ids


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_deltas_equal_text_equal_reference(tok, byte_ids, data):
    ids = data.draw(token_stream(byte_ids, tok))
    stops = data.draw(st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=4), max_size=3))
    no_trim = data.draw(st.booleans())
    pop_every = data.draw(st.integers(1, 4))
    full = tok.decode(ids)
    det = IncrementalDetokenizer(tok, stops, no_stop_trim=no_trim)
    deltas = []
    for n, i in enumerate(ids):
        det.add(i)
        if n % pop_every == 0:
            deltas.append(det.pop_delta())
            so_far = "".join(deltas)
            assert "\ufffd" not in so_far
            if not no_trim:
                assert not any(s in so_far for s in stops)
    det.finish()
    deltas.append(det.pop_delta())
    expected = reference(full, stops, no_trim)
    assert det.text == expected
    assert "".join(deltas) == expected
    assert det.stopped == any(s in full for s in stops)


@pytest.mark.slow
def test_default_model_tokenizer(default_model_dir):
    from executor.runtime.tokenizer import Tokenizer as ModelTokenizer

    model_tok = ModelTokenizer(default_model_dir)
    text = "Grüße aus 日本! 🎉🎉 The answer is 42.\nDone."
    ids = model_tok.encode(text, add_special_tokens=False)
    det = IncrementalDetokenizer(model_tok, ["42.\n"])
    deltas = stream(det, ids, check_stops=["42.\n"])
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == det.text == "Grüße aus 日本! 🎉🎉 The answer is "
