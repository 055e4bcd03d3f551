"""Triton rotary position embedding (same signature as `rotary_ref.py`).

One program rotates every query and key head of one token: the position's cos/sin row is loaded
once, and q and k come straight out of the fused qkv projection's strided views (no copies). The
eager version is about a dozen kernels per layer (gathers, slices, products, concatenations).
Each product and sum is rounded to the activation dtype exactly where torch rounds it, so the
result is bit-identical to the reference in bf16 as well as float32 (no fused multiply-add can
form across a rounding).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate_heads(X, Out, stride_xh, stride_oh, cos, sin, offs_h, offs_d, num_heads, HALF: tl.constexpr):
    mask = (offs_h[:, None] < num_heads) & (offs_d[None, :] < HALF)
    x_ptrs = X + offs_h[:, None] * stride_xh + offs_d[None, :]
    x1 = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptrs + HALF, mask=mask, other=0.0).to(tl.float32)
    dtype = Out.dtype.element_ty
    a = (x1 * cos).to(dtype).to(tl.float32)
    b = (x2 * sin).to(dtype).to(tl.float32)
    c = (x2 * cos).to(dtype).to(tl.float32)
    d = (x1 * sin).to(dtype).to(tl.float32)
    o_ptrs = Out + offs_h[:, None] * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, (a - b).to(dtype), mask=mask)
    tl.store(o_ptrs + HALF, (c + d).to(dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    Positions, Q, K, QOut, KOut, Cos, Sin,
    stride_qt, stride_qh, stride_kt, stride_kh,
    stride_qot, stride_qoh, stride_kot, stride_koh,
    stride_table,
    num_q_heads, num_k_heads,
    HALF: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(Positions + t)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HALF
    cos = tl.load(Cos + pos * stride_table + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(Sin + pos * stride_table + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    _rotate_heads(Q + t * stride_qt, QOut + t * stride_qot, stride_qh, stride_qoh, cos, sin,
                  tl.arange(0, BLOCK_HQ), offs_d, num_q_heads, HALF)
    _rotate_heads(K + t * stride_kt, KOut + t * stride_kot, stride_kh, stride_koh, cos, sin,
                  tl.arange(0, BLOCK_HK), offs_d, num_k_heads, HALF)


def rotary_embedding_triton(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_table: torch.Tensor, sin_table: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of `rotary_embedding_ref`."""
    num_tokens, num_q_heads, head_dim = q.shape
    num_k_heads = k.shape[1]
    half = head_dim // 2
    assert head_dim % 2 == 0 and q.stride(2) == 1 and k.stride(2) == 1
    assert cos_table.shape == sin_table.shape and cos_table.shape[1] == half
    assert cos_table.stride() == sin_table.stride() and cos_table.stride(1) == 1
    # Like the reference's products: a float32 table makes float32 outputs.
    q_out = torch.empty(q.shape, dtype=torch.promote_types(q.dtype, cos_table.dtype), device=q.device)
    k_out = torch.empty(k.shape, dtype=torch.promote_types(k.dtype, cos_table.dtype), device=k.device)
    if num_tokens:
        _rotary_kernel[(num_tokens,)](
            positions, q, k, q_out, k_out, cos_table, sin_table,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1),
            cos_table.stride(0),
            num_q_heads, num_k_heads,
            HALF=half, BLOCK_D=triton.next_power_of_2(half),
            BLOCK_HQ=triton.next_power_of_2(num_q_heads), BLOCK_HK=triton.next_power_of_2(num_k_heads),
            num_warps=4,
        )
    return q_out, k_out
