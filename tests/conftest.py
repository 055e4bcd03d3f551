"""Shared fixtures: the real default model (converted once per machine) and tiny random models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

DEFAULT_MODEL = "smollm2-135m-instruct"


def pytest_configure(config: pytest.Config) -> None:
    """`pytest -m "not slow"` is the fast tier, the loop of every change (tests/tiers.py):
    - property tests take fewer examples;
    - torch runs on one thread (here and in the processes tests start): its models are tiny, and
      handing each small op to a second thread costs more than it saves;
    - bytecode caches are written even under PYTHONDONTWRITEBYTECODE (this machine sets it), so a
      run after a change recompiles only what changed instead of ~200 modules and every test
      module's assertion rewrite (~8 s of each run); `__pycache__/` is ignored by git.
    """
    import os
    import sys

    from tests import tiers

    tiers.FAST = "not slow" in (config.getoption("markexpr") or "").replace("  ", " ")
    if tiers.FAST:
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
        sys.dont_write_bytecode = False


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The default model's converted folder (in $SGC_CACHE or ~/.cache/sgc; converted on first use)."""
    from models import resolve_model

    return resolve_model(DEFAULT_MODEL)


TINY_CONFIGS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}),
}


def make_tiny_model(arch: str, out: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A random-weight model of `arch` using the default model's tokenizer (so prompts are real text)."""
    import transformers

    config_cls, model_cls, extra = TINY_CONFIGS[arch]
    vocab = json.loads((tokenizer_dir / "config.json").read_text())["vocab_size"]
    config = getattr(transformers, config_cls)(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=False, eos_token_id=2, bos_token_id=1, **extra,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config)
    # Larger random weights give peaked distributions, so greedy decoding is not decided by noise.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, out / name)
    return out


@pytest.fixture(scope="session")
def tiny_model_dirs(default_model_dir: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: make_tiny_model(arch, root / arch, default_model_dir) for arch in TINY_CONFIGS}
