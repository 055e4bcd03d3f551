"""Decode attention for groups of requests that share a cached prefix (CPU).

A fork's branches decode over the same prefix KV (the essay they all comment on). Plain decode
attention gathers and multiplies that prefix once per branch; here each group's prefix K/V is
gathered once and all the group's queries (branches x query heads) attend to it in one larger
matmul, the "cascade" or "shared-prefix" attention of Hydragen and FlashInfer. Each request's own
suffix (its tokens after the prefix) is handled like plain decode, and the two parts are combined
under one softmax: the maximum is taken over both, the exponentials of both are summed.

The groups are declared by the caller (`SharedPrefix`, built by the scheduler from what the
compiler's fused fork node says and checked against the slots), so nothing here searches for
sharing. The result equals `decode_attention_ref` up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from executor.kernels.attention_ref import gather_kv


@dataclass(frozen=True)
class SharedPrefix:
    """Which requests of a decode batch share which prefix.

    members: [G, N] batch indices of each group's requests, padded with -1 (every group has >= 1).
    prefix_lens: [G] tokens shared by all of a group's members: for every member, positions
        0 .. prefix_len - 1 of its slot row are the same slots.
    """

    members: torch.Tensor
    prefix_lens: torch.Tensor


def decode_attention_shared_prefix_ref(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    shared: SharedPrefix,
) -> torch.Tensor:
    """`decode_attention_ref` with the prefix of each group of `shared` read once per group.

    Requests in no group have no shared part. Returns [B, num_heads, head_dim].
    """
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_buffer.shape[1]
    group = num_heads // num_kv_heads
    device = q.device
    num_groups, width = shared.members.shape
    member_valid = (shared.members >= 0).reshape(-1)  # [G*N]
    member_idx = shared.members.reshape(-1).clamp(min=0)  # padding reads request 0, dropped later
    listed = member_idx[member_valid]  # batch index of every real member

    # Each request's shared length (0 outside groups); its suffix is positions shared .. seq_len - 1.
    shared_len = torch.zeros(batch, dtype=torch.long, device=device)
    shared_len[listed] = shared.prefix_lens.repeat_interleave(width)[member_valid]
    suffix_lens = seq_lens - shared_len
    max_suffix = int(suffix_lens.max())
    positions = shared_len[:, None] + torch.arange(max_suffix, device=device)[None, :]
    suffix_valid = positions < seq_lens[:, None]
    positions = torch.where(suffix_valid, positions, torch.zeros_like(positions))
    suffix_slots = torch.gather(req_to_token[req_rows], 1, positions)
    k_suffix, v_suffix = gather_kv(k_buffer, v_buffer, suffix_slots, suffix_valid)  # [B, Hkv, Ls, D]
    qg = q.view(batch, num_kv_heads, group, head_dim)
    suffix_scores = torch.matmul(qg, k_suffix.transpose(-1, -2)) * scale  # [B, Hkv, group, Ls]
    suffix_scores = suffix_scores.masked_fill(~suffix_valid[:, None, None, :], float("-inf"))

    # The prefix of each group, read through its first member's row, against all members' queries.
    max_prefix = int(shared.prefix_lens.max())
    leaders = req_rows[shared.members[:, 0]]
    prefix_valid = torch.arange(max_prefix, device=device)[None, :] < shared.prefix_lens[:, None]  # [G, P]
    k_prefix, v_prefix = gather_kv(k_buffer, v_buffer, req_to_token[leaders, :max_prefix], prefix_valid)  # [G, Hkv, P, D]
    q_members = qg[member_idx].view(num_groups, width, num_kv_heads, group, head_dim)
    q_members = q_members.permute(0, 2, 1, 3, 4).reshape(num_groups, num_kv_heads, width * group, head_dim)
    prefix_scores = torch.matmul(q_members, k_prefix.transpose(-1, -2)) * scale  # [G, Hkv, N*group, P]
    prefix_scores = prefix_scores.masked_fill(~prefix_valid[:, None, None, :], float("-inf"))
    prefix_scores = prefix_scores.view(num_groups, num_kv_heads, width, group, max_prefix)

    # One softmax over both parts: a common maximum per (request, head), then summed exponentials.
    prefix_max = prefix_scores.amax(-1).permute(0, 2, 1, 3).reshape(num_groups * width, num_kv_heads, group)
    row_max = suffix_scores.amax(-1)  # [B, Hkv, group]
    row_max[listed] = torch.maximum(row_max[listed], prefix_max[member_valid])
    suffix_exp = torch.exp(suffix_scores - row_max[..., None])
    denominator = suffix_exp.sum(-1)
    out = torch.matmul(suffix_exp, v_suffix)  # [B, Hkv, group, D]
    member_max = row_max[member_idx].view(num_groups, width, num_kv_heads, group).permute(0, 2, 1, 3)
    prefix_exp = torch.exp(prefix_scores - member_max[..., None])  # [G, Hkv, N, group, P]
    prefix_sum = prefix_exp.sum(-1).permute(0, 2, 1, 3).reshape(num_groups * width, num_kv_heads, group)
    prefix_out = torch.matmul(prefix_exp.view(num_groups, num_kv_heads, width * group, max_prefix), v_prefix)
    prefix_out = prefix_out.view(num_groups, num_kv_heads, width, group, head_dim).permute(0, 2, 1, 3, 4)
    prefix_out = prefix_out.reshape(num_groups * width, num_kv_heads, group, head_dim)
    denominator = denominator.index_add(0, listed, prefix_sum[member_valid])
    out = out.index_add(0, listed, prefix_out[member_valid])
    return (out / denominator[..., None]).reshape(batch, num_heads, head_dim)
