"""`run_bench`: every selected workload on every applicable system, repeated, medians in one dict.

The result is plain JSON data (`SCHEMA` names its version); `sgc.bench.report` turns it into the
markdown table, the plots and the docs section. A system that fails is recorded with its error and
the run goes on, so one broken ablation never costs the whole run.
"""

from __future__ import annotations

import os
import platform
import random
import sys
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import torch

from sgc.bench.metrics import RunMetrics, median_metrics
from sgc.bench.systems import SYSTEMS, HFModel, System, applicable, run_hf_batched, run_hf_naive, run_sgc
from sgc.bench.workloads import ABLATIONS, Workload

__all__ = ["SCHEMA", "machine_info", "run_bench"]

SCHEMA = "sgc-bench/1"


def machine_info(device: str) -> dict[str, Any]:
    """The machine, for the report: CPU model, cores, torch threads and version, the accelerator."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    accel = torch.cuda.get_device_name() if cuda and torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "device": "cuda" if cuda else "cpu", "accelerator": accel,
            "dtype": "bfloat16" if cuda else "float32"}


def _one(system: System, workload: Workload, hf: Callable[[], HFModel], inputs: list[dict[str, Any]],
         mode: str, model: str, device: str, seed: int) -> RunMetrics:
    size = workload.size(mode)
    if system.kind == "sgc":
        return run_sgc(workload, system, inputs, size, model=model, device=device, seed=seed)
    if system.kind == "hf-naive":
        return run_hf_naive(workload, hf(), inputs, size, seed=seed, device=device)
    return run_hf_batched(workload, hf(), inputs, size, seed=seed, device=device)


def run_bench(workloads: list[Workload], *, model: str = "smollm2-135m-instruct", device: str = "cpu",
              mode: str = "quick", repeats: int = 1, seed: int = 0, systems: list[str] | None = None,
              command: str = "", log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the results dict (see `SCHEMA`; `report.write_all` writes it out).

    `mode` is "quick", "full" or "tiny" (the CI test's sizes). `systems` keeps only those system
    names (all by default). Each (workload, system) runs `repeats` times; the medians are reported.
    """
    from models import resolve_model

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    known = [s.name for s in SYSTEMS]
    for name in systems or ():
        if name not in known:
            raise ValueError(f"unknown system {name!r} (systems: {', '.join(known)})")
    chosen = [s for s in SYSTEMS if not systems or s.name in systems]
    folder = resolve_model(model)
    hf_model: list[HFModel] = []

    def hf() -> HFModel:
        if not hf_model:
            hf_model.append(HFModel(folder, device))
        return hf_model[0]

    if any(s.kind != "sgc" for s in chosen):
        hf()  # loaded first, so every system's peak RSS includes its weights alike (comparable peaks)
    started = datetime.now(timezone.utc)
    results: dict[str, Any] = {
        "schema": SCHEMA, "created": started.isoformat(timespec="seconds"), "command": command, "mode": mode,
        "model": model, "model_folder": str(folder), "device": device, "repeats": repeats, "seed": seed,
        "machine": machine_info(device), "ablations": dict(ABLATIONS),
        "systems": [{"name": s.name, "label": s.label, "kind": s.kind, "ablation": s.ablation} for s in chosen],
        "workloads": [],
    }
    for wi, workload in enumerate(workloads):
        size = workload.size(mode)
        inputs = workload.make_inputs(random.Random(seed * 1000 + wi), size)
        entry: dict[str, Any] = {
            "name": workload.name, "title": workload.title, "program": f"{workload.program_file}:{workload.function}",
            "size": {"num_programs": size.num_programs, "gen_tokens": size.gen_tokens,
                     "num_hf_programs": min(size.num_hf_programs, size.num_programs), "scale": size.scale},
            "ablations": list(workload.ablations), "systems": [],
        }
        for system in chosen:
            row: dict[str, Any] = {"name": system.name, "label": system.label, "kind": system.kind,
                                   "ablation": system.ablation, "status": "n/a", "metrics": None, "note": ""}
            if applicable(system, workload):
                try:
                    runs = [_one(system, workload, hf, inputs, mode, model, device, seed) for _ in range(repeats)]
                    row.update(status="ok", metrics=median_metrics(runs))
                    if runs[0].num_programs < len(inputs):
                        row["note"] = f"{runs[0].num_programs} of {len(inputs)} programs timed; rates per program"
                    m = row["metrics"]
                    log(f"[{workload.name}] {system.name}: {m['wall_s']:.2f} s, {m['programs_per_s']:.2f} prog/s, "
                        f"{m['tokens_per_s']:.1f} tok/s, hit {m['cache_hit_rate']:.0%}")
                except Exception as exc:  # recorded, and the run goes on
                    row.update(status="error", error=f"{type(exc).__name__}: {exc}")
                    log(f"[{workload.name}] {system.name}: FAILED {type(exc).__name__}: {exc}")
                    log(traceback.format_exc())
            entry["systems"].append(row)
        _add_ratios(entry)
        results["workloads"].append(entry)
    results["total_s"] = (datetime.now(timezone.utc) - started).total_seconds()
    return results


def _add_ratios(entry: dict[str, Any]) -> None:
    """Each system's programs/s over naive HF's, and over full sgc's (what an ablation costs)."""
    rates = {r["name"]: r["metrics"]["programs_per_s"] for r in entry["systems"] if r["status"] == "ok"}
    for row in entry["systems"]:
        rate = rates.get(row["name"])
        row["speedup_vs_hf_naive"] = rate / rates["hf-naive"] if rate and rates.get("hf-naive") else None
        row["ratio_vs_sgc"] = rate / rates["sgc"] if rate and rates.get("sgc") else None
