"""A decoder layer's ops outside matmuls and attention, at the default model's widths (issue 12).

    .venv/bin/python benchmarks/bench_layer_ops.py                  # eager: reference vs model
    .venv/bin/python benchmarks/bench_layer_ops.py --compile        # also torch.compile (inductor)
    .venv/bin/python benchmarks/bench_layer_ops.py --stack          # also the layers' per-step host cost

Three ways to compute rotary, RMSNorm, SiLU*mul and the residual add at decode and prefill row
counts, each timed in alternation with the others (minimum over rounds, so a shared machine's
load cancels out):

* **reference**: the formulas the model used before (`executor/kernels/rotary_ref.py`,
  `norm_ref.py`, out-of-place SiLU*mul and add), i.e. HF's math op by op;
* **model**: what `models/layers.py` runs now (angles gathered once, q and k rotated together in
  place, five-op norm, in-place SiLU*mul and residual add); bit-identical to the reference, checked;
* **compiled** (`--compile`): the model's functions through `torch.compile(dynamic=True)`, with
  the compile time of each. Inductor fuses the reduction differently, so its results differ from
  the reference by float rounding; the largest difference is printed.

`--stack` also times a whole 30-layer decoder at tiny widths (hidden 64) with an attention that
returns q: the matmuls cost almost nothing there, so its CPU time per forward is what the layers'
Python, module calls and pointwise ops cost a step regardless of the model's size.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from executor.kernels.norm_ref import rmsnorm_ref  # noqa: E402
from executor.kernels.rotary_ref import rotary_embedding_ref  # noqa: E402
from models.layers import RMSNorm, RotaryAngles, RotaryEmbedding, rotate_  # noqa: E402

HIDDEN, HEAD_DIM, HEADS, KV_HEADS, INTERMEDIATE, LAYERS = 576, 64, 9, 3, 1536, 30  # SmolLM2-135M
ROWS = (1, 8, 32, 64, 4096)  # decode batches and a 32 x 128 prefill


def best_us(fns: dict[str, Callable[[], object]], reps: int, rounds: int) -> dict[str, float]:
    """Minimum microseconds per call of each function, timed in alternation."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / reps)
    return {name: 1e6 * t for name, t in best.items()}


class Inputs:
    """One layer's activations at `rows` rows; `fresh` copies stand in for a new matmul output."""

    def __init__(self, rows: int, rotary: RotaryEmbedding) -> None:
        gen = torch.Generator().manual_seed(rows)
        self.rows = rows
        self.qkv = torch.randn(rows, (HEADS + 2 * KV_HEADS) * HEAD_DIM, generator=gen)
        self.hidden = 3 * torch.randn(rows, HIDDEN, generator=gen)
        self.residual = torch.randn(rows, HIDDEN, generator=gen)
        self.gate_up = torch.randn(rows, 2 * INTERMEDIATE, generator=gen)
        self.positions = torch.arange(rows) % 128 + 5
        self.angles = rotary.angles(self.positions, self.hidden)
        self.table = rotary._cos_sin(self.hidden)

    def qk_of(self, qkv: torch.Tensor) -> torch.Tensor:
        return qkv[:, : (HEADS + KV_HEADS) * HEAD_DIM].view(self.rows, -1, HEAD_DIM)


def reference_ops(x: Inputs, norm: RMSNorm) -> dict[str, Callable[[], object]]:
    def rope() -> object:
        q, k, _ = x.qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
        return rotary_embedding_ref(x.positions, q.view(x.rows, -1, HEAD_DIM), k.view(x.rows, -1, HEAD_DIM),
                                    *x.table)

    return {
        "rope": rope,
        "norm": lambda: rmsnorm_ref(x.hidden, norm.weight, norm.eps),
        "silu*mul": lambda: F.silu(x.gate_up[:, :INTERMEDIATE]) * x.gate_up[:, INTERMEDIATE:],
        "residual add": lambda: x.residual.clone() + x.hidden,
    }


def model_ops(x: Inputs, norm: RMSNorm) -> dict[str, Callable[[], object]]:
    scratch = x.qkv.clone()  # rotated in place over and over: the timing does not depend on values

    return {
        "rope": lambda: rotate_(x.qk_of(scratch), x.angles),
        "norm": lambda: norm(x.hidden),
        "silu*mul": lambda: F.silu(x.gate_up[:, :INTERMEDIATE]).mul_(x.gate_up[:, INTERMEDIATE:]),
        "residual add": lambda: x.residual.clone().add_(x.hidden),
    }


def check_identical(x: Inputs, norm: RMSNorm) -> None:
    """The model's ops give the reference's bits (else the timing comparison would be meaningless)."""
    ref, ours = reference_ops(x, norm), model_ops(x, norm)
    qkv = x.qkv.clone()
    rotated = rotate_(x.qk_of(qkv), x.angles)
    ref_q, ref_k = ref["rope"]()
    assert torch.equal(rotated[:, :HEADS], ref_q) and torch.equal(rotated[:, HEADS:], ref_k), "rope differs"
    for name in ("norm", "silu*mul", "residual add"):
        assert torch.equal(ref[name](), ours[name]()), f"{name} differs"


def eager_table(rows: tuple[int, ...], rounds: int) -> str:
    rotary = RotaryEmbedding(HEAD_DIM, 8192, 100000.0, None)
    norm = RMSNorm(HIDDEN, 1e-5)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.2 * torch.randn(HIDDEN, generator=torch.Generator().manual_seed(0)))
    lines = ["| rows | op | reference us | model us | speedup | per step (x layers) saved ms |", "|---|---|---|---|---|---|"]
    for n in rows:
        x = Inputs(n, rotary)
        check_identical(x, norm)
        ref, ours = reference_ops(x, norm), model_ops(x, norm)
        reps = 5 if n > 1000 else 100
        for op in ref:
            t = best_us({"ref": ref[op], "model": ours[op]}, reps, rounds)
            per_step = LAYERS * (2 if op in ("norm", "residual add") else 1)
            lines.append(f"| {n} | {op} | {t['ref']:.1f} | {t['model']:.1f} | {t['ref'] / t['model']:.2f}x | "
                         f"{per_step * (t['ref'] - t['model']) / 1000:.2f} |")
    return "\n".join(lines)


def compiled_table(rows: tuple[int, ...], rounds: int) -> str:
    """Each op eager vs torch.compile'd, with compile times and the largest difference."""
    rotary = RotaryEmbedding(HEAD_DIM, 8192, 100000.0, None)
    weight = 1 + 0.2 * torch.randn(HIDDEN, generator=torch.Generator().manual_seed(0))

    def norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        scale = torch.mean(x * x, -1, keepdim=True).add_(1e-5).rsqrt_()
        return (x * scale).mul_(w)

    def rope(qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return rotate_(qk.clone(), RotaryAngles(cos, sin))

    def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
        return F.silu(gate_up[:, :INTERMEDIATE]) * gate_up[:, INTERMEDIATE:]

    def add_norm(residual: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        summed = residual + x
        return summed, norm(summed, w)

    eager = {"norm": norm, "rope": rope, "silu*mul": silu_mul, "add+norm": add_norm}
    compiled = {name: torch.compile(fn, dynamic=True) for name, fn in eager.items()}
    lines = ["| op | compile s | rows | eager us | compiled us | speedup | max diff |", "|---|---|---|---|---|---|---|"]
    compile_s: dict[str, float] = {}
    for n in rows:
        x = Inputs(n, rotary)
        qk = x.qk_of(x.qkv)
        args = {"norm": (x.hidden, weight), "rope": (qk, x.angles.cos, x.angles.sin), "silu*mul": (x.gate_up,),
                "add+norm": (x.residual, x.hidden, weight)}
        for name in eager:
            if name not in compile_s:
                start = time.perf_counter()
                compiled[name](*args[name])
                compile_s[name] = time.perf_counter() - start
            a, b = eager[name](*args[name]), compiled[name](*args[name])
            diff = max((p - q).abs().max().item() for p, q in zip(_tuple(a), _tuple(b)))
            call = args[name]
            t = best_us({"eager": lambda fn=eager[name], a=call: fn(*a), "compiled": lambda fn=compiled[name], a=call: fn(*a)},
                        5 if n > 1000 else 100, rounds)
            lines.append(f"| {name} | {compile_s[name]:.1f} | {n} | {t['eager']:.1f} | {t['compiled']:.1f} | "
                         f"{t['eager'] / t['compiled']:.2f}x | {diff:.1e} |")
    return "\n".join(lines)


def stack_table(rows: tuple[int, ...], rounds: int) -> str:
    """CPU ms per forward of a 30-layer, hidden-64 decoder (trivial attention), as-is and with
    `nn.Module.__call__` short-circuited to `forward` (what module-call overhead costs)."""
    from torch import nn

    from models import ModelConfig, create_model
    from models.cpu_pack import pack_linears

    config = ModelConfig(
        architecture="LlamaForCausalLM", vocab_size=256, hidden_size=64, intermediate_size=128,
        num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None, max_position_embeddings=512,
        tie_word_embeddings=True, attention_bias=False, qk_norm=False, bos_token_id=None, eos_token_ids=(0,),
    )
    torch.manual_seed(0)
    model = create_model(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.1)
    pack_linears(model)

    def attention(layer_id: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return q

    def direct_call(self: nn.Module, *args: object, **kwargs: object) -> object:
        return self.forward(*args, **kwargs)

    lines = ["| rows | forward CPU ms | with Module.__call__ skipped |", "|---|---|---|"]
    for n in rows:
        ids, positions = torch.randint(0, 256, (n,)), torch.arange(n) + 3

        def forward(ids: torch.Tensor = ids, positions: torch.Tensor = positions) -> object:
            with torch.inference_mode():
                return model(ids, positions, attention)

        plain = _cpu_ms(forward, rounds)
        original = nn.Module.__call__
        nn.Module.__call__ = direct_call
        try:
            direct = _cpu_ms(forward, rounds)
        finally:
            nn.Module.__call__ = original
        lines.append(f"| {n} | {plain:.2f} | {direct:.2f} |")
    return "\n".join(lines)


def _cpu_ms(fn: Callable[[], object], rounds: int, reps: int = 20) -> float:
    """Minimum thread CPU ms per call (time descheduled does not count)."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.thread_time()
        for _ in range(reps):
            fn()
        best = min(best, (time.thread_time() - start) / reps)
    return 1000 * best


def _tuple(x: object) -> tuple[torch.Tensor, ...]:
    return x if isinstance(x, tuple) else (x,)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: per-op overhead)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd versions")
    parser.add_argument("--stack", action="store_true", help="also time a 30-layer tiny-width decoder")
    args = parser.parse_args()
    if args.threads < 1 or args.rounds < 1:
        raise SystemExit("--threads and --rounds must be >= 1")
    torch.set_num_threads(args.threads)
    print(f"# bench_layer_ops: torch {torch.__version__}, {args.threads} threads")
    with torch.inference_mode():
        print(eager_table(ROWS, args.rounds))
        if args.compile:
            print()
            print(compiled_table(ROWS, args.rounds))
    if args.stack:  # builds a model: not inside inference_mode (its packs track parameter versions)
        print()
        print(stack_table((1, 8, 32, 64), args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
