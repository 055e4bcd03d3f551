"""The decoder's cheaper CPU layer math (issue 12) is bit-identical to the formulas it replaced.

The references are the formulas the layers used before (kept as the kernels' oracles in
executor/kernels/norm_ref.py and rotary_ref.py): torch.equal, not a tolerance, because greedy
parity with HF transformers must not depend on luck.
"""

from __future__ import annotations

import pytest
import torch
from dense_attention import dense_causal_attention

from executor.kernels.fused_layers import use_fused_layers
from executor.kernels.norm_ref import rmsnorm_ref
from executor.kernels.rotary_ref import rotary_embedding_ref
from models import ModelConfig, create_model
from models.layers import RMSNorm, RotaryEmbedding, rotate, rotate_


def norm(size: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> RMSNorm:
    module = RMSNorm(size, 1e-5)
    with torch.no_grad():
        module.weight.copy_(1 + 0.3 * torch.randn(size, generator=torch.Generator().manual_seed(seed)))
    return module.to(dtype)


@pytest.mark.parametrize("shape", [(1, 576), (7, 64), (33, 96), (300, 576), (5, 6, 32)])
def test_float32_rmsnorm_is_bit_identical_to_the_formula(shape):
    module = norm(shape[-1])
    x = 3 * torch.randn(shape, generator=torch.Generator().manual_seed(len(shape)))
    assert torch.equal(module(x), rmsnorm_ref(x, module.weight, module.eps))


def test_half_precision_rmsnorm_keeps_hf_rounding():
    """bf16 rounds before the weight multiply (HF's order), which the fused call would not do."""
    module = norm(64, torch.bfloat16)
    x = torch.randn(9, 64).to(torch.bfloat16)
    out = module(x)
    assert out.dtype == torch.bfloat16 and torch.equal(out, rmsnorm_ref(x, module.weight, module.eps))


def qkv_output(tokens: int, num_q: int, num_kv: int, head_dim: int, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(tokens)
    return torch.randn(tokens, (num_q + 2 * num_kv) * head_dim, generator=gen).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens,num_q,num_kv", [(1, 9, 3), (5, 4, 4), (40, 6, 2)])
def test_in_place_rotation_of_q_and_k_together_equals_the_per_tensor_reference(dtype, tokens, num_q, num_kv):
    head_dim = 16
    rotary = RotaryEmbedding(head_dim, 256, 10000.0, None)
    out = qkv_output(tokens, num_q, num_kv, head_dim, dtype)
    before = out.clone()
    # q and k as the fused projection leaves them: a strided view of one matmul output.
    width = (num_q + num_kv) * head_dim
    qk = out[:, :width].view(tokens, -1, head_dim)
    positions = torch.randint(0, 256, (tokens,), generator=torch.Generator().manual_seed(7))
    ref_qk = before[:, :width].view(tokens, -1, head_dim)
    ref_q, ref_k = rotary_embedding_ref(positions, ref_qk[:, :num_q], ref_qk[:, num_q:], *rotary._cos_sin(qk))
    module_q, module_k = rotary(positions, ref_qk[:, :num_q], ref_qk[:, num_q:])
    assert torch.equal(module_q, ref_q) and torch.equal(module_k, ref_k)
    assert torch.equal(before, out)  # the module path leaves its inputs alone

    angles = rotary.angles(positions, qk)
    assert rotate_(qk, angles) is qk
    assert torch.equal(qk[:, :num_q], ref_q) and torch.equal(qk[:, num_q:], ref_k)
    assert torch.equal(out[:, width:], before[:, width:])  # v untouched
    assert torch.equal(rotate(ref_qk[:, num_q:], angles), ref_k)


def test_a_rotary_subclass_with_its_own_forward_gets_no_angles():
    """The CUDA kernel swap overrides `forward`: the decoder must then call it, not rotate itself."""

    class OwnForward(RotaryEmbedding):
        def forward(self, positions, q, k):
            return q, k

    positions, like = torch.arange(3), torch.zeros(3, 2, 8)
    assert OwnForward(8, 16, 10000.0, None).angles(positions, like) is None
    assert RotaryEmbedding(8, 16, 10000.0, None).angles(positions, like) is not None


def tiny_model(qk_norm: bool):
    config = ModelConfig(
        architecture="Qwen3ForCausalLM" if qk_norm else "LlamaForCausalLM", vocab_size=128, hidden_size=48,
        intermediate_size=80, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2, head_dim=8,
        rms_norm_eps=1e-6, rope_theta=10000.0, rope_scaling=None, max_position_embeddings=64,
        tie_word_embeddings=True, attention_bias=False, qk_norm=qk_norm, bos_token_id=None, eos_token_ids=(0,),
    )
    torch.manual_seed(0)
    model = create_model(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(1 + 0.2 * torch.randn_like(param) if "norm" in name else 0.2 * torch.randn_like(param))
    return model.eval()


@pytest.mark.parametrize("qk_norm", [False, True])
def test_decoder_gathers_angles_once_and_matches_the_module_path(qk_norm, monkeypatch):
    """One gather per forward, not one per layer; the per-layer `forward` route (taken after the
    CUDA swap, whose CPU fallback is the reference) gives the same bits."""
    model = tiny_model(qk_norm)
    ids, positions = torch.randint(0, 128, (11,)), torch.arange(11)
    gathers = []
    original = RotaryEmbedding._gather_angles
    monkeypatch.setattr(RotaryEmbedding, "_gather_angles", lambda *a: gathers.append(1) or original(*a))
    with torch.inference_mode():
        fast = model(ids, positions, dense_causal_attention())
        assert len(gathers) == 1
        assert use_fused_layers(model) > 0
        swapped = model(ids, positions, dense_causal_attention())
    assert torch.equal(fast, swapped)
