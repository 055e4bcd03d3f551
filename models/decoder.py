"""The decoder stack shared by the Llama and Qwen families, and HF-name weight loading.

Llama, Mistral, Qwen2 and Qwen3 are the same pre-norm decoder; they differ only in which attention
projections carry a bias and whether q/k get a per-head RMSNorm. Subclasses say that through
`attention_layout`, so there is exactly one decoder stack to read and to keep right.

Module names mirror HF's (`model.layers.N.self_attn...`) so checkpoint names map onto parameters
with two renames: q/k/v_proj into the fused `qkv_proj` and gate/up_proj into `gate_up_proj`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from models import cpu_pack
from models.attention import AttentionFn
from models.config import ModelConfig
from models.layers import (
    Embedding,
    Linear,
    MergedLinear,
    QKVProjection,
    RMSNorm,
    RotaryAngles,
    RotaryEmbedding,
    SwiGLUMLP,
    rotate_,
)


@dataclass(frozen=True)
class AttentionLayout:
    """What varies between the architectures' attention blocks."""

    qkv_bias: bool
    o_bias: bool
    qk_norm: bool


class FusedLayerOps(Protocol):
    """Element-wise layer ops fused into one call each (the CPU runner's are native kernels,
    `executor/kernels/layer_ops_cpu.py`); the decoder uses them when `layer_ops` is set."""

    def rmsnorm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor: ...

    def add_rmsnorm_(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> torch.Tensor: ...

    def rotate_(self, x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None: ...

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor: ...


class DecoderAttention(nn.Module):
    def __init__(
        self, config: ModelConfig, layout: AttentionLayout, layer_id: int, rotary: RotaryEmbedding
    ) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.rotary = rotary  # one table shared by all layers
        self.qkv_proj = QKVProjection(
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
            layout.qkv_bias,
        )
        self.o_proj = Linear(
            config.num_attention_heads * config.head_dim, config.hidden_size, bias=layout.o_bias
        )
        if layout.qk_norm:
            self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(
        self, hidden: torch.Tensor, positions: torch.Tensor, attention: AttentionFn, angles: RotaryAngles | None
    ) -> torch.Tensor:
        qk, v = self.qkv_proj(hidden)  # views of one fresh matmul output: ours to overwrite
        num_heads = self.qkv_proj.num_heads
        if self.q_norm is not None:
            qk[:, :num_heads] = self.q_norm(qk[:, :num_heads])
            qk[:, num_heads:] = self.k_norm(qk[:, num_heads:])
        if angles is not None:
            rotate_(qk, angles)
            q, k = qk[:, :num_heads], qk[:, num_heads:]
        else:
            q, k = self.rotary(positions, qk[:, :num_heads], qk[:, num_heads:])
        out = attention(self.layer_id, q, k, v)
        return self.o_proj(out.reshape(hidden.shape[0], -1))


class DecoderLayer(nn.Module):
    def __init__(
        self, config: ModelConfig, layout: AttentionLayout, layer_id: int, rotary: RotaryEmbedding
    ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = DecoderAttention(config, layout, layer_id, rotary)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLUMLP(config.hidden_size, config.intermediate_size)

    def forward(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        attention: AttentionFn,
        angles: RotaryAngles | None = None,
    ) -> torch.Tensor:
        """`angles`: the forward pass's rotary factors (`RotaryEmbedding.angles`); None rotates
        through the rotary module's own forward (the CUDA kernel)."""
        # Residual adds go in place into the fresh projection outputs (a + b == b + a exactly).
        hidden = self.self_attn(self.input_layernorm(hidden), positions, attention, angles).add_(hidden)
        return self.mlp(self.post_attention_layernorm(hidden)).add_(hidden)


class DecoderBody(nn.Module):
    """HF's `model.` submodule: embeddings, layers, final norm."""

    def __init__(self, config: ModelConfig, layout: AttentionLayout) -> None:
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.rotary = RotaryEmbedding(
            config.head_dim, config.max_position_embeddings, config.rope_theta, config.rope_scaling
        )
        self.layers = nn.ModuleList(
            DecoderLayer(config, layout, i, self.rotary) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


# Checkpoint entries that are derived data, not parameters.
_IGNORED_PATTERN = re.compile(r"\.rotary_emb\.inv_freq$")


class DecoderForCausalLM(nn.Module):
    """A pre-norm decoder-only LM over flattened tokens; subclasses choose the attention layout."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = DecoderBody(config, self.attention_layout(config))
        # Tied models have no lm_head module: compute_logits reads the embedding, so tying can never
        # be broken by moving or re-materializing parameters.
        self.lm_head = (
            None if config.tie_word_embeddings else Linear(config.hidden_size, config.vocab_size, bias=False)
        )

    # The tied LM head's pack (the embedding read as a projection); an untied head packs its own Linear.
    weight_pack: cpu_pack.PackedWeight | None = None
    # Fused element-wise ops, set by the CPU model runner for float32 (None: plain torch ops).
    layer_ops: FusedLayerOps | None = None

    def weight_to_pack(self) -> torch.Tensor | None:
        """What `models.cpu_pack.pack_linears` packs for this module: the tied head's weight."""
        return self.model.embed_tokens.weight if self.lm_head is None else None

    @classmethod
    def attention_layout(cls, config: ModelConfig) -> AttentionLayout:
        raise NotImplementedError

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, attention: AttentionFn
    ) -> torch.Tensor:
        """Hidden states after the final norm, [T, hidden], for flattened tokens of any requests."""
        if self.layer_ops is not None:
            return self._forward_fused(self.layer_ops, input_ids, positions, attention)
        hidden = self.model.embed_tokens(input_ids)
        angles = self.model.rotary.angles(positions, hidden)  # once, not once per layer
        for layer in self.model.layers:
            hidden = layer(hidden, positions, attention, angles)
        return self.model.norm(hidden)

    def _forward_fused(
        self, ops: FusedLayerOps, input_ids: torch.Tensor, positions: torch.Tensor, attention: AttentionFn
    ) -> torch.Tensor:
        """`forward` with each residual add fused into the norm after it, rotary and SiLU * up as
        one call each: the same layer math (see `DecoderLayer.forward`) in 4 element-wise calls per
        layer instead of ~17 torch ops.

        The residual stream `hidden` is updated in place in the fresh o_proj / down_proj outputs,
        and `normed` is always the next norm's output: layer i's input norm is applied by the add
        that ends layer i - 1 (the first by a plain norm), the final norm by the last layer's.
        """
        body = self.model
        layers = body.layers
        hidden = body.embed_tokens(input_ids)
        first_norm = layers[0].input_layernorm
        normed = ops.rmsnorm(hidden, first_norm.weight, first_norm.eps)
        positions = positions.to(torch.int64).contiguous()
        cos, sin = body.rotary.half_tables()
        num_tokens = hidden.shape[0]
        for i, layer in enumerate(layers):
            attn = layer.self_attn
            qk, v = attn.qkv_proj(normed)
            num_heads = attn.qkv_proj.num_heads
            if attn.q_norm is not None:
                qk[:, :num_heads] = attn.q_norm(qk[:, :num_heads])
                qk[:, num_heads:] = attn.k_norm(qk[:, num_heads:])
            ops.rotate_(qk, positions, cos, sin)
            out = attention(attn.layer_id, qk[:, :num_heads], qk[:, num_heads:], v)
            attn_out = attn.o_proj(out.reshape(num_tokens, -1))
            post = layer.post_attention_layernorm
            normed = ops.add_rmsnorm_(attn_out, hidden, post.weight, post.eps)
            hidden = attn_out
            mlp = layer.mlp
            gate_up = mlp.gate_up_proj.forward_unsplit(normed)
            mlp_out = mlp.down_proj(ops.silu_mul(gate_up))
            following = layers[i + 1].input_layernorm if i + 1 < len(layers) else body.norm
            normed = ops.add_rmsnorm_(mlp_out, hidden, following.weight, following.eps)
            hidden = mlp_out
        return normed

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits [N, vocab] for the rows of `hidden` the caller needs."""
        if self.lm_head is not None:
            return self.lm_head(hidden).float()
        return cpu_pack.linear(hidden, self.model.embed_tokens.weight, None, self.weight_pack).float()

    def load_weights(
        self, weights: Iterable[tuple[str, torch.Tensor]], *, share_memory: bool = False
    ) -> None:
        """Fill every parameter from HF-named tensors; each must be given exactly once.

        With `share_memory`, tensors that already have the parameter's dtype and device become the
        parameters instead of being copied (fused ones only when their shards are adjacent in one
        storage). The loader passes copy-on-write memory-mapped checkpoint tensors this way: on CPU,
        faulting in fresh memory for a copy costs more than reading the file.

        Raises ValueError naming unexpected checkpoint tensors, shape mismatches, or parameters
        the checkpoint does not provide.
        """
        params = dict(self.named_parameters())
        fused_targets = self._fused_targets()
        expected = self.checkpoint_names()
        fused_shards: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        seen: set[str] = set()
        for name, tensor in weights:
            if _IGNORED_PATTERN.search(name):
                continue
            if name == "lm_head.weight" and self.lm_head is None:
                continue  # some tied checkpoints store a copy of the embedding too
            if name not in expected:
                raise ValueError(f"unexpected weight {name!r} in checkpoint for {self.config.architecture}")
            if name in seen:
                raise ValueError(f"weight {name!r} appears twice in the checkpoint")
            seen.add(name)
            hf_module, _, param_name = name.rpartition(".")
            if hf_module in fused_targets:
                merged_name, shard = fused_targets[hf_module]
                fused_shards.setdefault((merged_name, param_name), {})[shard] = tensor
                continue
            param = params[name]
            if param.shape != tensor.shape:
                raise ValueError(
                    f"shape mismatch for {name!r}: checkpoint {tuple(tensor.shape)}, model {tuple(param.shape)}"
                )
            if share_memory and tensor.dtype == param.dtype and tensor.device == param.device:
                param.data = tensor
            else:
                param.data.copy_(tensor)
        missing = sorted(expected - seen, key=_natural_key)
        if missing:
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            raise ValueError(f"checkpoint is missing weights for {self.config.architecture}: {shown}")
        for (merged_name, param_name), shards in fused_shards.items():
            merged = self.get_submodule(merged_name)
            assert isinstance(merged, MergedLinear)
            merged.load_shards(param_name, shards, share_memory)

    def checkpoint_names(self) -> set[str]:
        """The HF tensor names that together fill every parameter of this model."""
        names: set[str] = set()
        merged_names: set[str] = set()
        for hf_module, (merged_name, _) in self._fused_targets().items():
            merged_names.add(merged_name)
            merged = self.get_submodule(merged_name)
            names.update(f"{hf_module}.{param_name}" for param_name, _ in merged.named_parameters())
        names.update(
            name for name, _ in self.named_parameters() if name.rpartition(".")[0] not in merged_names
        )
        return names

    def checkpoint_layout(self, names: Iterable[str]) -> list[str]:
        """`names` in an order that puts the shards of each fused parameter back to back.

        A checkpoint written in this order loads its fused parameters without copying.
        """
        fused_targets = self._fused_targets()

        def key(name: str) -> tuple[list[int | str], int]:
            hf_module, _, param_name = name.rpartition(".")
            if hf_module not in fused_targets:
                return _natural_key(name), 0
            merged_name, shard = fused_targets[hf_module]
            merged = self.get_submodule(merged_name)
            assert isinstance(merged, MergedLinear)
            return _natural_key(f"{merged_name}.{param_name}"), list(merged.shard_sizes).index(shard)

        return sorted(names, key=key)

    def _fused_targets(self) -> dict[str, tuple[str, str]]:
        """HF module name (`model.layers.0.self_attn.q_proj`) -> (our merged module, its shard)."""
        targets = {}
        for merged_name, module in self.named_modules():
            if isinstance(module, MergedLinear):
                parent = merged_name.rpartition(".")[0]
                for shard in module.shard_sizes:
                    targets[f"{parent}.{shard}"] = (merged_name, shard)
        return targets


def _natural_key(name: str) -> list[int | str]:
    """Sort key that orders layer 2 before layer 10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
