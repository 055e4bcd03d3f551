"""Pure-torch reference attention over the paged KV cache.

These are the CPU path and the test oracle for the Triton kernels: every Triton kernel in this
package has the same signature as its reference here. KV lives in a token-level pool; a request's
tokens are found through its row of the request-to-token table, so a request's KV need not be
contiguous (that is what lets requests share cached prefixes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gather_kv(k_buffer: torch.Tensor, v_buffer: torch.Tensor, slots: torch.Tensor, valid: torch.Tensor,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of a padded [B, L] block of slots as [B, num_kv_heads, L, head_dim] each.

    Positions where `valid` is False read slot 0 (reserved padding); callers mask their scores.
    index_select, not advanced indexing: on CPU it is several times faster for this gather.
    """
    flat = torch.where(valid, slots, torch.zeros((), dtype=slots.dtype, device=slots.device)).reshape(-1)
    shape = (*slots.shape, k_buffer.shape[1], k_buffer.shape[2])
    k = torch.index_select(k_buffer, 0, flat).view(shape).permute(0, 2, 1, 3)
    v = torch.index_select(v_buffer, 0, flat).view(shape).permute(0, 2, 1, 3)
    return k, v


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

    A mixed pass (running requests decode as one-token extends beside prefills and jump-forward
    extends) is mostly one-token extends: those take the batched decode path, the rest are padded
    into one batch when that is small, so the cost does not grow with a Python loop per request.
    """
    out = torch.empty_like(q)
    extends = extend_lens.tolist()
    starts = [0]
    for n in extends[:-1]:
        starts.append(starts[-1] + n)
    single = [i for i, n in enumerate(extends) if n == 1]
    multi = [i for i, n in enumerate(extends) if n > 1]
    if single:
        pick = torch.tensor(single, device=q.device)
        token_idx = torch.tensor([starts[i] for i in single], device=q.device)
        out[token_idx] = decode_attention_ref(q[token_idx], k_buffer, v_buffer, req_to_token, req_rows[pick],
                                              prefix_lens[pick] + 1, scale)
    if multi:
        pick = torch.tensor(multi, device=q.device)
        max_extend = max(extends[i] for i in multi)
        max_total = int((prefix_lens[pick] + extend_lens[pick]).max())
        per_head = max_extend * max_total
        if per_head <= _PADDED_SCORES_PER_HEAD and len(multi) * q.shape[1] * per_head <= _PADDED_SCORES_LIMIT:
            _extend_padded(out, q, k_buffer, v_buffer, req_to_token, req_rows[pick], prefix_lens[pick],
                           extend_lens[pick], [starts[i] for i in multi], max_extend, max_total, scale)
        else:
            for i in multi:
                _extend_one(out, q, k_buffer, v_buffer, req_to_token[int(req_rows[i])], int(prefix_lens[i]),
                            extends[i], starts[i], scale)
    return out


# The padded batch pays off while each request's attention is small (Python overhead per request
# dominates); for long extends SDPA's fused kernel per request is faster and pads nothing.
# A rough timing on 2 busy CPU cores: 32 prompts x 50 tokens 10 ms padded vs 26 ms looped; 8 x 400 tokens
# 250 ms padded vs 104 ms looped.
_PADDED_SCORES_PER_HEAD = 1 << 15  # longest extend x longest sequence
_PADDED_SCORES_LIMIT = 1 << 24  # requests x heads x the above


def _extend_padded(out, q, k_buffer, v_buffer, req_to_token, rows, prefix_lens, extend_lens, starts,
                   max_extend, max_total, scale) -> None:
    """Multi-token extends padded to [B, max_extend] queries x [B, max_total] keys, one matmul each way."""
    batch, num_heads, head_dim = len(starts), q.shape[1], q.shape[2]
    num_kv_heads = k_buffer.shape[1]
    group = num_heads // num_kv_heads
    device = q.device
    offsets = torch.arange(max_extend, device=device)
    query_valid = offsets[None, :] < extend_lens[:, None]  # [B, Qmax]
    token_idx = torch.tensor(starts, device=device)[:, None] + offsets[None, :]
    token_idx = torch.where(query_valid, token_idx, torch.zeros_like(token_idx))  # padding reads token 0
    qg = torch.index_select(q, 0, token_idx.reshape(-1)).view(batch, max_extend, num_kv_heads, group, head_dim)
    qg = qg.permute(0, 2, 3, 1, 4)  # [B, Hkv, group, Qmax, D]
    totals = prefix_lens + extend_lens
    key_pos = torch.arange(max_total, device=device)
    key_valid = key_pos[None, :] < totals[:, None]  # [B, L]
    k, v = gather_kv(k_buffer, v_buffer, req_to_token[rows, :max_total], key_valid)
    k, v = k[:, :, None], v[:, :, None]  # [B, Hkv, 1, L, D]: one key block per query group
    # Query j of request b sits at position prefix_b + j and sees keys 0 .. prefix_b + j. Padded
    # queries still see key 0, so no row is all -inf; their outputs are dropped below.
    visible = (key_pos[None, None, :] <= (prefix_lens[:, None] + offsets[None, :])[:, :, None]) & key_valid[:, None, :]
    scores = torch.matmul(qg, k.transpose(-1, -2)) * scale  # [B, Hkv, group, Qmax, L]
    scores = scores.masked_fill(~visible[:, None, None], float("-inf"))
    o = torch.matmul(torch.softmax(scores, dim=-1), v)  # [B, Hkv, group, Qmax, D]
    o = o.permute(0, 3, 1, 2, 4).reshape(batch, max_extend, num_heads, head_dim)
    out[token_idx[query_valid]] = o[query_valid]


def _extend_one(out, q, k_buffer, v_buffer, row_slots, prefix, extend, start, scale) -> None:
    """One request's extend with SDPA over its gathered KV (long prompts: no padding waste)."""
    total = prefix + extend
    slots = row_slots[:total]
    k = torch.index_select(k_buffer, 0, slots).transpose(0, 1)  # [Hkv, total, D]
    v = torch.index_select(v_buffer, 0, slots).transpose(0, 1)
    qi = q[start : start + extend].transpose(0, 1)  # [H, extend, D]
    key_pos = torch.arange(total, device=q.device)
    query_pos = torch.arange(prefix, total, device=q.device)
    mask = key_pos[None, :] <= query_pos[:, None]
    o = F.scaled_dot_product_attention(qi, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    out[start : start + extend] = o.transpose(0, 1)


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
    k, v = gather_kv(k_buffer, v_buffer, slots, valid)  # [B, Hkv, L, D]
    # Grouped-query attention as batched matmuls over [B, Hkv, group, ...]: each KV head is read
    # once for its whole group of query heads, instead of being repeated per query head.
    num_kv_heads = k_buffer.shape[1]
    group = q.shape[1] // num_kv_heads
    qg = q.view(batch, num_kv_heads, group, q.shape[2])
    scores = torch.matmul(qg, k.transpose(-1, -2)) * scale  # [B, Hkv, group, L]
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    o = torch.matmul(torch.softmax(scores, dim=-1), v)  # [B, Hkv, group, D]
    return o.reshape(batch, q.shape[1], q.shape[2])
