"""`sgc serve` under load (slow): 128 concurrent streaming clients on 127.0.0.1, 16 of which disconnect
mid-stream; then SIGTERM during load. Every loop is bounded in count and time."""

from __future__ import annotations

import json
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from executor.runtime.engine import Engine  # noqa: E402
from tests.serve_helpers import ServerProcess, sse_events  # noqa: E402

pytestmark = pytest.mark.slow

CLIENTS = 128
LEAVERS = 16
PROMPTS = [f"Story {i}: once upon a time" for i in range(8)]
PARAMS = {"max_new_tokens": 24, "temperature": 0}


def _metric(text: str, name: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(lines[0].split()[1]) if lines else 0.0


def _stream(url: str, prompt: str, params: dict, leave_after: int | None, out: dict, key: int) -> None:
    body = {"text": prompt, "stream": True, "sampling_params": params}
    try:
        with httpx.Client(base_url=url, timeout=120) as c, c.stream("POST", "/generate", json=body) as r:
            if r.status_code != 200:
                out[key] = ("status", r.status_code)
                return
            if leave_after is not None:
                for _, _line in zip(range(leave_after), r.iter_lines()):
                    pass
                out[key] = ("left", None)
                return
            events = sse_events(r)
        if events and events[-1] == "[DONE]":
            out[key] = ("done", json.loads(events[-2]))
        else:
            out[key] = ("cut", events[-1] if events else None)
    except httpx.HTTPError as exc:  # a clean error: the connection closed
        out[key] = ("error", type(exc).__name__)


def test_128_streams_with_disconnects_then_sigterm(tiny_model_dirs, tmp_path):
    model = tiny_model_dirs["llama"]
    with Engine(model_path=str(model), device="cpu", max_total_tokens=16384) as engine:
        want = {p: engine.generate(p, PARAMS)["text"] for p in PROMPTS}
    proc = ServerProcess(model, "--max-total-tokens", "16384", "--grace-period", "30", log=tmp_path / "server.log")
    try:
        results: dict[int, tuple] = {}
        leavers = set(range(0, CLIENTS, CLIENTS // LEAVERS))
        threads = [threading.Thread(target=_stream, args=(proc.url, PROMPTS[i % len(PROMPTS)],
                                                          {**PARAMS, "max_new_tokens": 200, "ignore_eos": True}
                                                          if i in leavers else PARAMS,
                                                          2 if i in leavers else None, results, i))
                   for i in range(CLIENTS)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(1.0, 180 - (time.monotonic() - started)))
        assert not any(t.is_alive() for t in threads), "a client hung"
        elapsed = time.monotonic() - started
        for i in range(CLIENTS):
            kind, value = results[i]
            if i in leavers:
                assert kind == "left"
            else:
                assert kind == "done", (i, results[i])
                assert value["text"] == want[PROMPTS[i % len(PROMPTS)]], i
        # the disconnected requests were aborted: nothing in flight, every KV slot free after a flush
        with httpx.Client(base_url=proc.url, timeout=30) as c:
            deadline = time.monotonic() + 20
            while _metric(c.get("/metrics").text, "sgc_inflight_requests") != 0:
                assert time.monotonic() < deadline, "requests stayed in flight"
                time.sleep(0.1)
            metrics = c.get("/metrics").text
            assert _metric(metrics, "sgc_client_disconnects_total") >= 1
            assert c.post("/flush_cache").status_code == 200
            stats = c.get("/sgc/stats").json()
            info = c.get("/get_server_info").json()
            assert stats["num_free_kv_slots"] == info["num_kv_slots"]
            generated = stats["num_generated_tokens"]
        assert generated < (CLIENTS - LEAVERS) * PARAMS["max_new_tokens"] + LEAVERS * 200
        print(f"\n{CLIENTS} streams ({LEAVERS} leaving) in {elapsed:.1f} s")

        # SIGTERM during load: in-flight requests finish (or end cleanly), the server exits 0
        results.clear()
        threads = [threading.Thread(target=_stream, args=(proc.url, PROMPTS[i % len(PROMPTS)],
                                                          {**PARAMS, "max_new_tokens": 64}, None, results, i))
                   for i in range(32)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        assert proc.stop(timeout=60) == 0, proc.log()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a client hung after SIGTERM"
        for kind, value in results.values():
            assert kind in ("done", "error", "status"), value
            if kind == "done":
                assert value["meta_info"]["finish_reason"]["type"] in ("length", "stop", "abort")
            if kind == "status":
                assert value == 503
    finally:
        proc.stop()
