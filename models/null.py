"""`NullModel`: a decoder whose forward pass costs (almost) nothing.

It stands in for a real model to measure what the runtime itself costs per step (scheduling, KV
bookkeeping, batch assembly, sampling, detokenization, the program executor): with the model's
time gone, what is left of a step's wall time is host overhead. On a GPU, where a small model's
step takes a few milliseconds, that overhead decides throughput (`benchmarks/bench_host.py`).

It keeps the real model's config (so KV pools are sized the same) but no weights: `forward`
returns zeros without calling attention, and `compute_logits` returns one fixed row, so greedy
decoding writes the same token every step.
"""

from __future__ import annotations

import torch
from torch import nn

from models.attention import AttentionFn
from models.config import ModelConfig


class NullModel(nn.Module):
    """Same interface as our decoders (`forward`, `compute_logits`), no compute."""

    def __init__(self, config: ModelConfig, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, token_id: int | None = None) -> None:
        super().__init__()
        self.config = config
        self._hidden = torch.zeros(1, config.hidden_size, dtype=dtype, device=device)
        # the argmax is a plain, non-special token (one past the first 100 ids: never EOS/BOS)
        token = min(config.vocab_size - 1, 100) if token_id is None else token_id
        row = torch.zeros(1, config.vocab_size, dtype=torch.float32, device=device)
        row[0, token] = 1.0
        self._row = row
        self._block = row.clone()

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attention: AttentionFn) -> torch.Tensor:
        return self._hidden.expand(input_ids.shape[0], -1)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # Rows of one block filled once (the sampler copies before it writes): contiguous like a
        # real model's logits, without a [N, vocab] fill per step (the model's cost, not the host's).
        n = hidden.shape[0]
        if self._block.shape[0] < n:
            self._block = self._row.expand(max(n, 2 * self._block.shape[0]), -1).contiguous()
        return self._block[:n]
