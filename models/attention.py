"""The attention interface between a model and the executor.

A model never owns its KV cache: the executor's model runner hands every forward pass an
`AttentionFn` that already knows the batch layout (which tokens belong to which request, where
their KV lives in the paged pool). The model only computes q, k, v and calls it once per layer.
This keeps `models/` a set of plain torch modules with no dependency on the executor.
"""

from __future__ import annotations

from typing import Protocol

import torch


class AttentionFn(Protocol):
    """Attention for one layer of one batch.

    Args:
        layer_id: index of the decoder layer (selects that layer's KV buffers).
        q: [num_tokens, num_heads, head_dim] queries, rotary already applied.
        k: [num_tokens, num_kv_heads, head_dim] keys of the new tokens, rotary already applied.
        v: [num_tokens, num_kv_heads, head_dim] values of the new tokens.

    Returns:
        [num_tokens, num_heads, head_dim]: causal attention of each new token over its request's
        cached prefix plus the new tokens up to itself. Implementations store k and v into the cache.
    """

    def __call__(self, layer_id: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...
