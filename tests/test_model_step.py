"""The CPU model step's fast paths (issue 12): SDPA attention over the paged pool against the
references, MKL-packed projections bit-identical to F.linear, and the runner using both."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from executor.kernels.attention_cpu import decode_attention_cpu, extend_attention_cpu
from executor.kernels.attention_ref import decode_attention_ref, extend_attention_ref
from executor.kernels.small_gemm_cpu import panel_packer
from executor.runtime.cpu_process import tune_cpu_process
from executor.runtime.forward_batch import ForwardBatch, ForwardMode
from executor.runtime.memory import KVPool, ReqToTokenPool
from executor.runtime.model_runner import ModelRunner
from models import ModelConfig, create_model
from models.cpu_pack import (
    MKL_ROWS,
    ONEDNN_ROWS,
    WIDE_ONEDNN_ROWS,
    PackedWeight,
    linear,
    onednn_available,
    pack_linears,
    unpack_linears,
)

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="torch built without oneDNN")


def assert_close(ours: torch.Tensor, ref: torch.Tensor, tol: float = 1e-5) -> None:
    """Same shape, finite, equal up to float rounding (torch.testing's first call imports for ~7 s)."""
    assert ours.shape == ref.shape and torch.isfinite(ours).all()
    assert (ours - ref).abs().max().item() <= tol * (1 + ref.abs().max().item())


def paged_pool(num_heads: int, num_kv_heads: int, head_dim: int = 16, rows: int = 6, context: int = 90, seed: int = 0):
    """A random KV pool whose requests' slots are scattered (a random permutation), as after reuse."""
    gen = torch.Generator().manual_seed(seed)
    slots = rows * context
    k = torch.randn(slots + 1, num_kv_heads, head_dim, generator=gen)
    v = torch.randn(slots + 1, num_kv_heads, head_dim, generator=gen)
    table = (torch.randperm(slots, generator=gen) + 1).view(rows, context)
    return k, v, table, gen


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 2), (6, 6), (9, 3)])
@pytest.mark.parametrize("seq_lens", [[1, 17, 90, 40], [33, 33, 33, 33], [5]])
def test_decode_attention_matches_reference(num_heads, num_kv_heads, seq_lens):
    k, v, table, gen = paged_pool(num_heads, num_kv_heads)
    rows = torch.tensor([4, 0, 5, 2][: len(seq_lens)])
    lens = torch.tensor(seq_lens)
    q = torch.randn(len(seq_lens), num_heads, 16, generator=gen)
    ours = decode_attention_cpu(q, k, v, table, rows, lens, 0.25)
    ref = decode_attention_ref(q, k, v, table, rows, lens, 0.25)
    assert ours.shape == ref.shape
    assert_close(ours, ref)


@pytest.mark.parametrize(
    "prefix_lens,extend_lens",
    [
        ([0, 0, 0], [12, 12, 12]),  # a fresh prefill: padded path, nothing padded
        ([0, 7, 30, 2], [9, 1, 20, 1]),  # mixed: decodes beside prefills, cached prefixes
        ([3, 60], [2, 25]),  # skewed lengths: one SDPA call per request
        ([11], [40]),  # one request with a prefix
        ([5, 9, 0], [1, 1, 1]),  # only one-token extends: the decode path
    ],
)
def test_extend_attention_matches_reference(prefix_lens, extend_lens):
    k, v, table, gen = paged_pool(8, 2)
    rows = torch.tensor([1, 3, 0, 5][: len(prefix_lens)])
    q = torch.randn(sum(extend_lens), 8, 16, generator=gen)
    args = (k, v, table, rows, torch.tensor(prefix_lens), torch.tensor(extend_lens), 0.25)
    assert_close(extend_attention_cpu(q, *args), extend_attention_ref(q, *args))


@pytest.mark.parametrize("rows", [1, 2, 3, 8, 31, 32, 48, 49, 100])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(48, 40), (20000, 40)])  # a layer projection; an LM head
def test_packed_linear_matches_f_linear(rows, bias, shape):
    """Within float rounding of F.linear for every row count (strided inputs too), and exactly
    F.linear where the row count takes the checkpoint's own weight."""
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(*shape, generator=gen)
    b = torch.randn(shape[0], generator=gen) if bias else None
    x = torch.randn(rows, shape[1], generator=gen)
    pack = PackedWeight.of(weight)
    expected = F.linear(x, weight, b)
    assert_close(linear(x, weight, b, pack), expected)
    strided = x.t().contiguous().t()
    assert_close(linear(strided, weight, b, pack), expected)
    if rows not in pack.rows and not (pack.mkl is not None and rows in MKL_ROWS):
        assert torch.equal(linear(x, weight, b, pack), expected)


@needs_onednn
def test_packs_hold_the_layouts_their_row_counts_use():
    layer, head = PackedWeight.of(torch.randn(48, 40)), PackedWeight.of(torch.randn(20000, 40))
    assert layer.onednn is not None and head.onednn is not None
    assert head.mkl is None and head.rows == WIDE_ONEDNN_ROWS and layer.rows == ONEDNN_ROWS
    x = torch.randn(WIDE_ONEDNN_ROWS.stop, 40)  # past the head's oneDNN rows: F.linear exactly
    weight = torch.randn(20000, 40)
    assert torch.equal(linear(x, weight, None, PackedWeight.of(weight)), F.linear(x, weight))


def test_stale_pack_is_never_used():
    weight = torch.randn(16, 8)
    pack = PackedWeight.of(weight)
    x = torch.randn(3, 8)
    weight.mul_(2)  # written in place after packing
    assert not pack.matches(weight)
    assert torch.equal(linear(x, weight, None, pack), F.linear(x, weight))
    other = torch.randn(16, 8)  # a different tensor altogether
    assert torch.equal(linear(x, other, None, pack), F.linear(x, other))


def tiny_model(tied: bool, dtype: torch.dtype = torch.float32, architecture: str = "LlamaForCausalLM",
               attention_bias: bool = False, qk_norm: bool = False):
    config = ModelConfig(
        architecture=architecture, vocab_size=120, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5, rope_theta=10000.0,
        rope_scaling=None, max_position_embeddings=64, tie_word_embeddings=tied, attention_bias=attention_bias,
        qk_norm=qk_norm,
        bos_token_id=None, eos_token_ids=(0,),
    )
    torch.manual_seed(0)
    model = create_model(config)
    for p in model.parameters():
        p.data = torch.randn_like(p) * 0.2
    return model.to(dtype).eval().requires_grad_(False), config


def run_steps(model, config) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a 2-request prefill and of the decode step after it, through a CPU ModelRunner."""
    pool = KVPool(64, config.num_hidden_layers, config.num_key_value_heads, config.head_dim, dtype=next(model.parameters()).dtype)
    table = ReqToTokenPool(4, 32)
    runner = ModelRunner(model, pool, table, config.head_dim)
    table.req_to_token[0, :6] = torch.arange(1, 7)
    table.req_to_token[1, :4] = torch.arange(7, 11)
    rows = torch.tensor([0, 1])
    prefill = ForwardBatch(ForwardMode.EXTEND, torch.tensor([5, 9, 3, 7, 11, 2, 8, 4, 1, 6]),
                           torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 0, 0])[:10].clone(), torch.arange(1, 11), rows,
                           prefix_lens=torch.tensor([0, 0]), extend_lens=torch.tensor([5, 5]))
    prefill.positions = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    table.req_to_token[0, :5] = torch.arange(1, 6)
    table.req_to_token[1, :5] = torch.arange(6, 11)
    first = runner.logits(runner.forward(prefill)[torch.tensor([4, 9])])
    table.req_to_token[rows, 5] = torch.tensor([11, 12])
    decode = ForwardBatch(ForwardMode.DECODE, first.argmax(-1), torch.tensor([5, 5]), torch.tensor([11, 12]), rows,
                          seq_lens=torch.tensor([6, 6]))
    return first, runner.logits(runner.forward(decode))


@pytest.mark.parametrize("tied", [True, False])
def test_runner_packs_projections_and_logits_do_not_change(tied):
    model, config = tiny_model(tied)
    unpacked = [m for m in model.modules() if hasattr(m, "weight_pack")]
    assert unpacked and all(m.weight_pack is None for m in unpacked)
    with torch.inference_mode():
        packed_logits = run_steps(model, config)
    packs = [m for m in model.modules() if getattr(m, "weight_pack", None) is not None]
    # Per layer qkv, o, gate_up, down; plus the LM head (the tied model's own, or the lm_head Linear).
    assert len(packs) == 4 * config.num_hidden_layers + 1
    assert pack_linears(model, panel_packer()) == len(packs)  # idempotent
    if panel_packer() is not None:  # the native panel layout, where the kernels build
        assert all(m.weight_pack.panels is not None and m.weight_pack.onednn is None for m in packs)
    unpack_linears(model)
    model.weight_pack = None
    from executor.runtime import model_runner

    original = model_runner.pack_linears
    model_runner.pack_linears = lambda m, packer=None: 0
    try:
        with torch.inference_mode():
            plain_logits = run_steps(model, config)
    finally:
        model_runner.pack_linears = original
    for ours, plain in zip(packed_logits, plain_logits):
        assert_close(ours, plain)  # another blocking of the same products: float rounding only
        assert torch.equal(ours.argmax(-1), plain.argmax(-1))


def test_mixed_extend_batch_splits_between_native_and_sdpa():
    """Decodes beside a long extend in one pass: the short requests go through the native kernel,
    the long one through SDPA, and the hidden states equal the all-SDPA path's (float rounding)."""
    from executor.runtime import model_runner

    model, config = tiny_model(False)
    pool = KVPool(96, config.num_hidden_layers, config.num_key_value_heads, config.head_dim)
    table = ReqToTokenPool(4, 48)
    runner = ModelRunner(model, pool, table, config.head_dim)
    gen = torch.Generator().manual_seed(3)
    prompt_lens = [6, 9, 4]
    rows = torch.arange(3)
    slot = 1
    for row, length in enumerate(prompt_lens):
        table.req_to_token[row, :length] = torch.arange(slot, slot + length)
        slot += length
    prefill = ForwardBatch(ForwardMode.EXTEND, torch.randint(1, 120, (sum(prompt_lens),), generator=gen),
                           torch.cat([torch.arange(n) for n in prompt_lens]), torch.arange(1, slot), rows,
                           prefix_lens=torch.zeros(3, dtype=torch.long), extend_lens=torch.tensor(prompt_lens))
    extends = [1, model_runner.NATIVE_MAX_EXTEND + 5, 2]
    new_slots = []
    for row, (length, extra) in enumerate(zip(prompt_lens, extends)):
        table.req_to_token[row, length : length + extra] = torch.arange(slot, slot + extra)
        new_slots.append(torch.arange(slot, slot + extra))
        slot += extra
    mixed = ForwardBatch(ForwardMode.EXTEND, torch.randint(1, 120, (sum(extends),), generator=gen),
                         torch.cat([torch.arange(p, p + n) for p, n in zip(prompt_lens, extends)]), torch.cat(new_slots),
                         rows, prefix_lens=torch.tensor(prompt_lens), extend_lens=torch.tensor(extends))
    outputs = []
    for native in (True, False):
        runner.native_attention = native
        with torch.inference_mode():
            runner.forward(prefill)
            outputs.append(runner.forward(mixed))
    assert runner._mixed_extend_attention_for(mixed) is not None or cpu_native_missing()
    assert_close(outputs[0], outputs[1])


def test_without_the_native_library_the_step_runs_on_torch_kernels(monkeypatch):
    """No compiler (or SGC_NATIVE_KERNELS=0): no fused ops, oneDNN/MKL packs, SDPA attention, and the
    same logits as with the native kernels, up to float rounding."""
    from executor.kernels import cpu_native

    model, config = tiny_model(False)
    with torch.inference_mode():
        native = run_steps(model, config)
    monkeypatch.setattr(cpu_native, "library", lambda: None)
    with torch.inference_mode():
        plain = run_steps(model, config)
    assert model.layer_ops is None
    packs = [m.weight_pack for m in model.modules() if getattr(m, "weight_pack", None) is not None]
    assert packs and all(p.panels is None for p in packs)
    for ours, theirs in zip(native, plain):
        assert_close(ours, theirs)


def cpu_native_missing() -> bool:
    from executor.kernels.cpu_native import library

    return library() is None


@pytest.mark.parametrize(("architecture", "bias", "qk_norm"),
                         [("LlamaForCausalLM", False, False), ("Qwen2ForCausalLM", True, False),
                          ("Qwen3ForCausalLM", False, True)])
def test_fused_native_layer_ops_give_the_torch_layers_logits(monkeypatch, architecture, bias, qk_norm):
    """The decoder's fused path (native add+norm, rotary, SiLU*up; the whole forward in one call
    where it applies) against its torch ops: float rounding only, the same greedy tokens."""
    from executor.kernels.layer_ops_cpu import NativeLayerOps
    from executor.runtime import model_runner

    if NativeLayerOps.load() is None:
        pytest.skip("no C compiler: the native kernels are not built")
    model, config = tiny_model(False, architecture=architecture, attention_bias=bias, qk_norm=qk_norm)
    with torch.inference_mode():
        fused = run_steps(model, config)
    assert model.layer_ops is not None
    monkeypatch.setattr(model_runner.NativeLayerOps, "load", classmethod(lambda cls: None))
    with torch.inference_mode():
        plain = run_steps(model, config)
    assert model.layer_ops is None
    for ours, theirs in zip(fused, plain):
        assert_close(ours, theirs)
        assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


def test_bfloat16_model_is_not_packed_and_still_runs():
    model, config = tiny_model(True, torch.bfloat16)
    with torch.inference_mode():
        first, second = run_steps(model, config)
    assert torch.isfinite(first).all() and torch.isfinite(second).all()
    assert all(getattr(m, "weight_pack", None) is None for m in model.modules())


def test_tune_cpu_process_is_idempotent_and_safe_from_threads():
    results = []
    threads = [threading.Thread(target=lambda: results.append(tune_cpu_process())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results + [tune_cpu_process()])) == 1
