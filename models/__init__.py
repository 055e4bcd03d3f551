"""Our own decoder implementations (Llama family, Qwen2/3), their registry and loaders.

`models` is plain torch: it imports neither `executor` nor `compiler`. The executor builds a model
with `load_model(resolve_model(name), device, dtype)` and calls `forward` with an `AttentionFn`.
"""

from models.attention import AttentionFn
from models.config import ModelConfig
from models.hub import resolve_model
from models.loader import load_model
from models.registry import create_model

__all__ = ["AttentionFn", "ModelConfig", "create_model", "load_model", "resolve_model"]
