"""Load a model from a local Hugging Face folder (config.json + safetensors, single or sharded).

Loading is on the start-up path of every run, so it does the minimum: the module is built on the
meta device (no allocation, no random init) and materialized uninitialized on the target device in
the target dtype. On CPU, parameters whose dtype matches the file become views of its copy-on-write
memory map (no copy at all; fused q/k/v and gate/up too when the file stores their shards back to
back, as our converter does); everything else is copied once into its parameter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from models.checkpoint import read_safetensors
from models.config import ModelConfig
from models.registry import create_model


def load_model(
    folder: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, ModelConfig]:
    """Build the folder's model on `device` in `dtype` with its weights, in eval mode without grads."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config.json in model folder {folder}")
    config = ModelConfig.from_hf_dict(json.loads(config_path.read_text()))
    with torch.device("meta"):
        model = create_model(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    # The maps are copy-on-write, so sharing their pages is safe even if a caller later modifies a
    # parameter in place.
    model.load_weights(iter_safetensors(checkpoint_files(folder)), share_memory=True)
    model.eval().requires_grad_(False)
    return model, config


def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the shards of the index, or the single file."""
    index_path = folder / "model.safetensors.index.json"
    if index_path.is_file():
        weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(
        f"no model.safetensors or model.safetensors.index.json in {folder} "
        "(only safetensors checkpoints are supported)"
    )


def iter_safetensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of the files, as views of copy-on-write memory maps."""
    for path in files:
        yield from read_safetensors(path).items()
