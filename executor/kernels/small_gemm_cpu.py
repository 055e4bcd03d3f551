"""Projection weights packed into column panels for the native small-M GEMM (`csrc/small_gemm_cpu.c`).

The model runner hands `panel_packer()` to `models.cpu_pack.pack_linears`: every projection and
the LM head then keep, next to their checkpoint weight, a `PanelWeight` that multiplies a few rows
at the CPU's limit (cold weights, 2 threads, the default model's 30 layers: 30.6 ms at 32 rows
against 38.3 for MKL's packed GEMM and 45.9 for F.linear; docs/performance.md, "Small-M GEMM").
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import torch


class PanelWeight:
    """An [out, in] float32 weight in the kernel's panel layout; `matmul` is `F.linear` with it."""

    def __init__(self, lib: ctypes.CDLL, weight: torch.Tensor) -> None:
        if weight.dim() != 2 or weight.dtype != torch.float32 or weight.device.type != "cpu":
            raise ValueError(f"panel packing takes a 2-D float32 CPU weight, got {weight.dtype} {tuple(weight.shape)}")
        self._lib = lib
        self.out_features, self.in_features = weight.shape
        weight = weight.detach()
        if weight.stride(1) != 1:
            weight = weight.contiguous()
        self.packed = torch.empty(lib.sgc_gemm_packed_floats(self.out_features, self.in_features), dtype=torch.float32)
        status = lib.sgc_gemm_pack_f32(weight.data_ptr(), weight.stride(0), self.out_features, self.in_features,
                                       self.packed.data_ptr(), torch.get_num_threads())
        if status != 0:
            raise ValueError(f"panel packing refused a weight of shape {tuple(weight.shape)} (status {status})")

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x [M, in] float32 -> x @ weight.T + bias, [M, out]."""
        if x.dtype is not torch.float32 or x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"panel matmul: x of shape {tuple(x.shape)} for a weight with {self.in_features} inputs")
        if not x.is_contiguous():
            x = x.contiguous()
        bias_ptr = None
        if bias is not None:
            if bias.shape != (self.out_features,) or bias.dtype != torch.float32:
                raise ValueError(f"panel matmul: bias of shape {tuple(bias.shape)} for {self.out_features} outputs")
            bias = bias.detach().contiguous()
            bias_ptr = bias.data_ptr()
        rows = x.shape[0]
        y = torch.empty((rows, self.out_features), dtype=torch.float32)
        status = self._lib.sgc_gemm_f32(x.data_ptr(), self.in_features, rows, self.in_features,
                                        self.packed.data_ptr(), self.out_features, bias_ptr, y.data_ptr(),
                                        self.out_features, torch.get_num_threads())
        if status != 0:
            raise ValueError(f"panel matmul refused x of shape {tuple(x.shape)} (status {status})")
        return y


def panel_packer() -> Callable[[torch.Tensor], PanelWeight] | None:
    """What packs a weight into panels, or None without the native library."""
    from executor.kernels.cpu_native import library

    lib = library()
    if lib is None:
        return None
    return lambda weight: PanelWeight(lib, weight)
