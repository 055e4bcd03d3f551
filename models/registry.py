"""Architecture name (config.json's `architectures[0]`) -> model class."""

from __future__ import annotations

from models.config import ModelConfig
from models.decoder import DecoderForCausalLM
from models.llama import LlamaForCausalLM, MistralForCausalLM
from models.qwen import Qwen2ForCausalLM, Qwen3ForCausalLM

MODEL_CLASSES: dict[str, type[DecoderForCausalLM]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": MistralForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}


def create_model(config: ModelConfig) -> DecoderForCausalLM:
    """Build the model for `config.architecture` (parameters uninitialized until load_weights).

    Construct under `torch.device("meta")` to skip allocating and initializing parameters.
    """
    model_class = MODEL_CLASSES.get(config.architecture)
    if model_class is None:
        raise ValueError(
            f"unsupported architecture {config.architecture!r}; supported: {', '.join(MODEL_CLASSES)}"
        )
    return model_class(config)
