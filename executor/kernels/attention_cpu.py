"""Attention over the paged KV pool on CPU, through torch's fused SDPA kernel.

The references (`attention_ref.py`) are the oracle: matmul, masked_fill, softmax, matmul, with the
gathered K/V permuted into [B, Hkv, L, D], which `torch.matmul` must first copy to contiguous
memory, and a [.., L] score tensor materialized per op. Here the gathered K/V stay as gathered
([B, L, Hkv, D] viewed as [B, Hkv, L, D]: SDPA's CPU kernel reads strided K/V without a copy), and
scores, softmax and the weighted sum are one fused, blocked kernel. For decode the query heads of
a KV head are passed as that head's query rows ([B, Hkv, group, D]): one new token per request,
so every row has the same mask and no K/V is repeated per query head.

Same results as the references up to float rounding (tests/test_model_step.py compares them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from executor.kernels.attention_shared_ref import SharedPrefix


def _gather(buffer: torch.Tensor, flat_slots: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """Rows of `buffer` [slots, Hkv, D] at `flat_slots` as a [batch, Hkv, length, D] view."""
    heads, dim = buffer.shape[1], buffer.shape[2]
    return torch.index_select(buffer, 0, flat_slots).view(batch, length, heads, dim).transpose(1, 2)


def decode_attention_cpu(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """See `decode_attention_ref`: q [B, H, D] -> [B, H, D]."""
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_buffer.shape[1]
    max_len = int(seq_lens.max())
    slots = req_to_token[req_rows, :max_len]
    valid = torch.arange(max_len, device=q.device)[None, :] < seq_lens[:, None]  # [B, L]
    if not bool(valid.all()):
        slots = slots.masked_fill(~valid, 0)  # padding reads the reserved slot 0
        mask = valid[:, None, None, :]
    else:
        mask = None  # every sequence is max_len long: no mask at all
    flat = slots.reshape(-1)
    k = _gather(k_buffer, flat, batch, max_len)
    v = _gather(v_buffer, flat, batch, max_len)
    qg = q.view(batch, num_kv_heads, num_heads // num_kv_heads, head_dim)
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=scale)
    return out.reshape(batch, num_heads, head_dim)


def extend_attention_cpu(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    prefix_lens: torch.Tensor,
    extend_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """See `extend_attention_ref`: q [sum(extend_lens), H, D] -> the same shape.

    All requests in one padded SDPA call ([B, max_extend] queries over [B, max_total] keys), unless
    padding would waste more than half the work; then one call per request. One-token extends (a
    mixed batch's decodes) go through `decode_attention_cpu` together.
    """
    extends = extend_lens.tolist()
    if all(n == 1 for n in extends):
        return decode_attention_cpu(q, k_buffer, v_buffer, req_to_token, req_rows, prefix_lens + 1, scale)
    prefixes = prefix_lens.tolist()
    totals = [p + n for p, n in zip(prefixes, extends)]
    batch = len(extends)
    max_extend, max_total = max(extends), max(totals)
    useful = sum(n * t for n, t in zip(extends, totals))
    if batch == 1 or useful * 2 < batch * max_extend * max_total:
        return _extend_each(q, k_buffer, v_buffer, req_to_token, req_rows, prefixes, extends, scale)
    return _extend_padded(q, k_buffer, v_buffer, req_to_token, req_rows, prefix_lens, extend_lens, extends,
                          max_extend, max_total, scale)


def fresh_prefill_attention_cpu(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extend_lens: list[int], scale: float
) -> torch.Tensor:
    """Causal attention of requests with nothing cached (every prefix length 0), straight from the
    new tokens' q/k/v [T, heads, D] (views into the fused projection are fine): no KV gather from the
    pool, no mask tensor. One SDPA call per request with `is_causal`, which skips the masked half;
    measured 1.2-1.3x less CPU than the padded masked call at 8-32 requests x 128-512 tokens.
    """
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    start = 0
    for length in extend_lens:
        span = slice(start, start + length)
        o = F.scaled_dot_product_attention(q[span].transpose(0, 1)[None], k[span].transpose(0, 1)[None],
                                           v[span].transpose(0, 1)[None], is_causal=True, scale=scale,
                                           enable_gqa=True)
        out[span] = o[0].transpose(0, 1)
        start += length
    return out


def _extend_each(q, k_buffer, v_buffer, req_to_token, req_rows, prefixes, extends, scale) -> torch.Tensor:
    out = torch.empty_like(q)
    start = 0
    rows = req_rows.tolist()
    for row, prefix, extend in zip(rows, prefixes, extends):
        total = prefix + extend
        slots = req_to_token[row, :total]
        k = _gather(k_buffer, slots, 1, total)
        v = _gather(v_buffer, slots, 1, total)
        qi = q[start : start + extend].transpose(0, 1)[None]  # [1, H, extend, D]
        if prefix == 0:
            o = F.scaled_dot_product_attention(qi, k, v, is_causal=True, scale=scale, enable_gqa=True)
        else:
            key_pos = torch.arange(total, device=q.device)
            mask = key_pos[None, :] <= torch.arange(prefix, total, device=q.device)[:, None]
            o = F.scaled_dot_product_attention(qi, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
        out[start : start + extend] = o[0].transpose(0, 1)
        start += extend
    return out


def _extend_padded(q, k_buffer, v_buffer, req_to_token, req_rows, prefix_lens, extend_lens, extends, max_extend,
                   max_total, scale) -> torch.Tensor:
    device = q.device
    batch = len(extends)
    offsets = torch.arange(max_extend, device=device)
    query_valid = offsets[None, :] < extend_lens[:, None]  # [B, Qmax]
    starts = torch.cumsum(extend_lens, 0) - extend_lens
    token_idx = (starts[:, None] + offsets[None, :]).masked_fill(~query_valid, 0)  # padding reads token 0
    qb = torch.index_select(q, 0, token_idx.reshape(-1)).view(batch, max_extend, q.shape[1], q.shape[2])
    totals = prefix_lens + extend_lens
    key_pos = torch.arange(max_total, device=device)
    key_valid = key_pos[None, :] < totals[:, None]  # [B, L]
    slots = req_to_token[req_rows, :max_total].masked_fill(~key_valid, 0)
    k = _gather(k_buffer, slots.reshape(-1), batch, max_total)
    v = _gather(v_buffer, slots.reshape(-1), batch, max_total)
    # Query j of request b sits at position prefix_b + j and sees keys 0 .. prefix_b + j (all real).
    # Padded queries see the same keys as the last real query: no row is empty; they are dropped.
    query_pos = prefix_lens[:, None] + offsets[None, :].minimum(extend_lens[:, None] - 1)
    visible = key_pos[None, None, :] <= query_pos[:, :, None]  # [B, Qmax, L]
    o = F.scaled_dot_product_attention(qb.transpose(1, 2), k, v, attn_mask=visible[:, None], scale=scale,
                                       enable_gqa=True)  # [B, H, Qmax, D]
    return o.transpose(1, 2)[query_valid]


class NativePagedAttention:
    """The native kernel (`csrc/paged_attention_cpu.c`) bound to one batch's request layout.

    Built once per forward pass: the index tensors and their pointers are the same for every
    layer, so a layer's call only passes its q/k/v, the pool's K/V buffers and the output. One call
    stores the new tokens' K/V at their slots and attends, reading K/V in place from the pool (no
    gather) and q/k/v in place from the fused projection's output (no copies). `create` returns None
    when the kernel cannot take the batch (no compiler, head_dim over the kernel's limit, non-float32
    data); callers then use the SDPA functions above.
    """

    MAX_HEAD_DIM = 256
    MAX_HEADS = 128

    def __init__(self, lib, req_to_token, req_rows, prefix_lens, extend_lens, new_slots, scale: float,
                 groups: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> None:
        self._lib = lib
        self._table = req_to_token
        self._rows = req_rows.to(torch.int64).contiguous()
        self._prefix = prefix_lens.to(torch.int64).contiguous()
        self._extend = extend_lens.to(torch.int64).contiguous()
        self._starts = (torch.cumsum(self._extend, 0) - self._extend).contiguous()
        self._num_tokens = int(self._extend.sum())
        self._slots = new_slots.reshape(-1).to(torch.int64).contiguous()
        if self._slots.numel() != self._num_tokens:
            raise ValueError(f"native attention: {self._slots.numel()} new slots for {self._num_tokens} tokens")
        self._scale = float(scale)
        self._groups = groups  # (item_starts, members, item_shared): decode with shared prefixes
        self._seq_lens = (self._prefix + self._extend).contiguous()
        self._checked_slots = -1  # the pool size `check_bounds` last passed for

    def check_bounds(self, num_slots: int) -> None:
        """Raise ValueError unless every slot the kernel will read or write lies in a pool of
        `num_slots` rows and every table row and length lies in the table (the C code trusts
        them). Checked once per pool size: the layout does not change after construction."""
        if self._checked_slots == num_slots:
            return
        table = self._table
        rows, lengths = self._rows, self._seq_lens
        if rows.numel():
            if int(rows.min()) < 0 or int(rows.max()) >= table.shape[0]:
                raise ValueError(f"native attention: a request row outside the table's {table.shape[0]} rows")
            if int(lengths.min()) < 1 or int(lengths.max()) > table.shape[1]:
                raise ValueError(f"native attention: a sequence longer than the table's {table.shape[1]} columns")
            read = table[rows, : int(lengths.max())]
            read = read[torch.arange(read.shape[1])[None, :] < lengths[:, None]]
            for name, slots in (("table", read), ("new", self._slots)):
                if slots.numel() and (int(slots.min()) < 0 or int(slots.max()) >= num_slots):
                    raise ValueError(f"native attention: a {name} slot outside the KV pool's {num_slots} slots")
        self._checked_slots = num_slots

    @classmethod
    def create(cls, req_to_token, req_rows, prefix_lens, extend_lens, new_slots, scale: float, head_dim: int,
               dtype: torch.dtype, shared: SharedPrefix | None = None,
               num_heads: int | None = None) -> NativePagedAttention | None:
        """With `shared` (a decode batch's groups of requests over one prefix, and the model's
        `num_heads`), each group's prefix K/V is read once for all of its members."""
        from executor.kernels.cpu_native import library

        if dtype != torch.float32 or head_dim > cls.MAX_HEAD_DIM or req_to_token.dtype != torch.int64:
            return None
        if not req_to_token.is_contiguous() or req_to_token.device.type != "cpu":
            return None
        lib = library()
        if lib is None:
            return None
        groups = None
        if shared is not None and num_heads is not None and bool((extend_lens == 1).all()):
            groups = _decode_items(shared, len(req_rows), max(1, cls.MAX_HEADS // num_heads))
        return cls(lib, req_to_token, req_rows, prefix_lens, extend_lens, new_slots, scale, groups)

    @property
    def num_tokens(self) -> int:
        return self._num_tokens

    def layout_args(self) -> dict[str, int | float]:
        """The batch layout as the native decoder forward takes it (`decoder_cpu.DecoderArgs`'
        attention fields: addresses of this object's index tensors, which outlive the call)."""
        args = {
            "new_slots": self._slots.data_ptr(), "req_to_token": self._table.data_ptr(),
            "table_stride": self._table.stride(0), "req_rows": self._rows.data_ptr(),
            "prefix_lens": self._prefix.data_ptr(), "extend_lens": self._extend.data_ptr(),
            "query_starts": self._starts.data_ptr(), "seq_lens": self._seq_lens.data_ptr(),
            "batch": self._rows.numel(), "scale": self._scale,
            "item_starts": 0, "members": 0, "item_shared": 0, "items": 0,
        }
        if self._groups is not None:
            item_starts, members, item_shared = self._groups
            args.update(item_starts=item_starts.data_ptr(), members=members.data_ptr(),
                        item_shared=item_shared.data_ptr(), items=item_shared.numel())
        return args

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_buffer: torch.Tensor,
                 v_buffer: torch.Tensor) -> torch.Tensor:
        """Store k, v [T, Hkv, D] at the batch's new slots, then attend: q [T, H, D] -> [T, H, D]."""
        num_tokens, num_heads, head_dim = q.shape
        num_kv_heads = k_buffer.shape[1]
        if num_tokens != self._num_tokens:
            raise ValueError(f"native attention: batch has {self._num_tokens} query tokens, q has {num_tokens}")
        if num_heads > self.MAX_HEADS:
            raise ValueError(f"native attention: {num_heads} query heads, over the kernel's {self.MAX_HEADS}")
        if k.shape != (num_tokens, num_kv_heads, head_dim) or v.shape != k.shape:
            raise ValueError(f"native attention: k/v of shape {tuple(k.shape)}/{tuple(v.shape)}, expected "
                             f"{(num_tokens, num_kv_heads, head_dim)}")
        if not (k_buffer.is_contiguous() and v_buffer.is_contiguous()) or k_buffer.dtype != torch.float32:
            raise ValueError("native attention: the KV pool's buffers must be contiguous float32")
        if v_buffer.shape != k_buffer.shape:
            raise ValueError("native attention: the K and V buffers differ in shape")
        self.check_bounds(k_buffer.shape[0])
        q, k, v = _rows_in_place(q), _rows_in_place(k), _rows_in_place(v)
        if k.stride(0) != v.stride(0):
            k, v = k.contiguous(), v.contiguous()
        out = torch.empty((num_tokens, num_heads, head_dim), dtype=torch.float32)
        if self._groups is None:
            status = self._lib.sgc_paged_attention_f32(
                q.data_ptr(), q.stride(0), k.data_ptr(), v.data_ptr(), k.stride(0), self._slots.data_ptr(),
                num_tokens, k_buffer.data_ptr(), v_buffer.data_ptr(), self._table.data_ptr(), self._table.stride(0),
                self._rows.data_ptr(), self._prefix.data_ptr(), self._extend.data_ptr(), self._starts.data_ptr(),
                self._rows.numel(), num_heads, num_kv_heads, head_dim, self._scale, out.data_ptr(),
                torch.get_num_threads(),
            )
        else:
            item_starts, members, item_shared = self._groups
            status = self._lib.sgc_paged_decode_grouped_f32(
                q.data_ptr(), q.stride(0), k.data_ptr(), v.data_ptr(), k.stride(0), self._slots.data_ptr(),
                num_tokens, k_buffer.data_ptr(), v_buffer.data_ptr(), self._table.data_ptr(), self._table.stride(0),
                self._rows.data_ptr(), self._seq_lens.data_ptr(), item_starts.data_ptr(), members.data_ptr(),
                item_shared.data_ptr(), item_shared.numel(), num_heads, num_kv_heads, head_dim, self._scale,
                out.data_ptr(), torch.get_num_threads(),
            )
        if status != 0:
            raise ValueError(f"native attention refused the batch (status {status})")
        return out


class MixedExtendAttention:
    """An extend batch split by request: the native kernel for the requests with few new tokens,
    SDPA over gathered KV for the rest (each request attends only to its own keys, so the two
    halves are independent). Built once per forward pass, called per layer."""

    def __init__(self, pool, native: NativePagedAttention, table: torch.Tensor, short_tokens: torch.Tensor,
                 long_tokens: torch.Tensor, long_slots: torch.Tensor, long_rows: torch.Tensor,
                 long_prefix: torch.Tensor, long_extend: torch.Tensor, scale: float) -> None:
        self._pool = pool
        self._native = native
        self._table = table
        self._short_tokens, self._long_tokens = short_tokens, long_tokens
        self._long_slots, self._long_rows = long_slots, long_rows
        self._long_prefix, self._long_extend = long_prefix, long_extend
        self._scale = scale

    @classmethod
    def create(cls, pool, table: torch.Tensor, req_rows: torch.Tensor, prefix_lens: torch.Tensor,
               extend_lens: torch.Tensor, new_slots: torch.Tensor, short: torch.Tensor, scale: float,
               num_heads: int | None) -> MixedExtendAttention | None:
        """`short`: which requests take the native kernel. None when the kernel is unavailable."""
        token_is_short = torch.repeat_interleave(short, extend_lens)
        short_tokens = token_is_short.nonzero().view(-1)
        long_tokens = (~token_is_short).nonzero().view(-1)
        native = NativePagedAttention.create(table, req_rows[short], prefix_lens[short], extend_lens[short],
                                             new_slots[short_tokens], scale, pool.head_dim, pool.dtype,
                                             num_heads=num_heads)
        if native is None:
            return None
        long = ~short
        return cls(pool, native, table, short_tokens, long_tokens, new_slots[long_tokens], req_rows[long],
                   prefix_lens[long], extend_lens[long], scale)

    def __call__(self, layer_id: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store every new token's K/V and attend: q [T, H, D] -> [T, H, D]."""
        k_buffer, v_buffer = self._pool.k_buffer(layer_id), self._pool.v_buffer(layer_id)
        out = torch.empty(q.shape, dtype=q.dtype)
        longs, shorts = self._long_tokens, self._short_tokens
        self._pool.write(layer_id, self._long_slots, k[longs], v[longs])
        out[longs] = extend_attention_cpu(q[longs], k_buffer, v_buffer, self._table, self._long_rows,
                                          self._long_prefix, self._long_extend, self._scale)
        out[shorts] = self._native(q[shorts], k[shorts], v[shorts], k_buffer, v_buffer)  # stores its k, v
        return out


def _decode_items(shared: SharedPrefix, batch: int, max_members: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Work items of a grouped decode: each declared group (split into pieces of at most
    `max_members`, which keep the group's shared length), then every other request alone."""
    starts, members, shared_lens = [0], [], []
    grouped = set()
    for row, prefix in zip(shared.members.tolist(), shared.prefix_lens.tolist()):
        real = [b for b in row if b >= 0]
        grouped.update(real)
        for i in range(0, len(real), max_members):
            piece = real[i : i + max_members]
            members.extend(piece)
            starts.append(len(members))
            shared_lens.append(prefix)
    for b in range(batch):
        if b not in grouped:
            members.append(b)
            starts.append(len(members))
            shared_lens.append(0)
    as_tensor = lambda values: torch.tensor(values, dtype=torch.int64)  # noqa: E731
    return as_tensor(starts), as_tensor(members), as_tensor(shared_lens)


def _rows_in_place(x: torch.Tensor) -> torch.Tensor:
    """`x` [T, heads, D] if each token's heads are contiguous float32 (any token stride), else a copy."""
    if x.dtype == torch.float32 and x.stride(2) == 1 and x.stride(1) == x.shape[2]:
        return x
    return x.to(torch.float32).contiguous()
