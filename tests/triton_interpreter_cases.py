"""Triton kernels against their pure-torch references, on CPU under the Triton interpreter.

Not collected by default: `tests/test_kernels_triton.py` runs this file in a child pytest with
`TRITON_INTERPRET=1` set before anything imports Triton. The variable must be set that early:
Triton decides compiled or interpreted when `@triton.jit` runs, for its own standard library
(`tl.sum`, `tl.cdiv`...) when `triton.language` is first imported, so one process cannot hold both
compiled and interpreted kernels. By hand: `TRITON_INTERPRET=1 pytest tests/triton_interpreter_cases.py`.

Two infidelities of the Triton 3.x interpreter are corrected while these tests run, each to what
the GPU does: `tl.dot` on bfloat16 multiplies the raw uint16 bit patterns (the GPU multiplies the
values, exactly, accumulating in float32), and float32 -> bfloat16 casts truncate (the GPU rounds
to nearest even). With both, bf16 results are checked too, bit for bit where the kernel mirrors
torch's rounding (rotary, RMSNorm).

Shapes are tiny (the interpreter runs every program in numpy) but hit the edges: prefix 0, extend
1, a block boundary, a sequence over several KV splits, empty splits, GQA ratios 1/3/4, head dims
64 and 128.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError("run this file with TRITON_INTERPRET=1 (tests/test_kernels_triton.py does)")

import triton.language as tl  # noqa: E402
from triton.runtime import interpreter as _interp  # noqa: E402

from executor.kernels import (  # noqa: E402
    attention_triton as attention,
)
from executor.kernels import (  # noqa: E402
    decode_attention_ref,
    extend_attention_ref,
    fused_add_rmsnorm_ref,
    rmsnorm_ref,
    rotary_embedding_ref,
)
from executor.kernels import norm_triton as norm  # noqa: E402
from executor.kernels import rotary_triton as rotary  # noqa: E402


def test_kernels_are_interpreted():
    for module in (attention, norm, rotary):
        kernels = [v for k, v in vars(module).items() if k.startswith("_") and k.endswith("_kernel")]
        assert kernels and all(isinstance(k, _interp.InterpretedFunction) for k in kernels), module


def _bf16_as_f32(handle):
    if handle.dtype.scalar == tl.bfloat16:
        bits = handle.data.astype(np.uint32) << 16
        return _interp.TensorHandle(bits.view(np.float32), tl.float32)
    return handle


@pytest.fixture(autouse=True)
def faithful_interpreter(monkeypatch):
    """Make the interpreter's bf16 dot and bf16 rounding do what the GPU does (see module doc)."""
    builder = _interp.InterpreterBuilder
    dot, cast = builder.create_dot, builder.cast_impl

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return dot(self, _bf16_as_f32(a), _bf16_as_f32(b), d, input_precision, max_num_imprecise_acc)

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = src.data.astype(np.float32).view(np.uint32)
            bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16  # round to nearest even
            return _interp.TensorHandle(bits.astype(np.uint16), tl.bfloat16)
        return cast(self, src, dst_type)

    monkeypatch.setattr(builder, "create_dot", create_dot)
    monkeypatch.setattr(builder, "cast_impl", cast_impl)


def make_paged(seq_lens, num_kv_heads, head_dim, dtype, seed):
    """KV of each sequence scattered to random non-contiguous slots; table rows start at 1."""
    g = torch.Generator().manual_seed(seed)
    total = sum(seq_lens)
    num_slots = total + 5
    slots = torch.randperm(num_slots, generator=g)[:total] + 1  # slot 0 is the padding slot
    k_buf = torch.randn(num_slots + 1, num_kv_heads, head_dim, generator=g).to(dtype)
    v_buf = torch.randn(num_slots + 1, num_kv_heads, head_dim, generator=g).to(dtype)
    k_buf[0] = v_buf[0] = 0
    table = torch.zeros(len(seq_lens) + 2, max(seq_lens) + 3, dtype=torch.long)
    rows = torch.arange(1, len(seq_lens) + 1)
    start = 0
    for row, n in zip(rows.tolist(), seq_lens):
        table[row, :n] = slots[start : start + n]
        start += n
    return k_buf, v_buf, table, rows


# -- decode -----------------------------------------------------------------------------------------
# (group, head_dim, seq_lens, splits, block_n). Lengths 16/17 sit on a 16-wide tile boundary; 70 and
# 130 cover several splits; 1 leaves every split but the first empty.
DECODE_CASES = [
    (1, 64, [1, 16, 70], 4, 16),
    (3, 64, [17, 130, 2], 4, 16),
    (4, 128, [33, 1], 3, 16),
    (3, 128, [5, 40], 1, 32),
]


@pytest.mark.parametrize("group,head_dim,seq_lens,splits,block_n", DECODE_CASES)
def test_decode_matches_reference(group, head_dim, seq_lens, splits, block_n):
    num_kv_heads = 2
    k_buf, v_buf, table, rows = make_paged(seq_lens, num_kv_heads, head_dim, torch.float32, seed=len(seq_lens))
    q = torch.randn(len(seq_lens), group * num_kv_heads, head_dim)
    lens = torch.tensor(seq_lens)
    scale = head_dim**-0.5
    out = attention.decode_attention_splits(q, k_buf, v_buf, table, rows, lens, scale, splits, block_n)
    ref = decode_attention_ref(q, k_buf, v_buf, table, rows, lens, scale)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)


def test_decode_default_splits_and_padded_row():
    """The heuristic path (16 splits here, 64-wide tiles) and a CUDA-graph padding row: a scratch
    table row of zeros with seq_len 1 reads the padding slot and gives finite output."""
    k_buf, v_buf, table, rows = make_paged([3, 90], 1, 64, torch.float32, seed=3)
    rows = torch.cat([rows, torch.tensor([0])])  # row 0 is all zeros: the padding slot
    lens = torch.tensor([3, 90, 1])
    q = torch.randn(3, 3, 64)
    assert attention.default_num_kv_splits(3, 1, q.device) == 16
    out = attention.decode_attention_triton(q, k_buf, v_buf, table, rows, lens, 0.125)
    ref = decode_attention_ref(q, k_buf, v_buf, table, rows, lens, 0.125)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
    assert torch.isfinite(out).all()


def test_decode_bf16():
    seq_lens = [7, 50]
    k_buf, v_buf, table, rows = make_paged(seq_lens, 2, 64, torch.bfloat16, seed=4)
    q = torch.randn(2, 8, 64).to(torch.bfloat16)
    lens = torch.tensor(seq_lens)
    out = attention.decode_attention_splits(q, k_buf, v_buf, table, rows, lens, 0.125, 2, 16)
    assert out.dtype == torch.bfloat16
    # Against float32 attention over the same bf16 values: the kernel's only roundings are the
    # probabilities (to bf16, for the tensor cores) and the output.
    ref = decode_attention_ref(q.float(), k_buf.float(), v_buf.float(), table, rows, lens, 0.125)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


# -- extend -----------------------------------------------------------------------------------------
# (group, head_dim, prefix_lens, extend_lens). With 16-wide tiles: prefix 0, extend 1, prefix 16 and
# extend 16 on the boundary, extend 17 over two query blocks, prefix 40 over three key tiles.
EXTEND_CASES = [
    (1, 64, [0, 5, 16], [7, 1, 17]),
    (3, 64, [40, 0], [1, 16]),
    (4, 128, [0, 21], [18, 3]),
]


@pytest.mark.parametrize("group,head_dim,prefix_lens,extend_lens", EXTEND_CASES)
def test_extend_matches_reference(group, head_dim, prefix_lens, extend_lens):
    num_kv_heads = 2
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    k_buf, v_buf, table, rows = make_paged(seq_lens, num_kv_heads, head_dim, torch.float32, seed=sum(seq_lens))
    q = torch.randn(sum(extend_lens), group * num_kv_heads, head_dim)
    args = (q, k_buf, v_buf, table, rows, torch.tensor(prefix_lens), torch.tensor(extend_lens), head_dim**-0.5)
    out = attention.extend_attention_blocks(*args, block_m=16, block_n=16)
    torch.testing.assert_close(out, extend_attention_ref(*args), atol=2e-5, rtol=1e-5)


def test_extend_default_blocks():
    prefix_lens, extend_lens = [70, 0], [3, 5]
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    k_buf, v_buf, table, rows = make_paged(seq_lens, 1, 64, torch.float32, seed=5)
    q = torch.randn(8, 3, 64)
    args = (q, k_buf, v_buf, table, rows, torch.tensor(prefix_lens), torch.tensor(extend_lens), 0.125)
    torch.testing.assert_close(attention.extend_attention_triton(*args), extend_attention_ref(*args),
                               atol=2e-5, rtol=1e-5)


def test_extend_bf16():
    prefix_lens, extend_lens = [9, 0], [5, 20]
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    k_buf, v_buf, table, rows = make_paged(seq_lens, 2, 64, torch.bfloat16, seed=6)
    q = torch.randn(25, 6, 64).to(torch.bfloat16)
    meta = (table, rows, torch.tensor(prefix_lens), torch.tensor(extend_lens), 0.125)
    out = attention.extend_attention_blocks(q, k_buf, v_buf, *meta, block_m=16, block_n=16)
    ref = extend_attention_ref(q.float(), k_buf.float(), v_buf.float(), *meta)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


# -- norm and rotary ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_matches_reference(dtype):
    x = torch.randn(5, 96).to(dtype)
    residual = torch.randn(5, 96).to(dtype)
    weight = torch.randn(96).to(dtype)
    tol = {"atol": 1e-6, "rtol": 1e-6} if dtype == torch.float32 else {"atol": 0, "rtol": 0}
    torch.testing.assert_close(norm.rmsnorm_triton(x, weight, 1e-6), rmsnorm_ref(x, weight, 1e-6), **tol)
    out, summed = norm.fused_add_rmsnorm_triton(x, residual, weight, 1e-6)
    ref_out, ref_summed = fused_add_rmsnorm_ref(x, residual, weight, 1e-6)
    assert torch.equal(summed, ref_summed)
    torch.testing.assert_close(out, ref_out, **tol)


def test_rmsnorm_strided_heads():
    """Qwen3's per-head q/k norm: a [T, H, D] view out of the fused qkv output."""
    qkv = torch.randn(4, 5 * 32)
    q = qkv[:, : 3 * 32].view(4, 3, 32)
    weight = torch.randn(32)
    out = norm.rmsnorm_triton(q, weight, 1e-6)
    assert out.shape == q.shape
    torch.testing.assert_close(out, rmsnorm_ref(q, weight, 1e-6), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype,head_dim,num_heads", [(torch.float32, 64, 3), (torch.bfloat16, 128, 4)])
def test_rotary_matches_reference(dtype, head_dim, num_heads):
    num_tokens, num_kv_heads = 6, 1
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim).to(dtype)
    q, k, _ = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    q, k = q.view(num_tokens, num_heads, head_dim), k.view(num_tokens, num_kv_heads, head_dim)
    positions = torch.tensor([0, 1, 2, 50, 99, 7])
    angles = torch.outer(torch.arange(100).float(), 10000.0 ** -(torch.arange(0, head_dim, 2) / head_dim))
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    got = rotary.rotary_embedding_triton(positions, q, k, cos, sin)
    want = rotary_embedding_ref(positions, q, k, cos, sin)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        torch.testing.assert_close(g, w, atol=0, rtol=0)  # same roundings in the same places
