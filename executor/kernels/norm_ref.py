"""Pure-torch RMSNorm and fused residual-add + RMSNorm: the CPU path and the Triton kernels' oracle.

The arithmetic is exactly that of `models.layers.RMSNorm` (and of HF): normalize in float32, round
to the activation dtype, then multiply by the weight in the weight's dtype.
"""

from __future__ import annotations

import torch


def rmsnorm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension of `x` [..., hidden] with `weight` [hidden]."""
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


def fused_add_rmsnorm_ref(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rmsnorm(x + residual), x + residual): a pre-norm layer's residual add and next norm."""
    summed = x + residual
    return rmsnorm_ref(summed, weight, eps), summed
