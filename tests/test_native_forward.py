"""The whole decoder forward in one native call (executor/kernels/decoder_cpu.py) against the
Python-driven fused path it replaces: bit-identical hidden states on decodes (plain and with
shared-prefix groups) and short extends, the fallbacks (stale packs, q/k norm, long passes), and
clear errors."""

from __future__ import annotations

import pytest
import torch

from executor.kernels.attention_shared_ref import SharedPrefix
from executor.kernels.cpu_native import library
from executor.kernels.decoder_cpu import NativeDecoderForward
from executor.runtime.forward_batch import ForwardBatch, ForwardMode
from executor.runtime.memory import KVPool, ReqToTokenPool
from executor.runtime.model_runner import ModelRunner
from tests.test_model_step import tiny_model

pytestmark = pytest.mark.skipif(library() is None, reason="no C compiler: the native kernels are not built")

PROMPTS = [7, 5, 9, 4]  # prompt lengths: four requests, so decodes use the panel GEMM (>= 3 rows) on both paths


def make_runner(model, config):
    pool = KVPool(160, config.num_hidden_layers, config.num_key_value_heads, config.head_dim)
    table = ReqToTokenPool(len(PROMPTS), 40)
    return ModelRunner(model, pool, table, config.head_dim), table


def prompt_batch(table, gen) -> ForwardBatch:
    """Every prompt in one extend (all <= NATIVE_MAX_EXTEND tokens), slots contiguous per request."""
    slot, slots = 1, []
    for row, length in enumerate(PROMPTS):
        table.req_to_token[row, :length] = torch.arange(slot, slot + length)
        slots.append(torch.arange(slot, slot + length))
        slot += length
    return ForwardBatch(ForwardMode.EXTEND, torch.randint(1, 120, (sum(PROMPTS),), generator=gen),
                        torch.cat([torch.arange(n) for n in PROMPTS]), torch.cat(slots), torch.arange(len(PROMPTS)),
                        prefix_lens=torch.zeros(len(PROMPTS), dtype=torch.long), extend_lens=torch.tensor(PROMPTS))


def decode_batch(table, gen, step: int, shared: SharedPrefix | None = None) -> ForwardBatch:
    rows = torch.arange(len(PROMPTS))
    lengths = torch.tensor(PROMPTS) + step
    slots = 100 + step * len(PROMPTS) + rows
    table.req_to_token[rows, lengths] = slots
    return ForwardBatch(ForwardMode.DECODE, torch.randint(1, 120, (len(PROMPTS),), generator=gen), lengths, slots,
                        rows, seq_lens=lengths + 1, shared_prefix=shared)


def both_paths(runner, batches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each batch through the native forward, then again (same KV state) through the Python path."""
    native_forward = runner.native_forward
    outputs = []
    for batch in batches:
        with torch.inference_mode():
            runner.native_forward = native_forward
            ours = runner.forward(batch)
            runner.native_forward = None
            theirs = runner.forward(batch)  # rewrites the same K/V at the same slots
        outputs.append((ours, theirs))
    runner.native_forward = native_forward
    return outputs


@pytest.mark.parametrize(("architecture", "bias"), [("LlamaForCausalLM", False), ("Qwen2ForCausalLM", True)])
def test_native_forward_is_bit_identical_to_the_python_path(architecture, bias):
    model, config = tiny_model(False, architecture=architecture, attention_bias=bias)
    runner, table = make_runner(model, config)
    assert runner.native_forward is not None
    gen = torch.Generator().manual_seed(0)
    batches = [prompt_batch(table, gen)] + [decode_batch(table, gen, step) for step in range(3)]
    for ours, theirs in both_paths(runner, batches):
        assert torch.equal(ours, theirs)


def test_native_forward_with_shared_prefix_groups():
    """Requests 0 and 1 share their first 5 slots (a fused fork's branches): the grouped decode."""
    model, config = tiny_model(True)
    runner, table = make_runner(model, config)
    gen = torch.Generator().manual_seed(1)
    both_paths(runner, [prompt_batch(table, gen)])
    table.req_to_token[1, :5] = table.req_to_token[0, :5]  # request 1 reads request 0's first five keys
    shared = SharedPrefix(torch.tensor([[0, 1]]), torch.tensor([5]))
    for ours, theirs in both_paths(runner, [decode_batch(table, gen, 0, shared)]):
        assert torch.equal(ours, theirs)


def test_a_weight_written_after_packing_falls_back_to_the_python_path():
    model, config = tiny_model(False)
    runner, table = make_runner(model, config)
    gen = torch.Generator().manual_seed(2)
    batch = prompt_batch(table, gen)
    with torch.inference_mode():
        model.model.layers[1].mlp.down_proj.weight.mul_(2)  # the pack is now stale
        assert runner.native_forward(batch.input_ids, batch.positions,
                                     runner._native_attention_for(batch)) is None
        out = runner.forward(batch)  # the Python path (F.linear on the new weight)
    assert torch.isfinite(out).all()


def test_models_the_native_forward_does_not_take():
    qwen3, config = tiny_model(False, architecture="Qwen3ForCausalLM", qk_norm=True)
    runner, _ = make_runner(qwen3, config)
    assert runner.native_forward is None  # q/k norm: the Python fused path
    model, config = tiny_model(False)
    runner, _ = make_runner(model, config)
    assert not runner.native_forward.can_run(0) and not runner.native_forward.can_run(257)
    assert runner.native_forward.can_run(256)


def test_bad_positions_and_token_counts_are_value_errors():
    model, config = tiny_model(False)
    runner, table = make_runner(model, config)
    gen = torch.Generator().manual_seed(3)
    batch = prompt_batch(table, gen)
    native = runner._native_attention_for(batch)
    with torch.inference_mode():
        with pytest.raises(ValueError, match="rotary table"):
            runner.native_forward(batch.input_ids, batch.positions + 10_000, native)
        with pytest.raises(ValueError, match="tokens"):
            runner.native_forward(batch.input_ids[:-1], batch.positions[:-1], native)
    assert isinstance(runner.native_forward, NativeDecoderForward)


def test_slots_outside_the_pool_are_refused_before_the_native_code_runs():
    model, config = tiny_model(False)
    runner, table = make_runner(model, config)
    gen = torch.Generator().manual_seed(4)
    batch = prompt_batch(table, gen)
    batch.out_cache_loc = batch.out_cache_loc.clone()
    batch.out_cache_loc[-1] = 10_000  # a new token's slot past the pool
    with torch.inference_mode(), pytest.raises(ValueError, match="new slot outside the KV pool"):
        runner.forward(batch)
    batch = prompt_batch(table, gen)
    table.req_to_token[0, 0] = -3  # a cached slot the table points outside the pool
    with torch.inference_mode(), pytest.raises(ValueError, match="table slot outside the KV pool"):
        runner.forward(batch)
