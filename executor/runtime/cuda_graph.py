"""CUDA-graph capture and replay of the decode step.

A decode step of a small model is hundreds of tiny kernels; launched one by one from Python the
GPU idles between them. Recorded once per batch size as a CUDA graph, the whole step replays with
one launch.

A graph replays fixed addresses and shapes, so the decode step reads its inputs from static
buffers sized for the largest captured batch. A batch of n requests runs the smallest captured
size >= n; the padding rows point at a scratch request-table row leased from the KV manager (all zeros,
so it reads the reserved padding KV slot 0), have seq_len 1, and write their garbage K/V into
slot 0, which no request ever reads. Nothing inside the captured region may sync with the host:
the decode attention kernel takes its loop bounds from `seq_lens` on the device and its grid from
the batch size only. Batches larger than the largest size run eagerly.

All graphs share one memory pool; capturing the largest size first lets the smaller ones reuse it.

The runner records a plain step function (`ModelRunner.forward_eager`) and never imports the model
runner: the model runner owns this object, not the other way round.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from executor.runtime.forward_batch import ForwardBatch, ForwardMode
from executor.runtime.memory import PADDING_SLOT

if TYPE_CHECKING:
    from executor.runtime.kv_manager import KVManager

logger = logging.getLogger("sgc.cuda_graph")

_DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256)


def capture_batch_sizes(max_batch_size: int) -> list[int]:
    """The batch sizes to capture, up to `max_batch_size` (always included).

    Powers of two to 16, then steps of 8, 16 and 32: above 16 requests padding stays under a
    third of the batch, with 17 graphs in all for 256.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
    sizes = [s for s in _DEFAULT_BATCH_SIZES if s < max_batch_size]
    return sizes + [max_batch_size]


class CudaGraphRunner:
    """Captured decode steps for a set of batch sizes, and their replay."""

    def __init__(self, step: Callable[[ForwardBatch], torch.Tensor], kv: KVManager,
                 device: torch.device, batch_sizes: Sequence[int], num_warmups: int = 2):
        """`step` runs one eager decode pass (what is recorded); `kv` owns the request table the
        step reads and leases this runner a scratch row of padding slots for padding rows."""
        if not batch_sizes:
            raise ValueError("CudaGraphRunner needs at least one batch size")
        self._check_device(device)
        self.step = step
        self.kv = kv
        self.batch_sizes = sorted(set(batch_sizes))
        self.max_batch_size = self.batch_sizes[-1]
        # A request-table row that no request will ever get: its slots stay 0 (the padding slot).
        self.scratch_row = kv.reserve_row()

        n = self.max_batch_size
        long = {"dtype": torch.long, "device": device}
        self.input_ids = torch.zeros(n, **long)
        self.positions = torch.zeros(n, **long)
        self.out_cache_loc = torch.full((n,), PADDING_SLOT, **long)
        self.req_rows = torch.full((n,), self.scratch_row, **long)
        self.seq_lens = torch.ones(n, **long)
        self._num_live_rows = 0  # rows [0, this) may hold a previous batch's values

        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self._pool = None
        started = time.perf_counter()
        with torch.inference_mode():
            for size in reversed(self.batch_sizes):
                self._capture(size, num_warmups)
        logger.info("captured %d decode CUDA graphs (batch sizes %s) in %.2f s",
                    len(self.graphs), self.batch_sizes, time.perf_counter() - started)

    def release(self) -> None:
        """Give the scratch row back and drop the graphs (before capturing new ones)."""
        if self.graphs:
            self.graphs.clear()
            self.outputs.clear()
            self.kv.release_row(self.scratch_row)

    def _static_batch(self, size: int) -> ForwardBatch:
        return ForwardBatch(
            mode=ForwardMode.DECODE,
            input_ids=self.input_ids[:size],
            positions=self.positions[:size],
            out_cache_loc=self.out_cache_loc[:size],
            req_rows=self.req_rows[:size],
            seq_lens=self.seq_lens[:size],
        )

    def _capture(self, size: int, num_warmups: int) -> None:
        batch = self._static_batch(size)
        # Warm-up runs compile the Triton kernels for these shapes, move lazily built tables
        # to the GPU and let cuBLAS pick its algorithms, none of which may happen while capturing.
        for _ in range(num_warmups):
            self.step(batch)
        self.graphs[size], self.outputs[size] = self._record(lambda: self.step(batch))

    # The only CUDA-specific steps; tests on CPU override them to replay eagerly.
    def _check_device(self, device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA model runner, got device {device}")

    def _record(self, step: Callable[[], torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        torch.cuda.synchronize()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = step()
        return graph, output

    def can_run(self, batch: ForwardBatch) -> bool:
        return batch.mode is ForwardMode.DECODE and 0 < batch.num_tokens <= self.max_batch_size

    def padded_size(self, num_requests: int) -> int:
        return self.batch_sizes[bisect.bisect_left(self.batch_sizes, num_requests)]

    def replay(self, batch: ForwardBatch) -> torch.Tensor:
        """Hidden states [n, hidden] of a decode batch of n requests.

        The result is a view of the graph's output buffer: valid until the next replay.
        """
        n = batch.num_tokens
        size = self.padded_size(n)
        if self._num_live_rows > n:
            # Rows a previous, larger batch filled become padding again.
            stale = slice(n, self._num_live_rows)
            self.input_ids[stale].zero_()
            self.positions[stale].zero_()
            self.out_cache_loc[stale].fill_(PADDING_SLOT)
            self.req_rows[stale].fill_(self.scratch_row)
            self.seq_lens[stale].fill_(1)
        self._num_live_rows = n
        self.input_ids[:n].copy_(batch.input_ids, non_blocking=True)
        self.positions[:n].copy_(batch.positions, non_blocking=True)
        self.out_cache_loc[:n].copy_(batch.out_cache_loc, non_blocking=True)
        self.req_rows[:n].copy_(batch.req_rows, non_blocking=True)
        self.seq_lens[:n].copy_(batch.seq_lens, non_blocking=True)
        self.graphs[size].replay()
        return self.outputs[size][:n]
