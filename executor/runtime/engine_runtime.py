"""The runtime behind an engine: KV memory, model runner and scheduler, built as one unit.

They are built together and replaced together: after a forward pass fails (nothing can say which
request broke it) the engine thread throws the whole unit away and builds a fresh one, so no half
updated KV table or cache survives into the next step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from executor import kernels
from executor.runtime.constrained import ConstraintCache
from executor.runtime.cuda_graph import capture_batch_sizes
from executor.runtime.engine_chain import ChainTokenizer
from executor.runtime.engine_config import EngineConfig, default_kv_bytes
from executor.runtime.kv_manager import KVManager
from executor.runtime.memory import KVPool, kv_bytes_per_token
from executor.runtime.model_runner import ModelRunner
from executor.runtime.scheduler import Scheduler, SchedulerConfig

__all__ = ["RuntimeParts", "build_runtime"]

logger = logging.getLogger("sgc.engine")

# Request-table rows beyond max_running_requests: score continuations and the CUDA graphs' scratch row.
_SPARE_ROWS = 8


@dataclass(frozen=True)
class RuntimeParts:
    kv_pool: KVPool
    kv: KVManager
    runner: ModelRunner
    scheduler: Scheduler

    @property
    def num_kv_slots(self) -> int:
        return self.kv.allocator.num_slots


def num_kv_slots(config: EngineConfig, model_config, device: torch.device, dtype: torch.dtype) -> int:
    """The KV pool's size in token slots: `max_total_tokens`, or the byte budget over the bytes
    one token's K/V takes in every layer."""
    if config.max_total_tokens is not None:
        num_slots = config.max_total_tokens
    else:
        per_token = kv_bytes_per_token(model_config.num_hidden_layers, model_config.num_key_value_heads,
                                       model_config.head_dim, dtype)
        budget = (int(config.kv_cache_gb * (1 << 30)) if config.kv_cache_gb
                  else default_kv_bytes(device, config.kv_cache_fraction))
        num_slots = budget // per_token
    if num_slots < 2:
        raise ValueError(f"KV budget gives {num_slots} slots; it must hold at least a short prompt")
    return num_slots


def build_runtime(model: nn.Module, model_config, config: EngineConfig, device: torch.device,
                  dtype: torch.dtype, context_len: int, constraints: ConstraintCache) -> RuntimeParts:
    """Size and allocate the KV pool, bind it to the model, capture CUDA graphs, make the scheduler."""
    cfg = model_config
    num_slots = num_kv_slots(config, cfg, device, dtype)
    kv_pool = KVPool(num_slots, cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, dtype, device)
    kv = KVManager.build(num_slots, config.max_running_requests + _SPARE_ROWS, context_len, device,
                         enable_cache=not config.disable_radix_cache)
    runner = ModelRunner(model, kv_pool, kv.req_to_token, cfg.head_dim)
    if device.type == "cuda" and not config.disable_cuda_graph:
        _capture_cuda_graphs(runner, kv, config)
    scheduler = Scheduler(
        runner,
        kv,
        SchedulerConfig(
            max_running_requests=config.max_running_requests,
            max_prefill_tokens=config.max_prefill_tokens,
            chunk_size=config.chunk_size,
            context_len=context_len,
            policy=config.schedule_policy,
            enable_jump_forward=not config.disable_jump_forward,
            # The Triton decode kernel reads per request; only the CPU path uses the groups.
            shared_prefix_decode=not config.disable_shared_prefix_decode
            and not (device.type == "cuda" and kernels.triton_available()),
        ),
        device,
    )
    scheduler.constraints = constraints
    scheduler.chain_tokens = ChainTokenizer(constraints.tokenizer)
    return RuntimeParts(kv_pool, kv, runner, scheduler)


def _capture_cuda_graphs(runner: ModelRunner, kv: KVManager, config: EngineConfig) -> None:
    if not kernels.triton_available():  # the reference decode attention syncs with the host
        logger.warning("Triton kernels are off: decode runs without CUDA graphs")
        return
    max_bs = config.cuda_graph_max_bs or config.max_running_requests
    runner.capture_cuda_graphs(capture_batch_sizes(min(max_bs, config.max_running_requests)), kv)
