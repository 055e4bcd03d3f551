"""The model step on CPU against the fp32 matmul bound of the same shapes (issue 12, part 1).

    .venv/bin/python benchmarks/bench_step.py                    # everything, ~3-5 min on 2 idle cores
    .venv/bin/python benchmarks/bench_step.py --no-hf --no-raw   # step timings only (~1 min)
    .venv/bin/python benchmarks/bench_step.py --breakdown        # where a decode / prefill step goes

Measured in one process, so the ratios hold even on a shared machine:

* **matmul bound**: `F.linear` on contiguous random weights of the model's shapes (every layer's
  qkv, o, gate_up and down projections plus the LM head) at M = 1 / 8 / 32 / 64 rows: the fp32 speed
  limit of a decode step that reads all weights once, with no attention, norms or host work.
* **decode step** at batch 1 / 8 / 32 / 64 over a ~128-token context: `ModelRunner.forward` + logits +
  greedy argmax, exactly what the engine's scheduler calls per step (no scheduling).
* **prefill** of 32 x 128 tokens: one EXTEND forward plus the logits of each sequence's last token.
* **raw batch**: `Engine.generate` on 32 prompts x 64 new tokens (the `sgc bench` batch workload's
  prompts, ignore_eos), the whole engine; and HF transformers' batched `generate` on the same prompts.

The bound and the step it is compared with are timed in alternation (round robin), and each number
is the minimum over rounds: other processes on a shared machine only ever add time, so the minimum
is the best estimate of the step's own cost, and alternating keeps both sides under the same load.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from executor.runtime.forward_batch import ForwardBatch, ForwardMode  # noqa: E402
from executor.runtime.memory import KVPool, ReqToTokenPool  # noqa: E402
from executor.runtime.model_runner import ModelRunner  # noqa: E402
from models import load_model, resolve_model  # noqa: E402

CONTEXT = 128  # decode context length (tokens already cached per sequence)
PREFILL = (32, 128)  # sequences x tokens


def linear_shapes(cfg) -> list[tuple[int, int]]:
    """(in, out) of every matmul of one layer, fused as the model runs them."""
    q = cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_key_value_heads * cfg.head_dim
    return [(cfg.hidden_size, q + 2 * kv), (q, cfg.hidden_size),
            (cfg.hidden_size, 2 * cfg.intermediate_size), (cfg.intermediate_size, cfg.hidden_size)]


def matmul_bound_fn(cfg, rows: int) -> Callable[[], None]:
    """One 'step' of plain F.linear calls with the model's shapes at `rows` rows."""
    gen = torch.Generator().manual_seed(0)
    layers = [[torch.randn(o, i, generator=gen) * 0.02 for i, o in linear_shapes(cfg)]
              for _ in range(cfg.num_hidden_layers)]
    head = torch.randn(cfg.vocab_size, cfg.hidden_size, generator=gen) * 0.02
    inputs = {i: torch.randn(rows, i, generator=gen) for i, _ in linear_shapes(cfg)}

    def run() -> None:
        for weights in layers:
            for w in weights:
                F.linear(inputs[w.shape[1]], w)
        F.linear(inputs[cfg.hidden_size], head)

    return run


class StepHarness:
    """A model runner over its own KV pool, with decode and prefill batches laid out like the engine's."""

    def __init__(self, model, cfg, max_batch: int = 64) -> None:
        slots = max_batch * (CONTEXT + 8) + PREFILL[0] * PREFILL[1] + 8
        self.pool = KVPool(slots, cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim)
        self.table = ReqToTokenPool(max_batch + PREFILL[0], CONTEXT + PREFILL[1] + 8)
        self.runner = ModelRunner(model, self.pool, self.table, cfg.head_dim)
        self.vocab = cfg.vocab_size
        # Each sequence's context in one contiguous run of slots, as the engine lays it out: a prompt's
        # prefill allocates its slots together and decode slots come in per-request runs of 16
        # (`KVManager.allocate_decode`). `--interleaved` gives the old layout (one slot per request
        # per step, requests interleaved), the worst case for attention's memory access.
        self.layout(interleaved=False)
        self.max_batch = max_batch
        self._fill_kv()

    def layout(self, interleaved: bool) -> None:
        max_batch = self.table.req_to_token.shape[0] - PREFILL[0]
        for b in range(max_batch):
            if interleaved:
                self.table.req_to_token[b, : CONTEXT + 1] = 1 + b + max_batch * torch.arange(CONTEXT + 1)
            else:
                self.table.req_to_token[b, : CONTEXT + 1] = 1 + b * (CONTEXT + 1) + torch.arange(CONTEXT + 1)

    def _fill_kv(self) -> None:
        """Finite, realistic-scale KV everywhere (the pool starts uninitialized)."""
        gen = torch.Generator().manual_seed(1)
        for layer in range(self.pool.num_layers):
            for buf in (self.pool.k_buffer(layer), self.pool.v_buffer(layer)):
                buf.copy_(torch.randn(buf.shape, generator=gen))

    def decode_batch(self, batch: int) -> ForwardBatch:
        rows = torch.arange(batch)
        positions = torch.full((batch,), CONTEXT, dtype=torch.long)
        return ForwardBatch(ForwardMode.DECODE, torch.randint(0, self.vocab, (batch,)), positions,
                            self.table.req_to_token[rows, CONTEXT].clone(), rows, seq_lens=positions + 1)

    def prefill_batch(self) -> ForwardBatch:
        seqs, length = PREFILL
        rows = torch.arange(self.max_batch, self.max_batch + seqs)
        base = self.max_batch * (CONTEXT + 1) + 1
        slots = base + torch.arange(seqs * length)
        self.table.req_to_token[rows, :length] = slots.view(seqs, length)
        return ForwardBatch(ForwardMode.EXTEND, torch.randint(0, self.vocab, (seqs * length,)),
                            torch.arange(length).repeat(seqs), slots, rows,
                            prefix_lens=torch.zeros(seqs, dtype=torch.long),
                            extend_lens=torch.full((seqs,), length, dtype=torch.long))

    def step(self, batch: ForwardBatch) -> torch.Tensor:
        """Forward, logits of the rows sampled (each sequence's last token), greedy argmax."""
        hidden = self.runner.forward(batch)
        if batch.mode is ForwardMode.EXTEND:
            hidden = hidden[torch.cumsum(batch.extend_lens, 0) - 1]
        return self.runner.logits(hidden).max(dim=1).indices


def race(
    fns: dict[str, Callable[[], object]], rounds: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, float]:
    """Minimum seconds of each function over `rounds` round-robin rounds (after one warm-up each).

    `clock=time.thread_time` counts only the CPU time of the calling thread: with one torch thread
    that is the step's own work, which time spent descheduled by other processes does not inflate.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: min(ts) for name, ts in times.items()}


def raw_batch_prompts(num: int = 32) -> list[str]:
    """The `sgc bench` batch workload's prompts (same generator, same seed)."""
    from sgc.bench.workloads import WORKLOADS

    workload = WORKLOADS["batch"]
    size = workload.size("full")
    return [row["prompt"] for row in workload.make_inputs(random.Random(0), size)][:num]


def run_raw_batch(model_path: str, prompts: list[str], new_tokens: int) -> float:
    """Wall seconds of the engine generating `new_tokens` for every prompt (after a warm-up)."""
    from executor.runtime.engine import Engine

    params = {"max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True}
    with Engine(model_path=model_path, device="cpu") as engine:
        engine.generate(prompts[:4], {**params, "max_new_tokens": 4})
        engine.flush_cache()
        start = time.perf_counter()
        outs = engine.generate(prompts, params)
        wall = time.perf_counter() - start
    assert all(o["meta_info"]["completion_tokens"] == new_tokens for o in outs)
    return wall


def run_hf_batched(folder: Path, prompts: list[str], new_tokens: int) -> float:
    """Wall seconds of one left-padded HF `generate` over the prompts (after a small warm-up)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    encoded = [tok.encode(p) for p in prompts]
    width = max(len(e) for e in encoded)
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])

    def generate(n: int, rows: int) -> None:
        with torch.inference_mode():
            hf.generate(input_ids=ids[:rows], attention_mask=mask[:rows], max_new_tokens=n, min_new_tokens=n,
                        do_sample=False, pad_token_id=pad, temperature=None, top_p=None, top_k=None)

    generate(4, 4)
    start = time.perf_counter()
    generate(new_tokens, len(prompts))
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rounds", type=int, default=7, help="round-robin rounds per timing")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--no-raw", action="store_true", help="skip the engine's raw batch run")
    parser.add_argument("--no-hf", action="store_true", help="skip HF transformers' batched generate")
    parser.add_argument("--breakdown", action="store_true", help="also time each part of a step")
    parser.add_argument("--no-steps", action="store_true", help="skip the step timings (raw batch / HF only)")
    parser.add_argument("--batches", default="1,8,32,64", help="decode batch sizes, comma-separated (each <= 64)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--python-path", action="store_true",
                        help="also time each decode step with its layers driven from Python (no whole-forward call)")
    parser.add_argument("--interleaved", action="store_true",
                        help="decode contexts interleaved across requests (worst case) instead of the engine's runs")
    args = parser.parse_args()

    if args.threads < 0:
        raise SystemExit(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = resolve_model(args.model)
    print(f"# bench_step: {folder.name}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cpus, load avg {os.getloadavg()[0]:.1f}")
    if not args.no_steps:
        time_steps(folder, args)
    return run_batches(folder, raw_batch_prompts(), args)


def time_steps(folder: Path, args: argparse.Namespace) -> None:
    model, cfg = load_model(folder, "cpu", torch.float32)
    harness = StepHarness(model, cfg)
    if args.interleaved:
        harness.layout(interleaved=True)
    print("\n| measurement | ms (min) | tok/s | vs bound at same M |")
    print("|---|---|---|---|")
    bounds = {}
    for rows in parse_batches(args.batches):
        decode = harness.decode_batch(rows)
        fns = {"bound": matmul_bound_fn(cfg, rows), "step": lambda d=decode: harness.step(d)}
        if args.python_path:
            fns["python"] = lambda d=decode: python_driven_step(harness, d)
        best = race(fns, args.rounds)
        bounds[rows] = best["bound"]
        print(f"| matmul bound M={rows} | {1000 * best['bound']:.1f} | {rows / best['bound']:.0f} | 1.00 |")
        print(f"| decode step batch {rows} | {1000 * best['step']:.1f} | {rows / best['step']:.0f} | "
              f"{best['bound'] / best['step']:.2f} |")
        if args.python_path:
            print(f"| decode step batch {rows}, Python-driven layers | {1000 * best['python']:.1f} | "
                  f"{rows / best['python']:.0f} | {best['bound'] / best['python']:.2f} |")
    prefill = harness.prefill_batch()
    seqs, length = PREFILL
    best = race({"prefill": lambda: harness.step(prefill)}, max(2, args.rounds // 2))
    print(f"| prefill {seqs} x {length} | {1000 * best['prefill']:.1f} | "
          f"{seqs * length / best['prefill']:.0f} | |")
    if args.breakdown:
        from step_breakdown import breakdown_table  # benchmarks/step_breakdown.py (next to this script)

        print()
        print(breakdown_table(harness, rounds=max(3, args.rounds // 2)))


def python_driven_step(harness: StepHarness, batch: ForwardBatch) -> torch.Tensor:
    """`harness.step` with the whole-forward native call off: the same native kernels, driven layer
    by layer from Python (what the one-call forward saves is the difference)."""
    runner = harness.runner
    native_forward, runner.native_forward = runner.native_forward, None
    try:
        return harness.step(batch)
    finally:
        runner.native_forward = native_forward


def parse_batches(text: str) -> list[int]:
    """`--batches` as sizes; a clear error for anything but integers in 1..64 (the harness's rows)."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise SystemExit(f"--batches: expected comma-separated integers, got {text!r}") from None
    if not sizes or any(not 1 <= size <= 64 for size in sizes):
        raise SystemExit(f"--batches: every size must be in 1..64, got {text!r}")
    return sizes


def run_batches(folder: Path, prompts: list[str], args: argparse.Namespace) -> int:
    tokens = len(prompts) * args.new_tokens
    sgc_wall = hf_wall = None
    if not args.no_raw:
        sgc_wall = run_raw_batch(args.model, prompts, args.new_tokens)
        print(f"\nraw batch {len(prompts)} x {args.new_tokens}: sgc {sgc_wall:.2f} s ({tokens / sgc_wall:.0f} tok/s)")
    if not args.no_hf:
        hf_wall = run_hf_batched(folder, prompts, args.new_tokens)
        print(f"raw batch {len(prompts)} x {args.new_tokens}: HF batched generate {hf_wall:.2f} s "
              f"({tokens / hf_wall:.0f} tok/s)")
    if sgc_wall and hf_wall:
        print(f"sgc / HF batched speed: {hf_wall / sgc_wall:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
