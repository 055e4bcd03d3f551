"""What one forward pass computes: the flattened tokens of a batch and where their KV goes."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from executor.kernels.attention_shared_ref import SharedPrefix


class ForwardMode(enum.Enum):
    EXTEND = "extend"  # new tokens after a (possibly empty) cached prefix: prefill and chunks
    DECODE = "decode"  # exactly one new token per request


@dataclass
class ForwardBatch:
    """Tensors describing one forward pass of many requests.

    input_ids, positions and out_cache_loc have one entry per new token, requests back to back.
    For EXTEND, prefix_lens/extend_lens say how the tokens split; for DECODE, seq_lens include the
    new token.
    """

    mode: ForwardMode
    input_ids: torch.Tensor
    positions: torch.Tensor
    out_cache_loc: torch.Tensor
    req_rows: torch.Tensor
    prefix_lens: torch.Tensor | None = None
    extend_lens: torch.Tensor | None = None
    seq_lens: torch.Tensor | None = None
    shared_prefix: SharedPrefix | None = None  # DECODE: groups of requests reading one prefix

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])
