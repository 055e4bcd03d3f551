"""Pure-torch reference attention over the paged KV cache.

These are the CPU path and the test oracle for the Triton kernels: every Triton kernel in this
package has the same signature as its reference here. KV lives in a token-level pool; a request's
tokens are found through its row of the request-to-token table, so a request's KV need not be
contiguous (that is what lets requests share cached prefixes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def extend_attention_ref(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    prefix_lens: torch.Tensor,
    extend_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention for new tokens that extend a cached prefix (prefill, chunked prefill).

    Args:
        q: [sum(extend_lens), num_heads, head_dim], the requests' new tokens back to back.
        k_buffer, v_buffer: [num_slots, num_kv_heads, head_dim], one layer of the pool; the new
            tokens' KV must already be stored.
        req_to_token: [max_requests, max_context] slot table.
        req_rows: [B] each request's row in req_to_token.
        prefix_lens: [B] cached tokens before the new ones.
        extend_lens: [B] new tokens per request.
    Returns:
        [sum(extend_lens), num_heads, head_dim]; token j of request i attends to positions
        0 .. prefix_lens[i] + j (causal).
    """
    out = torch.empty_like(q)
    rows = req_rows.tolist()
    prefixes = prefix_lens.tolist()
    extends = extend_lens.tolist()
    start = 0
    for row, prefix, extend in zip(rows, prefixes, extends):
        total = prefix + extend
        slots = req_to_token[row, :total]
        k = torch.index_select(k_buffer, 0, slots).transpose(0, 1)  # [Hkv, total, D]
        v = torch.index_select(v_buffer, 0, slots).transpose(0, 1)
        qi = q[start : start + extend].transpose(0, 1)  # [H, extend, D]
        # Query j sits at absolute position prefix + j and may see keys 0..prefix + j.
        key_pos = torch.arange(total, device=q.device)
        query_pos = torch.arange(prefix, total, device=q.device)
        mask = key_pos[None, :] <= query_pos[:, None]
        o = F.scaled_dot_product_attention(qi, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
        out[start : start + extend] = o.transpose(0, 1)
        start += extend
    return out


def decode_attention_ref(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention for one new token per request over its whole sequence (decode).

    Args:
        q: [B, num_heads, head_dim].
        seq_lens: [B] tokens per request including the new one (whose KV is already stored).
    Returns:
        [B, num_heads, head_dim].
    """
    batch = q.shape[0]
    max_len = int(seq_lens.max())
    slots = req_to_token[req_rows, :max_len]  # [B, L]; entries past a request's length are ignored
    positions = torch.arange(max_len, device=q.device)
    valid = positions[None, :] < seq_lens[:, None]  # [B, L]
    slots = torch.where(valid, slots, torch.zeros_like(slots)).reshape(-1)  # padding reads slot 0
    # index_select, not advanced indexing: on CPU it is several times faster for this gather.
    gathered = (batch, max_len, k_buffer.shape[1], k_buffer.shape[2])
    k = torch.index_select(k_buffer, 0, slots).view(gathered).permute(0, 2, 1, 3)  # [B, Hkv, L, D]
    v = torch.index_select(v_buffer, 0, slots).view(gathered).permute(0, 2, 1, 3)
    # Grouped-query attention as batched matmuls over [B, Hkv, group, ...]: each KV head is read
    # once for its whole group of query heads, instead of being repeated per query head.
    num_kv_heads = k_buffer.shape[1]
    group = q.shape[1] // num_kv_heads
    qg = q.view(batch, num_kv_heads, group, q.shape[2])
    scores = torch.matmul(qg, k.transpose(-1, -2)) * scale  # [B, Hkv, group, L]
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    o = torch.matmul(torch.softmax(scores, dim=-1), v)  # [B, Hkv, group, D]
    return o.reshape(batch, q.shape[1], q.shape[2])
