"""Building blocks shared by every decoder: norm, rotary embedding, fused projections, MLP.

All layers work on flattened tokens ([T, ...], no batch dimension) because the executor packs the
tokens of many requests into one forward pass. Projections that read the same input are fused into
one weight (q/k/v, gate/up): one large matmul is markedly faster than three small ones on CPU and
launches fewer kernels on GPU. Fused weights are filled shard by shard from the HF checkpoint's
separate tensors through `load_shard`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models import cpu_pack
from models.config import RopeScaling


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 like HF so half-precision models match it.

    In float32 the formula runs as five ops with the reduction and rsqrt in place: the same
    products, sum and rounding as HF's `x * rsqrt(mean(x^2) + eps)` then `weight *`, so the result
    is bit-identical (tests/test_layers.py checks it), at about 2/3 of the formula's per-call cost,
    which dominates at decode batch sizes. (`F.rms_norm` is also bit-identical but no cheaper at
    small batches and slower on prefill-sized inputs.) Other dtypes keep HF's formula, which
    rounds to the activation dtype before the weight multiply.
    """

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if x.dtype == torch.float32 and weight.dtype == torch.float32:
            scale = torch.mean(x * x, -1, keepdim=True).add_(self.eps).rsqrt_()
            return (x * scale).mul_(weight)
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * x32.to(dtype)


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """Per-pair rotation frequencies [head_dim/2] in float32, with linear or llama3 scaling applied."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    # llama3: long wavelengths are slowed by `factor`, short ones kept, the band between blended.
    old_context = scaling.original_max_position_embeddings
    low_freq_wavelen = old_context / scaling.low_freq_factor
    high_freq_wavelen = old_context / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_context / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    in_band = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(in_band, smoothed, scaled)


class RotaryAngles(NamedTuple):
    """One forward pass's rotation factors, gathered once and shared by every layer.

    `cos` is [T, 1, D] (each half's cosines twice) and `sin` is [T, 1, D] with the first half
    negated, so rotating x is `x * cos + swap_halves(x) * sin`: the same per-element products and
    sums as HF's `x * cos + rotate_half(x) * sin` (negating is exact), hence bit-identical.
    """

    cos: torch.Tensor
    sin: torch.Tensor


class RotaryEmbedding(nn.Module):
    """Rotary position embedding with a precomputed cos/sin table indexed by position ids.

    Uses HF's rotate_half layout (the two halves of a head are the pair coordinates). The table is
    a plain attribute, not a buffer: it is derived data, so it must survive building the model on
    the meta device and is moved to the input's device and dtype lazily on first use.

    The decoder gathers a forward pass's angles once (`angles`) and rotates each layer's q and k
    in place with `rotate_`; `forward(positions, q, k)` does both for callers with one pair to rotate.
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: RopeScaling | None) -> None:
        super().__init__()
        self.head_dim = head_dim
        inv_freq = rope_inverse_frequencies(head_dim, theta, scaling)
        positions = torch.arange(max_positions, dtype=torch.int64, device="cpu").float()
        freqs = torch.outer(positions, inv_freq)  # [max_positions, head_dim/2]
        self._table32 = (freqs.cos(), freqs.sin())
        self._table: tuple[torch.Tensor, torch.Tensor] = self._table32

    def half_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The float32 cos and sin tables, [max_positions, head_dim/2] each, contiguous."""
        return self._table32

    def _cos_sin(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self._table
        if cos.device != like.device or cos.dtype != like.dtype:
            # HF computes cos/sin in float32 and rounds them to the activation dtype.
            self._table = (
                self._table32[0].to(like.device, like.dtype),
                self._table32[1].to(like.device, like.dtype),
            )
        return self._table

    def angles(self, positions: torch.Tensor, like: torch.Tensor) -> RotaryAngles | None:
        """The rotation factors of `positions` [T] in `like`'s dtype and device, for `rotate_`.

        None when a subclass rotates its own way (overrides `forward`, as the CUDA kernel swap in
        executor/kernels/fused_layers.py does): the layers then call `forward` instead.
        """
        if type(self).forward is not RotaryEmbedding.forward:
            return None
        return self._gather_angles(positions, like)

    def _gather_angles(self, positions: torch.Tensor, like: torch.Tensor) -> RotaryAngles:
        cos, sin = self._cos_sin(like)
        cos = cos[positions].unsqueeze(1)  # [T, 1, D/2]
        sin = sin[positions].unsqueeze(1)
        return RotaryAngles(torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1))

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q [T, Hq, D] and k [T, Hkv, D] by the angles of `positions` [T]."""
        angles = self._gather_angles(positions, q)
        return rotate(q, angles), rotate(k, angles)


def rotate(x: torch.Tensor, angles: RotaryAngles) -> torch.Tensor:
    """x [T, H, D] rotated into a new contiguous tensor (see `RotaryAngles` for why it equals HF's)."""
    swapped = _swap_halves(x).mul_(angles.sin)
    return swapped.add_(x * angles.cos)


def rotate_(x: torch.Tensor, angles: RotaryAngles) -> torch.Tensor:
    """Rotate x [T, H, D] in place and return it; any token stride, so the decoder rotates queries
    and keys together where the fused qkv projection left them ([T, Hq + Hkv, D] of its output).

    Four ops and one temporary per layer instead of fourteen ops over q and k apart, and q, k and
    v keep one token stride: the native attention kernel reads all three in place.
    """
    swapped = _swap_halves(x).mul_(angles.sin)
    return x.mul_(angles.cos).add_(swapped)


def _swap_halves(x: torch.Tensor) -> torch.Tensor:
    """(x2, x1) for x = (x1, x2) along the last dim: a new contiguous tensor (rotate_half unsigned)."""
    half = x.shape[-1] // 2
    return x.unflatten(-1, (2, half)).flip(-2).flatten(-2)


class Linear(nn.Linear):
    """nn.Linear without random init: weights always come from a checkpoint.

    Skipping init matters even on the meta device, where torch's init ops import and run its
    Python decompositions (seconds on first use). On CPU float32 the weight can be packed once for
    MKL's packed GEMM (`models/cpu_pack.py`, done by the model runner); the result is the same.
    """

    weight_pack: cpu_pack.PackedWeight | None = None

    def reset_parameters(self) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cpu_pack.linear(x, self.weight, self.bias, self.weight_pack)


class Embedding(nn.Embedding):
    """nn.Embedding without random init (see Linear)."""

    def reset_parameters(self) -> None:
        pass


class MergedLinear(nn.Module):
    """Linear projections of the same input stacked into one weight, split after the matmul.

    Shards are named after the HF modules they replace (`q_proj`, `gate_proj`...), which is how the
    loader routes checkpoint tensors into them.
    """

    weight_pack: cpu_pack.PackedWeight | None = None  # see Linear

    def __init__(self, in_features: int, shard_sizes: dict[str, int], bias: bool) -> None:
        super().__init__()
        self.shard_sizes = dict(shard_sizes)
        self._split_sizes = list(self.shard_sizes.values())
        self.weight = nn.Parameter(torch.empty(sum(shard_sizes.values()), in_features))
        self.bias = nn.Parameter(torch.empty(sum(shard_sizes.values()))) if bias else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.forward_unsplit(x).split(self._split_sizes, dim=-1)

    def forward_unsplit(self, x: torch.Tensor) -> torch.Tensor:
        """The shards' outputs side by side, [T, sum of shard sizes]."""
        return cpu_pack.linear(x, self.weight, self.bias, self.weight_pack)

    def load_shards(self, param_name: str, shards: dict[str, torch.Tensor], share_memory: bool) -> None:
        """Fill `weight` or `bias` from every shard's tensor.

        With `share_memory`, shards that lie back to back in one storage (as our converter writes
        them) become the parameter without a copy.
        """
        target = getattr(self, param_name)
        parts = [shards[name] for name in self.shard_sizes]
        for name, part in zip(self.shard_sizes, parts):
            expected = (self.shard_sizes[name], *target.shape[1:])
            if tuple(part.shape) != expected:
                raise ValueError(
                    f"shape mismatch for {name}.{param_name}: checkpoint {tuple(part.shape)}, "
                    f"model {tuple(expected)}"
                )
        span = _contiguous_span(parts, target) if share_memory else None
        if span is not None:
            target.data = span
            return
        offset = 0
        for name, part in zip(self.shard_sizes, parts):
            size = self.shard_sizes[name]
            target.data[offset : offset + size].copy_(part)
            offset += size


def _contiguous_span(parts: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor | None:
    """One tensor shaped like `like` over `parts` if they are adjacent in one storage, else None."""
    first = parts[0]
    storage = first.untyped_storage()
    for part in parts:
        if part.dtype != like.dtype or part.device != like.device or not part.is_contiguous():
            return None
        if part.untyped_storage().data_ptr() != storage.data_ptr():
            return None
    for before, after in zip(parts, parts[1:]):
        if after.data_ptr() != before.data_ptr() + before.nbytes:
            return None
    return torch.empty(0, dtype=like.dtype, device=like.device).set_(
        storage, first.storage_offset(), like.shape
    )


class QKVProjection(MergedLinear):
    """The fused q/k/v projection; returns qk [T, Hq + Hkv, D] (the query heads, then the key
    heads) and v [T, Hkv, D], both views of the one matmul output, so rotary turns q and k in one
    pass (`rotate_`)."""

    def __init__(
        self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, bias: bool
    ) -> None:
        super().__init__(
            hidden_size,
            {
                "q_proj": num_heads * head_dim,
                "k_proj": num_kv_heads * head_dim,
                "v_proj": num_kv_heads * head_dim,
            },
            bias,
        )
        self.head_dim = head_dim
        self.num_heads = num_heads
        self._qk_width = (num_heads + num_kv_heads) * head_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.forward_unsplit(x)
        num_tokens = x.shape[0]
        width = self._qk_width
        return (
            out[:, :width].view(num_tokens, -1, self.head_dim),
            out[:, width:].view(num_tokens, -1, self.head_dim),
        )


class SwiGLUMLP(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up fused into one matmul."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_up_proj = MergedLinear(
            hidden_size, {"gate_proj": intermediate_size, "up_proj": intermediate_size}, bias=False
        )
        self.down_proj = Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x)
        return self.down_proj(F.silu(gate).mul_(up))  # one temporary, not two
