"""Triton attention over the paged KV cache: extend (prefill with a cached prefix) and decode.

Same signatures and semantics as `attention_ref.py`, which is their test oracle. Both kernels read
a request's KV through its row of the request-to-token table, one slot index per token, so the KV
of a request may be scattered anywhere in the pool.

Decode is flash-decoding: with one query token per request there is too little work per request
to fill the GPU at small batch, so every (request, KV head) pair is split along the sequence into
`num_kv_splits` chunks computed by separate programs. The first kernel writes each split's
normalized partial output and its log-sum-exp; the second merges the splits. The grid depends only
on the batch size and the head counts, never on the sequence lengths, and the per-split loop
bounds are read from `seq_lens` on the device, so a decode step has no host sync and can be
captured in a CUDA graph.

One decode program serves all the query heads of one KV head (grouped-query attention): K and V
tiles are loaded once and multiplied against the whole group, padded to 16 rows so `tl.dot` can
use tensor cores. Softmax runs in base 2 (`exp2`, the scale folded with log2(e)).
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

_LOG2E = 1.4426950408889634


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    # float32 inputs get true float32 products; the default would round them to tf32 on the GPU.
    # (bf16 and fp16 inputs multiply exactly either way, accumulating in float32.)
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


# -- decode -------------------------------------------------------------------------------------------
@triton.jit
def _decode_split_kernel(
    Q, K, V, ReqToToken, ReqRows, SeqLens, MidO, MidLse,
    qk_scale,
    stride_qb, stride_qh,
    stride_kn, stride_kh,
    stride_vn, stride_vh,
    stride_table,
    stride_mob, stride_moh, stride_mos,
    stride_mlb, stride_mlh,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    IEEE: tl.constexpr,
):
    """Program (b, kv_head, split): partial attention of the group's heads over one split."""
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    row = tl.load(ReqRows + b)
    seq_len = tl.load(SeqLens + b).to(tl.int32)
    # Splits are whole tiles long so that only a split's last tile is ragged.
    split_len = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)

    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    heads = kv_head * GROUP + offs_h
    mask_h = offs_h < GROUP
    mask_d = offs_d < HEAD_DIM

    q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=mask_h[:, None] & mask_d[None, :], other=0.0)

    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    table_row = ReqToToken + row * stride_table
    for n0 in range(start, end, BLOCK_N):
        pos = n0 + offs_n
        mask_n = pos < end
        slots = tl.load(table_row + pos, mask=mask_n, other=0)
        k = tl.load(K + slots[:, None] * stride_kn + kv_head * stride_kh + offs_d[None, :],
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        s = _dot(q, tl.trans(k), IEEE) * qk_scale  # [BLOCK_H, BLOCK_N], log2 units
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every tile has a valid position
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        v = tl.load(V + slots[:, None] * stride_vn + kv_head * stride_vh + offs_d[None, :],
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
        m_i = m_new

    # An empty split (sequence shorter than the split start) leaves l_i == 0: write lse = -inf so
    # the merge gives it zero weight.
    nonempty = l_i > 0
    out = acc / tl.where(nonempty, l_i, 1.0)[:, None]
    lse = tl.where(nonempty, m_i + tl.log2(tl.where(nonempty, l_i, 1.0)), float("-inf"))
    tl.store(MidO + b * stride_mob + heads[:, None] * stride_moh + split * stride_mos + offs_d[None, :],
             out, mask=mask_h[:, None] & mask_d[None, :])
    tl.store(MidLse + b * stride_mlb + heads * stride_mlh + split, lse, mask=mask_h)


@triton.jit
def _decode_merge_kernel(
    MidO, MidLse, Out,
    stride_mob, stride_moh, stride_mos,
    stride_mlb, stride_mlh,
    stride_ob, stride_oh,
    HEAD_DIM: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Program (b, head): the splits' partial outputs weighted by their share of the softmax mass."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask_s = offs_s < NUM_SPLITS
    mask_d = offs_d < HEAD_DIM
    lse = tl.load(MidLse + b * stride_mlb + h * stride_mlh + offs_s, mask=mask_s, other=float("-inf"))
    m = tl.max(lse, 0)  # split 0 is never empty (seq_len >= 1), so m is finite
    w = tl.exp2(lse - m)
    o = tl.load(MidO + b * stride_mob + h * stride_moh + offs_s[:, None] * stride_mos + offs_d[None, :],
                mask=mask_s[:, None] & mask_d[None, :], other=0.0)
    out = tl.sum(w[:, None] * o, 0) / tl.sum(w, 0)
    tl.store(Out + b * stride_ob + h * stride_oh + offs_d, out.to(Out.dtype.element_ty), mask=mask_d)


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132  # the interpreter on CPU: behave like an H100


def default_num_kv_splits(batch: int, num_kv_heads: int, device: torch.device) -> int:
    """Splits per (request, KV head): enough programs for about two waves over the SMs.

    A function of the batch shape only (never of the sequence lengths), so a captured CUDA graph
    stays valid for any lengths. Short sequences leave trailing splits empty; they exit at once.
    """
    want = math.ceil(2 * _num_sms(device) / max(batch * num_kv_heads, 1))
    return max(1, min(16, triton.next_power_of_2(want)))


def decode_attention_splits(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    num_kv_splits: int,
    block_n: int = 64,
) -> torch.Tensor:
    """`decode_attention_triton` with the split count and tile size chosen by the caller."""
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_buffer.shape[1]
    assert num_heads % num_kv_heads == 0, (num_heads, num_kv_heads)
    assert k_buffer.stride(2) == 1 and v_buffer.stride(2) == 1 and q.stride(2) == 1
    assert req_to_token.stride(1) == 1
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    if batch == 0:
        return out
    mid_o = torch.empty((batch, num_heads, num_kv_splits, head_dim), dtype=torch.float32, device=q.device)
    mid_lse = torch.empty((batch, num_heads, num_kv_splits), dtype=torch.float32, device=q.device)
    block_d = max(16, triton.next_power_of_2(head_dim))
    _decode_split_kernel[(batch, num_kv_heads, num_kv_splits)](
        q, k_buffer, v_buffer, req_to_token, req_rows, seq_lens, mid_o, mid_lse,
        scale * _LOG2E,
        q.stride(0), q.stride(1),
        k_buffer.stride(0), k_buffer.stride(1),
        v_buffer.stride(0), v_buffer.stride(1),
        req_to_token.stride(0),
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2),
        mid_lse.stride(0), mid_lse.stride(1),
        GROUP=group, HEAD_DIM=head_dim, NUM_SPLITS=num_kv_splits,
        BLOCK_H=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n, BLOCK_D=block_d,
        IEEE=q.dtype == torch.float32,
        num_warps=4, num_stages=2,
    )
    _decode_merge_kernel[(batch, num_heads)](
        mid_o, mid_lse, out,
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2),
        mid_lse.stride(0), mid_lse.stride(1),
        out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, NUM_SPLITS=num_kv_splits,
        BLOCK_S=triton.next_power_of_2(num_kv_splits), BLOCK_D=block_d,
        num_warps=4 if head_dim >= 128 else 2,
    )
    return out


def decode_attention_triton(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Triton version of `decode_attention_ref` (same arguments and result); no host sync."""
    splits = default_num_kv_splits(q.shape[0], k_buffer.shape[1], q.device)
    return decode_attention_splits(q, k_buffer, v_buffer, req_to_token, req_rows, seq_lens, scale, splits)


# -- extend ---------------------------------------------------------------------------------------------
@triton.jit
def _extend_kernel(
    Q, K, V, Out, ReqToToken, ReqRows, PrefixLens, ExtendLens, QStarts,
    qk_scale,
    stride_qt, stride_qh,
    stride_kn, stride_kh,
    stride_vn, stride_vh,
    stride_ot, stride_oh,
    stride_table,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    IEEE: tl.constexpr,
):
    """Program (request, head, block of new tokens): flash attention over prefix + new tokens.

    Two passes over the keys: the cached prefix, which every new token sees in full (no mask),
    then the new tokens themselves up to the block's last query, under the causal mask.
    """
    b = tl.program_id(0)
    h = tl.program_id(1)
    m_block = tl.program_id(2)
    extend_len = tl.load(ExtendLens + b).to(tl.int32)
    if m_block * BLOCK_M >= extend_len:
        return
    row = tl.load(ReqRows + b)
    prefix_len = tl.load(PrefixLens + b).to(tl.int32)
    q_start = tl.load(QStarts + b)
    kv_head = h // GROUP

    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < extend_len
    mask_d = offs_d < HEAD_DIM
    q = tl.load(Q + (q_start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    table_row = ReqToToken + row * stride_table

    # Pass 1: the cached prefix.
    for n0 in range(0, prefix_len, BLOCK_N):
        pos = n0 + offs_n
        mask_n = pos < prefix_len
        slots = tl.load(table_row + pos, mask=mask_n, other=0)
        k = tl.load(K + slots[:, None] * stride_kn + kv_head * stride_kh + offs_d[None, :],
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        s = _dot(q, tl.trans(k), IEEE) * qk_scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        v = tl.load(V + slots[:, None] * stride_vn + kv_head * stride_vh + offs_d[None, :],
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
        m_i = m_new

    # Pass 2: the new tokens, causal. Keys past this block's last query are never needed.
    q_pos = prefix_len + offs_m
    end = prefix_len + tl.minimum(extend_len, (m_block + 1) * BLOCK_M)
    for n0 in range(prefix_len, end, BLOCK_N):
        pos = n0 + offs_n
        mask_n = pos < end
        slots = tl.load(table_row + pos, mask=mask_n, other=0)
        k = tl.load(K + slots[:, None] * stride_kn + kv_head * stride_kh + offs_d[None, :],
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        s = _dot(q, tl.trans(k), IEEE) * qk_scale
        s = tl.where(mask_n[None, :] & (pos[None, :] <= q_pos[:, None]), s, float("-inf"))
        # A row may see no key of this tile only after an earlier tile gave it one (the first new
        # token sees itself, and rows past extend_len see everything), so m_new stays finite.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        v = tl.load(V + slots[:, None] * stride_vn + kv_head * stride_vh + offs_d[None, :],
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
        m_i = m_new

    out = acc / l_i[:, None]
    tl.store(Out + (q_start + offs_m)[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


def extend_attention_blocks(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    prefix_lens: torch.Tensor,
    extend_lens: torch.Tensor,
    scale: float,
    block_m: int,
    block_n: int,
    max_extend_len: int | None = None,
) -> torch.Tensor:
    """`extend_attention_triton` with the tile sizes chosen by the caller.

    `max_extend_len` bounds the grid; without it the longest extend is read back from the device
    (one sync per prefill pass, which is not captured in a graph).
    """
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_buffer.shape[1]
    assert num_heads % num_kv_heads == 0, (num_heads, num_kv_heads)
    assert k_buffer.stride(2) == 1 and v_buffer.stride(2) == 1 and q.stride(2) == 1
    assert req_to_token.stride(1) == 1
    out = torch.empty_like(q)
    batch = req_rows.shape[0]
    if batch == 0 or num_tokens == 0:
        return out
    device = q.device
    req_rows = req_rows.to(device)
    prefix_lens = prefix_lens.to(device)
    extend_lens = extend_lens.to(device)
    q_starts = torch.cumsum(extend_lens, 0) - extend_lens
    if max_extend_len is None:
        max_extend_len = int(extend_lens.max())
    grid = (batch, num_heads, triton.cdiv(max_extend_len, block_m))
    _extend_kernel[grid](
        q, k_buffer, v_buffer, out, req_to_token, req_rows, prefix_lens, extend_lens, q_starts,
        scale * _LOG2E,
        q.stride(0), q.stride(1),
        k_buffer.stride(0), k_buffer.stride(1),
        v_buffer.stride(0), v_buffer.stride(1),
        out.stride(0), out.stride(1),
        req_to_token.stride(0),
        GROUP=num_heads // num_kv_heads, HEAD_DIM=head_dim,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        IEEE=q.dtype == torch.float32,
        num_warps=4 if head_dim <= 64 else 8, num_stages=2,
    )
    return out


def extend_attention_triton(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    prefix_lens: torch.Tensor,
    extend_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Triton version of `extend_attention_ref` (same arguments and result)."""
    head_dim = q.shape[2]
    # 64x64 tiles keep q, k, v and the accumulator in registers up to head_dim 128 in bf16; float32
    # tiles are twice the bytes, so they halve the key tile.
    block_n = 64 if head_dim <= 64 and q.dtype != torch.float32 else 32
    return extend_attention_blocks(q, k_buffer, v_buffer, req_to_token, req_rows, prefix_lens,
                                   extend_lens, scale, block_m=64, block_n=block_n)
