"""`sgc bench`: the SGLang paper's workloads as a reproducible benchmark suite.

- `workloads.py`: the registry: workloads (program file, synthetic inputs from a seed, sizes, the
  ablations that apply) and systems (sgc with all optimizations or one off, HF naive and batched);
- `systems.py`: how each kind of system runs a workload (sgc runtime, HF transformers);
- `metrics.py`: what a run measures (time, tokens, cache hits, forward passes, peak memory);
- `harness.py`: `run_bench`, repeats and medians into one JSON-able dict;
- `report.py`: markdown tables, PNG charts, the docs/performance.md section.

The programs themselves are ordinary sgc programs in `benchmarks/programs/`.
"""

from typing import Any

from sgc.bench.workloads import ABLATIONS, SYSTEMS, WORKLOADS, get_workloads

__all__ = ["ABLATIONS", "SCHEMA", "SYSTEMS", "WORKLOADS", "get_workloads", "run_bench"]


def __getattr__(name: str) -> Any:  # the harness imports torch: only when a run needs it (`sgc --help` stays fast)
    if name in ("run_bench", "SCHEMA"):
        from sgc.bench import harness

        return getattr(harness, name)
    raise AttributeError(name)
