"""Golden tests of every pass: IR text in (`<case>.before.ir`), IR text out (`<case>.after.ir`).

For every case: the input verifies; the pass's output verifies, prints exactly as the golden file, and
the golden file parses back to the same text; a second run changes nothing (the passes are idempotent);
and the symbolic interpreter (compiler/passes/semantics.py) gives the same final texts and variables
before and after. Regenerate with `SGC_UPDATE_GOLDEN=1 pytest tests/test_passes_golden.py` and review
the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from compiler.ir_text import print_module
from compiler.parser.ir_reader import parse_module
from compiler.passes import PASSES, PassManager
from compiler.passes.semantics import evaluate_module

GOLDEN = Path(__file__).parent / "golden" / "passes"
# Passes whose whole output is node meta (hints for the executor): their goldens print it.
META_PASSES = {"chain-gens"}
CASES = sorted(
    (directory.name, before.name.removesuffix(".before.ir"))
    for directory in GOLDEN.iterdir() if directory.is_dir()
    for before in directory.glob("*.before.ir")
)


def test_every_pass_has_golden_cases() -> None:
    covered = {name for name, _ in CASES}
    assert covered == set(PASSES), f"passes without golden cases: {set(PASSES) - covered}"
    for name in PASSES:
        assert sum(1 for n, _ in CASES if n == name) >= 4, name


@pytest.mark.parametrize(("pass_name", "case"), CASES, ids=[f"{p}/{c}" for p, c in CASES])
def test_golden(pass_name: str, case: str) -> None:
    before_text = (GOLDEN / pass_name / f"{case}.before.ir").read_text(encoding="utf-8")
    module = parse_module(before_text)  # verifies
    assert len(module), "an empty case"
    source = "".join(line for line in before_text.splitlines(keepends=True) if not line.startswith("//"))
    assert print_module(module) == source, "the .before.ir file is not in printed form (// comments aside)"
    expected_semantics = evaluate_module(module)

    manager = PassManager.from_names([pass_name], verify=True)
    changed = manager.run(module)
    meta = pass_name in META_PASSES
    after_text = print_module(module, meta=meta)
    after_path = GOLDEN / pass_name / f"{case}.after.ir"
    if os.environ.get("SGC_UPDATE_GOLDEN"):
        after_path.write_text(after_text, encoding="utf-8")
    assert after_text == after_path.read_text(encoding="utf-8")
    assert changed == (after_text != source)

    assert print_module(parse_module(after_text), meta=meta) == after_text
    assert evaluate_module(module) == expected_semantics

    again = PassManager.from_names([pass_name], verify=True)
    assert not again.run(module), "a second run changed the IR"
    assert print_module(module, meta=meta) == after_text
