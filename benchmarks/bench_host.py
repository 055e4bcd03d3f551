"""Host overhead: what sgc's runtime and program executor cost per step with the model's time gone.

    .venv/bin/python benchmarks/bench_host.py                      # batch 1 / 64 / 256
    .venv/bin/python benchmarks/bench_host.py --batches 64 --tokens 32 --nodes 10

The engine runs with `null_model=True` (models/null.py: forward returns zeros, the logits are one
fixed row), so a step's wall time is the host's: scheduling, KV bookkeeping, batch assembly,
sampling, detokenization, result plumbing. Two measurements per batch size B:

* **decode step**: B requests of T and of 4T new tokens (ignore_eos); the difference of the two
  runs' wall times over the difference of their decode steps is the time of one decode step at
  batch B (prefill and start-up cancel out);
* **program node**: a compiled program of K `gen(max_tokens=1)` nodes separated by constant text,
  run on B instances with `run_batch`; wall time over (B x nodes run), nodes counted from the IR
  (appends, gens, ...), minus nothing: it includes the engine steps those nodes wait for, so it is
  an upper bound on the executor's own cost per node.

On a GPU, where a 135M model's decode step takes a few ms, these numbers decide throughput; the goal
(issue 12) is <= 1 ms per decode step at batch 64 and <= 50 us per program node. Results print as a
markdown table; nothing is written unless `--out` is given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sgc  # noqa: E402
from sgc import gen  # noqa: E402


def decode_step_ms(engine, batch: int, tokens: int, repeats: int) -> tuple[float, int]:
    """Median ms per decode step at this batch size, and the decode steps one long run took."""
    prompts = [f"Request number {i} asks for a short story about the sea." for i in range(batch)]

    def run(new_tokens: int) -> tuple[float, int]:
        before = engine.stats()["num_decode_steps"]
        start = time.perf_counter()
        engine.generate(prompts, {"max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True})
        wall = time.perf_counter() - start
        engine.flush_cache()
        return wall, engine.stats()["num_decode_steps"] - before

    run(2)  # warm-up: first batch shapes, allocator
    samples = []
    steps = 0
    for _ in range(repeats):
        short_wall, short_steps = run(tokens)
        long_wall, long_steps = run(4 * tokens)
        steps = long_steps
        samples.append(1000 * (long_wall - short_wall) / max(1, long_steps - short_steps))
    return statistics.median(samples), steps


def make_program(nodes: int):
    """K tiny gens in a row: many program nodes, little model work per node."""

    @sgc.function
    def many_small_gens(s, topic: str):
        s += "Notes on " + topic + ".\n"
        for i in range(nodes):
            s += f"Point {i}: " + gen(f"p{i}", max_tokens=1) + "\n"

    return many_small_gens


def node_us(runtime, batch: int, nodes_per_program: int, repeats: int) -> tuple[float, int]:
    """Median us per program node over `batch` instances, and the IR node count of one instance."""
    program = make_program(nodes_per_program)
    rows = [{"topic": f"topic {i}"} for i in range(batch)]
    ir_nodes = _ir_nodes(runtime.compile(program))
    program.run_batch(rows[:1], backend=runtime, temperature=0)  # warm-up (compile, first shapes)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        states = program.run_batch(rows, backend=runtime, temperature=0)
        wall = time.perf_counter() - start
        failed = [st.error() for st in states if st.error() is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} instances failed, the first: {failed[0]}")
        samples.append(1e6 * wall / (batch * ir_nodes))
        runtime.engine.flush_cache()
    return statistics.median(samples), ir_nodes


def _ir_nodes(compiled) -> int:
    """Nodes of the compiled program's graphs (every op the executor dispatches)."""
    return sum(1 for g in compiled.module.graphs.values() for _ in g.nodes())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="whose config and tokenizer to use")
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 64, 256])
    ap.add_argument("--tokens", type=int, default=16, help="T: the short run's new tokens (the long run: 4T)")
    ap.add_argument("--nodes", type=int, default=16, help="gens per program instance")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()

    rows = []
    biggest = max(args.batches)
    kv_slots = biggest * (64 + 4 * args.tokens + 8 * args.nodes) + 4096
    with sgc.Runtime(args.model, device="cpu", null_model=True, max_running_requests=max(256, biggest),
                     max_total_tokens=kv_slots) as runtime:
        engine = runtime.engine
        for b in args.batches:
            step_ms, steps = decode_step_ms(engine, b, args.tokens, args.repeats)
            per_node, nodes = node_us(runtime, b, args.nodes, args.repeats)
            rows.append({"batch": b, "decode_step_ms": step_ms, "decode_steps": steps,
                         "node_us": per_node, "ir_nodes_per_instance": nodes})
            print(f"batch {b}: {step_ms:.3f} ms per decode step, {per_node:.1f} us per program node "
                  f"({nodes} nodes per instance)", flush=True)
    print()
    print("| batch | decode step (ms) | program node (us, upper bound) |")
    print("| --- | --- | --- |")
    for r in rows:
        print(f"| {r['batch']} | {r['decode_step_ms']:.3f} | {r['node_us']:.1f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
