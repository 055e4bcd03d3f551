"""How the cost of one pass through the default model's linear layers grows with the tokens in it.

On this CPU (MKL, fp32) a one-token pass is a matrix-vector product, and a pass of a few tokens costs
several times as much, so an extend of k forced tokens is not free next to a one-token decode: this
bounds what jump-forward and prefix sharing can save. Weights are those of SmolLM2-135M's shapes
(30 layers of qkv, o, gate_up and down projections), random, fp32.

Usage: .venv/bin/python benchmarks/bench_linear_scaling.py
"""

from __future__ import annotations

import time

import torch

HIDDEN, INTER, KV, LAYERS = 576, 1536, 192, 30


def pass_ms(weights: list[torch.Tensor], tokens: int, repeats: int = 5) -> float:
    x = torch.randn(tokens, HIDDEN)
    xi = torch.randn(tokens, INTER)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _layer in range(LAYERS):
            for w in weights[:3]:
                torch.nn.functional.linear(x, w)
            torch.nn.functional.linear(xi, weights[3])
        best = min(best, time.perf_counter() - start)
    return best * 1000


def main() -> None:
    torch.manual_seed(0)
    weights = [torch.randn(HIDDEN + 2 * KV, HIDDEN), torch.randn(HIDDEN, HIDDEN), torch.randn(2 * INTER, HIDDEN),
               torch.randn(HIDDEN, INTER)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| tokens in the pass | linears of 30 layers (ms, best of 5) | ms per token |")
    print("|---|---|---|")
    for tokens in (1, 2, 4, 8, 16, 32, 64):
        ms = pass_ms(weights, tokens)
        print(f"| {tokens} | {ms:.1f} | {ms / tokens:.2f} |")


if __name__ == "__main__":
    main()
