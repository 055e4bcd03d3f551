"""`sgc serve` end to end: the real server as a subprocess on 127.0.0.1, a tiny random-weight Llama,
driven with httpx (SGLang's native routes) and the real `openai` client; greedy outputs are compared
with `Engine.generate` on the same input in this process."""

from __future__ import annotations

import json
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from executor.runtime.engine import Engine  # noqa: E402
from tests.serve_helpers import ServerProcess, sse_events  # noqa: E402

GREEDY = {"temperature": 0}
PROMPTS = ["The capital of France is", "Once upon a time"]


ARTIFACT_PROGRAM = '''
import sgc


@sgc.function
def qa(s, question):
    s += "Q: " + question + "\\nA:" + sgc.gen("answer", max_tokens=6)
    s += "\\nCode: " + sgc.gen("code", regex=r"[a-z]{2}[0-9]")
'''


@pytest.fixture(scope="module")
def server(tiny_model_dirs, tmp_path_factory):
    from sgc.cli import main

    folder = tmp_path_factory.mktemp("serve")
    (folder / "qa.py").write_text(ARTIFACT_PROGRAM)
    assert main(["compile", str(folder / "qa.py"), "-o", str(folder / "qa.sgc"),
                 "--model", str(tiny_model_dirs["llama"])]) == 0
    proc = ServerProcess(tiny_model_dirs["llama"], "--max-total-tokens", "8192", "--program",
                         str(folder / "qa.sgc"), log=folder / "server.log")
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def engine(tiny_model_dirs):
    with Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu", max_total_tokens=8192) as e:
        yield e


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=30, max_retries=0)


# -- SGLang-native routes ------------------------------------------------------------------------------
def test_generate_matches_engine_single_and_batch(http, engine):
    params = {"max_new_tokens": 8, **GREEDY}
    one = http.post("/generate", json={"text": PROMPTS[0], "sampling_params": params}).json()
    want = engine.generate(PROMPTS[0], params)
    assert one["text"] == want["text"] and one["output_ids"] == want["output_ids"]
    meta = one["meta_info"]
    assert meta["prompt_tokens"] == want["meta_info"]["prompt_tokens"] and meta["completion_tokens"] == 8
    assert meta["finish_reason"]["type"] == "length"
    batch = http.post("/generate", json={"text": PROMPTS, "sampling_params": params}).json()
    assert [b["text"] for b in batch] == [r["text"] for r in engine.generate(PROMPTS, params)]
    ids = engine.tokenizer.encode(PROMPTS[1])
    by_ids = http.post("/generate", json={"input_ids": ids, "sampling_params": params}).json()
    assert by_ids["text"] == batch[1]["text"]
    n2 = http.post("/generate", json={"input_ids": [ids], "sampling_params": {**params, "n": 2}}).json()
    assert [r["text"] for r in n2] == [batch[1]["text"]] * 2


def test_generate_logprobs_and_prefill_only(http, engine):
    prompt = "A B C D E F"
    res = http.post("/generate", json={"text": prompt, "sampling_params": {"max_new_tokens": 3, **GREEDY},
                                       "return_logprob": True, "top_logprobs_num": 2, "logprob_start_len": 0,
                                       "return_text_in_logprobs": True}).json()
    want = engine.generate(prompt, {"max_new_tokens": 3, **GREEDY}, return_logprob=True, top_logprobs_num=2,
                           logprob_start_len=0)
    out = res["meta_info"]["output_token_logprobs"]
    assert [e[1] for e in out] == want["output_ids"]
    assert [e[0] for e in out] == pytest.approx([e[0] for e in want["meta_info"]["output_token_logprobs"]], abs=1e-4)
    assert all(isinstance(e[2], str) for e in out)
    assert len(res["meta_info"]["output_top_logprobs"][0]) == 2
    # max_new_tokens=0: prefill only (SGLang's frontend warms the cache and reads prompt logprobs so)
    pre = http.post("/generate", json={"text": prompt, "sampling_params": {"max_new_tokens": 0},
                                       "return_logprob": True, "logprob_start_len": 0}).json()
    meta = pre["meta_info"]
    assert pre["text"] == "" and meta["completion_tokens"] == 0 and meta["finish_reason"]["type"] == "length"
    assert meta["output_token_logprobs"] == []
    want_in = [e[0] for e in want["meta_info"]["input_token_logprobs"]]
    assert [e[0] for e in meta["input_token_logprobs"]] == pytest.approx(want_in, abs=1e-4)
    # the prefix is cached now
    again = http.post("/generate", json={"text": prompt, "sampling_params": {"max_new_tokens": 1}}).json()
    assert again["meta_info"]["cached_tokens"] > 0


def test_generate_stream_is_cumulative(http, engine):
    body = {"text": PROMPTS[1], "sampling_params": {"max_new_tokens": 12, **GREEDY}, "stream": True}
    with http.stream("POST", "/generate", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    texts = [c["text"] for c in chunks]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert texts[-1] == engine.generate(PROMPTS[1], {"max_new_tokens": 12, **GREEDY})["text"]
    assert chunks[-1]["meta_info"]["completion_tokens"] == 12


def test_generate_constrained(http):
    res = http.post("/generate", json={"text": "Phone:", "sampling_params": {
        "max_new_tokens": 16, "regex": r"\d{3}-\d{4}", **GREEDY}}).json()
    assert __import__("re").fullmatch(r"\d{3}-\d{4}", res["text"])
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"],
              "additionalProperties": False}
    res = http.post("/generate", json={"text": "JSON:", "sampling_params": {
        "max_new_tokens": 32, "json_schema": json.dumps(schema), **GREEDY}}).json()
    assert isinstance(json.loads(res["text"])["age"], int)


def test_info_routes(http, server):
    info = http.get("/get_model_info").json()
    assert info["is_generation"] is True and info["model_path"] and info["context_len"] == 512
    sinfo = http.get("/get_server_info").json()
    assert sinfo["status"] == "ready" and "version" in sinfo
    assert http.get("/health").status_code == 200
    assert http.get("/health_generate").status_code == 200
    assert http.post("/flush_cache").status_code == 200
    assert http.post("/abort_request", json={"rid": "no-such-request"}).json() == {"aborted": []}
    metrics = http.get("/metrics").text
    for name in ("sgc_inflight_requests", "sgc_num_generated_tokens_total", "sgc_kv_usage",
                 "sgc_time_to_first_token_seconds_bucket", "sgc_http_requests_total"):
        assert name in metrics


def test_program_routes(http):
    assert http.get("/programs").json() == {"qa": {"qa": ["question"]}}
    one = http.post("/programs/qa/run", json={"arguments": {"question": "Why?"}, "temperature": 0}).json()
    assert one["error"] is None and __import__("re").fullmatch("[a-z]{2}[0-9]", one["variables"]["code"])
    assert one["text"].startswith("Q: Why?\nA:")
    batch = http.post("/programs/qa/run_batch", json={"batch": [{"question": "Why?"}, {"question": "How?"}],
                                                      "temperature": 0}).json()["results"]
    assert batch[0] == one and batch[1]["error"] is None
    with http.stream("POST", "/programs/qa/run", json={"arguments": {"question": "Why?"}, "temperature": 0,
                                                      "stream": True}) as r:
        events = sse_events(r)
    assert events[-1] == "[DONE]" and json.loads(events[-2]) == one
    assert "".join(json.loads(e)["text"] for e in events[:-2]) == one["text"]
    assert http.post("/programs/qa/run", json={"arguments": {}}).status_code == 400
    assert http.post("/programs/qa/run", json={"arguments": {"question": "x", "extra": 1}}).status_code == 400
    assert http.post("/programs/nope/run", json={}).status_code == 404
    assert http.post("/programs/qa/run_batch", json={"batch": []}).status_code == 400


# -- OpenAI routes ---------------------------------------------------------------------------------------
def _chat_prompt(engine, content):
    return engine.tokenizer.apply_chat_template([{"role": "user", "content": content}])


def test_openai_completions(oai, engine, server):
    assert [m.id for m in oai.models.list().data] == ["llama"]
    r = oai.completions.create(model="llama", prompt=PROMPTS[0], max_tokens=8, temperature=0, n=2, logprobs=2)
    want = engine.generate(PROMPTS[0], {"max_new_tokens": 8, **GREEDY})
    assert [c.text for c in r.choices] == [want["text"]] * 2
    assert r.usage.prompt_tokens == want["meta_info"]["prompt_tokens"] and r.usage.completion_tokens == 16
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 8 and "".join(lp.tokens) == want["text"] and len(lp.top_logprobs[0]) == 2
    batch = oai.completions.create(model="llama", prompt=PROMPTS, max_tokens=4, temperature=0)
    assert [c.text for c in batch.choices] == [x["text"] for x in engine.generate(PROMPTS, {"max_new_tokens": 4,
                                                                                           **GREEDY})]
    stream = oai.completions.create(model="llama", prompt=PROMPTS[0], max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == want["text"]


def test_openai_chat(oai, engine):
    messages = [{"role": "user", "content": "Say hi"}]
    want = engine.generate(_chat_prompt(engine, "Say hi"), {"max_new_tokens": 10, **GREEDY})
    r = oai.chat.completions.create(model="llama", messages=messages, max_tokens=10, temperature=0,
                                    logprobs=True, top_logprobs=3)
    assert r.choices[0].message.content == want["text"] and r.choices[0].message.role == "assistant"
    assert len(r.choices[0].logprobs.content) == want["meta_info"]["completion_tokens"]
    assert len(r.choices[0].logprobs.content[0].top_logprobs) == 3
    r2 = oai.chat.completions.create(model="llama", messages=messages, max_completion_tokens=10, temperature=0, n=2)
    assert [c.message.content for c in r2.choices] == [want["text"]] * 2
    chunks = list(oai.chat.completions.create(model="llama", messages=messages, max_tokens=10, temperature=0,
                                              stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want["text"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == want["meta_info"]["completion_tokens"]
    stops = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert stops == [{"stop": "stop", "length": "length"}[want["meta_info"]["finish_reason"]["type"]]]


def test_openai_structured_outputs(oai):
    import jsonschema

    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                               "n": {"type": "integer"}},
              "required": ["name", "n"], "additionalProperties": False}
    r = oai.chat.completions.create(model="llama", messages=[{"role": "user", "content": "A person"}],
                                    max_tokens=48, temperature=0, response_format={
                                        "type": "json_schema", "json_schema": {"name": "p", "schema": schema}})
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    r = oai.chat.completions.create(model="llama", messages=[{"role": "user", "content": "JSON"}],
                                    max_tokens=48, temperature=0, response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    r = oai.completions.create(model="llama", prompt="Code:", max_tokens=8, temperature=0,
                               extra_body={"regex": "[A-Z]{2}[0-9]{2}"})
    assert __import__("re").fullmatch("[A-Z]{2}[0-9]{2}", r.choices[0].text)


def test_openai_errors(oai, server):
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="gpt-4", prompt="x")
    for kwargs in ({"temperature": -1}, {"top_p": 0}, {"max_tokens": 0}, {"n": 0}, {"logprobs": 99},
                   {"stop": [""]}, {"extra_body": {"regex": "(", "max_tokens": 4}}, {"echo": True},
                   {"prompt": [99999999]}, {"prompt": []}):
        with pytest.raises(openai.BadRequestError) as info:
            oai.completions.create(**{"model": "llama", "prompt": "x", "max_tokens": 2, **kwargs})
        assert info.value.body["message"] if isinstance(info.value.body, dict) else True
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="llama", messages=[], max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="llama", messages=[{"role": "user", "content": "x"}], max_tokens=2,
                                    response_format={"type": "json_schema", "json_schema": {"name": "x"}})
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="llama", messages=[{"role": "user", "content": "x"}], top_logprobs=2)
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": "hi"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_serving_benchmark_against_the_server(server, capsys):
    from sgc.cli import main

    assert main(["bench", "--serve", "--url", server.url, "--rates", "inf,50", "--requests", "4",
                 "--max-tokens", "4"]) == 0
    table = capsys.readouterr().out
    assert "| inf | 4/4 |" in table and "| 50 | 4/4 |" in table


# -- robustness --------------------------------------------------------------------------------------
MALFORMED = [
    ("/generate", b"{not json"),
    ("/generate", b"[]"),
    ("/generate", b"null"),
    ("/generate", json.dumps({}).encode()),
    ("/generate", json.dumps({"text": "a", "input_ids": [1]}).encode()),
    ("/generate", json.dumps({"text": ""}).encode()),
    ("/generate", json.dumps({"text": []}).encode()),
    ("/generate", json.dumps({"input_ids": [[]]}).encode()),
    ("/generate", json.dumps({"input_ids": [-1]}).encode()),
    ("/generate", json.dumps({"input_ids": [10**12]}).encode()),
    ("/generate", json.dumps({"text": "a", "sampling_params": {"max_new_tokens": -1}}).encode()),
    ("/generate", json.dumps({"text": "a", "sampling_params": {"max_new_tokens": "8"}}).encode()),
    ("/generate", json.dumps({"text": "a", "sampling_params": {"n": 0}}).encode()),
    ("/generate", json.dumps({"text": "a", "sampling_params": {"json_schema": "{"}}).encode()),
    ("/generate", json.dumps({"text": "a", "sampling_params": {"regex": "(", "max_new_tokens": 2}}).encode()),
    ("/generate", json.dumps({"text": "a", "sampling_params": [{}, {}]}).encode()),
    ("/generate", json.dumps({"text": "a", "top_logprobs_num": 10**6, "return_logprob": True}).encode()),
    ("/generate", json.dumps({"text": "a", "logprob_start_len": 99, "return_logprob": True}).encode()),
    ("/generate", json.dumps({"text": "a", "stream": "yes"}).encode()),
    ("/generate", json.dumps({"text": "x" * 5000}).encode()),
    ("/v1/completions", json.dumps({"prompt": "a", "max_tokens": 10**9}).encode()),
    ("/v1/completions", json.dumps({"prompt": {"a": 1}}).encode()),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode()),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).encode()),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "x"}], "tools": [{}]}).encode()),
    ("/sgc/score", json.dumps({"input_ids": [1], "continuations": []}).encode()),
    ("/abort_request", b"5"),
]


def test_malformed_requests_get_4xx(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for path, body in MALFORMED:
            r = c.post(path, content=body, headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500, (path, body[:80], r.status_code, r.text)
            assert r.json()["error"]["message"], (path, body)
        big = c.post("/generate", content=b"x" * (8 * 1024 * 1024 + 1))
        assert big.status_code == 413 and "larger than" in big.json()["error"]["message"]

        def chunks():
            for _ in range(9):
                yield b"x" * (1024 * 1024)

        assert c.post("/generate", content=chunks()).status_code == 413

        def small_chunks():  # a body without Content-Length under the limit is read, replayed and served
            yield b'{"text": "Hello", '
            yield b'"sampling_params": {"max_new_tokens": 2, "temperature": 0}}'

        chunked = c.post("/generate", content=small_chunks())
        assert chunked.status_code == 200 and chunked.json()["meta_info"]["completion_tokens"] <= 2
        assert c.get("/no/such/route").status_code == 404
        assert c.get("/generate").status_code == 405
        assert c.get("/health").status_code == 200


def test_fuzzed_bodies_never_500(server):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
    keys = {"/generate": ["text", "input_ids", "sampling_params", "return_logprob", "top_logprobs_num",
                          "logprob_start_len", "stream", "rid"],
            "/v1/completions": ["prompt", "max_tokens", "temperature", "n", "stop", "logprobs", "model"],
            "/v1/chat/completions": ["messages", "max_tokens", "temperature", "n", "response_format", "logprobs"]}
    bodies = st.sampled_from(sorted(keys)).flatmap(
        lambda path: st.tuples(st.just(path), st.dictionaries(st.sampled_from(keys[path]), values, max_size=4)))
    client = httpx.Client(base_url=server.url, timeout=30)

    from tests.tiers import examples

    @settings(max_examples=examples(120, 30), deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(bodies)
    def check(case):
        path, body = case
        if isinstance(body.get("sampling_params"), dict):
            body["sampling_params"]["max_new_tokens"] = 2
        body["max_tokens"] = 2 if path != "/generate" else body.get("max_tokens")
        body = {k: v for k, v in body.items() if v is not None}
        r = client.post(path, json=body)
        assert r.status_code < 500, (path, body, r.status_code, r.text)

    try:
        check()
        assert client.get("/health").status_code == 200
    finally:
        client.close()


def _metric(text: str, name: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(lines[0].split()[1]) if lines else 0.0


def test_disconnect_aborts_stream(server):
    body = {"text": "Tell me a long story", "stream": True,
            "sampling_params": {"max_new_tokens": 480, "ignore_eos": True, **GREEDY}}
    with httpx.Client(base_url=server.url, timeout=30) as c:
        before = c.get("/sgc/stats").json()["num_generated_tokens"]
        disconnects = _metric(c.get("/metrics").text, "sgc_client_disconnects_total")
        with c.stream("POST", "/generate", json=body) as r:
            got = [line for _, line in zip(range(4), r.iter_lines())]
            assert any(line.startswith("data: ") for line in got)
        deadline = time.monotonic() + 15
        while True:
            metrics = c.get("/metrics").text
            if _metric(metrics, "sgc_inflight_requests") == 0:
                break
            assert time.monotonic() < deadline, "the disconnected request was not aborted"
            time.sleep(0.05)
        generated = c.get("/sgc/stats").json()["num_generated_tokens"] - before
        assert _metric(metrics, "sgc_client_disconnects_total") == disconnects + 1, (generated, metrics)
        assert generated < 480


def test_abort_request_by_client_rid(server):
    body = {"text": "Abort me", "rid": "my-request",
            "sampling_params": {"max_new_tokens": 480, "ignore_eos": True, **GREEDY}}
    out = {}
    thread = threading.Thread(target=lambda: out.update(httpx.post(server.url + "/generate", json=body,
                                                                   timeout=60).json()))
    thread.start()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        deadline = time.monotonic() + 15
        while not (aborted := c.post("/abort_request", json={"rid": "my-request"}).json()["aborted"]):
            assert time.monotonic() < deadline, "the request never showed up"
            time.sleep(0.02)
    thread.join(30)
    assert aborted == [out["meta_info"]["id"]]
    assert out["meta_info"]["finish_reason"]["type"] == "abort" and out["meta_info"]["completion_tokens"] < 480


def test_concurrent_streams(server, engine):
    """16 concurrent streaming clients, 4 of which leave early: the rest get their complete output."""
    want = engine.generate(PROMPTS[0], {"max_new_tokens": 16, **GREEDY})["text"]
    outcomes: dict[int, str] = {}

    def client(i: int) -> None:
        body = {"text": PROMPTS[0], "stream": True, "sampling_params": {"max_new_tokens": 16, **GREEDY}}
        with httpx.Client(base_url=server.url, timeout=60) as c, c.stream("POST", "/generate", json=body) as r:
            if i % 4 == 0:
                next(r.iter_lines())
                return
            events = sse_events(r)
            outcomes[i] = json.loads(events[-2])["text"] if events[-1] == "[DONE]" else "<no DONE>"

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert outcomes == {i: want for i in range(16) if i % 4}


# -- a second server: api key, bounded queue, SIGTERM while busy ---------------------------------------
@pytest.mark.slow
def test_api_key_queue_bound_and_sigterm(tiny_model_dirs, tmp_path):
    proc = ServerProcess(tiny_model_dirs["llama"], "--api-key", "sekrit", "--max-running-requests", "2",
                         "--max-queued-requests", "0", "--grace-period", "20", "--max-total-tokens", "4096",
                         log=tmp_path / "server.log")
    try:
        assert httpx.get(proc.url + "/health", timeout=10).status_code == 200
        r = httpx.get(proc.url + "/get_model_info", timeout=10)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        auth = {"authorization": "Bearer sekrit"}
        assert httpx.get(proc.url + "/get_model_info", headers=auth, timeout=10).status_code == 200
        oai = openai.OpenAI(base_url=proc.url + "/v1", api_key="sekrit", timeout=30, max_retries=0)
        assert oai.completions.create(model="llama", prompt="Hi", max_tokens=2).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=proc.url + "/v1", api_key="wrong", max_retries=0).models.list()
        # two long streams fill the server (2 running, 0 queued): a third request gets 503 + Retry-After
        body = {"text": "Go", "stream": True, "sampling_params": {"max_new_tokens": 200, "ignore_eos": True}}
        results: list[list[str]] = []
        started = threading.Barrier(3, timeout=30)

        def long_stream() -> None:
            with httpx.Client(base_url=proc.url, headers=auth, timeout=60) as c, \
                    c.stream("POST", "/generate", json=body) as r:
                lines = r.iter_lines()
                first = next(lines)
                started.wait()
                results.append([first, *[line for line in lines if line]])

        threads = [threading.Thread(target=long_stream) for _ in range(2)]
        for t in threads:
            t.start()
        started.wait()
        r = httpx.post(proc.url + "/generate", headers=auth, json={"text": "x"}, timeout=10)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        # SIGTERM while they stream: both finish (the grace period is long enough), the server exits 0
        assert proc.stop() == 0, proc.log()
        for t in threads:
            t.join(30)
        assert len(results) == 2
        for events in results:
            assert events[-1] == "data: [DONE]"
            final = json.loads(events[-2][len("data: "):])
            assert final["meta_info"]["finish_reason"]["type"] in ("length", "abort")
    finally:
        proc.stop()


# -- programs through RuntimeEndpoint ------------------------------------------------------------------
SGLANG_PROGRAM = '''
import sglang as sgl


@sgl.function
def pick_and_write(s, topic):
    s += sgl.system("You answer briefly.")
    s += sgl.user("Topic: " + topic + ". Pick a color.")
    s += sgl.assistant(sgl.select("color", choices=["red", "green", "blue"]))
    s += sgl.user("Give a code.")
    s += sgl.assistant(sgl.gen("code", regex=r"[A-Z]{3}-[0-9]{2}", max_tokens=10))
    forks = s.fork(2)
    for i, f in enumerate(forks):
        f += sgl.user("Idea " + str(i) + "?")
        f += sgl.assistant(sgl.gen("idea", max_tokens=6))
    s += sgl.user("Ideas: " + forks[0]["idea"] + " / " + forks[1]["idea"])
    s += sgl.assistant(sgl.gen("summary", max_tokens=6, stop="."))
'''


@pytest.fixture(scope="module")
def sglang_program(tmp_path_factory):
    import importlib.util

    path = tmp_path_factory.mktemp("prog") / "pick_and_write.py"
    path.write_text(SGLANG_PROGRAM)
    spec = importlib.util.spec_from_file_location("pick_and_write_prog", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.pick_and_write


def _variables(state):
    return {name: state[name] for name in ("color", "code", "summary")}, state.text()


def test_runtime_endpoint_runs_sglang_program(server, tiny_model_dirs, sglang_program):
    import sglang as sgl

    endpoint = sgl.RuntimeEndpoint(server.url)
    with sgl.Runtime(str(tiny_model_dirs["llama"]), device="cpu", max_total_tokens=8192) as local:
        want = [_variables(sglang_program.run(topic=t, temperature=0, backend=local)) for t in ("sea", "sky")]
        sgl.set_default_backend(endpoint)
        try:
            got = [_variables(sglang_program.run(topic=t, temperature=0)) for t in ("sea", "sky")]
            batch = sglang_program.run_batch([{"topic": "sea"}, {"topic": "sky"}], temperature=0)
        finally:
            sgl.set_default_backend(None)
    assert got == want
    assert [_variables(s) for s in batch] == want
    assert __import__("re").fullmatch(r"[A-Z]{3}-[0-9]{2}", got[0][0]["code"])
    assert got[0][0]["color"] in ("red", "green", "blue")
    # eagerly (the reference interpreter) on the HTTP client gives the same variables too
    eager = _variables(sglang_program.run(topic="sea", temperature=0, backend=endpoint.engine))
    assert eager == want[0]
    assert sgl.flush_cache(endpoint) is True
    assert sgl.get_server_info(endpoint)["status"] == "ready"
    endpoint.shutdown()


def test_http_client_interface(server, engine):
    """HTTPRuntimeClient implements the runtime client interface: send, stream, listeners, abort, score."""
    from executor.runtime.runtime_client import GenerateRequest, RequestError, RuntimeClient, ScoreRequest
    from sgc.serve.client import HTTPRuntimeClient

    client = HTTPRuntimeClient(server.url)
    try:
        assert isinstance(client, RuntimeClient)
        assert client.info().context_len == 512 and client.is_alive()
        ids = client.tokenizer.encode(PROMPTS[0])
        params = {"max_new_tokens": 8, **GREEDY}
        events = []
        handle = client.send(GenerateRequest(ids, params, stream=True), lambda d, f: events.append((d, f)))
        chunks = list(handle.stream())
        want = engine.generate(input_ids=ids, sampling_params=params)
        assert "".join(c["text"] for c in chunks) == want["text"] == handle.result(30)["text"]
        assert handle.result(30)["output_ids"] == want["output_ids"]
        assert events[-1] == ("", True) and "".join(d for d, _ in events) == want["text"]
        scored = client.send(ScoreRequest(ids, [[11, 12], [13]])).result(30)
        local = engine.score(ids, [[11, 12], [13]])
        for got, want_lp in zip(scored["logprobs"], local["logprobs"], strict=True):
            assert got == pytest.approx(want_lp, abs=1e-4)
        with client.group() as group:
            handles = [group.send(GenerateRequest(ids, params)) for _ in range(3)]
        assert [h.result(30)["text"] for h in handles] == [want["text"]] * 3
        with pytest.raises(RequestError):
            client.send(GenerateRequest(ids, {"max_new_tokens": -1}))
        long = client.send(GenerateRequest(ids, {"max_new_tokens": 400, "ignore_eos": True}, stream=True))
        next(iter(long.stream()))
        long.abort()
        out = long.result(30)
        assert out["meta_info"]["finish_reason"]["type"] == "abort"
        assert client.stats()["num_finished_requests"] > 0
        # a client on another machine downloads the tokenizer files (GET /sgc/tokenizer)
        remote_tokenizer = client._load_tokenizer(None)
        assert remote_tokenizer.encode(PROMPTS[0]) == ids and remote_tokenizer.eos_token_ids == engine.tokenizer.eos_token_ids
    finally:
        client.close()


SGLANG_RUNNER = '''
import json, sys
import sglang as sgl

assert "sgc" not in sgl.__version__, "this must be SGLang's own frontend"
exec(compile(open(sys.argv[2]).read(), sys.argv[2], "exec"))
sgl.set_default_backend(sgl.RuntimeEndpoint(sys.argv[1], chat_template_name="chatml"))
out = []
for topic in ("sea", "sky"):
    state = pick_and_write.run(topic=topic, temperature=0)
    out.append({"vars": {name: state[name] for name in ("color", "code", "summary")}, "text": state.text()})
print("RESULT " + json.dumps(out))
'''


@pytest.mark.slow
def test_sglang_frontend_runtime_endpoint(server, tiny_model_dirs, sglang_program, tmp_path):
    """SGLang's real frontend (`sglang.lang`, from SGLang's own package in another venv: set
    $SGC_SGLANG_PYTHON to its python) runs the program against sgc serve with the same variables as
    sgc's in-process run."""
    import os
    import subprocess

    python = os.environ.get("SGC_SGLANG_PYTHON")
    if not python:
        pytest.skip("set SGC_SGLANG_PYTHON to a python with SGLang's real package installed")
    (tmp_path / "program.py").write_text(SGLANG_PROGRAM.replace("import sglang as sgl\n", ""))
    (tmp_path / "runner.py").write_text(SGLANG_RUNNER)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([python, "runner.py", server.url, "program.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    got = json.loads(lines[0][len("RESULT "):])
    import sglang as sgl

    with sgl.Runtime(str(tiny_model_dirs["llama"]), device="cpu", max_total_tokens=8192) as local:
        want = [_variables(sglang_program.run(topic=t, temperature=0, backend=local)) for t in ("sea", "sky")]
    assert [(g["vars"], g["text"]) for g in got] == want
