"""Put the fused RMSNorm and rotary kernels into a loaded model, without touching `models/`.

A model is a plain torch module that knows nothing of the executor's kernels. On CUDA the model
runner calls `use_fused_layers(model)`, which turns every `RMSNorm` and `RotaryEmbedding` into a
subclass whose forward calls the dispatcher (`executor.kernels`). The change is a class swap in
place: parameters, tables, module names and the rotary table shared by all layers stay exactly
as they were, so nothing else can tell (state_dict, weight loading and HF names are unchanged).
"""

from __future__ import annotations

import torch
from torch import nn

from executor import kernels
from models.layers import RMSNorm, RotaryEmbedding


class FusedRMSNorm(RMSNorm):
    """`RMSNorm` computed by one kernel on CUDA (the reference, identical to the parent, elsewhere)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.rmsnorm(x, self.weight, self.eps)


class FusedRotaryEmbedding(RotaryEmbedding):
    """`RotaryEmbedding` computed by one kernel on CUDA for q and k together."""

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self._cos_sin(q)
        return kernels.rotary_embedding(positions, q, k, cos, sin)


_FUSED = {RMSNorm: FusedRMSNorm, RotaryEmbedding: FusedRotaryEmbedding}


def use_fused_layers(model: nn.Module) -> int:
    """Swap the model's norm and rotary modules for their fused versions; returns how many."""
    swapped = 0
    for module in model.modules():
        fused = _FUSED.get(type(module))  # exact type: a subclass may have its own forward
        if fused is not None:
            module.__class__ = fused
            swapped += 1
    return swapped
