"""Our model implementations against HF transformers on tiny random-weight models, plus loader errors."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import transformers
from dense_attention import dense_causal_attention
from safetensors import safe_open

from models import ModelConfig, create_model, load_model
from models.checkpoint import read_safetensors, write_safetensors
from models.gguf import (
    generation_config_dict,
    hf_config_dict,
    hf_tensor_name,
    hf_weights,
    open_gguf,
    unpermute_rows,
)
from models.layers import RotaryEmbedding

VOCAB = 300
BASE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    attn_implementation="eager",
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 4.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}

# name -> (HF config class, HF model class, overrides of BASE)
CASES = {
    "llama-gqa2-untied": ("LlamaConfig", "LlamaForCausalLM", {}),
    "llama-mha-tied-llama3-rope": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"num_key_value_heads": 4, "tie_word_embeddings": True, "rope_scaling": LLAMA3_ROPE},
    ),
    "llama-linear-rope-bias": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"rope_scaling": {"rope_type": "linear", "factor": 2.0}, "attention_bias": True, "rope_theta": 500.0},
    ),
    "mistral-gqa3": (
        "MistralConfig",
        "MistralForCausalLM",
        {"hidden_size": 96, "num_attention_heads": 6, "head_dim": 16, "sliding_window": None},
    ),
    "qwen2-tied": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True}),
    "qwen3-gqa3-head-dim": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        {"num_attention_heads": 6, "head_dim": 32},
    ),
}


def make_hf_model(case: str, seed: int = 0) -> transformers.PreTrainedModel:
    config_name, model_name, overrides = CASES[case]
    # HF's config classes mutate the rope dicts they are given, so give them copies.
    config = getattr(transformers, config_name)(**copy.deepcopy({**BASE, **overrides}))
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    # HF initializes norms to 1 and biases to 0, which would leave those code paths untested.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.2 * torch.randn_like(param))
            else:
                param.normal_(0, 0.1)
    return model


def hf_logits(model: transformers.PreTrainedModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids[None]).logits[0].float()


def our_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        hidden = model(ids, torch.arange(len(ids)), dense_causal_attention())
        return model.compute_logits(hidden)


@pytest.fixture(scope="module")
def saved_models(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[transformers.PreTrainedModel, Path]]:
    root = tmp_path_factory.mktemp("tiny")
    saved = {}
    for case in CASES:
        model = make_hf_model(case)
        model.save_pretrained(root / case)
        saved[case] = (model, root / case)
    return saved


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_hf(case: str, saved_models) -> None:
    hf_model, folder = saved_models[case]
    ours, config = load_model(folder, "cpu", torch.float32)
    assert config.architecture == CASES[case][1]
    ids = torch.randint(0, VOCAB, (24,), generator=torch.Generator().manual_seed(1))
    diff = (our_logits(ours, ids) - hf_logits(hf_model, ids)).abs().max().item()
    assert diff < 1e-4, f"{case}: max logit diff {diff}"


def test_sharded_checkpoint(tmp_path: Path) -> None:
    hf_model = make_hf_model("llama-gqa2-untied", seed=3)
    hf_model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    ours, _ = load_model(tmp_path)
    ids = torch.randint(0, VOCAB, (16,), generator=torch.Generator().manual_seed(2))
    assert (our_logits(ours, ids) - hf_logits(hf_model, ids)).abs().max().item() < 1e-4


def test_packed_sequences_match_separate_runs(saved_models) -> None:
    """Tokens of several requests in one T dimension, positions restarting per request."""
    ours, _ = load_model(saved_models["qwen3-gqa3-head-dim"][1])
    generator = torch.Generator().manual_seed(4)
    seqs = [torch.randint(0, VOCAB, (n,), generator=generator) for n in (5, 11, 1)]
    ids = torch.cat(seqs)
    positions = torch.cat([torch.arange(len(s)) for s in seqs])
    with torch.no_grad():
        packed = ours.compute_logits(ours(ids, positions, dense_causal_attention([len(s) for s in seqs])))
    separate = torch.cat([our_logits(ours, s) for s in seqs])
    assert (packed - separate).abs().max().item() < 1e-5


def test_bfloat16_load_is_close_to_float32(saved_models) -> None:
    folder = saved_models["llama-gqa2-untied"][1]
    ours32, _ = load_model(folder)
    ours16, _ = load_model(folder, "cpu", torch.bfloat16)
    assert ours16.model.layers[0].self_attn.qkv_proj.weight.dtype == torch.bfloat16
    ids = torch.arange(10)
    with torch.no_grad():
        logits16 = ours16.compute_logits(ours16(ids, torch.arange(10), dense_causal_attention()))
    assert logits16.dtype == torch.float32
    assert (logits16 - our_logits(ours32, ids)).abs().max().item() < 0.1


def test_fused_layout_loads_without_copy(saved_models, tmp_path: Path) -> None:
    """A checkpoint written in `checkpoint_layout` order maps q/k/v and gate/up as single views."""
    hf_model, folder = saved_models["qwen2-tied"]
    tensors = read_safetensors(folder / "model.safetensors")
    model, _ = load_model(folder)
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    write_safetensors(
        [(name, tensors[name]) for name in model.checkpoint_layout(tensors)], tmp_path / "model.safetensors"
    )
    # Readable by the reference implementation too.
    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        assert set(f.keys()) == set(tensors)
        assert torch.equal(
            f.get_tensor("model.layers.1.self_attn.k_proj.bias"),
            tensors["model.layers.1.self_attn.k_proj.bias"],
        )
    mapped, _ = load_model(tmp_path)
    file_size = (tmp_path / "model.safetensors").stat().st_size
    for param in mapped.parameters():
        assert param.untyped_storage().nbytes() == file_size  # a view of the file map, not a copy
    ids = torch.arange(12)
    assert torch.equal(our_logits(mapped, ids), our_logits(model, ids))


def test_writing_to_a_mapped_parameter_never_reaches_the_file(saved_models) -> None:
    folder = saved_models["llama-gqa2-untied"][1]
    before = (folder / "model.safetensors").read_bytes()
    model, _ = load_model(folder)
    with torch.no_grad():
        model.model.norm.weight.add_(1.0)
    assert (folder / "model.safetensors").read_bytes() == before


def test_missing_unexpected_and_misshapen_weights_are_named(saved_models) -> None:
    _, folder = saved_models["llama-gqa2-untied"]
    weights = read_safetensors(folder / "model.safetensors")
    config = ModelConfig.from_hf_dict(json.loads((folder / "config.json").read_text()))

    def load(tensors: dict[str, torch.Tensor]) -> None:
        create_model(config).load_weights(tensors.items())

    missing = {k: v for k, v in weights.items() if k != "model.layers.1.self_attn.v_proj.weight"}
    with pytest.raises(ValueError, match=r"missing.*model\.layers\.1\.self_attn\.v_proj\.weight"):
        load(missing)
    with pytest.raises(ValueError, match=r"unexpected weight 'model\.layers\.0\.extra\.weight'"):
        load({**weights, "model.layers.0.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"shape mismatch for 'model\.norm\.weight'"):
        load({**weights, "model.norm.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"shape mismatch for up_proj\.weight"):
        load({**weights, "model.layers.0.mlp.up_proj.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match=r"missing.*lm_head\.weight"):
        load({k: v for k, v in weights.items() if k != "lm_head.weight"})


def test_tied_checkpoint_may_still_store_lm_head(saved_models) -> None:
    _, folder = saved_models["qwen2-tied"]
    weights = read_safetensors(folder / "model.safetensors")
    config = ModelConfig.from_hf_dict(json.loads((folder / "config.json").read_text()))
    model = create_model(config)
    model.load_weights([*weights.items(), ("lm_head.weight", weights["model.embed_tokens.weight"])])
    assert model.lm_head is None


def test_config_reads_v4_and_v5_rope_keys_alike() -> None:
    v4 = {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 10,
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "rope_theta": 500000.0,
        "rope_scaling": {"type": "llama3", **{k: v for k, v in LLAMA3_ROPE.items() if k != "rope_type"}},
        "eos_token_id": [3, 4],
    }
    v5 = {k: v for k, v in v4.items() if k not in ("rope_theta", "rope_scaling")}
    v5["rope_parameters"] = {**LLAMA3_ROPE, "rope_theta": 500000.0}
    a, b = ModelConfig.from_hf_dict(v4), ModelConfig.from_hf_dict(v5)
    assert a == b
    assert a.rope_scaling is not None and a.rope_scaling.rope_type == "llama3"
    assert a.eos_token_ids == (3, 4) and a.num_key_value_heads == 2 and a.head_dim == 4
    plain = ModelConfig.from_hf_dict({**v5, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}})
    assert plain.rope_scaling is None and plain.rope_theta == 1e4


def test_config_rejects_what_we_cannot_run() -> None:
    base = {
        "vocab_size": 10,
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }
    with pytest.raises(ValueError, match="unsupported architecture 'GPT2LMHeadModel'.*LlamaForCausalLM"):
        ModelConfig.from_hf_dict({**base, "architectures": ["GPT2LMHeadModel"]})
    with pytest.raises(ValueError, match="unsupported rope scaling type 'yarn'"):
        ModelConfig.from_hf_dict(
            {
                **base,
                "architectures": ["LlamaForCausalLM"],
                "rope_scaling": {"rope_type": "yarn", "factor": 2.0},
            }
        )
    with pytest.raises(ValueError, match="no 'architectures'"):
        ModelConfig.from_hf_dict(base)


def test_registry_names_supported_architectures() -> None:
    config = ModelConfig.from_hf_dict(
        {
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": 10,
            "hidden_size": 8,
            "intermediate_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        }
    )
    with pytest.raises(ValueError, match="unsupported architecture 'Phi3ForCausalLM'.*Qwen3ForCausalLM"):
        create_model(dataclasses.replace(config, architecture="Phi3ForCausalLM"))


def test_rotary_survives_meta_construction() -> None:
    """The cos/sin table is derived data and must be real even when the module is built on meta."""
    with torch.device("meta"):
        rotary = RotaryEmbedding(8, 16, 10000.0, None)
    q = torch.randn(3, 2, 8)
    rotated, _ = rotary(torch.tensor([0, 1, 2]), q, q[:, :1])
    assert torch.equal(rotated[0], q[0])  # position 0 is the identity
    assert torch.allclose(rotated.norm(dim=-1), q.norm(dim=-1), atol=1e-5)


def test_unpermute_inverts_llama_cpp_permutation() -> None:
    num_heads, head_dim = 3, 8
    weight = torch.randn(num_heads * head_dim, 5)
    # llama.cpp's converter: within each head, the two halves are interleaved row by row.
    permuted = weight.reshape(num_heads, 2, head_dim // 2, 5).transpose(1, 2).reshape(weight.shape)
    assert torch.equal(unpermute_rows(permuted, num_heads), weight)


def test_gguf_tensor_names() -> None:
    assert hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_tensor_name("blk.7.attn_q.bias") == "model.layers.7.self_attn.q_proj.bias"
    assert hf_tensor_name("blk.0.attn_k_norm.weight") == "model.layers.0.self_attn.k_norm.weight"
    assert hf_tensor_name("blk.12.ffn_down.weight") == "model.layers.12.mlp.down_proj.weight"
    with pytest.raises(ValueError, match="unknown GGUF tensor 'blk.0.ssm_a'"):
        hf_tensor_name("blk.0.ssm_a")


# HF module suffix -> llama.cpp tensor name part, for writing test GGUF files the way llama.cpp does.
GGUF_BLOCK_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def write_gguf_like_llama_cpp(model: transformers.PreTrainedModel, arch: str, path: Path) -> None:
    """A GGUF of `model` as llama.cpp's converter writes it: its names, q/k permutation, one Q8_0 tensor."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_eot_token_id(5)
    tied = config.tie_word_embeddings
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        array = tensor.numpy()
        if name.startswith("model.layers."):
            layer, module_and_param = name[len("model.layers.") :].split(".", 1)
            module, param = module_and_param.rsplit(".", 1)
            gguf_name = f"blk.{layer}.{GGUF_BLOCK_NAMES[module]}.{param}"
            if arch == "llama" and module in ("self_attn.q_proj", "self_attn.k_proj"):
                heads = config.num_attention_heads if "q_proj" in module else config.num_key_value_heads
                array = array.reshape(heads, 2, -1, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)
        else:
            gguf_name = {
                "model.embed_tokens.weight": "token_embd.weight",
                "model.norm.weight": "output_norm.weight",
            }.get(name, "output.weight")
        if gguf_name == "blk.0.ffn_down.weight":
            writer.add_tensor(
                gguf_name,
                gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0),
                raw_dtype=gguf.GGMLQuantizationType.Q8_0,
            )
        else:
            writer.add_tensor(gguf_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize(
    ("case", "arch"),
    [("llama-gqa2-untied", "llama"), ("qwen2-tied", "qwen2"), ("qwen3-gqa3-head-dim", "qwen3")],
)
def test_gguf_weights_and_config_match_hf(case: str, arch: str, tmp_path: Path) -> None:
    import gguf

    hf_model = make_hf_model(case, seed=5)
    with torch.no_grad():  # the reference sees the Q8_0-rounded weight that the file holds
        down = hf_model.model.layers[0].mlp.down_proj.weight
        quantized = gguf.quants.quantize(down.numpy(), gguf.GGMLQuantizationType.Q8_0)
        down.copy_(torch.from_numpy(gguf.quants.dequantize(quantized, gguf.GGMLQuantizationType.Q8_0)))
    write_gguf_like_llama_cpp(hf_model, arch, tmp_path / "tiny.gguf")
    reader = open_gguf(tmp_path / "tiny.gguf")
    config_dict = hf_config_dict(reader)
    assert config_dict["architectures"] == [CASES[case][1]]
    assert generation_config_dict(reader)["eos_token_id"] == [2, 5]
    # The written config builds the same model in HF transformers.
    hf_config = transformers.AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    assert hf_config.tie_word_embeddings == hf_model.config.tie_word_embeddings
    ours = create_model(ModelConfig.from_hf_dict({**config_dict, "architectures": [CASES[case][1]]}))
    ours.load_weights(hf_weights(reader))
    ids = torch.randint(0, VOCAB, (16,), generator=torch.Generator().manual_seed(6))
    assert (our_logits(ours, ids) - hf_logits(hf_model, ids)).abs().max().item() < 1e-4
