"""What one timed run measured, and the counters and probes that measure it.

Token totals come from the engine's `stats()` (differences around the timed run), so the cache hit
rate is cached prompt tokens / prompt tokens over the whole run. `PeakMemory` samples the process's resident memory
during the run (the process-wide peak from getrusage never goes down, so it would charge every system
with the largest one before it) or, on CUDA, reads torch's peak allocation.
"""

from __future__ import annotations

import os
import resource
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["PeakMemory", "RunMetrics", "median_metrics"]


@dataclass
class RunMetrics:
    """One timed run of one system on one workload."""

    wall_s: float
    num_programs: int  # programs timed (naive HF may time a subset)
    gen_tokens: int  # tokens generated (completion tokens; jump-forward tokens included)
    prompt_tokens: int  # prompt tokens of all requests (score continuations included)
    cached_tokens: int  # of those, found in the radix cache
    forward_passes: int
    peak_mem_bytes: int
    jump_forward_tokens: int = 0

    @property
    def programs_per_s(self) -> float:
        return self.num_programs / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.gen_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cache_hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "programs_per_s": self.programs_per_s, "tokens_per_s": self.tokens_per_s,
                "cache_hit_rate": self.cache_hit_rate}


def median_metrics(runs: list[RunMetrics]) -> dict[str, Any]:
    """The median of each metric over repeated runs (rates are medians of the runs' rates)."""
    dicts = [r.to_dict() for r in runs]
    out: dict[str, Any] = {k: statistics.median(d[k] for d in dicts) for k in dicts[0]}
    for key in ("num_programs", "gen_tokens", "prompt_tokens", "cached_tokens", "forward_passes",
                "peak_mem_bytes", "jump_forward_tokens"):
        out[key] = int(out[key])
    out["num_repeats"] = len(runs)
    out["wall_s_all"] = [r.wall_s for r in runs]
    return out


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """`with PeakMemory(device) as peak: ...; peak.bytes`: the peak during the block.

    CPU: resident memory sampled every 10 ms (and at both ends). CUDA: `torch.cuda.max_memory_allocated`
    after resetting the peak at the start.
    """

    def __init__(self, device: str = "cpu", interval_s: float = 0.01) -> None:
        self.cuda = device.startswith("cuda")
        self.interval_s = interval_s
        self.bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        self.bytes = _rss_bytes()
        self._thread = threading.Thread(target=self._sample, name="sgc-bench-rss", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.bytes = max(self.bytes, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.bytes = int(torch.cuda.max_memory_allocated())
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.bytes = max(self.bytes, _rss_bytes())


def timer() -> float:
    return time.perf_counter()
