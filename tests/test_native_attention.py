"""The native CPU attention kernel (executor/kernels/csrc/paged_attention_cpu.c) against the reference.

Property test over batch layouts (GQA groups, head dims that are and are not multiples of the
kernel's vector width, scattered slots, long prefixes, token chunks split across work items), the
model runner's use of it, and the fallbacks when it cannot be built.
"""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executor.kernels import cpu_native
from executor.kernels.attention_cpu import NativePagedAttention, fresh_prefill_attention_cpu
from executor.kernels.attention_ref import decode_attention_ref, extend_attention_ref
from executor.kernels.attention_shared_ref import SharedPrefix
from executor.runtime.forward_batch import ForwardBatch, ForwardMode
from executor.runtime.memory import KVPool, ReqToTokenPool
from executor.runtime.model_runner import ModelRunner
from models import ModelConfig, create_model

needs_native = pytest.mark.skipif(cpu_native.library() is None, reason="no C compiler: the torch path is used")


def _close(ours: torch.Tensor, ref: torch.Tensor, tol: float = 2e-5) -> bool:
    return ours.shape == ref.shape and bool(torch.isfinite(ours).all()) and (
        (ours - ref).abs().max().item() <= tol * (1 + ref.abs().max().item())
    )


@st.composite
def batches(draw):
    num_kv_heads = draw(st.sampled_from([1, 2, 3]))
    group = draw(st.sampled_from([1, 2, 3, 4]))
    head_dim = draw(st.sampled_from([8, 12, 16, 64, 128]))
    batch = draw(st.integers(1, 4))
    prefixes = draw(st.lists(st.integers(0, 150), min_size=batch, max_size=batch))
    extends = draw(st.lists(st.integers(1, 40), min_size=batch, max_size=batch))
    seed = draw(st.integers(0, 2**16))
    return num_kv_heads, num_kv_heads * group, head_dim, prefixes, extends, seed


@needs_native
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_native_attention_matches_reference(layout):
    """Stores the new tokens' K/V where the table says and attends exactly as the reference does,
    reading q/k/v as views into one fused projection output (strided rows, as the model passes them)."""
    num_kv_heads, num_heads, head_dim, prefixes, extends, seed = layout
    gen = torch.Generator().manual_seed(seed)
    context = max(p + e for p, e in zip(prefixes, extends))
    rows = len(prefixes) + 2
    slots = rows * context
    k_pool = torch.randn(slots + 1, num_kv_heads, head_dim, generator=gen)
    v_pool = torch.randn(slots + 1, num_kv_heads, head_dim, generator=gen)
    table = (torch.randperm(slots, generator=gen) + 1).view(rows, context)  # scattered, as after reuse
    req_rows = torch.randperm(rows, generator=gen)[: len(prefixes)]
    new_slots = torch.cat([table[r, p : p + e] for r, p, e in zip(req_rows.tolist(), prefixes, extends)])
    tokens = sum(extends)
    widths = [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim]
    fused = torch.randn(tokens, sum(widths), generator=gen) * 2  # peaked softmaxes too
    q, k, v = (part.view(tokens, -1, head_dim) for part in fused.split(widths, dim=-1))
    prefix_lens, extend_lens = torch.tensor(prefixes), torch.tensor(extends)
    ref_k, ref_v = k_pool.clone(), v_pool.clone()
    ref_k[new_slots], ref_v[new_slots] = k, v
    ref = extend_attention_ref(q, ref_k, ref_v, table, req_rows, prefix_lens, extend_lens, head_dim**-0.5)
    native = NativePagedAttention.create(table, req_rows, prefix_lens, extend_lens, new_slots, head_dim**-0.5,
                                         head_dim, torch.float32)
    assert native is not None
    assert _close(native(q, k, v, k_pool, v_pool), ref)
    assert torch.equal(k_pool, ref_k) and torch.equal(v_pool, ref_v)


@needs_native
def test_native_attention_refuses_what_it_cannot_take():
    table = torch.zeros(2, 8, dtype=torch.int64)
    one = torch.tensor([1])
    assert NativePagedAttention.create(table, one, one, one, one, 1.0, 512, torch.float32) is None  # head_dim
    assert NativePagedAttention.create(table, one, one, one, one, 1.0, 64, torch.bfloat16) is None
    assert NativePagedAttention.create(table.int(), one, one, one, one, 1.0, 64, torch.float32) is None
    with pytest.raises(ValueError, match="new slots"):
        NativePagedAttention.create(table, one, one, one, torch.tensor([1, 2]), 1.0, 8, torch.float32)
    native = NativePagedAttention.create(table, torch.tensor([0]), torch.tensor([0]), torch.tensor([2]),
                                         torch.tensor([1, 2]), 1.0, 8, torch.float32)
    pool = torch.zeros(9, 1, 8)
    with pytest.raises(ValueError, match="query tokens"):
        native(torch.zeros(3, 2, 8), torch.zeros(3, 1, 8), torch.zeros(3, 1, 8), pool, pool.clone())
    with pytest.raises(ValueError, match="query heads"):
        native(torch.zeros(2, 130, 8), torch.zeros(2, 1, 8), torch.zeros(2, 1, 8), pool, pool.clone())
    with pytest.raises(ValueError, match="k/v of shape"):
        native(torch.zeros(2, 2, 8), torch.zeros(2, 2, 8), torch.zeros(2, 2, 8), pool, pool.clone())


@st.composite
def grouped_decodes(draw):
    """A decode batch where some groups of requests share their first slots (a fork's branches)."""
    num_kv_heads = draw(st.sampled_from([1, 2, 4]))
    num_heads = num_kv_heads * draw(st.sampled_from([1, 3, 4]))
    head_dim = draw(st.sampled_from([8, 12, 64]))
    group_sizes = draw(st.lists(st.integers(1, 12), min_size=1, max_size=4))  # 1 = a request alone
    shared = [draw(st.integers(0, 140)) for _ in group_sizes]
    own = [[draw(st.integers(1, 70)) for _ in range(size)] for size in group_sizes]
    return num_kv_heads, num_heads, head_dim, group_sizes, shared, own, draw(st.integers(0, 2**16))


@needs_native
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grouped_decodes())
def test_native_grouped_decode_matches_reference(layout):
    """Groups whose members share their first slots read those once; the result equals plain decode
    over each request's own slot row (groups over the kernel's member limit are split)."""
    num_kv_heads, num_heads, head_dim, group_sizes, shared, own, seed = layout
    gen = torch.Generator().manual_seed(seed)
    batch = sum(group_sizes)
    context = max(prefix + max(lengths) for prefix, lengths in zip(shared, own))
    table = torch.zeros(batch, context, dtype=torch.int64)
    seq_lens, members, next_slot, b = [], [], 1, 0
    for prefix, lengths in zip(shared, own):
        prefix_slots = torch.arange(next_slot, next_slot + prefix)
        next_slot += prefix
        group = []
        for length in lengths:
            table[b, :prefix] = prefix_slots
            table[b, prefix : prefix + length] = torch.arange(next_slot, next_slot + length)
            next_slot += length
            seq_lens.append(prefix + length)
            group.append(b)
            b += 1
        members.append(group)
    k_pool = torch.randn(next_slot, num_kv_heads, head_dim, generator=gen)
    v_pool = torch.randn(next_slot, num_kv_heads, head_dim, generator=gen)
    groups = [(m, p) for m, p in zip(members, shared) if len(m) > 1 and p > 0]
    width = max((len(m) for m, _ in groups), default=1)
    declared = SharedPrefix(torch.tensor([m + [-1] * (width - len(m)) for m, _ in groups] or [[-1]]),
                            torch.tensor([p for _, p in groups] or [0])) if groups else None
    lens = torch.tensor(seq_lens)
    rows = torch.arange(batch)
    new_slots = table[rows, lens - 1]
    q = torch.randn(batch, num_heads, head_dim, generator=gen) * 2
    k_new = k_pool[new_slots].clone()
    v_new = v_pool[new_slots].clone()
    ref = decode_attention_ref(q, k_pool, v_pool, table, rows, lens, head_dim**-0.5)
    native = NativePagedAttention.create(table, rows, lens - 1, torch.ones(batch, dtype=torch.int64), new_slots,
                                         head_dim**-0.5, head_dim, torch.float32, shared=declared,
                                         num_heads=num_heads)
    assert native is not None and (declared is None or native._groups is not None)
    assert _close(native(q, k_new, v_new, k_pool, v_pool), ref)


@pytest.mark.parametrize("extends,num_heads,num_kv_heads", [([12, 1, 30], 6, 2), ([7], 4, 4), ([5, 5], 9, 3)])
def test_fresh_prefill_attention_matches_reference(extends, num_heads, num_kv_heads):
    """Nothing cached: attention straight from the projection's q/k/v views equals the reference
    over the pool the same K/V were written to."""
    gen = torch.Generator().manual_seed(len(extends))
    head_dim, tokens = 16, sum(extends)
    widths = [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim]
    q, k, v = (part.view(tokens, -1, head_dim) for part in torch.randn(tokens, sum(widths), generator=gen).split(widths, -1))
    table = torch.zeros(len(extends), max(extends), dtype=torch.int64)
    start = 1
    for row, length in enumerate(extends):
        table[row, :length] = torch.arange(start, start + length)
        start += length
    k_pool = torch.zeros(tokens + 1, num_kv_heads, head_dim)
    v_pool = torch.zeros(tokens + 1, num_kv_heads, head_dim)
    k_pool[1:], v_pool[1:] = k, v
    rows = torch.arange(len(extends))
    ref = extend_attention_ref(q, k_pool, v_pool, table, rows, torch.zeros(len(extends), dtype=torch.long),
                               torch.tensor(extends), 0.3)
    assert _close(fresh_prefill_attention_cpu(q, k, v, extends, 0.3), ref)


def _tiny_runner(native: bool) -> tuple[ModelRunner, ModelConfig]:
    cfg = ModelConfig(architecture="LlamaForCausalLM", vocab_size=64, hidden_size=48, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2, head_dim=8,
                      rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None, max_position_embeddings=128,
                      tie_word_embeddings=True, attention_bias=False, qk_norm=False, bos_token_id=None,
                      eos_token_ids=(0,))
    torch.manual_seed(0)
    model = create_model(cfg)
    for param in model.parameters():
        param.data = torch.randn_like(param) * 0.5
    model = model.eval().requires_grad_(False)
    pool = KVPool(200, cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim)
    table = ReqToTokenPool(4, 64)
    runner = ModelRunner(model, pool, table, cfg.head_dim)
    runner.native_attention = native
    return runner, cfg


@needs_native
def test_runner_steps_agree_with_and_without_the_native_kernel():
    """Prefill (long extend: SDPA either way), a 3-token extend and a decode step: same hidden states."""
    outputs = {}
    for native in (True, False):
        runner, _ = _tiny_runner(native)
        table = runner.req_to_token
        for row, start in ((0, 1), (1, 60)):
            table.write(row, 0, torch.arange(start, start + 40))
        gen = torch.Generator().manual_seed(1)
        steps = [
            ForwardBatch(ForwardMode.EXTEND, torch.randint(0, 64, (50,), generator=gen),
                         torch.cat([torch.arange(30), torch.arange(20)]),
                         torch.cat([torch.arange(1, 31), torch.arange(60, 80)]), torch.tensor([0, 1]),
                         prefix_lens=torch.tensor([0, 0]), extend_lens=torch.tensor([30, 20])),
            ForwardBatch(ForwardMode.EXTEND, torch.randint(0, 64, (4,), generator=gen),
                         torch.tensor([30, 31, 32, 20]), torch.tensor([31, 32, 33, 80]), torch.tensor([0, 1]),
                         prefix_lens=torch.tensor([30, 20]), extend_lens=torch.tensor([3, 1])),
            ForwardBatch(ForwardMode.DECODE, torch.randint(0, 64, (2,), generator=gen), torch.tensor([33, 21]),
                         torch.tensor([34, 81]), torch.tensor([0, 1]), seq_lens=torch.tensor([34, 22])),
        ]
        outputs[native] = [runner.forward(step) for step in steps]
    for with_native, without in zip(outputs[True], outputs[False]):
        assert _close(with_native, without, 1e-4)


def test_library_is_none_when_disabled(monkeypatch):
    monkeypatch.setenv("SGC_NATIVE_KERNELS", "0")
    cpu_native.library.cache_clear()
    try:
        assert cpu_native.library() is None
        runner, _ = _tiny_runner(True)
        runner.req_to_token.write(0, 0, torch.arange(1, 5))
        step = ForwardBatch(ForwardMode.DECODE, torch.tensor([3]), torch.tensor([3]), torch.tensor([4]),
                            torch.tensor([0]), seq_lens=torch.tensor([4]))
        assert runner._native_attention_for(step) is None
        assert torch.isfinite(runner.forward(step)).all()  # the SDPA path
    finally:
        cpu_native.library.cache_clear()


def test_a_failing_compiler_falls_back_with_a_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("SGC_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "/bin/false")
    cpu_native.library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="executor.kernels.cpu_native"):
            assert cpu_native.library() is None
        assert "native CPU kernels unavailable" in caplog.text
        assert not list((tmp_path / "kernels").glob("*.so"))  # no half-built library left behind
    finally:
        cpu_native.library.cache_clear()


def test_a_bad_target_arch_falls_back_with_the_compilers_message(monkeypatch, tmp_path, caplog):
    """`SGC_NATIVE_ARCH` is passed to the compiler as `-march=`: a value it rejects (or one that
    tries to smuggle another flag in) is a failed build, never an exception or a stray library."""
    monkeypatch.setenv("SGC_CACHE", str(tmp_path))
    for arch in ("no-such-cpu", "native -o /tmp/evil.so"):
        monkeypatch.setenv("SGC_NATIVE_ARCH", arch)
        cpu_native.library.cache_clear()
        try:
            with caplog.at_level(logging.WARNING, logger="executor.kernels.cpu_native"):
                assert cpu_native.library() is None
            assert "native CPU kernels unavailable" in caplog.text
            assert not list((tmp_path / "kernels").glob("*.so"))
        finally:
            cpu_native.library.cache_clear()


def test_missing_kernel_sources_fall_back_with_a_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("SGC_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_native, "HEADERS", (*cpu_native.HEADERS, tmp_path / "gone.h"))
    cpu_native.library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="executor.kernels.cpu_native"):
            assert cpu_native.library() is None
        assert "sources missing" in caplog.text
    finally:
        cpu_native.library.cache_clear()
