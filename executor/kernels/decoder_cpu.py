"""A float32 decoder's whole forward pass as one native call (`csrc/decoder_cpu.c`), on CPU.

The model runner uses it for the steps the native attention takes (decodes and extends of at most
NATIVE_MAX_EXTEND tokens per request) and at most MAX_TOKENS tokens: there the ~400 Python-driven
kernel calls of a 30-layer step cost ~10 ms of a ~41 ms 12-request decode on two cores. The call
runs the same native functions in the same order as the decoder's fused Python path
(`DecoderForCausalLM._forward_fused`), so its hidden states are bit-identical to that path's.

Built for a model whose every projection carries a native panel pack (`models/cpu_pack.py`), with
no q/k norm (Qwen3 keeps the Python path); `create` returns None otherwise. Each call re-reads the
weights' addresses and checks that every pack is still current, so a weight replaced or written in
place after packing sends the step back to the Python path instead of reading stale memory.
"""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from executor.kernels.attention_cpu import NativePagedAttention
from models.cpu_pack import PANEL_ROWS

MAX_TOKENS = PANEL_ROWS.stop - 1  # the panel GEMM's rows (the C forward has no other); larger passes are prefills

_P = ctypes.c_void_p
_I = ctypes.c_int64


class DecoderArgs(ctypes.Structure):
    """Mirror of `decoder_args` in csrc/decoder_cpu.c (same fields, same order)."""

    _fields_ = [
        ("tokens", _I), ("hidden_size", _I), ("num_layers", _I), ("num_heads", _I), ("num_kv_heads", _I),
        ("head_dim", _I), ("intermediate", _I), ("eps", ctypes.c_float), ("scale", ctypes.c_float),
        ("layers", _P), ("final_norm", _P), ("positions", _P), ("cos_table", _P), ("sin_table", _P),
        ("table_rows", _I),
        ("new_slots", _P), ("req_to_token", _P), ("req_rows", _P), ("prefix_lens", _P), ("extend_lens", _P),
        ("query_starts", _P), ("seq_lens", _P), ("table_stride", _I), ("batch", _I),
        ("item_starts", _P), ("members", _P), ("item_shared", _P), ("items", _I),
        ("qkv", _P), ("attn", _P), ("proj", _P), ("gate_up", _P), ("act", _P), ("threads", ctypes.c_int),
    ]


LAYER_FIELDS = 10  # qkv, qkv bias, o, o bias, gate_up, down, input norm, post norm, K buffer, V buffer
_STEPS = {1: "first RMSNorm", 2: "qkv projection", 3: "rotary", 4: "attention", 5: "o projection",
          6: "post-attention add+norm", 7: "gate/up projection", 8: "SiLU*up", 9: "down projection",
          10: "add+norm"}


class NativeDecoderForward:
    """The whole forward of one model over one KV pool, in one native call per step."""

    def __init__(self, lib: ctypes.CDLL, model: nn.Module, kv_pool) -> None:
        self._lib = lib
        self._model = model
        self._pool = kv_pool
        body = model.model
        self._layers = list(body.layers)
        config = model.config
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.hidden_size = config.head_dim, config.hidden_size
        self.intermediate = config.intermediate_size
        self.eps = float(config.rms_norm_eps)
        self._embedding = body.embed_tokens
        self._final_norm = body.norm
        self._cos, self._sin = body.rotary.half_tables()

    @classmethod
    def create(cls, model: nn.Module, kv_pool) -> NativeDecoderForward | None:
        """The native forward for `model`, or None when it cannot run it (see the module doc)."""
        from executor.kernels.cpu_native import library

        lib = library()
        body = getattr(model, "model", None)
        if lib is None or body is None or not hasattr(body, "layers") or kv_pool.dtype != torch.float32:
            return None
        config = model.config
        norms = [body.norm] + [n for layer in body.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
        if any(layer.self_attn.q_norm is not None for layer in body.layers):
            return None
        if (kv_pool.num_layers, kv_pool.num_kv_heads, kv_pool.head_dim) != (
                config.num_hidden_layers, config.num_key_value_heads, config.head_dim):
            return None
        if any(float(n.eps) != float(config.rms_norm_eps) for n in norms):
            return None
        forward = cls(lib, model, kv_pool)
        return forward if forward._layer_table() is not None else None

    def can_run(self, num_tokens: int) -> bool:
        return 0 < num_tokens <= MAX_TOKENS

    def _layer_table(self) -> torch.Tensor | None:
        """Every layer's addresses (LAYER_FIELDS int64 each), or None if a pack is missing or stale."""
        rows = []
        for i, layer in enumerate(self._layers):
            attn, mlp = layer.self_attn, layer.mlp
            addresses = []
            for module in (attn.qkv_proj, attn.o_proj):
                packed = _panels(module)
                if packed is None:
                    return None
                addresses += [packed, _address(module.bias)]
            for module in (mlp.gate_up_proj, mlp.down_proj):
                packed = _panels(module)
                if packed is None or module.bias is not None:
                    return None
                addresses.append(packed)
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                if not _float32_vector(norm.weight, self.hidden_size):
                    return None
                addresses.append(norm.weight.data_ptr())
            addresses += [self._pool.k_buffer(i).data_ptr(), self._pool.v_buffer(i).data_ptr()]
            rows.append(addresses)
        if not _float32_vector(self._final_norm.weight, self.hidden_size):
            return None
        return torch.tensor(rows, dtype=torch.int64)

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor,
                 attention: NativePagedAttention) -> torch.Tensor | None:
        """Hidden states after the final norm, [T, hidden]; None if a weight changed since packing
        (the caller then runs the Python path)."""
        layers = self._layer_table()
        if layers is None:
            return None
        tokens = int(input_ids.shape[0])
        if not self.can_run(tokens) or attention.num_tokens != tokens:
            raise ValueError(f"native forward: {tokens} tokens for an attention layout of {attention.num_tokens}")
        attention.check_bounds(self._pool.k_buffer(0).shape[0])
        positions = positions.to(torch.int64).contiguous()
        if int(positions.min()) < 0 or int(positions.max()) >= self._cos.shape[0]:
            raise ValueError(f"native forward: a position is outside the rotary table of {self._cos.shape[0]}")
        hidden = self._embedding(input_ids).contiguous()
        if hidden.dtype != torch.float32 or hidden.shape != (tokens, self.hidden_size):
            raise ValueError(f"native forward: embeddings of shape {tuple(hidden.shape)}, {hidden.dtype}")
        normed = torch.empty_like(hidden)
        q_width, kv_width = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        scratch = {
            "qkv": torch.empty((tokens, q_width + 2 * kv_width)), "attn": torch.empty((tokens, q_width)),
            "proj": torch.empty((tokens, self.hidden_size)), "gate_up": torch.empty((tokens, 2 * self.intermediate)),
            "act": torch.empty((tokens, self.intermediate)),
        }
        args = DecoderArgs(
            tokens=tokens, hidden_size=self.hidden_size, num_layers=len(self._layers), num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads, head_dim=self.head_dim, intermediate=self.intermediate, eps=self.eps,
            layers=layers.data_ptr(), final_norm=self._final_norm.weight.data_ptr(), positions=positions.data_ptr(),
            cos_table=self._cos.data_ptr(), sin_table=self._sin.data_ptr(), table_rows=self._cos.shape[0],
            threads=torch.get_num_threads(), **{name: t.data_ptr() for name, t in scratch.items()},
            **attention.layout_args(),
        )
        status = self._lib.sgc_decoder_forward_f32(ctypes.addressof(args), hidden.data_ptr(), normed.data_ptr())
        if status != 0:
            step, code = divmod(status, 100)
            raise ValueError(f"native forward failed in the {_STEPS.get(step, step)} (status {code})")
        return normed


def _panels(module: nn.Module) -> int | None:
    """The address of a projection's current panel pack, or None."""
    pack = getattr(module, "weight_pack", None)
    if pack is None or pack.panels is None or not pack.matches(module.weight):
        return None
    return pack.panels.packed.data_ptr()


def _address(tensor: torch.Tensor | None) -> int:
    if tensor is None:
        return 0
    if tensor.dtype != torch.float32 or not tensor.is_contiguous():
        raise ValueError("native forward: a bias must be contiguous float32")
    return tensor.data_ptr()


def _float32_vector(weight: torch.Tensor, size: int) -> bool:
    return weight.dtype == torch.float32 and weight.is_contiguous() and tuple(weight.shape) == (size,)
