"""The reference paged attention equals plain dense causal attention on contiguous tensors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from executor.kernels import attention_ref, decode_attention_ref, extend_attention_ref
from executor.kernels.attention_shared_ref import SharedPrefix, decode_attention_shared_prefix_ref
from tests.tiers import examples


def dense_causal(q, k, v, num_prefix, scale):
    """q: [E, H, D]; k, v: [L, Hkv, D] with L = num_prefix + E. Explicit softmax, no SDPA."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("ehd,lhd->hel", q, k) * scale
    e, total = q.shape[0], k.shape[0]
    mask = torch.arange(total)[None, :] <= (torch.arange(e)[:, None] + num_prefix)
    scores = scores.masked_fill(~mask[None], float("-inf"))
    return torch.einsum("hel,lhd->ehd", scores.softmax(-1), v)


def make_paged(seq_lens, num_kv_heads, head_dim, seed):
    """Scatter each sequence's KV to random, non-contiguous slots of one pool."""
    g = torch.Generator().manual_seed(seed)
    total = sum(seq_lens)
    num_slots = total + 7
    perm = torch.randperm(num_slots, generator=g)[:total] + 1  # slot 0 stays reserved
    k_buf = torch.randn(num_slots + 1, num_kv_heads, head_dim, generator=g)
    v_buf = torch.randn(num_slots + 1, num_kv_heads, head_dim, generator=g)
    table = torch.zeros(len(seq_lens) + 2, max(seq_lens) + 3, dtype=torch.long)
    rows = torch.tensor([i + 1 for i in range(len(seq_lens))])  # rows need not start at 0
    start = 0
    for i, n in enumerate(seq_lens):
        table[rows[i], :n] = perm[start : start + n]
        start += n
    return k_buf, v_buf, table, rows


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(4, 4, 16), (6, 2, 32), (8, 2, 64)])
def test_extend_matches_dense(num_heads, num_kv_heads, head_dim):
    check_extend_against_dense([0, 5, 17], [7, 1, 4], num_heads, num_kv_heads, head_dim, seed=1)


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (9, 3)])
def test_decode_matches_dense(num_heads, num_kv_heads):
    seq = [1, 9, 30, 4]
    head_dim = 64
    k_buf, v_buf, table, rows = make_paged(seq, num_kv_heads, head_dim, seed=2)
    q = torch.randn(len(seq), num_heads, head_dim)
    out = decode_attention_ref(q, k_buf, v_buf, table, rows, torch.tensor(seq), head_dim**-0.5)
    for i, n in enumerate(seq):
        slots = table[rows[i], :n]
        ref = dense_causal(q[i : i + 1], k_buf[slots], v_buf[slots], n - 1, head_dim**-0.5)
        torch.testing.assert_close(out[i : i + 1], ref, atol=1e-5, rtol=1e-5)


def check_extend_against_dense(prefix, extend, num_heads, num_kv_heads, head_dim, seed):
    seq = [p + e for p, e in zip(prefix, extend)]
    k_buf, v_buf, table, rows = make_paged(seq, num_kv_heads, head_dim, seed=seed)
    q = torch.randn(sum(extend), num_heads, head_dim, generator=torch.Generator().manual_seed(seed))
    scale = head_dim**-0.5
    out = extend_attention_ref(q, k_buf, v_buf, table, rows, torch.tensor(prefix), torch.tensor(extend), scale)
    start = 0
    for i, (p, e) in enumerate(zip(prefix, extend)):
        slots = table[rows[i], : p + e]
        ref = dense_causal(q[start : start + e], k_buf[slots], v_buf[slots], p, scale)
        torch.testing.assert_close(out[start : start + e], ref, atol=1e-5, rtol=1e-5)
        start += e


@settings(max_examples=examples(40), deadline=None)
@given(
    lens=st.lists(st.tuples(st.integers(0, 40), st.integers(1, 12)), min_size=1, max_size=9),
    heads=st.sampled_from([(4, 4), (6, 2), (9, 3)]),
    seed=st.integers(0, 1000),
)
def test_mixed_extend_batches_match_dense(lens, heads, seed):
    """Ragged mixes of one-token extends (the decode path) and longer ones (the padded batch)."""
    prefix, extend = [p for p, _ in lens], [e for _, e in lens]
    check_extend_against_dense(prefix, extend, *heads, 16, seed)


def test_large_extends_loop_per_request(monkeypatch):
    """Past the padding limit each multi-token extend runs alone; the result is the same."""
    monkeypatch.setattr(attention_ref, "_PADDED_SCORES_LIMIT", 0)
    check_extend_against_dense([0, 5, 17, 3], [7, 1, 4, 2], 6, 2, 32, seed=3)


# -- shared-prefix decode ---------------------------------------------------------------------------
def make_shared(prefix_lens, suffix_lens_per_group, num_lone, lone_len, num_kv_heads, head_dim, seed):
    """Groups whose members share their first prefix_lens[g] slots, plus lone requests, in shuffled
    batch order; returns the pool, the table, rows, seq_lens and the SharedPrefix."""
    g = torch.Generator().manual_seed(seed)
    seqs, shared_rows = [], []
    next_slot = 1
    rows_slots = []
    for plen, suffixes in zip(prefix_lens, suffix_lens_per_group):
        prefix = list(range(next_slot, next_slot + plen))
        next_slot += plen
        members = []
        for s in suffixes:
            rows_slots.append(prefix + list(range(next_slot, next_slot + s)))
            next_slot += s
            members.append(len(rows_slots) - 1)
        shared_rows.append(members)
    for _ in range(num_lone):
        rows_slots.append(list(range(next_slot, next_slot + lone_len)))
        next_slot += lone_len
    order = torch.randperm(len(rows_slots), generator=g).tolist()  # batch index -> row
    position_of = {row: i for i, row in enumerate(order)}
    perm = torch.randperm(next_slot + 5, generator=g)  # scatter slots over the pool
    perm = perm[perm != 0]
    k_buf = torch.randn(next_slot + 6, num_kv_heads, head_dim, generator=g)
    v_buf = torch.randn(next_slot + 6, num_kv_heads, head_dim, generator=g)
    width = max(len(r) for r in rows_slots) + 2
    table = torch.zeros(len(rows_slots) + 1, width, dtype=torch.long)
    for row, slots in enumerate(rows_slots):
        table[row + 1, : len(slots)] = perm[torch.tensor(slots)]
    rows = torch.tensor([r + 1 for r in order])
    seqs = torch.tensor([len(rows_slots[r]) for r in order])
    n = max(len(m) for m in shared_rows)
    members = torch.tensor([[position_of[r] for r in m] + [-1] * (n - len(m)) for m in shared_rows])
    return k_buf, v_buf, table, rows, seqs, SharedPrefix(members, torch.tensor(prefix_lens))


@settings(max_examples=examples(40), deadline=None)
@given(
    groups=st.lists(st.tuples(st.integers(1, 60), st.lists(st.integers(1, 9), min_size=1, max_size=5)),
                    min_size=1, max_size=4),
    num_lone=st.integers(0, 3),
    heads=st.sampled_from([(4, 4), (6, 2), (9, 3)]),
    seed=st.integers(0, 1000),
)
def test_shared_prefix_decode_equals_plain_decode(groups, num_lone, heads, seed):
    num_heads, num_kv_heads = heads
    k_buf, v_buf, table, rows, seqs, shared = make_shared(
        [p for p, _ in groups], [s for _, s in groups], num_lone, 7, num_kv_heads, 16, seed)
    q = torch.randn(len(rows), num_heads, 16, generator=torch.Generator().manual_seed(seed + 1))
    plain = decode_attention_ref(q, k_buf, v_buf, table, rows, seqs, 0.25)
    grouped = decode_attention_shared_prefix_ref(q, k_buf, v_buf, table, rows, seqs, 0.25, shared)
    torch.testing.assert_close(grouped, plain, atol=1e-5, rtol=1e-5)
