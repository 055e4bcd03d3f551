"""`sgc serve --replica-url ...`: the router in front of two tiny-model `sgc serve` replicas, all real
processes on 127.0.0.1 (the Ray-actor variant, `--replicas N` alone, is the slow test at the end)."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from sgc.serve.router_app import build_router_app, routing_key
from tests.serve_helpers import ServerProcess, sse_events

GREEDY = {"temperature": 0}
PREFIXES = ["You are a pirate. Answer every question like a pirate would, with gusto. " * 3,
            "You are a librarian. Answer every question quietly and cite a book each time. " * 3]


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


# -- in process, over fake replicas (fast) ------------------------------------------------------------------
class FakeReplicas:
    """httpx transport standing in for replicas at http://rN: answers with its name; `dead` refuse."""

    def __init__(self) -> None:
        self.dead: set[str] = set()
        self.breaking: set[str] = set()  # streams from these break after their first event
        self.seen: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host in self.dead:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/health":
            return httpx.Response(200)
        body = json.loads(request.content or b"null")
        self.seen.append((host, request.url.path))
        if isinstance(body, dict) and body.get("stream") and host in self.breaking:
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=_BreaksAfterFirstChunk())
        if isinstance(body, dict) and body.get("stream"):
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  stream=httpx.ByteStream(f'data: {{"replica": "{host}"}}\n\ndata: [DONE]\n\n'.encode()))
        return httpx.Response(200, json={"replica": host, "path": request.url.path})


class _BreaksAfterFirstChunk(httpx.AsyncByteStream):
    async def __aiter__(self):
        yield b'data: {"text": "partial"}\n\n'
        raise httpx.ReadError("connection reset")


def _fake_router(fake: FakeReplicas, **kw) -> TestClient:
    kw.setdefault("health_interval", 3600)
    app = build_router_app([f"http://r{i}" for i in range(3)], transport=httpx.MockTransport(fake), **kw)
    return TestClient(app)


def test_fake_replicas_affinity_balance_and_retry():
    fake = FakeReplicas()
    with _fake_router(fake) as client:
        owners = {}
        for round_ in range(3):
            for p, prefix in enumerate(PREFIXES * 2):
                text = f"[{p}] " + prefix + f" q{round_}"
                got = client.post("/generate", json={"text": text}).json()["replica"]
                owners.setdefault(p, got)
                assert got == owners[p]
        assert len(set(owners.values())) == 3  # four prefixes spread over three replicas
        # Streams are relayed.
        r = client.post("/v1/completions", json={"prompt": PREFIXES[0], "stream": True})
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
        # The replica that owns a prefix dies: the request is retried on another one, once.
        victim = owners[0]
        fake.dead.add(victim)
        got = client.post("/generate", json={"text": "[0] " + PREFIXES[0] + " again"}).json()["replica"]
        assert got != victim
        metrics = client.get("/metrics").text
        assert _metric(metrics, "sgc_router_retries_total", replica=victim[1:]) == 1
        assert _metric(metrics, "sgc_router_replica_up", replica=victim[1:]) == 0
        assert {r["name"]: r["up"] for r in client.get("/router/replicas").json()["replicas"]}[victim[1:]] is False
        # Everyone dead: a clear 503, not a traceback.
        fake.dead |= {"r0", "r1", "r2"}
        r = client.post("/generate", json={"text": "x"})
        assert r.status_code == 503 and "replica" in r.json()["error"]["message"]
        assert client.get("/health").status_code == 503


def test_fake_replicas_round_robin_and_guards():
    fake = FakeReplicas()
    with _fake_router(fake, policy="round_robin", api_key="k") as client:
        assert client.post("/generate", json={"text": "x"}).status_code == 401
        auth = {"authorization": "Bearer k"}
        got = [client.post("/generate", json={"text": PREFIXES[0]}, headers=auth).json()["replica"]
               for _ in range(6)]
        assert got == ["r0", "r1", "r2"] * 2
        assert client.post("/generate", content=b"x" * (9 << 20), headers=auth).status_code == 413
        # Chunked bodies (no content-length) are read bounded, then forwarded whole.
        r = client.post("/generate", content=iter([b'{"text": "chun', b'ked"}']), headers=auth)
        assert r.status_code == 200 and r.json()["path"] == "/generate"
        r = client.post("/generate", content=iter([b"x" * (5 << 20)] * 2), headers=auth)
        assert r.status_code == 413
        assert client.get("/health").status_code == 200  # no key needed
    with pytest.raises(ValueError, match="unknown routing policy"):
        build_router_app(["http://r0"], "fastest")
    with pytest.raises(ValueError, match="at least one replica"):
        build_router_app([])


def _wait_for(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def test_fake_replicas_health_checks_and_broken_streams():
    fake = FakeReplicas()
    with _fake_router(fake, policy="round_robin", health_interval=0.05) as client:
        def up() -> dict:
            return {r["name"]: r["up"] for r in client.get("/router/replicas").json()["replicas"]}

        fake.dead.add("r1")  # its health checks fail: out ...
        assert _wait_for(lambda: up()["1"] is False)
        assert {client.post("/generate", json={"text": "x"}).json()["replica"] for _ in range(4)} == {"r0", "r2"}
        fake.dead.clear()  # ... and back once it answers
        assert _wait_for(lambda: up()["1"] is True)
        # A stream that breaks after its first event is not retried (its client has bytes): it ends
        # with an error event and [DONE], and the replica is taken out.
        fake.breaking.add("r0")
        events = []
        for _ in range(3):
            r = client.post("/generate", json={"text": "x", "stream": True})
            events.append(r.text)
        broken = [e for e in events if "partial" in e]
        assert len(broken) == 1 and '"error"' in broken[0] and broken[0].rstrip().endswith("data: [DONE]")
        assert _metric(client.get("/metrics").text, "sgc_router_replica_failures_total", replica="0") == 1


# -- real processes (slow) -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def replicas(tiny_model_dirs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("router")
    procs = [ServerProcess(tiny_model_dirs["llama"], "--max-total-tokens", "4096", log=folder / f"replica{i}.log")
             for i in range(2)]
    yield procs
    for p in procs:
        p.stop()


@pytest.fixture(scope="module")
def router(replicas, tiny_model_dirs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("router_proc")
    args = [a for p in replicas for a in ("--replica-url", p.url)]
    proc = ServerProcess(tiny_model_dirs["llama"], *args, "--routing", "cache_aware", log=folder / "router.log")
    yield proc
    assert proc.stop() == 0, proc.log()


def _finished(replica: ServerProcess) -> int:
    return httpx.get(replica.url + "/sgc/stats", timeout=10).json()["num_finished_requests"]


@pytest.mark.slow
def test_same_prefix_requests_go_to_the_same_replica(router, replicas):
    before = [_finished(r) for r in replicas]
    with httpx.Client(base_url=router.url, timeout=60) as http:
        for prefix in PREFIXES:
            for i in range(4):
                r = http.post("/generate", json={"text": prefix + f"Question {i}?",
                                                 "sampling_params": {"max_new_tokens": 2, **GREEDY}})
                assert r.status_code == 200, r.text
                if i:  # the prefix was computed on this replica already
                    assert r.json()["meta_info"]["cached_tokens"] > 0
        metrics = http.get("/metrics").text
    got = sorted(_finished(r) - b for r, b in zip(replicas, before))
    assert got == [4, 4], got  # round-robin would give 4 and 4 too, but split per prefix: see below
    assert _metric(metrics, "sgc_router_routed_requests_total", reason="cache_hit") >= 6
    assert _metric(metrics, "sgc_router_routed_requests_total", reason="cache_miss") >= 2
    assert _metric(metrics, "sgc_router_replica_up", replica="0") == 1


@pytest.mark.slow
def test_forwarded_answers_equal_the_replicas(router, replicas):
    body = {"text": "The capital of France is", "sampling_params": {"max_new_tokens": 6, **GREEDY}}
    direct = httpx.post(replicas[1].url + "/generate", json=body, timeout=60).json()
    routed = httpx.post(router.url + "/generate", json=body, timeout=60).json()
    assert routed["text"] == direct["text"] and routed["output_ids"] == direct["output_ids"]
    chat = {"messages": [{"role": "user", "content": "Hi there"}], "max_tokens": 5, "temperature": 0}
    a = httpx.post(replicas[0].url + "/v1/chat/completions", json=chat, timeout=60).json()
    b = httpx.post(router.url + "/v1/chat/completions", json=chat, timeout=60).json()
    assert a["choices"][0]["message"] == b["choices"][0]["message"]
    assert httpx.get(router.url + "/v1/models", timeout=10).json()["data"]
    assert httpx.get(router.url + "/get_model_info", timeout=10).json()["vocab_size"] > 0


@pytest.mark.slow
def test_streams_pass_through(router):
    with httpx.Client(base_url=router.url, timeout=60) as http:
        with http.stream("POST", "/generate", json={"text": "Once upon a time", "stream": True,
                                                    "sampling_params": {"max_new_tokens": 5, **GREEDY}}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = sse_events(r)
        assert events[-1] == "[DONE]" and json.loads(events[-2])["meta_info"]["completion_tokens"] == 5
        with http.stream("POST", "/v1/completions", json={"prompt": "Hello", "max_tokens": 4, "stream": True,
                                                          "temperature": 0}) as r:
            events = sse_events(r)
        assert events[-1] == "[DONE]" and len(events) >= 3


@pytest.mark.slow
def test_bad_requests_get_the_replicas_errors(router):
    r = httpx.post(router.url + "/generate", content=b"{not json", timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(router.url + "/generate", json={"text": "x", "sampling_params": {"nope": 1}}, timeout=30)
    assert r.status_code == 400 and "nope" in r.json()["error"]["message"]
    r = httpx.post(router.url + "/generate", content=b"x" * (9 * 1024 * 1024), timeout=30)
    assert r.status_code == 413
    assert httpx.post(router.url + "/abort_request", json={"abort_all": True}, timeout=30).json() == {"aborted": []}
    assert httpx.post(router.url + "/flush_cache", timeout=30).status_code == 200


def test_routing_key():
    assert routing_key("/generate", {"text": ["a", "b"]}) == "a"
    assert routing_key("/generate", {"input_ids": [[1, 2], [3]]}) == (1, 2)
    assert routing_key("/v1/completions", {"prompt": "p"}) == "p"
    assert routing_key("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}) \
        == "<user>hi"
    for hostile in (None, [], "x", {"text": 5}, {"messages": "no"}, {"messages": [3, {"content": 7}]}):
        assert routing_key("/generate", hostile) in ("", "<None>")
        routing_key("/v1/chat/completions", hostile)


@pytest.mark.slow
def test_dead_replica_is_taken_out_and_its_request_retried(tiny_model_dirs, tmp_path):
    """Kill the replica a long non-streamed request runs on: the request is answered by the other one."""
    procs = [ServerProcess(tiny_model_dirs["llama"], "--max-total-tokens", "8192", log=tmp_path / f"r{i}.log")
             for i in range(2)]
    args = [a for p in procs for a in ("--replica-url", p.url)]
    router = ServerProcess(tiny_model_dirs["llama"], *args, log=tmp_path / "router.log")
    try:
        result: dict = {}
        body = {"text": ["Tell me a long story."] * 8,
                "sampling_params": {"max_new_tokens": 400, "ignore_eos": True, **GREEDY}}

        def call() -> None:
            result["response"] = httpx.post(router.url + "/generate", json=body, timeout=120)

        thread = threading.Thread(target=call)
        thread.start()
        busy = None
        deadline = time.monotonic() + 30
        while busy is None and time.monotonic() < deadline:
            for rep in httpx.get(router.url + "/router/replicas", timeout=10).json()["replicas"]:
                if rep["inflight"]:
                    busy = int(rep["name"])
            time.sleep(0.02)
        assert busy is not None, "the request never reached a replica"
        procs[busy].proc.send_signal(signal.SIGKILL)
        thread.join(120)
        response = result["response"]
        assert response.status_code == 200, response.text
        assert [len(r["output_ids"]) for r in response.json()] == [400] * 8
        metrics = httpx.get(router.url + "/metrics", timeout=10).text
        assert _metric(metrics, "sgc_router_retries_total", replica=str(busy)) == 1
        assert _metric(metrics, "sgc_router_replica_up", replica=str(busy)) == 0
        # New requests go to the live one only.
        r = httpx.post(router.url + "/generate", json={"text": "hi", "sampling_params": {"max_new_tokens": 1}},
                       timeout=30)
        assert r.status_code == 200
        assert httpx.get(router.url + "/health", timeout=10).status_code == 200
    finally:
        assert router.stop() == 0, router.log()
        for p in procs:
            p.stop()


def test_cli_refuses_bad_replica_options(capsys):
    from sgc.cli import main

    assert main(["serve", "--replicas", "0"]) == 1
    assert "--replicas must be >= 1" in capsys.readouterr().err
    assert main(["serve", "--replicas", "3", "--replica-url", "http://127.0.0.1:1"]) == 1
    assert "--replicas 3 but 1 --replica-url" in capsys.readouterr().err
    assert main(["serve", "--replica-url", "localhost:1"]) == 1
    assert "give a URL like http://" in capsys.readouterr().err
    assert main(["serve", "--replica-url", "http://127.0.0.1:1", "--cache-threshold", "2"]) == 1
    assert "cache_threshold must be in [0, 1]" in capsys.readouterr().err


# -- Ray actors (slow) -----------------------------------------------------------------------------------
from tests.ray_cluster import ray_local  # noqa: E402,F401


@pytest.mark.slow
def test_ray_actor_replicas_behind_the_router(ray_local, tiny_model_dirs):  # noqa: F811
    """`sgc serve --replicas 2`'s path in process: two replica actors on the local Ray cluster, the router
    over them; killing one actor kills its server, and the router routes around it."""
    from sgc.serve.router_server import start_ray_replicas, stop_ray_replicas

    serve_args = ["--model", str(tiny_model_dirs["llama"]), "--device", "cpu", "--log-level", "warning",
                  "--max-total-tokens", "4096"]
    urls, actors, ray = start_ray_replicas(2, serve_args, cores=1)
    try:
        assert all(u.startswith("http://127.0.0.1:") for u in urls) and len(set(urls)) == 2
        with TestClient(build_router_app(urls, health_interval=0.2)) as client:
            owners = set()
            for i in range(3):
                r = client.post("/generate", json={"text": PREFIXES[0] + f"Q{i}", "sampling_params":
                                                   {"max_new_tokens": 2, **GREEDY}})
                assert r.status_code == 200, r.text
                owners.add(_metric(client.get("/metrics").text, "sgc_router_routed_requests_total", replica="0"))
            assert owners == {1.0, 2.0, 3.0}  # all three went to replica 0
            pid = ray.get(actors[0].pid.remote())
            ray.kill(actors[0])
            deadline = time.monotonic() + 30
            while client.get("/router/replicas").json()["replicas"][0]["up"] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert client.get("/router/replicas").json()["replicas"][0]["up"] is False, f"server {pid} lives on"
            r = client.post("/generate", json={"text": PREFIXES[0] + "Q9", "sampling_params": {"max_new_tokens": 2}})
            assert r.status_code == 200
    finally:
        stop_ray_replicas(ray, actors)
