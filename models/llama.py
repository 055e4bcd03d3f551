"""Llama-family models: Llama 2/3, SmolLM2, TinyLlama, and Mistral (same weights layout).

Mistral differs only by its sliding window, which is an attention-backend matter
(`ModelConfig.sliding_window`), so it is the same class under another name.
"""

from __future__ import annotations

from models.config import ModelConfig
from models.decoder import AttentionLayout, DecoderForCausalLM


class LlamaForCausalLM(DecoderForCausalLM):
    """Llama: `attention_bias` puts a bias on all four attention projections; no q/k norm."""

    @classmethod
    def attention_layout(cls, config: ModelConfig) -> AttentionLayout:
        return AttentionLayout(qkv_bias=config.attention_bias, o_bias=config.attention_bias, qk_norm=False)


MistralForCausalLM = LlamaForCausalLM
