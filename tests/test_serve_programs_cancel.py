"""`sgc serve`: a program run whose HTTP client leaves is cancelled (issue 15's leftover).

A real server subprocess on 127.0.0.1 serving a compiled artifact on the default model (the tiny one
finishes the story before a client could leave). A client that
gives up on `/programs/story/run` (plain or streamed) or `/run_batch` mid-run: the run is counted as
cancelled, the engine stops working for it (no more forward passes; after `/flush_cache` every KV
slot is free), and the server keeps answering with the same outputs.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.serve_helpers import ServerProcess, sse_events

pytestmark = pytest.mark.slow  # a server subprocess and several long runs

PROGRAM = '''
import sgc


@sgc.function
def story(s, topic):
    s += "Tell me about " + topic + "."
    for i in range(6):
        s += "\\nPart:" + sgc.gen("part" + str(i), max_tokens=100, ignore_eos=True)


@sgc.function
def qa(s, question):
    s += "Q: " + question + "\\nA:" + sgc.gen("answer", max_tokens=8)
'''
WAIT_S = 20.0


@pytest.fixture(scope="module")
def server(default_model_dir, tmp_path_factory):
    from sgc.cli import main

    folder = tmp_path_factory.mktemp("serve_cancel")
    (folder / "tales.py").write_text(PROGRAM)
    assert main(["compile", str(folder / "tales.py"), "-o", str(folder / "tales.sgc"),
                 "--model", str(default_model_dir)]) == 0
    proc = ServerProcess(default_model_dir, "--max-total-tokens", "8192", "--program",
                         str(folder / "tales.sgc"), log=folder / "server.log")
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def _metric(http: httpx.Client, name: str, labels: str = "") -> float:
    text = http.get("/metrics").text
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _cancelled(http: httpx.Client) -> float:
    return _metric(http, "sgc_program_runs_total", '{outcome="cancelled",program="tales"}')


def _wait_for(condition, what: str, server) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{server.log()}"
        time.sleep(0.1)


def _assert_engine_idle(http: httpx.Client, server) -> None:
    """No forward pass happens any more, and after a flush every KV slot is free again."""
    def still() -> bool:
        before = _metric(http, "sgc_num_forward_passes_total")
        time.sleep(0.5)
        return _metric(http, "sgc_num_forward_passes_total") == before

    _wait_for(still, "the engine to stop working", server)
    assert http.post("/flush_cache").status_code == 200
    assert _metric(http, "sgc_kv_usage") == 0.0


def _story_started(http: httpx.Client, passes: float) -> bool:
    return _metric(http, "sgc_num_forward_passes_total") > passes + 2


def _qa(http: httpx.Client) -> dict:
    response = http.post("/programs/tales/run", json={"function": "qa", "arguments": {"question": "Why?"},
                                                      "temperature": 0})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def expected_qa(http) -> dict:
    return _qa(http)


def test_a_plain_run_whose_client_leaves_is_cancelled(server, http, expected_qa) -> None:
    before, passes = _cancelled(http), _metric(http, "sgc_num_forward_passes_total")
    disconnects = _metric(http, "sgc_client_disconnects_total")
    with pytest.raises(httpx.ReadTimeout):  # the client gives up mid-run and closes its connection
        httpx.post(server.url + "/programs/tales/run", timeout=1.0,
                   json={"function": "story", "arguments": {"topic": "the sea"}, "temperature": 0})
    assert _story_started(http, passes), "the story did not run before the client left"
    _wait_for(lambda: _cancelled(http) == before + 1, "the run to be counted as cancelled", server)
    assert _metric(http, "sgc_client_disconnects_total") == disconnects + 1
    _assert_engine_idle(http, server)
    assert _qa(http) == expected_qa  # the server keeps serving, with the same output


def test_a_streamed_run_whose_client_leaves_is_cancelled(server, http, expected_qa) -> None:
    before = _cancelled(http)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with client.stream("POST", "/programs/tales/run", json={
                "function": "story", "arguments": {"topic": "the sky"}, "temperature": 0, "stream": True}) as r:
            assert r.status_code == 200
            received = 0
            for line in r.iter_lines():
                received += line.startswith("data: {\"text\"")
                assert "[DONE]" not in line, "the story finished before the client left"
                if received >= 20:
                    break  # leave mid-run: closing the response drops the connection
    _wait_for(lambda: _cancelled(http) == before + 1, "the stream's run to be counted as cancelled", server)
    _assert_engine_idle(http, server)
    assert _qa(http) == expected_qa


def test_a_batch_whose_client_leaves_is_cancelled(server, http, expected_qa) -> None:
    before, passes = _cancelled(http), _metric(http, "sgc_num_forward_passes_total")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/programs/tales/run_batch", timeout=1.0, json={
            "function": "story", "batch": [{"topic": "rain"}, {"topic": "snow"}, {"topic": "hail"}],
            "temperature": 0})
    assert _story_started(http, passes)
    _wait_for(lambda: _cancelled(http) == before + 3, "the batch's 3 instances to be counted as cancelled",
              server)
    _assert_engine_idle(http, server)
    assert _qa(http) == expected_qa


def test_a_finished_stream_is_not_counted_cancelled(server, http) -> None:
    before = _cancelled(http)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with client.stream("POST", "/programs/tales/run", json={
                "function": "qa", "arguments": {"question": "How?"}, "temperature": 0, "stream": True}) as r:
            events = sse_events(r)
    assert events[-1] == "[DONE]"
    assert _cancelled(http) == before
