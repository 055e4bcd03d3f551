"""Host overhead: what sgc's runtime and program executor cost per step with the model's time gone.

    .venv/bin/python benchmarks/bench_host.py                      # batch 1 / 64 / 256
    .venv/bin/python benchmarks/bench_host.py --batches 64 --tokens 32 --nodes 10

The engine runs with `null_model=True` (models/null.py: forward returns zeros, the logits are one
fixed row), so a step's wall time is the host's: scheduling, KV bookkeeping, batch assembly,
sampling, detokenization, result plumbing. Per batch size B:

* **decode step**: B requests of T and of 4T new tokens (ignore_eos); the difference of the two
  runs' wall times over the difference of their decode steps is the time of one decode step at
  batch B (prefill and start-up cancel out);
* **program node**: a compiled program of K `gen(max_tokens=1)` nodes separated by constant text,
  run on B instances with `run_batch`; wall time over (B x nodes run), nodes counted from the IR
  (appends, gens, ...), minus nothing: it includes the engine steps those nodes wait for, so it is
  an upper bound on the executor's own cost per node;
* **text-only node**: the same program shape with the gens replaced by text: no engine step is
  waited for, so this is the executor's own cost per node;
* **argmax**: the greedy argmax over the [B, vocab] logits alone, the part of a step a CPU model
  pays too (on a GPU it runs on the device).

Each is reported as wall time and as CPU time of the whole process (`time.process_time`): on a
shared machine the CPU time is what contention distorts least.

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


def decode_step_ms(engine, batch: int, tokens: int, repeats: int) -> tuple[float, float, int]:
    """Median wall ms and CPU ms (the whole process: every thread) per decode step at this batch
    size, and the decode steps one long run took. CPU time is what contention on a shared machine
    distorts least: it does not count the time this process waits for a core."""
    prompts = [f"Request number {i} asks for a short story about the sea." for i in range(batch)]

    def run(new_tokens: int) -> tuple[float, float, int]:
        before = engine.stats()["num_decode_steps"]
        start, start_cpu = time.perf_counter(), time.process_time()
        engine.generate(prompts, {"max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True})
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        engine.flush_cache()
        return wall, cpu, engine.stats()["num_decode_steps"] - before

    run(2)  # warm-up: first batch shapes, allocator
    walls, cpus = [], []
    steps = 0
    for _ in range(repeats):
        short_wall, short_cpu, short_steps = run(tokens)
        long_wall, long_cpu, long_steps = run(4 * tokens)
        steps = long_steps
        extra_steps = max(1, long_steps - short_steps)
        walls.append(1000 * (long_wall - short_wall) / extra_steps)
        cpus.append(1000 * (long_cpu - short_cpu) / extra_steps)
    return statistics.median(walls), statistics.median(cpus), steps


def argmax_ms(engine, batch: int, repeats: int = 20) -> tuple[float, float]:
    """Wall and CPU ms of the greedy argmax alone over the null model's [B, vocab] logits: the part
    of a step that a CPU model pays too (on a GPU it runs on the device), so `step - argmax` is
    the host's own per-step cost."""
    import torch

    from executor.runtime.sampling import _greedy

    vocab = engine.model_config.vocab_size
    logits = torch.zeros(batch, vocab)
    logits[:, min(vocab - 1, 100)] = 1.0
    _greedy(logits)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        _greedy(logits)
    return 1000 * (time.perf_counter() - start) / repeats, 1000 * (time.process_time() - start_cpu) / repeats


def make_program(nodes: int):
    """K tiny gens in a row: many program nodes, little model work per node."""

    @sgc.function
    def many_small_gens(s, topic: str):
        s += "Notes on " + topic + ".\n"
        for i in range(nodes):
            s += f"Point {i}: " + gen(f"p{i}", max_tokens=1) + "\n"

    return many_small_gens


def make_text_program(nodes: int):
    """The same shape without gens: only text nodes, so no engine step is waited for and the time
    is the executor's own (graph dispatch, state and text assembly)."""

    @sgc.function
    def many_text_nodes(s, topic: str):
        s += "Notes on " + topic + ".\n"
        for i in range(nodes):
            s += f"Point {i}: " + topic + "\n"

    return many_text_nodes


def node_us(runtime, program, batch: int, repeats: int) -> tuple[float, float, int]:
    """Median wall us and CPU us (the whole process) per program node over `batch` instances, and
    the IR node count of one instance."""
    rows = [{"topic": f"topic {i}"} for i in range(batch)]
    ir_nodes = _ir_nodes(runtime.compile(program))
    program.run_batch(rows[:1], backend=runtime, temperature=0)  # warm-up (compile, first shapes)
    walls, cpus = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        states = program.run_batch(rows, backend=runtime, temperature=0)
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        failed = [st.error() for st in states if st.error() is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} instances failed, the first: {failed[0]}")
        walls.append(1e6 * wall / (batch * ir_nodes))
        cpus.append(1e6 * cpu / (batch * ir_nodes))
        runtime.engine.flush_cache()
    return statistics.median(walls), statistics.median(cpus), ir_nodes


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
        gens, texts = make_program(args.nodes), make_text_program(args.nodes)
        for b in args.batches:
            step_ms, step_cpu_ms, steps = decode_step_ms(engine, b, args.tokens, args.repeats)
            am_ms, am_cpu_ms = argmax_ms(engine, b)
            node, node_cpu, nodes = node_us(runtime, gens, b, args.repeats)
            text, text_cpu, text_nodes = node_us(runtime, texts, b, args.repeats)
            rows.append({"batch": b, "decode_step_ms": step_ms, "decode_step_cpu_ms": step_cpu_ms,
                         "argmax_ms": am_ms, "argmax_cpu_ms": am_cpu_ms,
                         "decode_steps": steps, "node_us": node, "node_cpu_us": node_cpu,
                         "ir_nodes_per_instance": nodes, "text_node_us": text, "text_node_cpu_us": text_cpu,
                         "text_ir_nodes_per_instance": text_nodes})
            print(f"batch {b}: decode step {step_ms:.3f} ms ({step_cpu_ms:.3f} ms CPU; its argmax alone "
                  f"{am_ms:.3f} ms, {am_cpu_ms:.3f} ms CPU); gen-program node "
                  f"{node:.1f} us ({node_cpu:.1f} us CPU, {nodes} nodes per instance); text-only node "
                  f"{text:.1f} us ({text_cpu:.1f} us CPU, {text_nodes} nodes)", flush=True)
    print()
    print("| batch | decode step ms (CPU ms) | of which argmax ms (CPU ms) "
          "| gen-program node us, upper bound (CPU us) | text-only node us (CPU us) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['batch']} | {r['decode_step_ms']:.3f} ({r['decode_step_cpu_ms']:.3f}) "
              f"| {r['argmax_ms']:.3f} ({r['argmax_cpu_ms']:.3f}) "
              f"| {r['node_us']:.1f} ({r['node_cpu_us']:.1f}) | {r['text_node_us']:.1f} ({r['text_node_cpu_us']:.1f}) |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
