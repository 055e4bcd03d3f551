"""Read a GGUF file (llama.cpp's format) as a Hugging Face checkpoint: config, weights, tokenizer.

We convert GGUF into an HF-style folder instead of running it directly so that one loader, one
set of parity tests (against HF transformers on the converted folder) and one tokenizer path serve
every model. Weights are dequantized exactly to float32 with the `gguf` package's reference
dequantizers. Two llama.cpp conventions are undone on the way: its tensor names, and the row
permutation of q/k that its converter applies to llama-arch models (llama.cpp rotates interleaved
pairs; HF rotates the two halves of each head).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader, ReaderTensor
from gguf.quants import dequantize

# GGUF general.architecture -> (HF architecture, HF model_type).
GGUF_ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
}

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_PATTERN = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")


def open_gguf(path: Path) -> GGUFReader:
    """Memory-map a GGUF file (parsing its metadata takes a few seconds for a large vocabulary)."""
    return GGUFReader(path)


def gguf_architecture(reader: GGUFReader) -> str:
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(
            f"unsupported GGUF architecture {arch!r}; supported: {', '.join(GGUF_ARCHITECTURES)}"
        )
    return arch


def hf_config_dict(reader: GGUFReader) -> dict[str, Any]:
    """An HF config.json dict (loadable by transformers) from the GGUF metadata."""
    arch = gguf_architecture(reader)
    hf_architecture, model_type = GGUF_ARCHITECTURES[arch]
    tensors = {t.name: t for t in reader.tensors}
    if "rope_freqs.weight" in tensors:
        raise ValueError("GGUF stores llama3 rope scaling as a rope_freqs tensor, which sgc cannot convert")
    hidden_size = int(_field(reader, f"{arch}.embedding_length"))
    num_heads = int(_field(reader, f"{arch}.attention.head_count"))
    config: dict[str, Any] = {
        "architectures": [hf_architecture],
        "model_type": model_type,
        "vocab_size": int(tensors["token_embd.weight"].shape[1]),
        "hidden_size": hidden_size,
        "intermediate_size": int(_field(reader, f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, f"{arch}.block_count")),
        "num_attention_heads": num_heads,
        "num_key_value_heads": int(_field(reader, f"{arch}.attention.head_count_kv", num_heads)),
        "head_dim": int(_field(reader, f"{arch}.attention.key_length", hidden_size // num_heads)),
        "hidden_act": "silu",
        "rms_norm_eps": _float32(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": _float32(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        "rope_scaling": _rope_scaling(reader, arch),
        "max_position_embeddings": int(_field(reader, f"{arch}.context_length", 2048)),
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": False,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "torch_dtype": "float32",
    }
    if arch == "qwen2":
        config["use_sliding_window"] = False
    return config


def generation_config_dict(reader: GGUFReader) -> dict[str, Any]:
    """generation_config.json: every id that ends a turn (eos, and llama.cpp's eot/eom if set)."""
    eos_ids: list[int] = []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        value = _field(reader, key)
        if value is not None and int(value) not in eos_ids:
            eos_ids.append(int(value))
    result: dict[str, Any] = {"bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id")}
    result["eos_token_id"] = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    pad = _field(reader, "tokenizer.ggml.padding_token_id")
    if pad is not None:
        result["pad_token_id"] = pad
    return result


def hf_weights(reader: GGUFReader) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, float32 tensor) for every tensor, dequantized and with llama's q/k order restored."""
    arch = gguf_architecture(reader)
    num_heads = int(_field(reader, f"{arch}.attention.head_count"))
    num_kv_heads = int(_field(reader, f"{arch}.attention.head_count_kv", num_heads))
    for tensor in reader.tensors:
        name = hf_tensor_name(tensor.name)
        weight = torch.from_numpy(_dequantize(tensor))
        if arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            weight = unpermute_rows(weight, num_heads if ".q_proj." in name else num_kv_heads)
        yield name, weight


def hf_tensor_name(gguf_name: str) -> str:
    """The HF parameter name of a GGUF tensor; ValueError for tensors sgc does not know."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _BLOCK_PATTERN.match(gguf_name)
    if match and match.group(2) in _BLOCK_NAMES:
        layer, module, param = match.groups()
        return f"model.layers.{layer}.{_BLOCK_NAMES[module]}.{param}"
    raise ValueError(f"unknown GGUF tensor {gguf_name!r}")


def unpermute_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Invert llama.cpp's q/k permutation: per head, interleaved (x0, y0, x1, y1...) -> halves."""
    head_dim = weight.shape[0] // num_heads
    grouped = weight.reshape(num_heads, head_dim // 2, 2, *weight.shape[1:])
    return grouped.transpose(1, 2).reshape(weight.shape).contiguous()


def export_tokenizer(gguf_path: Path, out_dir: Path) -> None:
    """Write tokenizer.json and tokenizer_config.json (chat template inside) for a GGUF's vocabulary."""
    from transformers import AutoTokenizer  # slow import, needed only when converting

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # The runtime reads the chat template from tokenizer_config.json, not a separate .jinja file.
    tokenizer.save_pretrained(str(out_dir), save_jinja_files=False)


def _dequantize(tensor: ReaderTensor) -> np.ndarray:
    values = dequantize(tensor.data, tensor.tensor_type)
    # GGUF lists dims fastest-first; numpy (and HF) want them slowest-first.
    shape = tuple(int(d) for d in reversed(tensor.shape))
    # F32 tensors come back as read-only views of the memory map; torch needs writable memory.
    return np.require(values, np.float32, ["C", "W"]).reshape(shape)


def _field(reader: GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _float32(value: float) -> float:
    """The shortest decimal that rounds to the stored float32 (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(value)))


def _rope_scaling(reader: GGUFReader, arch: str) -> dict[str, Any] | None:
    scaling_type = _field(reader, f"{arch}.rope.scaling.type", "none")
    if scaling_type == "none":
        return None
    if scaling_type == "linear":
        return {"rope_type": "linear", "factor": _float32(_field(reader, f"{arch}.rope.scaling.factor"))}
    raise ValueError(f"unsupported GGUF rope scaling type {scaling_type!r}; supported: none, linear")
