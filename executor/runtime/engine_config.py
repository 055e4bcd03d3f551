"""The engine's settings, and how they resolve on this machine (device, dtype, KV budget)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["DEFAULT_CUDA_KV_FRACTION", "EngineConfig", "default_kv_bytes", "pick_dtype", "resolve_device"]


@dataclass(frozen=True)
class EngineConfig:
    """The engine's settings (`Engine(model_path, device, **kwargs)` takes these names)."""

    model_path: str = "smollm2-135m-instruct"
    device: str = "auto"
    dtype: str | None = None  # default: float32 on CPU, bfloat16 on CUDA
    kv_cache_gb: float | None = None  # KV memory budget; default sized from the machine
    # Without kv_cache_gb: the share of free device memory (after loading the weights) the KV pool
    # takes. Default on CUDA 0.8, leaving room for activations, CUDA graphs and the sampler;
    # on CPU the default stays a quarter of RAM (at most 4 GiB), a given fraction is of free RAM.
    kv_cache_fraction: float | None = None
    disable_cuda_graph: bool = False  # CUDA: run decode eagerly instead of replaying graphs
    cuda_graph_max_bs: int | None = None  # largest captured decode batch; default max_running_requests
    max_total_tokens: int | None = None  # KV slots; overrides kv_cache_gb (tests use tiny pools)
    max_running_requests: int = 256
    max_prefill_tokens: int = 8192
    chunk_size: int = 2048
    schedule_policy: str = "lpm"
    disable_radix_cache: bool = False
    disable_jump_forward: bool = False
    # Decode requests submitted with a common prefix_group read their shared prefix once (CPU).
    disable_shared_prefix_decode: bool = False
    # How long a step may wait for the follow-ups of finished requests sent with follow_up=True
    # (see executor/runtime/runtime_client.py); past it the step runs without them and the waits are dropped.
    follow_up_wait_s: float = 0.05
    # A model whose forward costs nothing (models/null.py): what is left of a step is the runtime's
    # own overhead (benchmarks/bench_host.py). Outputs are one repeated token, never the model's.
    null_model: bool = False


def resolve_device(device: str) -> torch.device:
    """`device` ("auto", "cpu", "cuda", "cuda:N") as a torch device; ValueError if unusable here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; expected 'auto', 'cpu' or 'cuda[:N]'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available on this machine "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                         "use 'cpu' or 'auto'")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}; expected 'auto', 'cpu' or 'cuda[:N]'") from exc
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r} was asked for but this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s)")
    return resolved


DEFAULT_CUDA_KV_FRACTION = 0.8


def default_kv_bytes(device: torch.device, fraction: float | None = None) -> int:
    """The KV pool's byte budget when none is given (see `EngineConfig.kv_cache_fraction`)."""
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"kv_cache_fraction must be in (0, 1], got {fraction}")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * (DEFAULT_CUDA_KV_FRACTION if fraction is None else fraction))
    if fraction is not None:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") * fraction)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(4 << 30, total // 4)


def pick_dtype(config: EngineConfig, device: torch.device) -> torch.dtype:
    """The weights' and KV's dtype: the configured one, else float32 on CPU and bf16 (or fp16 where
    bf16 is missing) on CUDA."""
    if config.dtype is None:
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if config.dtype not in names:
        raise ValueError(f"unknown dtype {config.dtype!r}; expected one of {sorted(names)}")
    return names[config.dtype]
