"""`sgc bench`: every workload on every applicable system, on a tiny random model (the harness, not the speed)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from sgc.bench import ABLATIONS, SYSTEMS, WORKLOADS, get_workloads
from sgc.bench.report import DOCS_BEGIN, DOCS_END, markdown, update_docs, write_all
from sgc.bench.workloads import applicable, load_program

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dirs: dict[str, Path]) -> Path:
    return tiny_model_dirs["llama"]


@pytest.fixture(scope="module")
def results(tiny_model: Path) -> dict:
    import torch

    from sgc.bench import run_bench

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_bench(get_workloads(), model=str(tiny_model), device="cpu", mode="tiny", repeats=1,
                         command="pytest", log=lambda _msg: None)
    finally:
        torch.set_num_threads(threads)


def test_the_registry() -> None:
    assert len(WORKLOADS) >= 8 and set(ABLATIONS) == {"radix", "hoist", "fuse", "jump", "order"}
    for w in WORKLOADS.values():
        assert set(w.ablations) <= set(ABLATIONS)
        assert load_program(w).name == w.function  # every program file loads and has its function
    # every ablation targets at least one workload
    assert set(ABLATIONS) == {a for w in WORKLOADS.values() for a in w.ablations}
    with pytest.raises(ValueError, match="unknown workload 'nope'"):
        get_workloads(["nope"])


def test_inputs_are_reproducible() -> None:
    import random

    for w in WORKLOADS.values():
        a = w.make_inputs(random.Random(3), w.quick)
        assert a == w.make_inputs(random.Random(3), w.quick) and len(a) == w.quick.num_programs
        assert a != w.make_inputs(random.Random(4), w.quick)


@pytest.mark.slow  # shares the fixture that runs every workload on a tiny model (~20 s)
def test_every_workload_and_system_has_a_row(results: dict) -> None:
    assert results["schema"] == "sgc-bench/1"
    assert [w["name"] for w in results["workloads"]] == list(WORKLOADS)
    for w in results["workloads"]:
        workload = WORKLOADS[w["name"]]
        assert [r["name"] for r in w["systems"]] == [s.name for s in SYSTEMS]
        for row, system in zip(w["systems"], SYSTEMS):
            expected = "ok" if applicable(system, workload) else "n/a"
            assert row["status"] == expected, (w["name"], row["name"], row.get("error"))


CHAINED = {"chat"}  # workloads whose programs run gen -> known text -> gen chains


@pytest.mark.slow  # shares the fixture that runs every workload on a tiny model (~20 s)
def test_metrics_are_sane(results: dict) -> None:
    for w in results["workloads"]:
        rows = {r["name"]: r for r in w["systems"] if r["status"] == "ok"}
        for name, row in rows.items():
            m = row["metrics"]
            assert m["wall_s"] > 0 and m["programs_per_s"] > 0 and m["num_programs"] >= 1, (w["name"], name)
            assert m["forward_passes"] > 0 and m["peak_mem_bytes"] > 0 and m["prompt_tokens"] > 0
            assert 0 <= m["cache_hit_rate"] <= 1 and m["num_repeats"] == 1
            assert row["speedup_vs_hf_naive"] > 0
            if w["name"] not in ("fewshot", "hellaswag"):
                assert m["gen_tokens"] > 0, (w["name"], name)
        assert rows["hf-naive"]["speedup_vs_hf_naive"] == pytest.approx(1.0)
        assert rows["hf-naive"]["metrics"]["cached_tokens"] == 0
        if "sgc-no-radix" in rows:
            # Without the radix cache only a chained gen (gen -> known text -> gen in one running
            # request, the chain-gens pass) reuses KV: its prompt is the sequence it continues.
            cached = rows["sgc-no-radix"]["metrics"]["cached_tokens"]
            assert cached == 0 or w["name"] in CHAINED, (w["name"], cached)
            assert cached <= rows["sgc"]["metrics"]["cached_tokens"], w["name"]
            assert rows["sgc"]["metrics"]["cache_hit_rate"] > 0, w["name"]  # every workload but batch shares
    json_rows = {r["name"]: r for r in results["workloads"][[w["name"] for w in results["workloads"]].index("json")]["systems"]}
    assert json_rows["sgc"]["metrics"]["jump_forward_tokens"] > 0
    assert json_rows["sgc-no-jump"]["metrics"]["jump_forward_tokens"] == 0


@pytest.mark.slow  # shares the fixture that runs every workload on a tiny model (~20 s)
def test_results_write_out(results: dict, tmp_path: Path) -> None:
    paths, warning = write_all(results, tmp_path)
    assert warning is None
    loaded = json.loads((tmp_path / "results.json").read_text())
    assert loaded == json.loads(json.dumps(results))
    assert {"machine", "model", "device", "mode", "repeats", "command", "created", "workloads"} <= set(loaded)
    text = (tmp_path / "results.md").read_text()
    for name in WORKLOADS:
        assert f"| {name} |" in text and f"### {name}:" in text
        png = tmp_path / f"{name}.png"
        assert png in paths and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert (tmp_path / "summary.png").stat().st_size > 5000
    assert "n/a" in text and "HF naive" in text


@pytest.mark.slow  # shares the fixture that runs every workload on a tiny model (~20 s)
def test_without_matplotlib_the_tables_are_still_written(results: dict, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    paths, warning = write_all(results, tmp_path)
    assert "pip install 'sgc[bench]'" in warning
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.md"] == sorted(p.name for p in paths)


@pytest.mark.slow  # shares the fixture that runs every workload on a tiny model (~20 s)
def test_the_docs_section_is_replaced_in_place(results: dict, tmp_path: Path) -> None:
    page = tmp_path / "performance.md"
    shutil.copy(ROOT / "docs" / "performance.md", page)
    original = page.read_text()
    update_docs(page, results)
    update_docs(page, {**results, "created": "LATER"})
    text = page.read_text()
    assert text.count(DOCS_BEGIN) == text.count(DOCS_END) == 1
    assert "LATER" in text and results["created"] not in text.split(DOCS_BEGIN)[1]
    title = original.partition("\n")[0]
    assert text.startswith(title + "\n\n" + DOCS_BEGIN)
    # Everything outside the generated section is kept (the page may or may not have one already).
    if DOCS_BEGIN in original:
        before, _, rest = original.partition(DOCS_BEGIN)
        kept = [before, rest.partition(DOCS_END)[2]]
    else:
        kept = [original.partition("\n")[2]]
    assert all(part.strip() in text for part in kept)
    assert markdown(results).splitlines()[6] in text  # the summary table


@pytest.mark.slow  # shares the fixture that runs every workload on a tiny model (~20 s)
def test_the_cli(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sgc.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    help_text = capsys.readouterr().out
    assert all(name in help_text for name in WORKLOADS) and "jump-forward" in help_text and "examples:" in help_text
    assert main(["bench", "nope", "--quick"]) == 1
    assert "unknown workload 'nope'" in capsys.readouterr().err
    out = tmp_path / "out"
    docs = tmp_path / "perf.md"
    code = main(["bench", "batch", "--quick", "--model", str(tiny_model), "--out", str(out), "--json",
                 "--systems", "sgc", "hf-naive", "--update-docs", "--docs", str(docs)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["mode"] == "quick" and [r["status"] for r in printed["workloads"][0]["systems"]] == ["ok", "ok"]
    assert (out / "batch.png").exists() and DOCS_BEGIN in docs.read_text()
