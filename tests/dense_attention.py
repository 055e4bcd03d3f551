"""A test-only AttentionFn: dense causal GQA attention in plain torch, no KV cache.

Tokens of several sequences may be packed back to back (as the executor flattens requests); each
sequence attends only to itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models import AttentionFn


def dense_causal_attention(seq_lens: Sequence[int] | None = None) -> AttentionFn:
    """Attention over packed sequences of `seq_lens` tokens (one sequence of all tokens if None)."""

    def attention(layer_id: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        lens = [q.shape[0]] if seq_lens is None else list(seq_lens)
        assert sum(lens) == q.shape[0]
        outputs = []
        for qi, ki, vi in zip(q.split(lens), k.split(lens), v.split(lens)):
            num_tokens, num_heads, head_dim = qi.shape
            group = num_heads // ki.shape[1]
            ki = ki.repeat_interleave(group, dim=1)
            vi = vi.repeat_interleave(group, dim=1)
            scores = torch.einsum("thd,shd->hts", qi, ki) * head_dim**-0.5
            future = torch.ones(num_tokens, num_tokens, dtype=torch.bool).triu(1)
            probs = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
            outputs.append(torch.einsum("hts,shd->thd", probs, vi))
        return torch.cat(outputs)

    return attention
