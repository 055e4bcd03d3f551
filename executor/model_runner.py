"""Runs the model on a `ForwardBatch`: binds the paged KV pool to the model's attention calls.

The model is a plain torch module (models/); this module is where it meets the executor's memory.
Per layer, the attention function stores the new tokens' K/V into the pool at the batch's
out_cache_loc and calls the extend or decode kernel, which reads every request's KV through the
request-to-token table.
"""

from __future__ import annotations

import torch
from torch import nn

from executor import kernels
from executor.forward_batch import ForwardBatch, ForwardMode
from executor.memory import KVPool, ReqToTokenPool


class ModelRunner:
    def __init__(self, model: nn.Module, kv_pool: KVPool, req_to_token: ReqToTokenPool, head_dim: int):
        self.model = model
        self.kv_pool = kv_pool
        self.req_to_token = req_to_token
        self.scale = head_dim**-0.5
        self.num_forward_passes = 0

    def _attention_for(self, batch: ForwardBatch):
        table = self.req_to_token.req_to_token
        pool = self.kv_pool
        scale = self.scale

        if batch.mode is ForwardMode.EXTEND:

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
                    batch.req_rows, batch.seq_lens, scale,
                )

        return attention

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """Hidden states [num_tokens, hidden] of every new token in the batch."""
        self.num_forward_passes += 1
        return self.model(batch.input_ids, batch.positions, self._attention_for(batch))

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits of the given hidden rows (callers pick only the rows they need)."""
        return self.model.compute_logits(hidden).float()
