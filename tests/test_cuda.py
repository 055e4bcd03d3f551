"""The GPU runtime: device selection, KV budget, CUDA-graph decode, Triton kernels on real shapes.

Tests marked `gpu` need CUDA and are skipped without it. The rest run anywhere: the device and
budget errors, and the CUDA-graph runner's padding logic on CPU, with its two CUDA-specific steps
(recording and the device check) replaced by eager re-execution.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from executor.runtime.cuda_graph import CudaGraphRunner, capture_batch_sizes
from executor.runtime.engine import Engine, resolve_device
from executor.runtime.engine_config import default_kv_bytes
from executor.runtime.memory import PADDING_SLOT

HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
DEFAULT_MODEL = "smollm2-135m-instruct"
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village by the sea,",
    "List three primary colors:\n1.",
]


# -- device selection and KV budget (any machine) --------------------------------------------------
@pytest.mark.skipif(HAS_CUDA, reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_asked_for_but_absent(device):
    with pytest.raises(ValueError, match="CUDA is not available on this machine"):
        resolve_device(device)


@pytest.mark.skipif(HAS_CUDA, reason="checks the error on a machine without CUDA")
def test_engine_fails_fast_without_cuda(tiny_model_dirs):
    with pytest.raises(ValueError, match=r"device='cuda'.*CUDA is not available.*use 'cpu' or 'auto'"):
        Engine(model_path=str(tiny_model_dirs["llama"]), device="cuda")


def test_device_names():
    assert resolve_device("auto").type == ("cuda" if HAS_CUDA else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("tpu", "gpu", "cuda:x"):
        with pytest.raises(ValueError):
            resolve_device(bad)
    if HAS_CUDA:
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_kv_cache_fraction():
    cpu = torch.device("cpu")
    assert default_kv_bytes(cpu, 0.5) > default_kv_bytes(cpu, 0.25) > 0
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match="kv_cache_fraction"):
            default_kv_bytes(cpu, bad)


def test_capture_batch_sizes():
    assert capture_batch_sizes(256) == [1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256]
    assert capture_batch_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert capture_batch_sizes(1) == [1]


# -- the graph runner's padding, replayed eagerly on CPU --------------------------------------------
class EagerReplayGraphs(CudaGraphRunner):
    """A CudaGraphRunner whose "graphs" re-run the recorded step and copy into its output."""

    def __init__(self, *args, **kwargs):
        self.replays: Counter[int] = Counter()
        super().__init__(*args, **kwargs)

    def _check_device(self, device):
        pass

    def _record(self, step):
        output = step()
        size = output.shape[0]
        runner = self

        class Replay:
            def replay(self):
                runner.replays[size] += 1
                output.copy_(step())

        return Replay(), output


def test_padded_decode_matches_eager(tiny_model_dirs):
    """Shrinking decode batches (5 > largest size: eager; 3 -> padded to 4; then 2 and 1 reusing
    rows a larger batch filled) give the outputs of plain eager decoding."""
    params = [{"temperature": 0, "max_new_tokens": n, "ignore_eos": True} for n in (3, 6, 9, 12, 15)]
    prompts = [f"Tell me about topic {i}, please." * (i + 1) for i in range(5)]
    path = str(tiny_model_dirs["llama"])
    with Engine(model_path=path, device="cpu") as plain:
        expected = [o["output_ids"] for o in plain.generate(prompts, params)]
    with Engine(model_path=path, device="cpu") as engine:
        free_rows = engine.req_to_token.num_free
        runner = engine.runner
        graphs = EagerReplayGraphs(runner.forward_eager, engine.kv_manager, runner.kv_pool.device, [1, 2, 4])
        engine.runner.cuda_graphs = graphs  # the engine thread is idle: no request yet
        assert engine.req_to_token.num_free == free_rows - 1  # the scratch row
        assert engine.req_to_token.req_to_token[graphs.scratch_row].eq(PADDING_SLOT).all()
        assert engine.kv_manager.reserved_rows == {graphs.scratch_row}
        got = [o["output_ids"] for o in engine.generate(prompts, params)]
        replays = dict(graphs.replays)
        # The last step decoded one request: rows a larger batch filled are padding again.
        assert graphs._num_live_rows == 1
        assert graphs.req_rows[1:].eq(graphs.scratch_row).all()
        assert graphs.out_cache_loc[1:].eq(PADDING_SLOT).all() and graphs.seq_lens[1:].eq(1).all()
        engine.kv_manager.check_integrity()  # the leased row counts as in use
        graphs.release()
        assert engine.req_to_token.num_free == free_rows and not engine.kv_manager.reserved_rows
    assert got == expected
    # Sizes 4 (4 and 3 requests), 2 and 1 replayed; 5 requests ran eagerly.
    assert set(replays) == {1, 2, 4}, replays


# -- on a GPU ---------------------------------------------------------------------------------------
def _paged(seq_lens, num_kv_heads, head_dim, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    total = sum(seq_lens)
    num_slots = total + 100
    slots = torch.randperm(num_slots, generator=g, device="cuda")[:total] + 1
    k_buf = torch.randn(num_slots + 1, num_kv_heads, head_dim, generator=g, device="cuda").to(dtype)
    v_buf = torch.randn(num_slots + 1, num_kv_heads, head_dim, generator=g, device="cuda").to(dtype)
    k_buf[0] = v_buf[0] = 0
    table = torch.zeros(len(seq_lens) + 3, max(seq_lens) + 64, dtype=torch.long, device="cuda")
    rows = torch.arange(2, len(seq_lens) + 2, device="cuda")
    start = 0
    for row, n in zip(rows.tolist(), seq_lens):
        table[row, :n] = slots[start : start + n]
        start += n
    return k_buf, v_buf, table, rows


SHAPES = [(9, 3, 64), (32, 8, 128), (12, 12, 64), (28, 4, 128)]  # SmolLM2, Llama-3 8B, MHA, Qwen2 7B


def _tolerance(dtype):
    return {"atol": 2e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", SHAPES)
@pytest.mark.parametrize("batch", [1, 64])
def test_decode_kernel_real_shapes(batch, num_heads, num_kv_heads, head_dim, dtype):
    from executor.kernels import attention_triton, decode_attention_ref

    seq_lens = torch.randint(1, 3000, (batch,), generator=torch.Generator().manual_seed(batch)).tolist()
    k_buf, v_buf, table, rows = _paged(seq_lens, num_kv_heads, head_dim, dtype)
    q = torch.randn(batch, num_heads, head_dim, device="cuda").to(dtype)
    lens = torch.tensor(seq_lens, device="cuda")
    out = attention_triton.decode_attention_triton(q, k_buf, v_buf, table, rows, lens, head_dim**-0.5)
    ref = decode_attention_ref(q.float(), k_buf.float(), v_buf.float(), table, rows, lens, head_dim**-0.5)
    torch.testing.assert_close(out.float(), ref, **_tolerance(dtype))


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", SHAPES)
def test_extend_kernel_real_shapes(num_heads, num_kv_heads, head_dim, dtype):
    from executor.kernels import attention_triton, extend_attention_ref

    gen = torch.Generator().manual_seed(head_dim)
    prefix_lens = [0, 1, 64, 1000] + torch.randint(0, 1500, (4,), generator=gen).tolist()
    extend_lens = [1, 300, 64, 65] + torch.randint(1, 600, (4,), generator=gen).tolist()
    k_buf, v_buf, table, rows = _paged([p + e for p, e in zip(prefix_lens, extend_lens)],
                                       num_kv_heads, head_dim, dtype)
    q = torch.randn(sum(extend_lens), num_heads, head_dim, device="cuda").to(dtype)
    meta = (table, rows, torch.tensor(prefix_lens, device="cuda"), torch.tensor(extend_lens, device="cuda"),
            head_dim**-0.5)
    out = attention_triton.extend_attention_triton(q, k_buf, v_buf, *meta)
    ref = extend_attention_ref(q.float(), k_buf.float(), v_buf.float(), *meta)
    torch.testing.assert_close(out.float(), ref, **_tolerance(dtype))


@gpu
@needs_cuda
def test_decode_kernel_in_a_cuda_graph():
    """Captured once, replayed with other lengths and rows: the kernel reads them on the device."""
    from executor.kernels import attention_triton, decode_attention_ref

    k_buf, v_buf, table, rows = _paged([5, 700, 2000, 33], 3, 64, torch.bfloat16)
    q = torch.randn(4, 9, 64, device="cuda").to(torch.bfloat16)
    lens = torch.tensor([5, 700, 2000, 33], device="cuda")
    static_rows = rows.clone()

    def step():
        return attention_triton.decode_attention_triton(q, k_buf, v_buf, table, static_rows, lens, 0.125)

    step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    lens.copy_(torch.tensor([2000, 1, 64, 700], device="cuda"))
    static_rows.copy_(rows.flip(0))
    graph.replay()
    ref = decode_attention_ref(q.float(), k_buf.float(), v_buf.float(), table, static_rows, lens, 0.125)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_and_rotary_kernels(dtype):
    from executor.kernels import (
        fused_add_rmsnorm_ref,
        norm_triton,
        rmsnorm_ref,
        rotary_embedding_ref,
        rotary_triton,
    )

    x = torch.randn(300, 4096, device="cuda").to(dtype)
    residual = torch.randn_like(x)
    weight = torch.randn(4096, device="cuda").to(dtype)
    one_ulp = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 8e-3}
    torch.testing.assert_close(norm_triton.rmsnorm_triton(x, weight, 1e-6), rmsnorm_ref(x, weight, 1e-6), **one_ulp)
    out, summed = norm_triton.fused_add_rmsnorm_triton(x, residual, weight, 1e-6)
    ref_out, ref_summed = fused_add_rmsnorm_ref(x, residual, weight, 1e-6)
    assert torch.equal(summed, ref_summed)
    torch.testing.assert_close(out, ref_out, **one_ulp)

    qkv = torch.randn(300, (32 + 16) * 128, device="cuda").to(dtype)
    q, k, _ = qkv.split([32 * 128, 8 * 128, 8 * 128], dim=-1)
    q, k = q.view(300, 32, 128), k.view(300, 8, 128)
    positions = torch.randint(0, 4096, (300,), device="cuda")
    angles = torch.outer(torch.arange(4096, device="cuda").float(),
                         500000.0 ** -(torch.arange(0, 128, 2, device="cuda") / 128))
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    got = rotary_triton.rotary_embedding_triton(positions, q, k, cos, sin)
    want = rotary_embedding_ref(positions, q, k, cos, sin)
    if dtype == torch.bfloat16:  # every rounding in the same place: bit for bit
        assert all(torch.equal(g, w) for g, w in zip(got, want))
    else:  # float32 products may fuse into an FMA on either side
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def _greedy(engine, max_new_tokens=24):
    params = {"max_new_tokens": max_new_tokens, "temperature": 0}
    return [o["output_ids"] for o in engine.generate(PROMPTS, params)]


@gpu
@needs_cuda
def test_cuda_graph_replay_equals_eager_step():
    """The replayed decode step equals the eager run of the same padded batch, bit for bit."""
    from executor.runtime.forward_batch import ForwardBatch, ForwardMode

    with Engine(model_path=DEFAULT_MODEL, device="cuda", kv_cache_gb=1, cuda_graph_max_bs=8) as engine:
        runner, graphs, pool = engine.runner, engine.runner.cuda_graphs, engine.kv_pool
        assert graphs is not None and graphs.batch_sizes == [1, 2, 4, 8]
        rows = [engine.req_to_token.alloc() for _ in range(3)]
        slots = engine.allocator.allocate(15).cuda()
        table = engine.req_to_token.req_to_token
        for i, row in enumerate(rows):
            table[row, :5] = slots[5 * i : 5 * i + 5]
        for layer in range(pool.num_layers):
            for buf in (pool.k_buffer(layer), pool.v_buffer(layer)):
                buf[slots] = torch.randn(15, pool.num_kv_heads, pool.head_dim, device="cuda").to(buf.dtype)
        cuda = {"device": "cuda"}
        batch = ForwardBatch(ForwardMode.DECODE, input_ids=torch.tensor([5, 6, 7], **cuda),
                             positions=torch.tensor([4, 4, 4], **cuda), out_cache_loc=slots[4::5],
                             req_rows=torch.tensor(rows, **cuda), seq_lens=torch.tensor([5, 5, 5], **cuda))
        with torch.inference_mode():
            replayed = graphs.replay(batch).clone()
            eager = runner.forward_eager(graphs._static_batch(4))[:3]
            unpadded = runner.forward_eager(batch)
        assert torch.isfinite(replayed).all()
        assert torch.equal(replayed, eager)
        torch.testing.assert_close(replayed, unpadded, atol=3e-2, rtol=3e-2)  # other GEMM shapes
        engine.allocator.free(slots.cpu())
        for row in rows:
            engine.req_to_token.free(row)


@gpu
@needs_cuda
def test_cuda_graphs_keep_greedy_outputs():
    with Engine(model_path=DEFAULT_MODEL, device="cuda", kv_cache_gb=1, disable_cuda_graph=True) as eager:
        expected = _greedy(eager)
    with Engine(model_path=DEFAULT_MODEL, device="cuda", kv_cache_gb=1) as graphed:
        assert graphed.runner.cuda_graphs is not None
        assert _greedy(graphed) == expected


@gpu
@needs_cuda
def test_cuda_float32_greedy_equals_cpu():
    with Engine(model_path=DEFAULT_MODEL, device="cpu") as cpu:
        expected = _greedy(cpu)
    with Engine(model_path=DEFAULT_MODEL, device="cuda", dtype="float32", kv_cache_gb=1) as cuda:
        assert _greedy(cuda) == expected


@gpu
@needs_cuda
def test_cuda_bfloat16_default():
    """bf16 weights and KV by default; its greedy text starts like the float32 CPU path's."""
    with Engine(model_path=DEFAULT_MODEL, device="cpu") as cpu:
        expected = _greedy(cpu, 4)
    with Engine(model_path=DEFAULT_MODEL, device="cuda", kv_cache_gb=1) as cuda:
        assert cuda.kv_pool.dtype == torch.bfloat16
        assert next(cuda.model.parameters()).dtype == torch.bfloat16
        got = _greedy(cuda, 4)
    assert [g[0] for g in got] == [e[0] for e in expected]


@gpu
@needs_cuda
def test_kv_cache_fraction_sizes_the_pool():
    free_before, _ = torch.cuda.mem_get_info()
    with Engine(model_path=DEFAULT_MODEL, device="cuda", kv_cache_fraction=0.1,
                disable_cuda_graph=True) as engine:
        pool_bytes = engine.kv_pool.size_bytes
    assert 0.05 * free_before < pool_bytes <= 0.1 * free_before
