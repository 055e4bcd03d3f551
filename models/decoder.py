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

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import AttentionFn
from models.config import ModelConfig
from models.layers import Embedding, Linear, MergedLinear, QKVProjection, RMSNorm, RotaryEmbedding, SwiGLUMLP


@dataclass(frozen=True)
class AttentionLayout:
    """What varies between the architectures' attention blocks."""

    qkv_bias: bool
    o_bias: bool
    qk_norm: bool


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

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor, attention: AttentionFn) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(positions, q, k)
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

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor, attention: AttentionFn) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), positions, attention)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


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


# HF checkpoint name suffix -> (our fused module suffix, shard).
_FUSED_NAMES = {
    "self_attn.q_proj": ("self_attn.qkv_proj", "q"),
    "self_attn.k_proj": ("self_attn.qkv_proj", "k"),
    "self_attn.v_proj": ("self_attn.qkv_proj", "v"),
    "mlp.gate_proj": ("mlp.gate_up_proj", "gate"),
    "mlp.up_proj": ("mlp.gate_up_proj", "up"),
}
_FUSED_PATTERN = re.compile(
    r"^(model\.layers\.\d+\.)(" + "|".join(map(re.escape, _FUSED_NAMES)) + r")\.(weight|bias)$"
)
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

    @classmethod
    def attention_layout(cls, config: ModelConfig) -> AttentionLayout:
        raise NotImplementedError

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, attention: AttentionFn
    ) -> torch.Tensor:
        """Hidden states after the final norm, [T, hidden], for flattened tokens of any requests."""
        hidden = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            hidden = layer(hidden, positions, attention)
        return self.model.norm(hidden)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits [N, vocab] for the rows of `hidden` the caller needs."""
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight).float()

    def load_weights(
        self, weights: Iterable[tuple[str, torch.Tensor]], *, share_memory: bool = False
    ) -> None:
        """Copy HF-named tensors into the parameters; every parameter must be given exactly once.

        With `share_memory`, a tensor that already has its parameter's dtype and device becomes the
        parameter instead of being copied (fused parameters are always copied). The loader uses this
        for copy-on-write memory-mapped checkpoints: on CPU, faulting in fresh memory for a copy costs
        more than reading the file.

        Raises ValueError naming unexpected checkpoint tensors, shape mismatches, or parameters
        the checkpoint does not provide.
        """
        params = dict(self.named_parameters())
        expected = self._expected_checkpoint_names()
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
            fused = _FUSED_PATTERN.match(name)
            if fused:
                prefix, hf_module, param_name = fused.groups()
                module_suffix, shard = _FUSED_NAMES[hf_module]
                module = self.get_submodule(prefix + module_suffix)
                assert isinstance(module, MergedLinear)
                module.load_shard(shard, param_name, tensor)
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

    def _expected_checkpoint_names(self) -> set[str]:
        """The HF names that together fill every parameter of this model."""
        names: set[str] = set()
        for name, _ in self.named_parameters():
            module_name, _, param_name = name.rpartition(".")
            module = self.get_submodule(module_name)
            if isinstance(module, MergedLinear):
                layer_prefix = module_name.rsplit(".", 2)[0] + "."
                for hf_module, (module_suffix, _shard) in _FUSED_NAMES.items():
                    if layer_prefix + module_suffix == module_name:
                        names.add(f"{layer_prefix}{hf_module}.{param_name}")
            else:
                names.add(name)
        return names


def _natural_key(name: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
