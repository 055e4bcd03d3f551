"""The native CPU layer kernels against torch: fused element-wise ops and the small-M panel GEMM.

Rotary and the residual add must equal the torch path bit for bit; RMSNorm and SiLU agree to a few
ulp (another summation order, another exp); the GEMM to float rounding of F.linear. Bad arguments
are ValueErrors raised before any native code runs.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from executor.kernels.cpu_native import library
from executor.kernels.layer_ops_cpu import NativeLayerOps
from executor.kernels.small_gemm_cpu import PanelWeight, panel_packer
from models.layers import RMSNorm, RotaryEmbedding, rotate_

ops = NativeLayerOps.load()
pytestmark = pytest.mark.skipif(ops is None, reason="no C compiler: the native kernels are not built")


def assert_ulps(got: torch.Tensor, expected: torch.Tensor, rel: float = 2e-6) -> None:
    expected = expected.detach()
    torch.testing.assert_close(got, expected, rtol=rel, atol=rel * float(expected.abs().max()))


@pytest.mark.parametrize("rows", [1, 3, 32, 300])
@pytest.mark.parametrize("dim", [576, 64, 7])
def test_add_rmsnorm_adds_exactly_and_normalizes_like_torch(rows, dim):
    gen = torch.Generator().manual_seed(rows * dim)
    x, residual, weight = torch.randn(rows, dim, generator=gen), torch.randn(rows, dim, generator=gen), torch.randn(dim, generator=gen)
    norm = RMSNorm(dim, 1e-5)
    norm.weight.data = weight
    summed = x + residual
    got = ops.add_rmsnorm_(x, residual, weight, 1e-5)
    assert torch.equal(x, summed)  # x is the new residual stream, bit for bit
    assert_ulps(got, norm(summed))
    assert_ulps(ops.rmsnorm(summed, weight, 1e-5), norm(summed))


@pytest.mark.parametrize("tokens", [1, 5, 700])
@pytest.mark.parametrize("head_dim", [64, 128, 10])
def test_rotary_is_bit_identical_to_the_torch_path(tokens, head_dim):
    rotary = RotaryEmbedding(head_dim, 4096, 10000.0, None)
    gen = torch.Generator().manual_seed(tokens + head_dim)
    positions = torch.randint(0, 4096, (tokens,), generator=gen)
    full = torch.randn(tokens, 15, head_dim, generator=gen)  # 12 rotated heads, then 3 more (v)
    expected = full[:, :12].clone()
    rotate_(expected, rotary.angles(positions, expected))
    qk = full[:, :12]  # a view with the projection's token stride, as the decoder passes it
    cos, sin = rotary.half_tables()
    ops.rotate_(qk, positions, cos, sin)
    assert torch.equal(qk, expected)


def test_silu_mul_matches_torch_across_the_range():
    gate_up = torch.cat([torch.linspace(-120, 120, 3001).repeat(4, 1), torch.randn(4, 3001)], dim=1)
    gate, up = gate_up[:, :3001], gate_up[:, 3001:]
    assert_ulps(ops.silu_mul(gate_up), F.silu(gate) * up, rel=4e-6)


def test_bad_arguments_are_value_errors():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="residual"):
        ops.add_rmsnorm_(x, torch.randn(4, 9), torch.randn(8), 1e-5)
    with pytest.raises(ValueError, match="weight"):
        ops.rmsnorm(x, torch.randn(7), 1e-5)
    with pytest.raises(ValueError, match="float32"):
        ops.rmsnorm(x.double(), torch.randn(8), 1e-5)
    rotary = RotaryEmbedding(8, 16, 10000.0, None)
    cos, sin = rotary.half_tables()
    with pytest.raises(ValueError, match="outside the rotary table"):
        ops.rotate_(torch.randn(2, 3, 8), torch.tensor([0, 16]), cos, sin)
    with pytest.raises(ValueError, match="positions"):
        ops.rotate_(torch.randn(2, 3, 8), torch.tensor([0, 1], dtype=torch.int32), cos, sin)
    with pytest.raises(ValueError, match="odd width"):
        ops.silu_mul(torch.randn(2, 9))
    with pytest.raises(ValueError, match="rows must be contiguous"):
        ops.silu_mul(torch.randn(8, 4).t())


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 70), out_features=st.integers(1, 100), in_features=st.integers(1, 80),
       bias=st.booleans(), strided=st.booleans())
def test_panel_gemm_equals_f_linear(rows, out_features, in_features, bias, strided):
    gen = torch.Generator().manual_seed(rows * 10007 + out_features * 101 + in_features)
    weight = torch.randn(out_features, in_features, generator=gen)
    b = torch.randn(out_features, generator=gen) if bias else None
    x = torch.randn(rows, in_features, generator=gen)
    if strided:
        x = torch.randn(rows, in_features + 5, generator=gen)[:, 2 : 2 + in_features]  # row stride != width
    packed = panel_packer()(weight)
    torch.testing.assert_close(packed.matmul(x, b), F.linear(x, weight, b), rtol=1e-5, atol=1e-5)


def test_panel_gemm_model_shapes_and_rows_independent_of_batch():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(960, 576, generator=gen) * 0.02
    packed = panel_packer()(weight)
    x = torch.randn(64, 576, generator=gen)
    full = packed.matmul(x, None)
    torch.testing.assert_close(full, F.linear(x, weight), rtol=1e-5, atol=1e-5)
    for rows in (1, 7, 8, 9, 33):  # each row sums k in order whatever the batch: identical bits
        assert torch.equal(packed.matmul(x[:rows], None), full[:rows])


def test_panel_gemm_rejects_mismatched_inputs():
    packed = panel_packer()(torch.randn(16, 8))
    with pytest.raises(ValueError, match="inputs"):
        packed.matmul(torch.randn(3, 9), None)
    with pytest.raises(ValueError, match="bias"):
        packed.matmul(torch.randn(3, 8), torch.randn(15))
    with pytest.raises(ValueError, match="float32"):
        PanelWeight(library(), torch.randn(4, 4).double())


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the AVX2 build is an x86 target")
def test_the_avx2_build_passes_the_same_tests(tmp_path):
    """The kernels have 16-lane (AVX-512) and 8-lane (AVX2) code paths and -march=native picks one:
    build the other one here (`SGC_NATIVE_ARCH=haswell`, in its own cache) and run the kernel tests."""
    env = {**os.environ, "SGC_NATIVE_ARCH": "haswell", "SGC_CACHE": str(tmp_path)}
    tests = [str(Path(__file__).parent / name) for name in ("test_native_layer_ops.py", "test_native_attention.py")]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", *tests],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    built = list((tmp_path / "kernels").glob("*.so"))
    assert built, "the AVX2 build did not happen"
