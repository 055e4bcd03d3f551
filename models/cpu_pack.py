"""Weights re-laid-out once for the fastest CPU float32 matmul at each row count.

A decode step multiplies a few rows (one per request) by every weight of the model, reading the
weights from DRAM each step: it is weight-streaming bound. `F.linear` hands MKL the checkpoint's
[out, in] weight, and for 3 to ~40 rows MKL's sgemm re-packs (copies) the weight on every call, so
it streams each weight several times. Prepacked layouts avoid that. Measured on this project's
2-core machine, 2 threads, wall time, the default model's 30 layers with every weight cold in
cache as in a real step (benchmarks/bench_linear_layouts.py; docs/performance.md "Linear layouts
on CPU, cold"):

| rows | F.linear | oneDNN prepacked | MKL packed (32-row hint) |
|---|---|---|---|
| 1 | 16.6 ms | 23.2 | 17.0 |
| 8 | 36.2 | **28.2** | 37.4 |
| 16 | 38.7 | **33.4** | 40.6 |
| 32 | 46.5 | 43.2 | **38.7** |
| 48 | **52.9** | 56.9 | 55.1 |

Where the native kernels build, the model runner passes `pack_linears` their panel packer
(`executor/kernels/small_gemm_cpu.py`): a weight packed into column panels, one sequential stream
each, multiplied by a register-tiled kernel that prefetches the next panel under the current
one's FMAs. Cold, same 30 layers: 21.1 ms at 8 rows, 22.3 at 12, 30.6 at 32, 47.9 at 64 (against
the best of the columns above: 28.0 / 31.3 / 38.3 / 67.3); the LM head 4.8 ms at 8 rows, 7.0 at
32. It then serves PANEL_ROWS (the head WIDE_PANEL_ROWS) and is the weight's only extra copy.
Without the native kernels, a projection takes oneDNN's prepacked weight for ONEDNN_ROWS rows, MKL's packed weight around
32 rows (MKL_ROWS, kept only for weights up to MKL_PACK_MAX_BYTES: a third copy of every weight is
affordable for small models only), and `F.linear` on the checkpoint's weight otherwise (1-2 rows,
where it streams best, and prefill-sized inputs, where every layout costs the same). The LM head
(vocab x hidden) takes oneDNN from 3 to 256 rows (cold: 5.0 ms vs 8.2 for F.linear at 8 rows).

Results equal `F.linear`'s up to float rounding (~1e-6 relative: another blocking of the same dot
products); greedy output still matches HF transformers (tests/test_engine_parity.py).

A pack remembers which tensor it was made from (storage pointer and version counter): if the weight
is replaced or written in place afterwards, the pack is stale and the layer quietly goes back to
`F.linear` until it is packed again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

ONEDNN_ROWS = range(3, 41)  # layer projections: oneDNN's prepacked weight for these row counts
WIDE_ONEDNN_ROWS = range(3, 257)  # the LM head: the same, wider (it is 85x wider than tall)
MKL_ROWS = range(29, 36)  # MKL's packed GEMM beats oneDNN around its 32-row hint
MKL_ROWS_HINT = 32
MKL_PACK_MAX_BYTES = 64 << 20  # the third copy (MKL's packed layout) only for weights up to this size
WIDE_RATIO = 8  # a weight at least this many times wider (out) than tall (in) is an LM head
PANEL_ROWS = range(3, 257)  # layer projections: the native panel GEMM for these row counts
WIDE_PANEL_ROWS = range(1, 257)  # the LM head: the same, from one row


class PanelLayout(Protocol):
    """A weight packed for the native small-M GEMM (`executor/kernels/small_gemm_cpu.py`); the
    model runner supplies the packer, so models/ does not depend on the executor's kernels."""

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor: ...


PanelPacker = Callable[[torch.Tensor], PanelLayout]


def onednn_available() -> bool:
    """Whether this torch build has oneDNN's prepacked linear ops (x86 CPU builds do)."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def _mkl_packing_available() -> bool:
    return bool(torch.backends.mkl.is_available()) and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")


@dataclass(frozen=True)
class PackedWeight:
    """Copies of a weight in the layouts its fast kernels read, tied to the exact tensor they came
    from. `onednn`: oneDNN's prepacked weight (None without oneDNN); `mkl`: MKL's packed weight for
    inputs of MKL_ROWS rows (None for LM heads and large weights); `rows`: the row counts `onednn`
    serves."""

    onednn: torch.Tensor | None
    mkl: torch.Tensor | None
    rows: range
    source_ptr: int
    source_version: int
    panels: PanelLayout | None = None
    panel_rows: range = range(0)

    @classmethod
    def of(cls, weight: torch.Tensor, panel_packer: PanelPacker | None = None) -> PackedWeight:
        """With `panel_packer`, the weight's only extra copy is the native panel layout (it beats
        oneDNN and MKL at every row count they served); otherwise oneDNN's and MKL's layouts."""
        detached = weight.detach()
        out_features, in_features = detached.shape
        wide = out_features >= WIDE_RATIO * in_features
        if panel_packer is not None:
            return cls(None, None, range(0), weight.data_ptr(), weight._version, panel_packer(detached),
                       WIDE_PANEL_ROWS if wide else PANEL_ROWS)
        onednn = torch.ops.mkldnn._reorder_linear_weight(detached, None) if onednn_available() else None
        small = detached.numel() * detached.element_size() <= MKL_PACK_MAX_BYTES
        mkl = (torch.ops.mkl._mkl_reorder_linear_weight(detached, MKL_ROWS_HINT)
               if small and not wide and _mkl_packing_available() else None)
        return cls(onednn, mkl, WIDE_ONEDNN_ROWS if wide else ONEDNN_ROWS, weight.data_ptr(), weight._version)

    def matches(self, weight: torch.Tensor) -> bool:
        return weight.data_ptr() == self.source_ptr and weight._version == self.source_version


def can_pack(weight: torch.Tensor | None) -> bool:
    return weight is not None and weight.dim() == 2 and weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.numel() > 0


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pack: PackedWeight | None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, through the layout that is fastest for x's row count when the pack
    is current and x is a 2-D CPU float32 tensor."""
    if pack is None or x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 2 or not pack.matches(weight):
        return F.linear(x, weight, bias)
    rows = x.shape[0]
    if pack.panels is not None and rows in pack.panel_rows:
        return pack.panels.matmul(x, bias)
    if pack.mkl is not None and rows in MKL_ROWS:
        return torch.ops.mkl._mkl_linear(x, pack.mkl, weight, bias, MKL_ROWS_HINT)
    if pack.onednn is not None and rows in pack.rows:
        return torch.ops.mkldnn._linear_pointwise(x, pack.onednn, bias, "none", [], "")
    return F.linear(x, weight, bias)


def pack_linears(model: nn.Module, panel_packer: PanelPacker | None = None) -> int:
    """Pack the weight of every module that takes a pack (has a `weight_pack` attribute); returns how
    many were packed. Idempotent: current packs of the same kind are kept. Does nothing off CPU
    float32. `panel_packer`: see `PackedWeight.of`."""
    count = 0
    for module in model.modules():
        if not hasattr(module, "weight_pack"):
            continue
        weight = module.weight_to_pack() if hasattr(module, "weight_to_pack") else module.weight
        if not can_pack(weight):
            continue
        current = module.weight_pack
        if current is None or not current.matches(weight) or (current.panels is None) != (panel_packer is None):
            module.weight_pack = PackedWeight.of(weight, panel_packer)
        count += 1
    return count


def unpack_linears(model: nn.Module) -> None:
    """Drop every pack (frees their memory; layers use F.linear again)."""
    for module in model.modules():
        if hasattr(module, "weight_pack"):
            module.weight_pack = None
