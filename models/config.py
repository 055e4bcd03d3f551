"""The model hyperparameters sgc needs, read from a Hugging Face config.json dict.

HF configs differ across architectures and across transformers versions (v5 moved `rope_theta` and
`rope_scaling` into `rope_parameters`). Reading them once into a frozen dataclass gives the models,
the loader and the executor one normalized, validated view, and rejects what we cannot run exactly
up front instead of producing subtly wrong logits later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class RopeScaling:
    """Rotary frequency scaling. `rope_type` is "linear" or "llama3" (unscaled rope has none)."""

    rope_type: str
    factor: float
    # llama3 only: the band of wavelengths that is smoothly interpolated.
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    """Normalized hyperparameters of a decoder-only model of a supported architecture."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    qk_norm: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    # Mistral's sliding window: recorded for the attention backend; the models attend fully.
    sliding_window: int | None = None

    @property
    def attention_scale(self) -> float:
        """Softmax scale of every supported architecture (1/sqrt(head_dim))."""
        return self.head_dim**-0.5

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a config.json dict; ValueError names any unsupported architecture or feature."""
        architectures = d.get("architectures") or []
        if not architectures:
            raise ValueError("config.json has no 'architectures' entry; cannot tell which model to build")
        architecture = architectures[0]
        if architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {architecture!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"unsupported hidden_act {act!r} for {architecture}; only 'silu' is supported")
        if d.get("mlp_bias"):
            raise ValueError(f"unsupported mlp_bias=True for {architecture}")

        hidden_size = int(d["hidden_size"])
        num_heads = int(d["num_attention_heads"])
        head_dim = d.get("head_dim") or hidden_size // num_heads
        rope_theta, rope_scaling = _read_rope(d)
        sliding_window = d.get("sliding_window")
        if architecture == "Qwen2ForCausalLM" and not d.get("use_sliding_window", False):
            sliding_window = None
        return cls(
            architecture=architecture,
            vocab_size=int(d["vocab_size"]),
            hidden_size=hidden_size,
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=num_heads,
            num_key_value_heads=int(d.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=bool(d.get("attention_bias", False)),
            qk_norm=architecture == "Qwen3ForCausalLM",
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=_as_id_tuple(d.get("eos_token_id")),
            sliding_window=int(sliding_window) if sliding_window else None,
        )


def _as_id_tuple(value: int | list[int] | None) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _read_rope(d: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    """Theta and scaling from either the v4 keys or v5's `rope_parameters` (which holds both)."""
    params = d.get("rope_parameters")
    if params is None:
        params = dict(d.get("rope_scaling") or {})
        params.setdefault("rope_theta", d.get("rope_theta", 10000.0))
    theta = float(params.get("rope_theta", d.get("rope_theta", 10000.0)))
    # v4 configs spelled the key "type"; v5 and later v4 use "rope_type".
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"unsupported rope scaling type {rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    if rope_type == "default":
        return theta, None
    factor = float(params["factor"])
    if rope_type == "linear":
        return theta, RopeScaling("linear", factor)
    return theta, RopeScaling(
        "llama3",
        factor,
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_position_embeddings=int(params["original_max_position_embeddings"]),
    )
