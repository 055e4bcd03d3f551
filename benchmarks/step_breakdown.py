"""Where a model step's time goes on CPU: wall-clock per part, taken with module hooks.

Used by `bench_step.py --breakdown`. CPU ops run synchronously, so timing each module call with
perf_counter (hooks on the model's norm, rotary, embedding and projection modules, wrappers around
the decoder's rotary functions, the runner's attention function and the KV write) attributes the
step's time exactly; what no part claims (residual adds, SiLU-and-multiply, reshapes, Python glue)
is reported as the rest.

The parts are those of the Python-driven path (`DecoderForCausalLM.forward`, with the fused native
ops where the runner set them): the whole-forward native call (`NativeDecoderForward`) that the
runner takes for most CPU steps is one opaque call, so it is switched off while parts are timed;
`bench_step.py`'s step timings measure it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

from executor.runtime.forward_batch import ForwardMode
from models import decoder
from models.layers import Embedding, MergedLinear, RMSNorm, RotaryEmbedding

PARTS = ("linears", "attention (kernel)", "KV write", "norms", "rope", "embedding", "LM head", "sampling",
         "rest (adds, SiLU*mul, glue)")


def _category(module: nn.Module) -> str | None:
    """The part a module's forward hooks count (fused projections are timed by wrapping
    `forward_unsplit` instead, which the decoder's fused path calls directly)."""
    if isinstance(module, nn.Linear):
        return "linears"
    if isinstance(module, RMSNorm):
        return "norms"
    if isinstance(module, RotaryEmbedding):
        return "rope"
    if isinstance(module, Embedding):
        return "embedding"
    return None


class _Timer:
    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)

    def timed(self, part: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.totals[part] += time.perf_counter() - start
        return wrapper


class _TimedLayerOps:
    """The fused layer ops with their norm and rotary calls timed (SiLU*up stays in the rest)."""

    def __init__(self, ops, timer: _Timer) -> None:
        self.rmsnorm = timer.timed("norms", ops.rmsnorm)
        self.add_rmsnorm_ = timer.timed("norms", ops.add_rmsnorm_)
        self.rotate_ = timer.timed("rope", ops.rotate_)
        self.silu_mul = ops.silu_mul


def time_parts(harness, batch, rounds: int) -> dict[str, float]:
    """Mean ms per part of `harness.step(batch)` over `rounds` steps (after one warm-up)."""
    timer = _Timer()
    runner = harness.runner
    model = runner.model
    handles = []
    starts: dict[int, float] = {}
    for module in model.modules():
        part = _category(module)
        if part is None:
            continue

        def pre(mod, _args, key=id(module)):
            starts[key] = time.perf_counter()

        def post(mod, _args, _out, key=id(module), part=part):
            timer.totals[part] += time.perf_counter() - starts[key]

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    # Parts are only visible on the Python-driven path: the whole-forward native call is one opaque
    # call (its total is what `bench_step.py`'s step timings measure).
    native_forward, runner.native_forward = getattr(runner, "native_forward", None), None
    merged = [m for m in model.modules() if isinstance(m, MergedLinear)]
    for module in merged:
        module.forward_unsplit = timer.timed("linears", module.forward_unsplit)
    layer_ops = getattr(model, "layer_ops", None)
    if layer_ops is not None:  # the fused native path: its norms include the residual adds
        model.layer_ops = _TimedLayerOps(layer_ops, timer)
    original_attention_for = runner._attention_for
    original_write = harness.pool.write
    original_logits = runner.logits

    def attention_for(b):
        fn = original_attention_for(b)
        return timer.timed("attention (kernel)", fn)

    runner._attention_for = attention_for
    # The decoder gathers rotary angles once per forward and rotates with plain functions.
    rotary_functions = {"rotate_": decoder.rotate_}
    for name, fn in rotary_functions.items():
        setattr(decoder, name, timer.timed("rope", fn))
    rotaries = {m for m in model.modules() if isinstance(m, RotaryEmbedding)}
    for rotary in rotaries:
        rotary.angles = timer.timed("rope", rotary.angles)
    harness.pool.write = timer.timed("KV write", original_write)
    runner.logits = timer.timed("LM head", original_logits)
    try:
        harness.step(batch)
        timer.totals.clear()
        wall = 0.0
        for _ in range(rounds):
            start = time.perf_counter()
            hidden = runner.forward(batch)
            if batch.mode is ForwardMode.EXTEND:
                hidden = hidden[torch.cumsum(batch.extend_lens, 0) - 1]
            logits = runner.logits(hidden)
            timer.timed("sampling", lambda logits=logits: logits.max(dim=1).indices)()
            wall += time.perf_counter() - start
    finally:
        for h in handles:
            h.remove()
        for module in merged:
            del module.forward_unsplit
        if layer_ops is not None:
            model.layer_ops = layer_ops
        runner.native_forward = native_forward
        for name, fn in rotary_functions.items():
            setattr(decoder, name, fn)
        for rotary in rotaries:
            del rotary.angles
        del runner._attention_for, runner.logits
        del harness.pool.write
    parts = {name: 1000 * t / rounds for name, t in timer.totals.items()}
    # The attention wrapper's time includes the KV write it calls.
    parts["attention (kernel)"] = parts.get("attention (kernel)", 0.0) - parts.get("KV write", 0.0)
    total = 1000 * wall / rounds
    parts["rest (adds, SiLU*mul, glue)"] = total - sum(parts.values())
    parts["total"] = total
    return parts


def breakdown_table(harness, rounds: int = 3) -> str:
    """A markdown table: ms and share of each part, decode at batch 1 and 32 and the 32 x 128 prefill."""
    columns = {
        "decode b=1": time_parts(harness, harness.decode_batch(1), rounds),
        "decode b=32": time_parts(harness, harness.decode_batch(32), rounds),
        "prefill 32x128": time_parts(harness, harness.prefill_batch(), rounds),
    }
    header = "| part | " + " | ".join(f"{name} ms | share" for name in columns) + " |"
    lines = [header, "|---|" + "---|---|" * len(columns)]
    for part in (*PARTS, "total"):
        cells = []
        for parts in columns.values():
            ms = parts.get(part, 0.0)
            cells.append(f"{ms:.1f} | {100 * ms / parts['total']:.0f}%")
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
