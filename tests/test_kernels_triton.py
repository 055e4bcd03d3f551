"""Triton kernels vs their references (in the interpreter), and the dispatcher, on CPU.

The kernel cases live in `triton_interpreter_cases.py`, which this module runs in a child pytest
with `TRITON_INTERPRET=1` set before Triton is imported (see that file for why a child process).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from executor import kernels
from executor.kernels.fused_layers import FusedRMSNorm, FusedRotaryEmbedding, use_fused_layers
from models.layers import RMSNorm, RotaryEmbedding

TESTS = Path(__file__).resolve().parent


def test_kernels_under_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}  # CPU tensors only
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TESTS / "triton_interpreter_cases.py")],
        cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=600,
    )
    report = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= 15 and "skipped" not in proc.stdout, report


def test_dispatcher_uses_references_on_cpu():
    assert not kernels.use_triton(torch.zeros(1))
    x, w = torch.randn(3, 8), torch.randn(8)
    assert torch.equal(kernels.rmsnorm(x, w, 1e-6), kernels.rmsnorm_ref(x, w, 1e-6))


def test_fused_layers_swap_keeps_state_and_results():
    """The class swap keeps parameters, the shared rotary table and (on CPU) the exact results."""
    from torch import nn

    rotary = RotaryEmbedding(16, 64, 10000.0, None)
    model = nn.ModuleDict({"a": RMSNorm(16, 1e-6), "b": RMSNorm(16, 1e-6), "rot": rotary})
    model.add_module("shared", nn.ModuleDict({"rot": rotary}))
    for m in model.modules():
        if isinstance(m, RMSNorm):
            nn.init.normal_(m.weight)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 16, dtype=torch.bfloat16)
    q, k = torch.randn(5, 4, 16), torch.randn(5, 2, 16)
    positions = torch.tensor([0, 3, 9, 1, 63])
    before = [model["a"](x.float()), *rotary(positions, q, k)]

    assert use_fused_layers(model) == 3  # the shared rotary module is swapped once
    assert type(model["a"]) is FusedRMSNorm and type(model["shared"]["rot"]) is FusedRotaryEmbedding
    assert model["shared"]["rot"] is model["rot"]
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    after = [model["a"](x.float()), *model["rot"](positions, q, k)]
    assert all(torch.equal(b, a) for b, a in zip(before, after))
    assert use_fused_layers(model) == 0  # idempotent
