"""Runs the model on a `ForwardBatch`: binds the paged KV pool to the model's attention calls.

The model is a plain torch module (models/); this module is where it meets the executor's memory.
Per layer, the attention function stores the new tokens' K/V into the pool at the batch's
out_cache_loc and calls the extend or decode kernel, which reads every request's KV through the
request-to-token table.

On CPU the attention is `executor/kernels/attention_cpu.py` (torch's fused SDPA over the gathered
KV; the references stay the oracle) and the model's projections are packed once for MKL's packed
GEMM (`models/cpu_pack.py`): the two largest parts of a CPU step (docs/performance.md, "Model step
on CPU"). On CUDA the runner also swaps the model's norm and rotary modules for fused kernels and, once
`capture_cuda_graphs` has run, replays decode steps from CUDA graphs (`executor/runtime/cuda_graph.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from executor import kernels
from executor.kernels.attention_cpu import decode_attention_cpu, extend_attention_cpu
from executor.runtime.cpu_process import tune_cpu_process
from executor.runtime.cuda_graph import CudaGraphRunner
from executor.runtime.forward_batch import ForwardBatch, ForwardMode
from executor.runtime.kv_manager import KVManager
from executor.runtime.memory import KVPool, ReqToTokenPool
from models.cpu_pack import pack_linears


class ModelRunner:
    def __init__(self, model: nn.Module, kv_pool: KVPool, req_to_token: ReqToTokenPool, head_dim: int):
        self.model = model
        self.kv_pool = kv_pool
        self.req_to_token = req_to_token
        self.scale = head_dim**-0.5
        self.num_forward_passes = 0
        self.cuda_graphs: CudaGraphRunner | None = None
        self.on_cpu = kv_pool.device.type == "cpu"
        if kv_pool.device.type == "cuda":
            from executor.kernels.fused_layers import use_fused_layers

            use_fused_layers(model)
        elif self.on_cpu:
            tune_cpu_process()  # before the engine thread starts: it then shares the main malloc arena
            pack_linears(model)

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

        if self.on_cpu and batch.mode is ForwardMode.EXTEND:

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

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """Hidden states [num_tokens, hidden] of every new token in the batch."""
        self.num_forward_passes += 1
        if self.cuda_graphs is not None and self.cuda_graphs.can_run(batch):
            return self.cuda_graphs.replay(batch)
        return self.forward_eager(batch)

    def forward_eager(self, batch: ForwardBatch) -> torch.Tensor:
        """`forward` without CUDA graphs (what the graphs record)."""
        return self.model(batch.input_ids, batch.positions, self._attention_for(batch))

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits of the given hidden rows (callers pick only the rows they need)."""
        return self.model.compute_logits(hidden).float()
