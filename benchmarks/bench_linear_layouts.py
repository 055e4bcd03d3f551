"""Which weight layout makes the CPU float32 projections fastest, by row count (models/cpu_pack.py's choice).

    .venv/bin/python benchmarks/bench_linear_layouts.py              # ~1 min on 2 idle cores
    .venv/bin/python benchmarks/bench_linear_layouts.py --threads 1

The product `x @ W.T` for the default model's shapes, as a decode step meets it: all 30 layers'
qkv, o, gate_up and down projections, each a distinct weight, so every weight comes cold from DRAM
(a step is weight-streaming bound at small row counts); and the LM head (49152 x 576) with the cache
flushed before each call. Five kernels:

* `F.linear` on the checkpoint's [out, in] weight (what HF transformers runs);
* `x @ W_t` with W.T stored contiguous once (MKL's NN sgemm);
* MKL's packed GEMM (`_mkl_reorder_linear_weight`, 32-row hint);
* oneDNN's prepacked linear (`mkldnn._reorder_linear_weight`);
* sgc's native panel GEMM (`executor/kernels/small_gemm_cpu.py`), when the native kernels build.

Wall time, the minimum over rounds (other processes only add time); run it on an idle machine. The
fastest layout per row count is in bold.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from executor.kernels.small_gemm_cpu import panel_packer  # noqa: E402

LAYER_SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # qkv, o, gate_up, down (out, in)
HEAD = (49152, 576)
LAYERS = 30
ROWS = (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 64, 128, 256, 512)


def layouts(weight: torch.Tensor) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    transposed = weight.t().contiguous()
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "F.linear": lambda x: F.linear(x, weight),
        "x @ W_t": lambda x: torch.mm(x, transposed),
    }
    if torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight"):
        packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, 32)
        fns["MKL packed"] = lambda x: torch.ops.mkl._mkl_linear(x, packed, weight, None, 32)
    if torch.backends.mkldnn.is_available():
        onednn = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        fns["oneDNN"] = lambda x: torch.ops.mkldnn._linear_pointwise(x, onednn, None, "none", [], "")
    packer = panel_packer()
    if packer is not None:
        panels = packer(weight)
        fns["panels"] = lambda x: panels.matmul(x, None)
    return fns


def best_ms(run: Callable[[], object], rounds: int, before: Callable[[], object] = lambda: None) -> float:
    best = float("inf")
    for _ in range(rounds):
        before()
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def print_row(rows: int, times: dict[str, float]) -> None:
    fastest = min(times.values())
    cells = [f"**{t:.1f}**" if t == fastest else f"{t:.1f}" for t in times.values()]
    print(f"| {rows} | " + " | ".join(cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    layers = [[layouts(torch.randn(*shape, generator=gen) * 0.02) for shape in LAYER_SHAPES] for _ in range(LAYERS)]
    head = layouts(torch.randn(*HEAD, generator=gen) * 0.02)
    flush = torch.empty(64 << 18)  # 64 MiB written before each LM head call: the head comes from DRAM
    names = list(head)
    print(f"# bench_linear_layouts: torch {torch.__version__}, {torch.get_num_threads()} threads, wall ms")
    print(f"\n| rows: {LAYERS} layers' projections | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for rows in ROWS:
        inputs = {k: torch.randn(rows, k, generator=gen) for k in {shape[1] for shape in LAYER_SHAPES}}

        def step(name: str, inputs: dict[int, torch.Tensor] = inputs) -> None:
            for layer in layers:
                for shape, fns in zip(LAYER_SHAPES, layer):
                    fns[name](inputs[shape[1]])

        print_row(rows, {name: best_ms(lambda n=name: step(n), args.rounds) for name in names})
    print(f"\n| rows: LM head {HEAD[0]} x {HEAD[1]}, cold | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for rows in ROWS:
        x = torch.randn(rows, HEAD[1], generator=gen)
        print_row(rows, {name: best_ms(lambda f=fn, x=x: f(x), args.rounds, lambda: flush.fill_(1.0))
                         for name, fn in head.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
