"""Routing across replicas (issue 16): measure, fit, simulate.

    python benchmarks/bench_cluster.py fit --out benchmarks/cluster_step_cost.json
        step times of the default model on this machine (one torch thread, as one replica gets), fitted
        to the simulator's cost model: extend = a + b * tokens, decode = c + d * batch
    python benchmarks/bench_cluster.py measure --replicas 2 --requests 48
        two real `sgc serve` replicas (default model, 1 core each: OMP_NUM_THREADS=1) behind the
        router (`sgc serve --replica-url ...`), the 8-long-shared-prefix workload, once per policy
        (round_robin, then cache_aware; caches flushed between): cache hit rate (the replicas' own
        counters) and throughput
    python benchmarks/bench_cluster.py simulate --scales 2,8,64,256
        the simulator's predictions for each policy at each scale, with the same workload shape
    python benchmarks/bench_cluster.py all       fit (if the cost file is missing), measure, simulate

Results go to bench_results/cluster.json (`--json-out`); the table is printed as markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from executor.cluster.simulator import CostModel, TraceRequest, simulate  # noqa: E402

DEFAULT_COST = ROOT / "benchmarks" / "cluster_step_cost.json"
POLICIES = ("round_robin", "least_loaded", "cache_aware")
WORDS = ("river stone market lantern orbit velvet harbor quiet engine meadow copper signal winter "
         "garden silver thunder canvas pocket marble falcon ribbon summit timber violet anchor").split()


# -- the workload --------------------------------------------------------------------------------------
def workload(tokenizer: Any, num_prefixes: int, requests: int, prefix_tokens: int, seed: int) -> list[dict]:
    """`requests` prompts over `num_prefixes` long shared prefixes (~`prefix_tokens` tokens each, a
    distinct system prompt), each with its own short question; the prefix of each request is drawn at
    random (seeded). Returns [{"text", "ids", "prefix"}]."""
    rng = random.Random(seed)
    prefixes = []
    for p in range(num_prefixes):
        words = [f"Document {p}."]
        while len(tokenizer.encode(" ".join(words))) < prefix_tokens:
            words.append(rng.choice(WORDS))
        prefixes.append(" ".join(words) + "\n")
    out = []
    for i in range(requests):
        p = rng.randrange(num_prefixes)
        text = prefixes[p] + f"Question {i}: what does the {rng.choice(WORDS)} {rng.choice(WORDS)} mean here?"
        out.append({"text": text, "ids": tokenizer.encode(text), "prefix": p})
    return out


def _tokenizer(model: str) -> Any:
    from tokenizers import Tokenizer as HFTokenizer

    from models import resolve_model

    return HFTokenizer.from_file(str(resolve_model(model) / "tokenizer.json"))


class _Enc:
    def __init__(self, tok: Any) -> None:
        self.tok = tok

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids


# -- fit -----------------------------------------------------------------------------------------------
def fit(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from executor.runtime.engine import Engine

    torch.set_num_threads(args.threads)
    rng = random.Random(0)
    rows: dict[str, list] = {"extend": [], "decode": []}
    load_before = os.getloadavg()[0]
    with Engine(model_path=args.model, device="cpu", max_total_tokens=16384) as engine:
        engine.generate(input_ids=[rng.randrange(1000, 30000) for _ in range(16)],
                        sampling_params={"max_new_tokens": 2})  # warm up
        for length in (32, 128, 256, 384, 512, 640):  # the workload's range
            times = []
            for _ in range(args.repeats):
                engine.flush_cache()
                ids = [rng.randrange(1000, 30000) for _ in range(length)]
                start = time.process_time()
                engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 1, "temperature": 0})
                times.append(time.process_time() - start)
            rows["extend"].append([length, statistics.median(times)])
            print(f"extend {length:5d} tokens: {statistics.median(times) * 1e3:8.1f} ms", file=sys.stderr)
        short, long_ = 2, 18
        for context in (16, 512):
            # Rows share a `context`-token prefix (cached once, as the workload's prefixes are) and
            # each has its own 8-token tail; the cache stays warm so both runs prefill the same.
            shared = [rng.randrange(1000, 30000) for _ in range(context - 8)]
            engine.generate(input_ids=shared + [1000], sampling_params={"max_new_tokens": 1})
            for batch in (1, 4, 8, 16):
                per = []
                for _ in range(args.repeats):
                    spans = {}
                    for steps in (short, long_):
                        ids = [shared + [rng.randrange(1000, 30000) for _ in range(8)] for _ in range(batch)]
                        start = time.process_time()
                        engine.generate(input_ids=ids, sampling_params={"max_new_tokens": steps + 1,
                                                                       "temperature": 0, "ignore_eos": True})
                        spans[steps] = time.process_time() - start
                    per.append((spans[long_] - spans[short]) / (long_ - short))
                # context tokens the step's attention reads: every row's, mid-run
                ctx_tokens = batch * (context + (short + long_) // 2)
                rows["decode"].append([batch, ctx_tokens, statistics.median(per)])
                print(f"decode batch {batch:3d}, context {context:4d}: {statistics.median(per) * 1e3:8.2f} ms/step",
                      file=sys.stderr)
    ext = np.array(rows["extend"])
    dec = np.array(rows["decode"])
    a, b = np.polyfit(ext[:, 0], ext[:, 1], 1)[::-1]
    design = np.column_stack([np.ones(len(dec)), dec[:, 0], dec[:, 1]])
    c, d, e = np.linalg.lstsq(design, dec[:, 2], rcond=None)[0]
    result = {
        "prefill_base_s": float(max(a, 0.0)), "prefill_per_token_s": float(b),
        "decode_base_s": float(max(c, 0.0)), "decode_per_seq_s": float(max(d, 0.0)),
        "decode_per_context_token_s": float(max(e, 0.0)),
        "measured": (f"{args.model}, CPU, torch threads={args.threads}, float32, sgc Engine.generate CPU time of the "
                     f"process (time.process_time: on a shared host CPU time tracks the work, wall time the other work) "
                     f"(extend: max_new_tokens=1 on a flushed cache; decode: ({long_}-{short}) extra steps of a "
                     f"batch of prompts sharing a cached 16- or 512-token prefix), host 1-min load average "
                     f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after, median of {args.repeats}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
                     f"host with {os.cpu_count()} cores shared with other work; fitted by least squares. "
                     f"Command: OMP_NUM_THREADS={args.threads} python benchmarks/bench_cluster.py fit --threads {args.threads} "
                     f"--repeats {args.repeats}"),
        "samples": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}: extend = {a * 1e3:.1f} ms + {b * 1e6:.1f} us/token, decode = {c * 1e3:.1f} ms + "
          f"{d * 1e3:.2f} ms/seq + {e * 1e6:.2f} us/context token", file=sys.stderr)
    return result


# -- measure -------------------------------------------------------------------------------------------
def _start(args: list[str], log: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    from tests.serve_helpers import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sgc.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warning", *args], cwd=ROOT, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, env=env)
    return proc, f"http://127.0.0.1:{port}"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not healthy in {timeout} s")


async def _drive(url: str, prompts: list[dict], output_len: int, concurrency: int) -> float:
    import httpx

    sem = asyncio.Semaphore(concurrency or len(prompts))
    async with httpx.AsyncClient(base_url=url, timeout=1200) as client:
        async def one(p: dict) -> None:
            async with sem:
                r = await client.post("/generate", json={"text": p["text"], "sampling_params": {
                    "max_new_tokens": output_len, "temperature": 0, "ignore_eos": True}})
                r.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(one(p) for p in prompts))
        return time.perf_counter() - start


def measure(args: argparse.Namespace) -> dict:
    import httpx

    tok = _Enc(_tokenizer(args.model))
    prompts = workload(tok, args.prefixes, args.requests, args.prefix_tokens, args.seed)
    logs = Path(args.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.cores), MKL_NUM_THREADS=str(args.cores), PYTHONUNBUFFERED="1")
    replicas = [_start(["--model", args.model, "--device", "cpu", "--max-total-tokens", str(args.kv_capacity)],
                       logs / f"replica{i}.log", env) for i in range(args.replicas)]
    results = {}
    try:
        for (proc, url), i in zip(replicas, range(args.replicas)):
            _wait_healthy(proc, url, logs / f"replica{i}.log")
        for policy in args.policies.split(","):
            for _, url in replicas:
                httpx.post(url + "/flush_cache", timeout=60).raise_for_status()
            before = [httpx.get(u + "/sgc/stats", timeout=30).json() for _, u in replicas]
            router, rurl = _start(["--routing", policy, *[a for _, u in replicas for a in ("--replica-url", u)]],
                                  logs / f"router-{policy}.log", dict(os.environ))
            try:
                _wait_healthy(router, rurl, logs / f"router-{policy}.log")
                load_before = os.getloadavg()[0]
                cpu_before = [_cpu_seconds(proc.pid) for proc, _ in replicas]
                seconds = asyncio.run(_drive(rurl, prompts, args.output_len, args.concurrency))
                cpu = [_cpu_seconds(proc.pid) - b for (proc, _), b in zip(replicas, cpu_before)]
                load_after = os.getloadavg()[0]
                routed = httpx.get(rurl + "/metrics", timeout=30).text
            finally:
                router.terminate()
                router.wait(30)
            after = [httpx.get(u + "/sgc/stats", timeout=30).json() for _, u in replicas]
            prompt = sum(a["num_prompt_tokens"] - b["num_prompt_tokens"] for a, b in zip(after, before))
            cached = sum(a["num_cached_prompt_tokens"] - b["num_cached_prompt_tokens"] for a, b in zip(after, before))
            per = [a["num_finished_requests"] - b["num_finished_requests"] for a, b in zip(after, before)]
            engine_counts = {k: sum(a[k] - b[k] for a, b in zip(after, before)) for k in after[0]
                             if k.startswith("num_") and k.endswith(("_steps", "retractions", "passes"))
                             and isinstance(after[0][k], (int, float))}
            out_tokens = len(prompts) * args.output_len
            results[policy] = {"seconds": seconds, "hit_rate": cached / prompt if prompt else 0.0,
                               "prompt_tokens": prompt, "cached_tokens": cached, "per_replica_requests": per,
                               "output_tok_per_s": out_tokens / seconds, "req_per_s": len(prompts) / seconds,
                               "host_load_1min": [load_before, load_after], "engine_counts": engine_counts,
                               # the busiest replica's CPU seconds: the run's length on dedicated cores
                               "replica_cpu_s": cpu, "cpu_makespan_s": max(cpu),
                               "output_tok_per_cpu_s": out_tokens / max(cpu),
                               "router_metrics": [ln for ln in routed.splitlines()
                                                  if ln.startswith("sgc_router_routed_requests_total")]}
            print(f"measured {policy}: hit {results[policy]['hit_rate']:.3f}, {seconds:.1f} s wall, replica CPU "
                  f"{', '.join(f'{c:.1f}' for c in cpu)} s, {out_tokens / seconds:.1f} out tok/s (wall), "
                  f"{out_tokens / max(cpu):.1f} (busiest replica's CPU), per replica {per}", file=sys.stderr)
    finally:
        for proc, _ in replicas:
            proc.terminate()
        for proc, _ in replicas:
            proc.wait(60)
    return {"results": results}


# -- simulate ------------------------------------------------------------------------------------------
def sim_trace(args: argparse.Namespace, scale: int, prompts: list[dict] | None = None) -> list[TraceRequest]:
    """The measured prompts at 2 replicas (same token ids); at larger scales the same workload shape
    with `--requests-per-replica` requests per replica (synthetic ids, same lengths, 8 prefixes)."""
    if prompts is not None:
        return [TraceRequest(0.0, tuple(p["ids"]), args.output_len) for p in prompts]
    rng = random.Random(args.seed + scale)
    prefixes = [tuple(rng.randrange(1000, 30000) for _ in range(args.prefix_tokens)) for _ in range(args.prefixes)]
    trace = []
    for _ in range(args.requests_per_replica * scale):
        prompt = rng.choice(prefixes) + tuple(rng.randrange(1000, 30000) for _ in range(16))
        trace.append(TraceRequest(0.0, prompt, args.output_len))
    return trace


def run_simulations(args: argparse.Namespace, measured_prompts: list[dict] | None) -> list[dict]:
    cost = CostModel.load(args.cost)
    rows = []
    for scale in [int(s) for s in args.scales.split(",")]:
        trace = sim_trace(args, scale, measured_prompts if scale == args.replicas and measured_prompts else None)
        for policy in POLICIES:
            start = time.perf_counter()
            # Every request arrives at t=0 (the measured run sends them all at once); the replicas' own
            # admission (KV capacity, max running) bounds what runs.
            r = simulate(trace, scale, policy, cost, kv_capacity=args.kv_capacity, max_running=args.max_running)
            row = {"scale": scale, "trace": "measured prompts" if scale == args.replicas and measured_prompts
                   else "synthetic", **r.as_dict(), "sim_wall_s": time.perf_counter() - start}
            rows.append(row)
            print(f"simulated {scale:4d} x {policy:13s}: hit {r.hit_rate:.3f}, {r.output_tok_per_s:9.1f} out tok/s, "
                  f"makespan {r.makespan_s:7.1f} s ({row['sim_wall_s']:.1f} s to simulate)", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["fit", "measure", "simulate", "all"])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--threads", type=int, default=1, help="fit: torch threads (default 1: one core per replica)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", "--cost", dest="cost", default=str(DEFAULT_COST), help="the cost model JSON")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--cores", type=int, default=1, help="measure: CPU threads per replica")
    p.add_argument("--prefixes", type=int, default=8)
    p.add_argument("--prefix-tokens", type=int, default=512)
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--requests-per-replica", type=int, default=24, help="simulate: trace size per replica")
    p.add_argument("--output-len", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=0,
                   help="measure: requests in flight (default 0: all sent at once, as the simulator's trace)")
    p.add_argument("--kv-capacity", type=int, default=3072, help="KV slots per replica (--max-total-tokens)")
    p.add_argument("--max-running", type=int, default=256)
    p.add_argument("--policies", default="round_robin,cache_aware")
    p.add_argument("--scales", default="2,8,64,256")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-dir", default="/tmp/sgc-bench-cluster")
    p.add_argument("--json-out", default=str(ROOT / "bench_results" / "cluster.json"))
    args = p.parse_args(argv)
    args.out = args.cost
    out: dict[str, Any] = {"args": vars(args)}
    if args.what == "simulate" and Path(args.json_out).exists():  # keep an earlier run's measurement
        earlier = json.loads(Path(args.json_out).read_text())
        if "measured" in earlier:
            out["measured"], out["measured_args"] = earlier["measured"], earlier.get("measured_args", earlier["args"])
    if args.what == "fit" or (args.what == "all" and not Path(args.cost).exists()):
        out["cost"] = fit(args)
    if args.what in ("measure", "all"):
        out["measured"] = measure(args)["results"]
        out["measured_args"] = vars(args)
    if args.what in ("simulate", "all"):
        # At the measured scale the simulator replays the measured workload's own prompts (the same
        # seed and tokenizer give the same token ids); elsewhere a synthetic trace of the same shape.
        prompts = None
        if args.requests and args.replicas in [int(x) for x in args.scales.split(",")]:
            prompts = workload(_Enc(_tokenizer(args.model)), args.prefixes, args.requests, args.prefix_tokens,
                               args.seed)
        out["simulated"] = run_simulations(args, prompts)
        out["cost_model"] = json.loads(Path(args.cost).read_text())
    if args.what != "fit":
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json_out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
