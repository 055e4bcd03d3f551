"""Pure-torch rotary position embedding: the CPU path and the Triton kernel's oracle.

HF's rotate_half layout (the two halves of a head are the pair coordinates), with the same
per-element products as `models.layers.RotaryEmbedding`, so both round identically in bf16.
"""

from __future__ import annotations

import torch


def rotary_embedding_ref(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_table: torch.Tensor, sin_table: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [T, Hq, D] and k [T, Hkv, D] by the angles of `positions` [T].

    `cos_table` and `sin_table` are [max_positions, D/2] in the activation dtype.
    """
    cos = cos_table[positions].unsqueeze(1)  # [T, 1, D/2]
    sin = sin_table[positions].unsqueeze(1)
    return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
