"""The null-model mode: the runtime runs with a model whose forward costs nothing (host overhead)."""

from __future__ import annotations

from pathlib import Path

import torch

from executor.runtime.engine import Engine
from models.config import ModelConfig
from models.null import NullModel


def test_null_model_shapes_and_fixed_token() -> None:
    cfg = ModelConfig.from_hf_dict({"architectures": ["LlamaForCausalLM"], "hidden_size": 8, "vocab_size": 300,
                                    "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16})
    model = NullModel(cfg)
    hidden = model(torch.zeros(5, dtype=torch.long), torch.arange(5), lambda *a: None)
    assert hidden.shape == (5, 8) and not hidden.any()
    logits = model.compute_logits(hidden)
    assert logits.shape == (5, 300) and logits.is_contiguous()
    assert logits.argmax(dim=1).tolist() == [100] * 5
    assert model.compute_logits(torch.zeros(70, 8)).shape == (70, 300)  # the block grows


def test_engine_with_a_null_model_runs_requests_end_to_end(tiny_model_dirs: dict[str, Path]) -> None:
    with Engine(model_path=str(tiny_model_dirs["llama"]), device="cpu", null_model=True) as engine:
        assert isinstance(engine.model, NullModel)
        outs = engine.generate(["a b c", "d e"], {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True})
        assert [o["output_ids"] for o in outs] == [[100] * 6, [100] * 6]
        assert engine.stats()["num_decode_steps"] >= 5
