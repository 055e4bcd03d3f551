"""Host-overhead changes keep behavior: the lazy detokenizer (no per-step decode unless a request
streams or has stop strings) gives the same text as the incremental one, and a streaming switch
mid-way gives the same deltas; the engine's per-step bookkeeping gives the same outputs."""

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executor.runtime.detokenizer import IncrementalDetokenizer
from tests import test_detokenizer as detok_tests
from tests.test_detokenizer import CORPUS, CountingTokenizer, token_stream
from tests.tiers import examples

tok = detok_tests.tok  # the small byte-level BPE fixtures
byte_ids = detok_tests.byte_ids


@pytest.fixture(scope="module")
def tiny(tiny_model_dirs):
    from executor.runtime.engine import Engine

    with Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu") as engine:
        yield engine


def test_engine_mixed_batch_streams_and_texts_unchanged(tiny):
    """Streaming, stop-string and plain requests decoding together (the scheduler's batched
    bookkeeping, lazy texts, publishing only what callers see) give what each gives alone."""
    from executor.runtime.runtime_client import GenerateRequest
    from executor.runtime.sampling import SamplingParams

    params = {"temperature": 0, "max_new_tokens": 14, "ignore_eos": True}
    ps = [f"Item {i}: a note about {w}." for i, w in enumerate(["salt", "owls", "rivers", "glass"] * 3)]
    alone = [tiny.generate(p, params) for p in ps]
    stop = alone[1]["text"][4:7]
    stopped_alone = tiny.generate(ps[1], {**params, "stop": stop})
    assert len(stop) == 3 and stopped_alone["text"] == alone[1]["text"][: alone[1]["text"].index(stop)]

    handles, heard = [], {}
    for i, p in enumerate(ps):
        stream = i % 3 == 0
        req_params = {**params, "stop": stop} if i == 1 else params
        h = tiny.send(GenerateRequest(tiny.encode(p), SamplingParams.from_dict(req_params), stream=stream))
        heard[i] = []
        h.add_listener(lambda delta, finished, i=i: heard[i].append((delta, finished)))
        handles.append(h)
    results = [h.result() for h in handles]
    for i, (res, ref) in enumerate(zip(results, alone)):
        if i == 1:
            assert res["text"] == stopped_alone["text"] and res["meta_info"]["finish_reason"]["matched"] == stop
            continue
        assert res["output_ids"] == ref["output_ids"] and res["text"] == ref["text"]
        assert res["text"] == tiny.tokenizer.decode(res["output_ids"])
        streamed = "".join(d for d, _ in heard[i])
        assert streamed == (res["text"] if i % 3 == 0 else "")  # listeners see text only when streaming
        assert [f for _, f in heard[i]].count(True) == 1 and heard[i][-1][1]
    scheduler = tiny._loop.parts.scheduler
    deadline = time.monotonic() + 10
    while scheduler.has_work() and time.monotonic() < deadline:  # the last step's bookkeeping
        time.sleep(0.01)
    assert scheduler.running == [] and not scheduler.has_work()  # finished requests left `running`
    scheduler.kv.check_integrity()


def test_lazy_add_decodes_nothing_until_text_is_read(tok):
    counting = CountingTokenizer(tok)
    ids = tok.encode(" ".join(CORPUS)).ids
    det = IncrementalDetokenizer(counting, [])
    for i in ids:
        det.add(i)
    assert counting.lengths == []  # no decode per token
    det.finish()
    assert det.text == tok.decode(ids)
    assert det.text == tok.decode(ids) and len(counting.lengths) == 1  # decoded once, then reused
    assert not det.stopped and det.matched_stop is None and det.token_ids == ids


def test_stop_strings_stay_incremental(tok):
    counting = CountingTokenizer(tok)
    det = IncrementalDetokenizer(counting, ["world"])
    for i in tok.encode("Hello world! and more").ids:
        det.add(i)
        if det.stopped:
            break
    assert det.stopped and det.text == "Hello " and counting.lengths  # decoded as it went


def _deltas(det, ids, start_popping_at, pop_every):
    out = []
    for n, i in enumerate(ids):
        det.add(i)
        if n >= start_popping_at and n % pop_every == 0:
            out.append(det.pop_delta())
    det.finish()
    out.append(det.pop_delta())
    return out


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_lazy_equals_incremental(tok, byte_ids, data):
    ids = data.draw(token_stream(byte_ids, tok))
    start = data.draw(st.integers(0, len(ids) + 1))
    pop_every = data.draw(st.integers(1, 3))
    lazy = IncrementalDetokenizer(tok, [])
    for i in ids:
        lazy.add(i)
    streamed = IncrementalDetokenizer(tok, [])
    always = _deltas(streamed, ids, 0, 1)
    late = IncrementalDetokenizer(tok, [])  # lazy first, then streams from token `start`
    late_deltas = _deltas(late, ids, start, pop_every)
    lazy.finish()
    assert lazy.text == streamed.text == late.text == tok.decode(ids)
    assert "".join(late_deltas) == "".join(always) == streamed.text
    assert "\ufffd" not in "".join(late_deltas[:-1]) or "\ufffd" in streamed.text


def test_rebuilt_keeps_mode_and_what_was_streamed(tok, byte_ids):
    ids = tok.encode("Hello world of words").ids
    lazy = IncrementalDetokenizer(tok, [])
    for i in ids[:2]:
        lazy.add(i)
    again = lazy.rebuilt(ids)
    assert again.text == tok.decode(ids)
    assert again.pop_delta() + (again.finish() or again.pop_delta()) == tok.decode(ids)

    streaming = IncrementalDetokenizer(tok, [])
    for i in ids[:2]:
        streaming.add(i)
    first = streaming.pop_delta()
    again = streaming.rebuilt(ids)
    again.finish()
    assert first + again.pop_delta() == tok.decode(ids)  # text already streamed is not streamed again


def test_lpm_walks_the_cache_once_per_waiting_request_and_still_defers():
    """The deferral check reuses the ordering's cached length (one radix walk, not two), and
    decides as before: a request sharing uncached tokens with one being prefilled waits a step."""
    from tests.test_scheduler import gen, make, reference, run

    sched = make()
    walks = []
    cached_len = sched.kv.cached_len
    sched.kv.cached_len = lambda tokens: walks.append(len(tokens)) or cached_len(tokens)
    shared = list(range(50))
    a, b = gen("a", shared + [1, 2]), gen("b", shared + [3, 4])
    sched.add(a)
    sched.add(b)
    sched.step()  # a prefills; b defers
    assert len(walks) == 2  # the ordering's two walks; the deferral check made none of its own
    run(sched)
    assert a.output_ids == reference(a.input_ids, 6) and b.output_ids == reference(b.input_ids, 6)
    assert b.num_cached_tokens >= 50
