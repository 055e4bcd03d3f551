"""Cancelling a compiled program run from another thread (the executor side of issue 15's leftover):
its requests are aborted, its KV comes back, no further node runs, and other runs are untouched."""

from __future__ import annotations

import threading
import time

import pytest

import sgc
from executor.program.graph_llm import make_run_defaults
from executor.program.graph_run import CANCELLED, Cancellation

GREEDY = make_run_defaults(temperature=0)
PARTS = 6


@sgc.function
def long_story(s, topic):
    s += "Tell me about " + topic + "."
    for i in range(PARTS):
        s += "\nPart:" + sgc.gen(f"part{i}", max_tokens=70, ignore_eos=True)


@sgc.function
def short_qa(s, question):
    s += "Q: " + question + "\nA:" + sgc.gen("answer", max_tokens=8)


@pytest.fixture(scope="module")
def runtime(tiny_model_dirs):
    rt = sgc.Runtime(str(tiny_model_dirs["llama"]), device="cpu")
    yield rt
    rt.shutdown()


def _wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.01)


def _engine_idle(runtime) -> None:
    engine = runtime.engine
    _wait_until(lambda: not engine.scheduler.all_requests(), 10, "the engine to have no requests")
    engine.kv_manager.check_integrity(engine.scheduler.all_requests())


def _decode_steps(runtime) -> int:
    return runtime.engine.stats()["num_decode_steps"]


def test_cancel_mid_generation_frees_the_engine_and_spares_a_concurrent_run(runtime) -> None:
    story = runtime.compile(long_story)
    qa = runtime.compile(short_qa)
    expected = qa.run("short_qa", {"question": "Why?"}, GREEDY).text()
    cancel = Cancellation()
    outcome: dict = {}

    def run_story() -> None:
        try:
            outcome["state"] = story.run("long_story", {"topic": "the sea"}, GREEDY, cancel=cancel)
        except Exception as exc:
            outcome["error"] = exc

    before = _decode_steps(runtime)
    thread = threading.Thread(target=run_story, daemon=True)
    thread.start()
    _wait_until(lambda: _decode_steps(runtime) > before + 10, 60, "the story to be generating")
    concurrent = qa.run("short_qa", {"question": "Why?"}, GREEDY)  # shares the engine with the story
    started = time.monotonic()
    cancel.cancel("test")
    thread.join(10)
    assert not thread.is_alive(), "the cancelled run did not end"
    assert time.monotonic() - started < 10
    assert "state" not in outcome, "the run finished instead of being cancelled"
    assert str(outcome["error"]).count(CANCELLED) == 1 and "test" in str(outcome["error"])
    assert concurrent.text() == expected
    assert qa.run("short_qa", {"question": "Why?"}, GREEDY).text() == expected  # the engine still serves
    _engine_idle(runtime)


def test_cancel_a_streaming_run(runtime) -> None:
    state = runtime.compile(long_story).run("long_story", {"topic": "the sky"}, GREEDY, stream=True)
    pieces = []
    for piece in state.text_iter():
        pieces.append(piece)
        if len("".join(pieces)) > 40:
            state.cancel("the reader left")
            break
    assert CANCELLED in str(state.error()) and "the reader left" in str(state.error())
    with pytest.raises(Exception, match=CANCELLED):
        state.text()
    _engine_idle(runtime)


def test_a_batch_cancelled_before_it_starts_runs_nothing(runtime) -> None:
    cancel = Cancellation()
    cancel.cancel()
    before = runtime.engine.stats()["num_finished_requests"]
    states = runtime.compile(short_qa).run_batch("short_qa", [{"question": "a"}, {"question": "b"}], GREEDY,
                                                 cancel=cancel)
    assert [CANCELLED in str(s.error()) for s in states] == [True, True]
    assert runtime.engine.stats()["num_finished_requests"] == before  # nothing was sent
    cancel.cancel()  # idempotent


def test_cancel_after_the_run_finished_changes_nothing(runtime) -> None:
    cancel = Cancellation()
    state = runtime.compile(short_qa).run("short_qa", {"question": "Why?"}, GREEDY, cancel=cancel)
    cancel.cancel()
    assert state.error() is None and state.text().startswith("Q: Why?")
