"""Hot ops of the runtime: attention over the paged KV cache, RMSNorm, rotary embedding.

Every op has a pure-torch reference (`*_ref.py`) and a Triton kernel (`*_triton.py`) with the same
signature. The functions exported here dispatch on the device of their first tensor: Triton on
CUDA, the reference everywhere else. Callers never choose; tests compare the two directly (on CPU
under `TRITON_INTERPRET=1`).

The Triton modules are imported on the first CUDA call, so CPU runs never pay for importing or
compiling Triton. `SGC_DISABLE_TRITON=1` keeps the references on CUDA too (a debugging switch).
"""

from __future__ import annotations

import functools
import os
from types import ModuleType

import torch

from executor.kernels.attention_ref import decode_attention_ref, extend_attention_ref
from executor.kernels.attention_shared_ref import SharedPrefix, decode_attention_shared_prefix_ref
from executor.kernels.norm_ref import fused_add_rmsnorm_ref, rmsnorm_ref
from executor.kernels.rotary_ref import rotary_embedding_ref


@functools.cache
def _triton_modules() -> tuple[ModuleType, ModuleType, ModuleType] | None:
    if os.environ.get("SGC_DISABLE_TRITON", "") not in ("", "0"):
        return None
    try:
        from executor.kernels import attention_triton, norm_triton, rotary_triton
    except ImportError:  # no triton on this platform: the references still work on CUDA
        return None
    return attention_triton, norm_triton, rotary_triton


def triton_available() -> bool:
    """Whether CUDA tensors get the Triton kernels (False without Triton or with SGC_DISABLE_TRITON)."""
    return _triton_modules() is not None


def use_triton(x: torch.Tensor) -> bool:
    """Whether ops on `x` run as Triton kernels."""
    return x.is_cuda and _triton_modules() is not None


def extend_attention(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    prefix_lens: torch.Tensor,
    extend_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """See `extend_attention_ref`."""
    if use_triton(q):
        return _triton_modules()[0].extend_attention_triton(
            q, k_buffer, v_buffer, req_to_token, req_rows, prefix_lens, extend_lens, scale
        )
    return extend_attention_ref(q, k_buffer, v_buffer, req_to_token, req_rows, prefix_lens, extend_lens, scale)


def decode_attention(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    shared: SharedPrefix | None = None,
) -> torch.Tensor:
    """See `decode_attention_ref`. On CUDA it never syncs with the host (CUDA-graph safe).

    `shared` (groups of requests with a common prefix) makes the CPU path read each group's prefix
    once (`decode_attention_shared_prefix_ref`); the Triton kernel does not use it yet.
    """
    if use_triton(q):
        return _triton_modules()[0].decode_attention_triton(
            q, k_buffer, v_buffer, req_to_token, req_rows, seq_lens, scale
        )
    if shared is not None:
        return decode_attention_shared_prefix_ref(q, k_buffer, v_buffer, req_to_token, req_rows, seq_lens, scale,
                                                  shared)
    return decode_attention_ref(q, k_buffer, v_buffer, req_to_token, req_rows, seq_lens, scale)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """See `rmsnorm_ref`."""
    if use_triton(x):
        return _triton_modules()[1].rmsnorm_triton(x, weight, eps)
    return rmsnorm_ref(x, weight, eps)


def fused_add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """See `fused_add_rmsnorm_ref`."""
    if use_triton(x):
        return _triton_modules()[1].fused_add_rmsnorm_triton(x, residual, weight, eps)
    return fused_add_rmsnorm_ref(x, residual, weight, eps)


def rotary_embedding(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_table: torch.Tensor, sin_table: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """See `rotary_embedding_ref`."""
    if use_triton(q):
        return _triton_modules()[2].rotary_embedding_triton(positions, q, k, cos_table, sin_table)
    return rotary_embedding_ref(positions, q, k, cos_table, sin_table)


__all__ = [
    "SharedPrefix",
    "decode_attention",
    "decode_attention_ref",
    "decode_attention_shared_prefix_ref",
    "extend_attention",
    "extend_attention_ref",
    "fused_add_rmsnorm",
    "fused_add_rmsnorm_ref",
    "rmsnorm",
    "rmsnorm_ref",
    "rotary_embedding",
    "rotary_embedding_ref",
    "triton_available",
    "use_triton",
]
