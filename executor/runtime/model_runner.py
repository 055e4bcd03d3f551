"""Runs the model on a `ForwardBatch`: binds the paged KV pool to the model's attention calls.

The model is a plain torch module (models/); this module is where it meets the executor's memory.
Per layer, the attention function stores the new tokens' K/V into the pool at the batch's
out_cache_loc and calls the extend or decode kernel, which reads every request's KV through the
request-to-token table.

On CPU the attention of decode steps and short extends (at most NATIVE_MAX_EXTEND new tokens per
request) is a native kernel that reads K/V in place from the pool (`executor/kernels/csrc/`,
built at first use by `executor/kernels/cpu_native.py`); longer extends and machines without a C
compiler use torch's fused SDPA over the gathered KV (`executor/kernels/attention_cpu.py`; the
references stay the oracle). The model's projection weights are re-laid-out once for the
fastest CPU matmul of their shape (`models/cpu_pack.py`). Those are the largest parts of a CPU step (docs/performance.md, "Model
step on CPU"). On CUDA the runner also swaps the model's norm and rotary modules for fused kernels and, once
`capture_cuda_graphs` has run, replays decode steps from CUDA graphs (`executor/runtime/cuda_graph.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from executor import kernels
from executor.kernels.attention_cpu import (
    MixedExtendAttention,
    NativePagedAttention,
    decode_attention_cpu,
    extend_attention_cpu,
    fresh_prefill_attention_cpu,
)
from executor.kernels.cpu_native import library as native_kernels
from executor.kernels.decoder_cpu import NativeDecoderForward
from executor.kernels.layer_ops_cpu import NativeLayerOps
from executor.kernels.small_gemm_cpu import panel_packer
from executor.runtime.cpu_process import tune_cpu_process
from executor.runtime.cuda_graph import CudaGraphRunner
from executor.runtime.forward_batch import ForwardBatch, ForwardMode
from executor.runtime.kv_manager import KVManager
from executor.runtime.memory import KVPool, ReqToTokenPool
from models.cpu_pack import pack_linears

# Up to this many new tokens per request, the native kernel beats SDPA over gathered KV or comes
# close (CPU time, one thread, 8 requests over 400 cached tokens: 2-token extends 3.4x, 4 tokens
# 2.4x, 8 tokens 1.4x, 16 tokens 0.96x; 12 requests over 100: 16 tokens 1.16x;
# `bench_attention_cpu.py --only-extends --cpu-time`), and such a step runs as one native call for
# the whole model (`NativeDecoderForward`), which saves more than the attention loses at 16.
# Beyond it SDPA's blocked matmuls win. In a batch that mixes both, each request takes its side.
NATIVE_MAX_EXTEND = 16


class ModelRunner:
    def __init__(self, model: nn.Module, kv_pool: KVPool, req_to_token: ReqToTokenPool, head_dim: int):
        self.model = model
        self.kv_pool = kv_pool
        self.req_to_token = req_to_token
        self.scale = head_dim**-0.5
        self.num_heads = getattr(getattr(model, "config", None), "num_attention_heads", None)
        self.num_forward_passes = 0
        self.cuda_graphs: CudaGraphRunner | None = None
        self.on_cpu = kv_pool.device.type == "cpu"
        self.native_attention = self.on_cpu  # benchmarks switch it off to measure the SDPA path
        # The whole forward in one native call (CPU float32 decoders, steps the native attention takes).
        self.native_forward: NativeDecoderForward | None = None
        if kv_pool.device.type == "cuda":
            from executor.kernels.fused_layers import use_fused_layers

            use_fused_layers(model)
        elif self.on_cpu:
            tune_cpu_process()  # before the engine thread starts: it then shares the main malloc arena
            native_kernels()  # built (once per machine, ~1 s) at start-up rather than in the first step
            pack_linears(model, panel_packer())
            self.use_native_layer_ops(True)

    def use_native_layer_ops(self, enabled: bool) -> bool:
        """Switch the native layer path on or off (CPU, float32 decoders): the model's fused
        element-wise ops and, on top of them, the whole forward as one native call
        (`native_forward`). Returns whether the ops are on. Benchmarks switch them off to measure
        the torch ops."""
        if not hasattr(self.model, "layer_ops"):
            return False
        ops = None
        if enabled and self.on_cpu and _float32_model(self.model):
            ops = NativeLayerOps.load()
        self.model.layer_ops = ops
        self.native_forward = None
        if ops is not None:
            self.native_forward = NativeDecoderForward.create(self.model, self.kv_pool)
        return ops is not None

    def capture_cuda_graphs(self, batch_sizes: Sequence[int], kv: KVManager) -> None:
        """Record the decode step for these batch sizes; later decode batches replay them. `kv`
        leases the graphs their padding row (only the KV manager hands out table rows)."""
        if self.cuda_graphs is not None:
            self.cuda_graphs.release()
            self.cuda_graphs = None
        self.cuda_graphs = CudaGraphRunner(self.forward_eager, kv, self.kv_pool.device, batch_sizes)

    def _attention_for(self, batch: ForwardBatch):
        table = self.req_to_token.req_to_token
        pool = self.kv_pool
        scale = self.scale
        native = self._native_attention_for(batch) if self.native_attention else None
        mixed = self._mixed_extend_attention_for(batch) if native is None and self.native_attention else None

        if mixed is not None:
            attention = mixed  # same signature: (layer_id, q, k, v) -> out, storing k and v

        elif native is not None:

            def attention(layer_id: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
                return native(q, k, v, pool.k_buffer(layer_id), pool.v_buffer(layer_id))  # stores k, v too

        elif self.on_cpu and batch.mode is ForwardMode.EXTEND and int(batch.prefix_lens.max()) == 0:
            extend_lens = batch.extend_lens.tolist()

            def attention(layer_id: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
                pool.write(layer_id, batch.out_cache_loc, k, v)
                return fresh_prefill_attention_cpu(q, k, v, extend_lens, scale)

        elif self.on_cpu and batch.mode is ForwardMode.EXTEND:

            def attention(layer_id: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
                pool.write(layer_id, batch.out_cache_loc, k, v)
                return extend_attention_cpu(
                    q, pool.k_buffer(layer_id), pool.v_buffer(layer_id), table,
                    batch.req_rows, batch.prefix_lens, batch.extend_lens, scale,
                )

        elif self.on_cpu and batch.shared_prefix is None:

            def attention(layer_id: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
                pool.write(layer_id, batch.out_cache_loc, k, v)
                return decode_attention_cpu(
                    q, pool.k_buffer(layer_id), pool.v_buffer(layer_id), table,
                    batch.req_rows, batch.seq_lens, scale,
                )

        elif batch.mode is ForwardMode.EXTEND:

            def attention(layer_id: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
                pool.write(layer_id, batch.out_cache_loc, k, v)
                return kernels.extend_attention(
                    q, pool.k_buffer(layer_id), pool.v_buffer(layer_id), table,
                    batch.req_rows, batch.prefix_lens, batch.extend_lens, scale,
                )

        else:

            def attention(layer_id: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
                pool.write(layer_id, batch.out_cache_loc, k, v)
                return kernels.decode_attention(
                    q, pool.k_buffer(layer_id), pool.v_buffer(layer_id), table,
                    batch.req_rows, batch.seq_lens, scale, batch.shared_prefix,
                )

        return attention

    def _native_attention_for(self, batch: ForwardBatch) -> NativePagedAttention | None:
        """The native CPU kernel bound to this batch, when it can take the batch (else None)."""
        if not self.on_cpu or self.kv_pool.dtype != torch.float32:
            return None
        if batch.mode is ForwardMode.EXTEND:
            if int(batch.extend_lens.max()) > NATIVE_MAX_EXTEND:
                return None
            prefix_lens, extend_lens = batch.prefix_lens, batch.extend_lens
        else:
            prefix_lens = batch.seq_lens - 1
            extend_lens = torch.ones_like(batch.seq_lens)
        return NativePagedAttention.create(
            self.req_to_token.req_to_token, batch.req_rows, prefix_lens, extend_lens, batch.out_cache_loc,
            self.scale, self.kv_pool.head_dim, self.kv_pool.dtype, shared=batch.shared_prefix,
            num_heads=self.num_heads,
        )

    def _mixed_extend_attention_for(self, batch: ForwardBatch) -> MixedExtendAttention | None:
        """For an extend batch where only some requests are longer than NATIVE_MAX_EXTEND (a mixed
        step's decodes beside a chain's forced text or a new prompt): the native kernel for the
        short requests and SDPA for the long ones, instead of SDPA over all of them."""
        if not self.on_cpu or batch.mode is not ForwardMode.EXTEND or self.kv_pool.dtype != torch.float32:
            return None
        short = batch.extend_lens <= NATIVE_MAX_EXTEND
        if not bool(short.any()) or bool(short.all()):
            return None
        return MixedExtendAttention.create(
            self.kv_pool, self.req_to_token.req_to_token, batch.req_rows, batch.prefix_lens, batch.extend_lens,
            batch.out_cache_loc, short, self.scale, self.num_heads,
        )

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """Hidden states [num_tokens, hidden] of every new token in the batch."""
        self.num_forward_passes += 1
        if self.cuda_graphs is not None and self.cuda_graphs.can_run(batch):
            return self.cuda_graphs.replay(batch)
        return self.forward_eager(batch)

    def forward_eager(self, batch: ForwardBatch) -> torch.Tensor:
        """`forward` without CUDA graphs (what the graphs record)."""
        if self.native_forward is not None and self.native_attention:
            tokens = int(batch.input_ids.shape[0])
            native = self._native_attention_for(batch) if self.native_forward.can_run(tokens) else None
            if native is not None:
                hidden = self.native_forward(batch.input_ids, batch.positions, native)
                if hidden is not None:
                    return hidden
        return self.model(batch.input_ids, batch.positions, self._attention_for(batch))

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits of the given hidden rows (callers pick only the rows they need)."""
        return self.model.compute_logits(hidden).float()


def _float32_model(model: nn.Module) -> bool:
    return all(p.dtype == torch.float32 for p in model.parameters())
