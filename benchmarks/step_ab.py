"""CPU time of one tree's model step, for A/B between two trees on a busy machine.

    git archive <base> | tar -x -C /tmp/base_tree && ln -s $PWD/.venv /tmp/base_tree/.venv
    for t in /tmp/base_tree .; do .venv/bin/python benchmarks/step_ab.py $t; done

Imports ROOT's runner and bench_step harness, lays every decode context out as the engine does (each
request's slots in one run), and times `StepHarness.step` with `time.thread_time` on one torch
thread (minimum of rounds): the step's own CPU, which other processes on the machine do not inflate.
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    if len(sys.argv) != 2:
        raise SystemExit("usage: step_ab.py ROOT (a checkout of sgc)")
    root = sys.argv[1]
    sys.path[:0] = [root, root + "/benchmarks"]
    import torch
    from bench_step import CONTEXT, StepHarness

    from models import load_model, resolve_model

    torch.set_num_threads(1)
    model, cfg = load_model(resolve_model("smollm2-135m-instruct"), "cpu", torch.float32)
    harness = StepHarness(model, cfg)
    for b in range(harness.max_batch):  # the engine's layout, whatever the tree's harness default
        harness.table.req_to_token[b, : CONTEXT + 1] = 1 + b * (CONTEXT + 1) + torch.arange(CONTEXT + 1)
    results = {}
    for rows in (1, 12, 32, 64):
        results[f"decode b={rows}"] = best_cpu_ms(harness, harness.decode_batch(rows), 5)
    results["prefill 32x128"] = best_cpu_ms(harness, harness.prefill_batch(), 2)
    print(root, {name: round(ms, 1) for name, ms in results.items()})
    return 0


def best_cpu_ms(harness, batch, rounds: int) -> float:
    harness.step(batch)
    best = float("inf")
    for _ in range(rounds):
        start = time.thread_time()
        harness.step(batch)
        best = min(best, time.thread_time() - start)
    return best * 1000


if __name__ == "__main__":
    raise SystemExit(main())
