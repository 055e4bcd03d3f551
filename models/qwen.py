"""Qwen2 and Qwen3: the shared decoder with Qwen's attention variations."""

from __future__ import annotations

from models.config import ModelConfig
from models.decoder import AttentionLayout, DecoderForCausalLM


class Qwen2ForCausalLM(DecoderForCausalLM):
    """Qwen2 always biases q, k and v (never o), whatever the config says."""

    @classmethod
    def attention_layout(cls, config: ModelConfig) -> AttentionLayout:
        return AttentionLayout(qkv_bias=True, o_bias=False, qk_norm=False)


class Qwen3ForCausalLM(DecoderForCausalLM):
    """Qwen3 drops Qwen2's qkv bias and adds a per-head RMSNorm on q and k before rotary."""

    @classmethod
    def attention_layout(cls, config: ModelConfig) -> AttentionLayout:
        return AttentionLayout(qkv_bias=config.attention_bias, o_bias=config.attention_bias, qk_norm=True)
