"""Weights packed once for MKL's packed GEMM: the CPU float32 fast path of every projection.

A plain `F.linear` call with few rows (a decode step has one per request) spends much of its time
re-packing the whole weight into MKL's internal blocked layout, on every call. `cblas_sgemm_pack`
does that once at load: the packed GEMM then only streams the prepacked panels. Measured on this
project's 2-core AVX2 machine at 32 rows, the model's projections run ~1.4-1.9x faster (bench_step,
docs/performance.md "Model step on CPU"), and the results are bit-identical to `F.linear`'s on the
same rows (MKL computes the same blocked products). Inputs of 5-31 rows are zero-padded to 32
first (see PAD_FROM_ROWS): MKL's small-row kernel is 2x slower there and rounds differently (~1e-6).

A pack remembers which tensor it was made from (storage pointer and version counter): if the weight
is replaced or written in place afterwards, the pack is stale and the layer quietly goes back to
`F.linear` until it is packed again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# The row count MKL is told to expect. Any row count computes the same result; this one is the
# decode batch the packing was measured at. (Passing the call's own row count instead would send
# other sizes down a different, non-bit-identical path.)
PACK_ROWS_HINT = 32

# Below 16 rows MKL's sgemm switches to a kernel that re-reads the weight for every few rows: the
# LM head (49152 x 576) costs ~8 ms CPU at 1 row, ~30 at 8, ~41 at 12, but ~19 at 32 (measured on
# the 2-core dev machine, one thread, `time.thread_time`). A decode step at those batch sizes is
# weight-streaming bound, so inputs of PAD_FROM_ROWS .. PACK_ROWS_HINT - 1 rows are zero-padded to
# PACK_ROWS_HINT rows: the real rows then take the 32-row path, whose results equal F.linear's at
# 16 or more rows (the small-row path rounds differently, ~1e-6).
PAD_FROM_ROWS = 5


def mkl_packing_available() -> bool:
    """Whether this torch build has MKL's packed linear ops (x86 CPU builds do)."""
    return bool(torch.backends.mkl.is_available()) and hasattr(torch.ops.mkl, "_mkl_linear")


@dataclass(frozen=True)
class PackedWeight:
    """A weight in MKL's packed layout, tied to the exact tensor it was packed from."""

    packed: torch.Tensor
    source_ptr: int
    source_version: int

    @classmethod
    def of(cls, weight: torch.Tensor) -> PackedWeight:
        return cls(torch.ops.mkl._mkl_reorder_linear_weight(weight.detach(), PACK_ROWS_HINT),
                   weight.data_ptr(), weight._version)

    def matches(self, weight: torch.Tensor) -> bool:
        return weight.data_ptr() == self.source_ptr and weight._version == self.source_version


def can_pack(weight: torch.Tensor | None) -> bool:
    return weight is not None and weight.dim() == 2 and weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.numel() > 0


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pack: PackedWeight | None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, through the pack when it is current and x is a CPU float32 tensor."""
    if pack is not None and x.dtype == torch.float32 and x.device.type == "cpu" and pack.matches(weight):
        rows = x.shape[0]
        if x.dim() == 2 and PAD_FROM_ROWS <= rows < PACK_ROWS_HINT:
            padded = x.new_zeros((PACK_ROWS_HINT, x.shape[1]))
            padded[:rows] = x
            return torch.ops.mkl._mkl_linear(padded, pack.packed, weight, bias, PACK_ROWS_HINT)[:rows]
        return torch.ops.mkl._mkl_linear(x, pack.packed, weight, bias, PACK_ROWS_HINT)
    return F.linear(x, weight, bias)


def pack_linears(model: nn.Module) -> int:
    """Pack the weight of every module that takes a pack (has a `weight_pack` attribute); returns how
    many were packed. Idempotent: current packs are kept. Does nothing without MKL or off CPU fp32."""
    if not mkl_packing_available():
        return 0
    count = 0
    for module in model.modules():
        if not hasattr(module, "weight_pack"):
            continue
        weight = module.weight_to_pack() if hasattr(module, "weight_to_pack") else module.weight
        if not can_pack(weight):
            continue
        current = module.weight_pack
        if current is None or not current.matches(weight):
            module.weight_pack = PackedWeight.of(weight)
        count += 1
    return count


def unpack_linears(model: nn.Module) -> None:
    """Drop every pack (frees their memory; layers use F.linear again)."""
    for module in model.modules():
        if hasattr(module, "weight_pack"):
            module.weight_pack = None
