"""Which weight layout makes a CPU float32 projection fastest, by row count (models/cpu_pack.py's choice).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_linear_layouts.py     # ~2 min
    .venv/bin/python benchmarks/bench_linear_layouts.py --threads 2

For the default model's shapes (one layer's qkv, o, gate_up and down projections summed, and the
tied LM head), the same product `x @ W.T` through four kernels:

* `F.linear` on the checkpoint's [out, in] weight (what HF transformers runs);
* MKL's packed GEMM (`_mkl_reorder_linear_weight` with a 32-row hint; sgc's layout before);
* `x @ W_t` with W.T stored contiguous once (plain NN sgemm);
* oneDNN's prepacked linear (`mkldnn._reorder_linear_weight`).

Timed as CPU time (`time.process_time`, all threads; minimum over rounds), which other processes on
a shared machine disturb far less than wall time. The cheapest layout per row count is marked.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

LAYER = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)}
HEAD = (49152, 576)
ROWS = (1, 4, 8, 12, 16, 24, 32, 48, 64, 512)


def kernels(weight: torch.Tensor) -> dict[str, object]:
    transposed = weight.t().contiguous()
    fns = {
        "F.linear": lambda x: F.linear(x, weight),
        "x @ W_t": lambda x: torch.mm(x, transposed),
    }
    if hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight"):
        packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, 32)
        fns["MKL packed"] = lambda x: torch.ops.mkl._mkl_linear(x, packed, weight, None, 32)
    if torch.backends.mkldnn.is_available():
        onednn = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        fns["oneDNN"] = lambda x: torch.ops.mkldnn._linear_pointwise(x, onednn, None, "none", [], "")
    return fns


def cpu_ms(fn, x: torch.Tensor, reps: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(reps):
            fn(x)
        best = min(best, (time.process_time() - start) / reps)
    return best * 1000


def table(title: str, shapes: dict[str, tuple[int, int]], rows: tuple[int, ...], rounds: int) -> None:
    gen = torch.Generator().manual_seed(0)
    per_shape = {name: kernels(torch.randn(*shape, generator=gen) * 0.02) for name, shape in shapes.items()}
    names = list(next(iter(per_shape.values())))
    print(f"\n| {title}: CPU ms | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for m in rows:
        totals = dict.fromkeys(names, 0.0)
        for shape_name, fns in per_shape.items():
            x = torch.randn(m, shapes[shape_name][1], generator=gen)
            reps = max(1, int(2e8 // (m * shapes[shape_name][0] * shapes[shape_name][1] + 1)))
            for name, fn in fns.items():
                totals[name] += cpu_ms(fn, x, min(reps, 50), rounds)
        best = min(totals.values())
        cells = [f"**{v:.2f}**" if v == best else f"{v:.2f}" for v in totals.values()]
        print(f"| {m} rows | " + " | ".join(cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# bench_linear_layouts: torch {torch.__version__}, {torch.get_num_threads()} threads")
    table("one layer (qkv + o + gate_up + down)", LAYER, ROWS, args.rounds)
    table("LM head 49152 x 576", {"head": HEAD}, ROWS, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
