"""The runtime client interface (executor/runtime/runtime_client.py) against the in-process engine on a
tiny random model: send, stream, abort, score, groups and follow-ups, errors; and that the interface
loads alone. (That the program executor imports nothing else of the runtime is a layering rule of
tests/test_import_graph.py.)"""

from __future__ import annotations

import queue
import threading
import time

import pytest

from executor.runtime.engine import Engine
from executor.runtime.runtime_client import (
    EngineError,
    GenerateRequest,
    PrefixPin,
    RequestError,
    RequestGroup,
    RequestHandle,
    RuntimeClient,
    RuntimeInfo,
    SamplingParams,
    ScoreRequest,
    SimpleCalls,
)

GREEDY = SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True)
LONG = SamplingParams(max_new_tokens=400, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tiny_model_dirs):
    with Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu") as e:
        yield e


def assert_idle_and_clean(engine: Engine) -> None:
    """Nothing in flight, no slot leaked or locked (waits briefly for the engine to go idle)."""
    deadline = time.monotonic() + 5
    while engine.scheduler.has_work() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not engine.scheduler.has_work()
    engine.kv_manager.check_integrity()
    assert engine.radix_cache.protected_size() == 0


def test_the_engine_is_a_runtime_client(engine):
    client: RuntimeClient = engine
    assert isinstance(client, RuntimeClient)
    info = client.info()
    assert isinstance(info, RuntimeInfo)
    assert info.context_len == engine.context_len and info.num_kv_slots == engine.num_kv_slots
    assert info.vocab_size == engine.model_config.vocab_size and info.cache_aware
    handle = client.send(GenerateRequest(client.tokenizer.encode("hello"), GREEDY))
    assert isinstance(handle, RequestHandle) and handle.rid.startswith("req-")
    handle.result(timeout=30)
    with client.group() as group:
        assert isinstance(group, RequestGroup)
    assert client.is_alive()
    assert {"num_forward_passes", "num_free_kv_slots"} <= set(client.stats())


def test_send_equals_generate(engine):
    ids = engine.encode("The river runs")
    expected = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 8, "temperature": 0,
                                                               "ignore_eos": True})
    got = engine.send(GenerateRequest(ids, GREEDY)).result(timeout=30)
    assert got["output_ids"] == expected["output_ids"] and got["text"] == expected["text"]
    assert got["meta_info"]["finish_reason"] == {"type": "length", "length": 8}
    # A dict of SGLang sampling parameters is accepted as well.
    as_dict = engine.send(GenerateRequest(ids, {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}))
    assert as_dict.result(timeout=30)["output_ids"] == expected["output_ids"]


class _InterfaceOnly(SimpleCalls):
    """A client that has only the interface (send, group, tokenizer) of an engine."""

    def __init__(self, engine: Engine) -> None:
        self.tokenizer, self.send, self.group = engine.tokenizer, engine.send, engine.group


def test_simple_calls_over_the_interface_equal_the_engines_own(engine):
    """The eager interpreter's two calls, written once over send/group (the HTTP and Ray clients
    inherit them), give what the engine's own generate and score give."""
    client = _InterfaceOnly(engine)
    greedy = {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}
    ids = engine.encode("Once upon")
    assert client.generate(input_ids=ids, sampling_params=greedy)["output_ids"] == \
        engine.generate(input_ids=ids, sampling_params=greedy)["output_ids"]
    batch = client.generate(prompt=["a b", "c d e"], sampling_params=greedy)
    assert [r["output_ids"] for r in batch] == \
        [r["output_ids"] for r in engine.generate(prompt=["a b", "c d e"], sampling_params=greedy)]
    assert "".join(c["text"] for c in client.generate(input_ids=ids, sampling_params=greedy, stream=True)) == \
        engine.generate(input_ids=ids, sampling_params=greedy)["text"]
    assert client.score(ids, [" there", " a time"])["logprobs"] == engine.score(ids, [" there", " a time"])["logprobs"]
    with pytest.raises(RequestError, match="exactly one"):
        client.generate(sampling_params=greedy)
    with pytest.raises(TypeError, match="continuations"):
        client.score(ids, " there")


def test_every_remote_client_offers_the_eager_calls():
    from executor.cluster.remote_client import ReplicaClient
    from sgc.serve.client import HTTPRuntimeClient

    assert issubclass(HTTPRuntimeClient, SimpleCalls) and issubclass(ReplicaClient, SimpleCalls)


def test_stream_and_listener_see_every_delta_once(engine):
    events: list[tuple[str, bool]] = []
    handle = engine.send(GenerateRequest(engine.encode("Once upon a time"), GREEDY, stream=True),
                         listener=lambda delta, finished: events.append((delta, finished)))
    chunks = list(handle.stream())
    final = handle.result()
    assert "".join(c["text"] for c in chunks) == final["text"]
    assert chunks[-1]["meta_info"]["completion_tokens"] == 8
    assert [f for _, f in events].count(True) == 1 and events[-1][1]
    assert "".join(d for d, _ in events) == final["text"]


def test_score_equals_engine_score(engine):
    prompt = engine.encode("Pick one:")
    conts = [engine.tokenizer.encode(c, add_special_tokens=False) for c in (" apple", " banana split", " cherry")]
    expected = engine.score(prompt, conts)["logprobs"]
    got = engine.send(ScoreRequest(prompt, conts)).result(timeout=30)
    assert [len(lp) for lp in got["logprobs"]] == [len(c) for c in conts]
    for lp, want in zip(got["logprobs"], expected):  # the second run reads the prompt from cache
        assert lp == pytest.approx(want, abs=1e-4)


def test_abort_mid_decode_returns_the_output_so_far_and_keeps_kv_clean(engine):
    started = threading.Event()

    def listener(delta: str, finished: bool) -> None:
        started.set()

    handle = engine.send(GenerateRequest(engine.encode("Tell me everything"), LONG, stream=True), listener)
    assert started.wait(30)
    handle.abort()
    out = handle.result(timeout=30)
    assert out["meta_info"]["finish_reason"]["type"] == "abort"
    assert "aborted by the client" in out["meta_info"]["finish_reason"]["message"]
    assert 0 < out["meta_info"]["completion_tokens"] < 400
    assert len(out["output_ids"]) == out["meta_info"]["completion_tokens"]
    assert "".join(c["text"] for c in handle.stream()) == out["text"]
    handle.abort()  # a second abort, or one after the end, changes nothing
    assert_idle_and_clean(engine)
    # What it computed stays cached: the same prompt is now a cache hit.
    again = engine.send(GenerateRequest(engine.encode("Tell me everything"), GREEDY)).result(timeout=30)
    assert again["meta_info"]["cached_tokens"] > 0


def test_abort_before_the_engine_sees_the_request(engine):
    events: list[bool] = []
    with engine.group() as group:
        handle = group.send(GenerateRequest(engine.encode("never run"), GREEDY),
                            lambda delta, finished: events.append(finished))
        handle.abort()
    out = handle.result(timeout=30)
    assert out["meta_info"]["finish_reason"]["type"] == "abort" and out["output_ids"] == []
    assert events == [True]
    assert_idle_and_clean(engine)


def test_abort_a_score_request_and_one_that_finished(engine):
    prompt = engine.encode("Choose:" * 20)
    conts = [engine.tokenizer.encode(f" option number {i}", add_special_tokens=False) for i in range(64)]
    handle = engine.send(ScoreRequest(prompt, conts))
    handle.abort()
    out = handle.result(timeout=30)
    assert out["meta_info"]["finish_reason"]["type"] in ("abort", "score")  # it may have won the race
    finished = engine.send(GenerateRequest(engine.encode("short"), GREEDY))
    before = finished.result(timeout=30)
    finished.abort()
    assert finished.result()["output_ids"] == before["output_ids"]
    assert_idle_and_clean(engine)


def test_a_group_is_taken_in_one_step(engine):
    params = SamplingParams(max_new_tokens=1, temperature=0.0)
    passes: dict[str, int] = {}

    def mark(name: str):
        def listener(_delta: str, finished: bool) -> None:
            if finished:
                passes[name] = engine.stats()["num_forward_passes"]
        return listener

    busy = engine.send(GenerateRequest(engine.encode("keep busy"), LONG))
    time.sleep(0.05)
    with engine.group() as group:
        handles = [group.send(GenerateRequest(engine.encode(f"grouped request {i}"), params), mark(str(i)))
                   for i in range(4)]
        time.sleep(0.05)  # the engine keeps stepping; nothing of the group is queued yet
        assert not any(h.done() for h in handles)
    for h in handles:
        h.result(timeout=30)
    busy.abort()
    busy.result(timeout=30)
    assert len(set(passes.values())) == 1, passes
    assert_idle_and_clean(engine)


def _follow_up_gap(tiny_model_dirs, answer: bool, wait_s: float, delay_s: float,
                   follow_up: bool = True) -> tuple[int, float]:
    """Passes between request A (sent with `follow_up`) finishing and its follow-up C producing its
    token, C sent `delay_s` after A finished from another thread (as the graph executor does), while B
    keeps the engine busy; and the seconds that took."""
    with Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu", follow_up_wait_s=wait_s) as engine:
        params = SamplingParams(max_new_tokens=1, temperature=0.0)
        marks: dict[str, float] = {}
        done = threading.Event()
        finished_a: queue.Queue = queue.Queue()

        def on_c(_delta: str, finished: bool) -> None:
            if finished:
                marks["c"] = engine.stats()["num_forward_passes"]
                done.set()

        def on_a(_delta: str, finished: bool) -> None:
            if finished:  # on the engine thread, right after A's pass
                marks["a"] = engine.stats()["num_forward_passes"]
                marks["t"] = time.perf_counter()
                finished_a.put(True)

        def executor_thread(handle_a: RequestHandle) -> None:
            finished_a.get()
            time.sleep(delay_s)
            with engine.group(after=[handle_a] if answer else []) as group:
                group.send(GenerateRequest(engine.encode("follow-up"), params), on_c)

        busy = engine.send(GenerateRequest(engine.encode("keep busy"), SamplingParams(
            max_new_tokens=200, temperature=0.0, ignore_eos=True)))
        handle_a = engine.send(GenerateRequest(engine.encode("first"), params, follow_up=follow_up), on_a)
        threading.Thread(target=executor_thread, args=(handle_a,)).start()
        assert done.wait(30)
        busy.result()
        return int(marks["c"] - marks["a"]), time.perf_counter() - marks["t"]


def test_a_follow_up_request_holds_the_next_step_until_answered(tiny_model_dirs):
    gap, _ = _follow_up_gap(tiny_model_dirs, answer=True, wait_s=10.0, delay_s=0.05)
    assert gap == 1


def test_an_unanswered_follow_up_only_delays_the_engine(tiny_model_dirs):
    """Past follow_up_wait_s the step runs anyway (the group here answers nothing)."""
    gap, _ = _follow_up_gap(tiny_model_dirs, answer=False, wait_s=0.02, delay_s=0.3)
    assert gap > 1


def test_a_request_without_follow_up_never_holds_a_step(tiny_model_dirs):
    """Even a long follow-up wait costs nothing to requests that did not ask for it."""
    gap, _ = _follow_up_gap(tiny_model_dirs, answer=True, wait_s=10.0, delay_s=0.3, follow_up=False)
    assert gap > 1


def test_a_bad_request_in_a_group_is_refused_alone(engine):
    with engine.group() as group:
        good = group.send(GenerateRequest(engine.encode("fine"), GREEDY))
        with pytest.raises(RequestError, match=r"request req-\d+: .*temperature"):
            group.send(GenerateRequest(engine.encode("bad"), {"temperature": -1}))
        with pytest.raises(RequestError, match="outside the vocabulary"):
            group.send(ScoreRequest(engine.encode("bad"), [[10**9]]))
        with pytest.raises(TypeError, match="GenerateRequest or a ScoreRequest"):
            group.send("not a request")  # type: ignore[arg-type]
    assert good.result(timeout=30)["meta_info"]["completion_tokens"] == 8
    with pytest.raises(RuntimeError, match="already sent"):
        group.send(GenerateRequest(engine.encode("late"), GREEDY))


def test_pins_flush_and_shutdown(tiny_model_dirs):
    with Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu") as engine:
        ids = engine.encode("a prefix worth keeping around for a while")
        engine.send(GenerateRequest(ids, GREEDY)).result(timeout=30)
        pin = engine.pin_prefix(ids)
        assert isinstance(pin, PrefixPin)
        assert engine.flush_cache()
        assert pin.num_tokens > 0 and engine.kv_manager.num_cached_tokens >= pin.num_tokens  # pinned: kept
        engine.unpin(pin)
        assert pin.released.wait(5)
        assert engine.flush_cache() and engine.kv_manager.num_cached_tokens == 0
    assert not engine.is_alive()
    with pytest.raises(EngineError, match="shut down"):
        engine.send(GenerateRequest(ids, GREEDY))


def test_the_interface_is_plain_data_without_torch():
    """A remote client (HTTP, Ray) must be able to import the interface without the runtime."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, executor.runtime.runtime_client\n"
            "interface = {'executor', 'executor.runtime', 'executor.runtime.runtime_client',\n"
            "             'executor.runtime.sampling_params'}\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')\n"
            "             or (m.startswith('executor') and m not in interface)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]", out.stdout
