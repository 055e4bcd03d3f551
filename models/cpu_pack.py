"""Weights re-laid-out once for the fastest CPU float32 matmul of each projection.

`F.linear(x, W)` hands MKL a transposed operand (`x @ W.T`), and for few rows (a decode step has
one per request) MKL's kernels for that case are slow: below 32 rows they re-read the weight for
every few rows. Measured on this project's 2-core machine (one thread, CPU time, the default
model's shapes; docs/performance.md "Linear layouts on CPU"), the same products cost:

* layer projections: `x @ W_t` with `W_t = W.T` stored contiguous once (plain NN sgemm) is the
  fastest at every row count: 2.4x `F.linear` at 8 rows, 1.5x at 16, 1.25x at 48, even at 32 and
  in prefills (512-2048 rows);
* the LM head (vocab x hidden, 85x wider than tall): oneDNN's prepacked linear is fastest up to a
  few hundred rows (11.5 ms vs 32 ms for `F.linear` at 8 rows, 19.4 vs 28.2 at 32); beyond that
  every layout costs the same, so large inputs use `F.linear`.

The results equal `F.linear`'s up to float rounding (~1e-6 relative: another blocking of the same
dot products), so greedy output matches HF transformers as before (tests/test_engine_parity.py).

A pack remembers which tensor it was made from (storage pointer and version counter): if the weight
is replaced or written in place afterwards, the pack is stale and the layer quietly goes back to
`F.linear` until it is packed again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# A weight at least this many times wider (out) than tall (in), with at least WIDE_MIN_OUT outputs,
# is an LM head: oneDNN's layout for it, at most ONEDNN_MAX_ROWS input rows.
WIDE_RATIO = 8
WIDE_MIN_OUT = 16384
ONEDNN_MAX_ROWS = 256


def onednn_available() -> bool:
    """Whether this torch build has oneDNN's prepacked linear ops (x86 CPU builds do)."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def is_wide(weight: torch.Tensor) -> bool:
    out_features, in_features = weight.shape
    return out_features >= WIDE_MIN_OUT and out_features >= WIDE_RATIO * in_features


@dataclass(frozen=True)
class PackedWeight:
    """A copy of a weight in the layout its fast kernel reads, tied to the exact tensor it came from.

    kind "transposed": `data` is W.T contiguous, used as `x @ data`. kind "onednn": `data` is
    oneDNN's prepacked weight, used for inputs of at most ONEDNN_MAX_ROWS rows.
    """

    kind: str
    data: torch.Tensor
    source_ptr: int
    source_version: int

    @classmethod
    def of(cls, weight: torch.Tensor) -> PackedWeight:
        detached = weight.detach()
        if is_wide(detached) and onednn_available():
            data, kind = torch.ops.mkldnn._reorder_linear_weight(detached, None), "onednn"
        else:
            data, kind = detached.t().contiguous(), "transposed"
        return cls(kind, data, weight.data_ptr(), weight._version)

    def matches(self, weight: torch.Tensor) -> bool:
        return weight.data_ptr() == self.source_ptr and weight._version == self.source_version


def can_pack(weight: torch.Tensor | None) -> bool:
    return weight is not None and weight.dim() == 2 and weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.numel() > 0


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pack: PackedWeight | None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, through the pack when it is current and x is a 2-D CPU float32 tensor."""
    if pack is None or x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 2 or not pack.matches(weight):
        return F.linear(x, weight, bias)
    if pack.kind == "transposed":
        return torch.mm(x, pack.data) if bias is None else torch.addmm(bias, x, pack.data)
    if x.shape[0] <= ONEDNN_MAX_ROWS:
        return torch.ops.mkldnn._linear_pointwise(x, pack.data, bias, "none", [], "")
    return F.linear(x, weight, bias)


def pack_linears(model: nn.Module) -> int:
    """Pack the weight of every module that takes a pack (has a `weight_pack` attribute); returns how
    many were packed. Idempotent: current packs are kept. Does nothing off CPU float32."""
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
