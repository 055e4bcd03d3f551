"""Greedy outputs and prompt logprobs of our runtime equal HF transformers' (float32, CPU)."""

from __future__ import annotations

import pytest
import torch

from executor.runtime.engine import Engine

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village by the sea,",
    "List three primary colors:\n1.",
    "Translate to French: 'Good morning, how are you?'\nFrench:",
    "12 + 35 = ",
    "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nName a planet.<|im_end|>\n<|im_start|>assistant\n",
    "Les montagnes enneigées du Québec sont",
]


def hf_greedy(model, input_ids: list[int], max_new_tokens: int, eos_ids: set[int]) -> list[int]:
    """HF transformers' greedy generate for one unpadded prompt, cut after the first EOS."""
    ids = torch.tensor([input_ids])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=0)
    new = out[0, len(input_ids):].tolist()
    for i, t in enumerate(new):
        if t in eos_ids:
            return new[: i + 1]
    return new


def hf_prompt_logprobs(model, input_ids: list[int]) -> list[float]:
    with torch.no_grad():
        logits = model(torch.tensor([input_ids])).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    return [lp[i - 1, input_ids[i]].item() for i in range(1, len(input_ids))]


def check_parity(model_dir, prompts, max_new_tokens):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with Engine(model_path=str(model_dir), device="cpu") as engine:
        eos = set(engine.tokenizer.eos_token_ids)
        outs = engine.generate(prompts, {"max_new_tokens": max_new_tokens, "temperature": 0},
                               return_logprob=True, logprob_start_len=0)
        for prompt, out in zip(prompts, outs):
            ids = engine.tokenizer.encode(prompt)
            expected = hf_greedy(hf, ids, max_new_tokens, eos)
            assert out["output_ids"] == expected, f"greedy mismatch for {prompt!r}"
            ours = [lp for lp, _, _ in out["meta_info"]["input_token_logprobs"][1:]]
            theirs = hf_prompt_logprobs(hf, ids)
            assert len(ours) == len(theirs) == len(ids) - 1
            assert max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-4, prompt
    return outs


@pytest.mark.slow
def test_default_model_matches_hf(default_model_dir):
    outs = check_parity(default_model_dir, PROMPTS, max_new_tokens=48)
    # The prompts were chosen so most of them really generate 48 tokens: a weak test otherwise.
    assert sum(o["meta_info"]["completion_tokens"] for o in outs) >= 6 * 48


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_tiny_models_match_hf(tiny_model_dirs, arch):
    check_parity(tiny_model_dirs[arch], PROMPTS[:4], max_new_tokens=24)
