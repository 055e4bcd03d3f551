"""The decoder layer's element-wise ops as native CPU kernels (`csrc/layer_ops_cpu.c`), for float32.

`NativeLayerOps` is what the model runner hands a CPU model (`DecoderForCausalLM.layer_ops`): the
residual add fused with the next RMSNorm, the rotary embedding in place, and SiLU(gate) * up, one
call each instead of 2-5 torch ops. At decode batch sizes those ops cost their dispatch, not their
arithmetic (docs/performance.md, "Fused layer ops"). Each method checks what the C code relies on
(dtype, device, row layout, shapes) and raises ValueError naming the argument, so a bad call is an
error here and never a read past a buffer there.
"""

from __future__ import annotations

import ctypes

import torch


class NativeLayerOps:
    """Fused element-wise layer ops over float32 CPU tensors, through the native kernel library."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib

    @classmethod
    def load(cls) -> NativeLayerOps | None:
        """The ops over the native library, or None without one (no compiler, or switched off)."""
        from executor.kernels.cpu_native import library

        lib = library()
        return None if lib is None else cls(lib)

    def rmsnorm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """RMSNorm of x [T, dim] with `weight` [dim]: a new [T, dim] tensor."""
        rows, dim = _rows(x, "x")
        _vector(weight, dim, "weight")
        out = torch.empty((rows, dim), dtype=torch.float32)
        self._check(self._lib.sgc_rmsnorm_f32(x.data_ptr(), x.stride(0), weight.data_ptr(), rows, dim, eps,
                                              out.data_ptr(), dim, _threads(rows)), "rmsnorm")
        return out

    def add_rmsnorm_(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                     eps: float) -> torch.Tensor:
        """x += residual in place (x is then the residual stream); returns RMSNorm(x) * weight, new."""
        rows, dim = _rows(x, "x")
        if _rows(residual, "residual") != (rows, dim):
            raise ValueError(f"add_rmsnorm: residual {tuple(residual.shape)} does not match x {tuple(x.shape)}")
        _vector(weight, dim, "weight")
        out = torch.empty((rows, dim), dtype=torch.float32)
        self._check(self._lib.sgc_add_rmsnorm_f32(
            x.data_ptr(), x.stride(0), residual.data_ptr(), residual.stride(0), weight.data_ptr(), rows, dim,
            eps, out.data_ptr(), dim, _threads(rows)), "add_rmsnorm")
        return out

    def rotate_(self, x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        """Rotate x [T, heads, D] in place by the angles of `positions` [T] (int64, contiguous), with
        `cos` / `sin` the [max_positions, D/2] tables (HF's rotate_half layout)."""
        if x.dim() != 3 or x.dtype != torch.float32 or x.device.type != "cpu":
            raise ValueError(f"rotate: x must be a [T, heads, D] float32 CPU tensor, got {x.dtype} {tuple(x.shape)}")
        tokens, heads, head_dim = x.shape
        if x.stride(2) != 1 or x.stride(1) != head_dim or head_dim % 2:
            raise ValueError("rotate: each token's heads must be contiguous with an even head dim")
        if positions.dtype != torch.int64 or not positions.is_contiguous() or positions.shape != (tokens,):
            raise ValueError(f"rotate: positions must be {tokens} contiguous int64 values")
        for name, table in (("cos", cos), ("sin", sin)):
            if table.dtype != torch.float32 or not table.is_contiguous() or table.shape[1:] != (head_dim // 2,):
                raise ValueError(f"rotate: the {name} table must be contiguous float32 [positions, {head_dim // 2}]")
        if cos.shape != sin.shape:
            raise ValueError("rotate: the cos and sin tables differ in shape")
        status = self._lib.sgc_rope_f32(x.data_ptr(), x.stride(0), tokens, heads, head_dim, positions.data_ptr(),
                                        cos.data_ptr(), sin.data_ptr(), cos.shape[0], _threads(tokens))
        if status == 2:
            raise ValueError(f"rotate: a position is outside the rotary table of {cos.shape[0]} positions")
        self._check(status, "rotate")

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """SiLU(gate) * up for gate_up [T, 2I] = [gate | up]: a new [T, I] tensor."""
        rows, both = _rows(gate_up, "gate_up")
        if both % 2:
            raise ValueError(f"silu_mul: gate_up has an odd width {both}")
        width = both // 2
        out = torch.empty((rows, width), dtype=torch.float32)
        self._check(self._lib.sgc_silu_mul_f32(gate_up.data_ptr(), gate_up.stride(0), rows, width, out.data_ptr(),
                                               width, _threads(rows)), "silu_mul")
        return out

    @staticmethod
    def _check(status: int, op: str) -> None:
        if status != 0:
            raise ValueError(f"native {op} refused its arguments (status {status})")


def _rows(x: torch.Tensor, name: str) -> tuple[int, int]:
    """(rows, width) of a [rows, width] float32 CPU tensor whose rows are contiguous."""
    if x.dtype is torch.float32 and x.is_cpu and x.dim() == 2 and x.is_contiguous():
        return x.shape  # the common case, checked in one pass (these calls run ~120 times a step)
    if x.dim() != 2 or x.dtype != torch.float32 or x.device.type != "cpu":
        raise ValueError(f"{name} must be a [rows, width] float32 CPU tensor, got {x.dtype} {tuple(x.shape)}")
    if x.stride(1) != 1 or (x.shape[0] > 1 and x.stride(0) < x.shape[1]):
        raise ValueError(f"{name}'s rows must be contiguous")
    return x.shape[0], x.shape[1]


def _vector(weight: torch.Tensor, size: int, name: str) -> None:
    if weight.dtype is torch.float32 and weight.dim() == 1 and weight.shape[0] == size and weight.is_contiguous():
        return
    if weight.shape != (size,) or weight.dtype != torch.float32 or not weight.is_contiguous():
        raise ValueError(f"{name} must be a contiguous float32 vector of {size}, got {tuple(weight.shape)}")


def _threads(rows: int) -> int:
    """Threads for a call: torch's count (the kernels run small inputs on one thread themselves)."""
    return torch.get_num_threads() if rows > 1 else 1
