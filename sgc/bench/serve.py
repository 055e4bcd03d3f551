"""`sgc bench --serve`: `sgc serve` under a request-rate sweep (OpenAI streaming completions).

Starts the server as a subprocess on 127.0.0.1 (or uses `--url`), sends requests with Poisson
arrivals at each rate for a bounded number of requests, every one a streamed `/v1/completions` with
a fixed output length (`ignore_eos`), and reports per rate: completed requests, request throughput,
output tokens/s, time to first token and inter-token latency (p50/p99), end-to-end latency p50/p99.
Any OpenAI-compatible server can be measured with `--url` (vLLM's, as a baseline).

    sgc bench --serve --model smollm2-135m-instruct --rates 1,2,4,inf --requests 32
    sgc bench --serve --url http://127.0.0.1:8000 --model-name <name> ...   (any OpenAI server)

`benchmarks/bench_serve.py` is the same as a script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent

__all__ = ["add_arguments", "main", "run_serve_bench"]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


async def _one(client: Any, model: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True}
    start = time.perf_counter()
    stamps: list[float] = []
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return {"ok": False, "status": r.status_code}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                stamps.append(time.perf_counter())
    end = time.perf_counter()
    if not stamps:
        return {"ok": False, "status": "empty"}
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"ok": True, "ttft": stamps[0] - start, "itl": gaps, "e2e": end - start, "chunks": len(stamps)}


async def _sweep_rate(url: str, model: str, rate: float, prompts: list[str], max_tokens: int, seed: int) -> dict:
    import httpx

    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=len(prompts) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        tasks = []
        start = time.perf_counter()
        for prompt in prompts:
            tasks.append(asyncio.create_task(_one(client, model, prompt, max_tokens)))
            if rate != float("inf"):
                await asyncio.sleep(rng.expovariate(rate))
        results = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    ok = [r for r in results if r["ok"]]
    itl = [g for r in ok for g in r["itl"]]
    return {
        "rate": rate, "requests": len(prompts), "completed": len(ok), "seconds": elapsed,
        "req_per_s": len(ok) / elapsed, "out_tok_per_s": len(ok) * max_tokens / elapsed,
        "ttft_p50_ms": 1000 * _pct([r["ttft"] for r in ok], 50), "ttft_p99_ms": 1000 * _pct([r["ttft"] for r in ok], 99),
        "itl_p50_ms": 1000 * _pct(itl, 50), "itl_p99_ms": 1000 * _pct(itl, 99),
        "e2e_p50_s": _pct([r["e2e"] for r in ok], 50), "e2e_p99_s": _pct([r["e2e"] for r in ok], 99),
        "mean_chunks": statistics.mean(r["chunks"] for r in ok) if ok else 0,
    }


def _start_server(model: str, port: int, extra: list[str]) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "sgc.cli", "serve", "--model", model, "--port", str(port),
                             "--host", "127.0.0.1", "--log-level", "warning", *extra], cwd=ROOT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sgc serve exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("sgc serve did not start")


def add_arguments(p: argparse.ArgumentParser, *, model: bool = True) -> None:
    if model:
        p.add_argument("--model", default="smollm2-135m-instruct", help="model for the sgc server it starts")
    p.add_argument("--url", default=None, help="measure this running server instead of starting sgc serve")
    p.add_argument("--model-name", default=None, help="the model name to send (default: the server's)")
    p.add_argument("--port", type=int, default=30123, help="port of the sgc server it starts")
    p.add_argument("--rates", default="1,2,4,inf", help="requests per second, comma-separated (inf: all at once)")
    p.add_argument("--requests", type=int, default=32, help="requests per rate")
    p.add_argument("--max-tokens", type=int, default=32, help="output tokens per request")
    p.add_argument("--server-arg", action="append", default=[], help="extra argument for sgc serve (repeatable)")
    p.add_argument("--out-json", default=None, help="write the results as JSON here")


def run_serve_bench(args: argparse.Namespace) -> int:
    import httpx

    proc = None
    url = args.url
    if url is None:
        proc = _start_server(args.model, args.port, args.server_arg)
        url = f"http://127.0.0.1:{args.port}"
    rows = []
    try:
        model = args.model_name or httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]
        rng = random.Random(args.seed)
        words = "the a model program server token cache prefix request stream batch fork select".split()
        for rate_text in args.rates.split(","):
            rate = float(rate_text)
            prompts = [f"Request {i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(8, 48)))
                       for i in range(args.requests)]
            row = asyncio.run(_sweep_rate(url, model, rate, prompts, args.max_tokens, args.seed))
            rows.append(row)
            print(f"rate {rate:>5}: {row['completed']}/{row['requests']} ok, {row['req_per_s']:.2f} req/s, "
                  f"{row['out_tok_per_s']:.1f} tok/s, TTFT p50/p99 {row['ttft_p50_ms']:.0f}/{row['ttft_p99_ms']:.0f} ms, "
                  f"ITL p50/p99 {row['itl_p50_ms']:.1f}/{row['itl_p99_ms']:.1f} ms", file=sys.stderr, flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    print("| rate (req/s) | completed | req/s | output tok/s | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) | e2e p50 / p99 (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rate']:g} | {r['completed']}/{r['requests']} | {r['req_per_s']:.2f} | {r['out_tok_per_s']:.1f} | "
              f"{r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} | {r['itl_p50_ms']:.1f} / {r['itl_p99_ms']:.1f} | "
              f"{r['e2e_p50_s']:.2f} / {r['e2e_p99_s']:.2f} |")
    if args.out_json:
        Path(args.out_json).write_text(json.dumps({"url": url, "model": model, "max_tokens": args.max_tokens,
                                                   "rows": rows}, indent=2))
    return 0 if all(r["completed"] == r["requests"] for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    return run_serve_bench(p.parse_args(argv))
