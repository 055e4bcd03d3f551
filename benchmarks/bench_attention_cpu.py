"""CPU attention: the native paged kernel against torch SDPA over gathered KV, in one process.

    .venv/bin/python benchmarks/bench_attention_cpu.py            # ~1-2 min on 2 idle cores

Two tables, each side timed in alternation (round robin, minimum over rounds, as bench_step.py):

* **attention alone**, all layers of the default model's shapes (30 layers, 9 query / 3 KV heads,
  head_dim 64), decode at batch 1 / 8 / 32 over contexts of 128 / 512 / 2048 tokens, and short
  extends (chains, mixed batches): `NativePagedAttention` vs `decode_attention_cpu` /
  `extend_attention_cpu`. Slots interleave across requests, as the engine allocates them.
* **the whole decode step** of the default model (bench_step.py's harness, context 128) with the
  runner's native kernel on and off.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from bench_step import StepHarness, race  # noqa: E402

from executor.kernels.attention_cpu import NativePagedAttention, extend_attention_cpu  # noqa: E402
from models import load_model, resolve_model  # noqa: E402

LAYERS, HEADS, KV_HEADS, HEAD_DIM = 30, 9, 3, 64


def attention_case(batch: int, prefix: int, extend: int, rounds: int, clock=None) -> dict[str, float]:
    """Seconds for LAYERS attention calls of one step, native vs SDPA."""
    gen = torch.Generator().manual_seed(0)
    total = prefix + extend
    slots = batch * total
    k = torch.randn(slots + 1, KV_HEADS, HEAD_DIM, generator=gen)
    v = torch.randn(slots + 1, KV_HEADS, HEAD_DIM, generator=gen)
    table = torch.zeros(batch, total, dtype=torch.int64)
    for b in range(batch):
        table[b] = 1 + b + batch * torch.arange(total)  # interleaved, as decode steps allocate
    rows = torch.arange(batch)
    prefix_lens = torch.full((batch,), prefix)
    extend_lens = torch.full((batch,), extend)
    q = torch.randn(batch * extend, HEADS, HEAD_DIM, generator=gen)
    new_k = torch.randn(batch * extend, KV_HEADS, HEAD_DIM, generator=gen)
    new_v = torch.randn(batch * extend, KV_HEADS, HEAD_DIM, generator=gen)
    new_slots = table[:, prefix:].reshape(-1)
    scale = HEAD_DIM**-0.5
    native = NativePagedAttention.create(table, rows, prefix_lens, extend_lens, new_slots, scale, HEAD_DIM,
                                         torch.float32)
    if native is None:
        raise SystemExit("the native kernel is unavailable here (no C compiler, or SGC_NATIVE_KERNELS=0)")

    def run_native() -> None:
        for _ in range(LAYERS):
            native(q, new_k, new_v, k, v)  # stores the new K/V, then attends

    def run_sdpa() -> None:
        for _ in range(LAYERS):
            k.index_copy_(0, new_slots, new_k)  # what the runner's pool.write does on this path
            v.index_copy_(0, new_slots, new_v)
            extend_attention_cpu(q, k, v, table, rows, prefix_lens, extend_lens, scale)

    if clock is None:
        return race({"native": run_native, "sdpa": run_sdpa}, rounds)
    return race({"native": run_native, "sdpa": run_sdpa}, rounds, clock)


def whole_step(rounds: int, batches: list[int]) -> None:
    model, cfg = load_model(resolve_model("smollm2-135m-instruct"), "cpu", torch.float32)
    harness = StepHarness(model, cfg)

    def step(batch, native: bool) -> None:
        harness.runner.native_attention = native
        harness.step(batch)

    print("\n| decode step, context 128 | native ms | SDPA ms | speedup |")
    print("|---|---|---|---|")
    for rows in batches:
        batch = harness.decode_batch(rows)
        best = race({"native": lambda b=batch: step(b, True), "sdpa": lambda b=batch: step(b, False)}, rounds)
        print(f"| batch {rows} | {1000 * best['native']:.1f} | {1000 * best['sdpa']:.1f} | "
              f"{best['sdpa'] / best['native']:.2f}x |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-step", action="store_true", help="skip the whole-step table (no model load)")
    parser.add_argument("--only-extends", action="store_true", help="only the extend rows (where NATIVE_MAX_EXTEND is chosen)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="one torch thread, timed by the thread's CPU time (A/B on a busy machine)")
    args = parser.parse_args()
    clock = None
    if args.cpu_time:
        import time

        torch.set_num_threads(1)
        clock = time.thread_time
    print(f"# bench_attention_cpu: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load avg {os.getloadavg()[0]:.1f}")
    print("\n| attention, 30 layers | native ms | SDPA ms | speedup |")
    print("|---|---|---|---|")
    cases = [] if args.only_extends else [(b, ctx, 1) for b in (1, 8, 32) for ctx in (128, 512, 2048)]
    cases += [(8, 400, n) for n in (2, 4, 8, 16, 32, 64, 128)]
    for batch, prefix, extend in cases:
        best = attention_case(batch, prefix, extend, args.rounds, clock)
        kind = "decode" if extend == 1 else f"extend {extend}"
        print(f"| {kind}, batch {batch}, context {prefix} | {1000 * best['native']:.1f} | "
              f"{1000 * best['sdpa']:.1f} | {best['sdpa'] / best['native']:.2f}x |")
    if not args.no_step:
        whole_step(args.rounds, [1, 8, 32, 64])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
