"""The budgets registry: defaults documented, overrides and environment variables, clear messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler import budgets

DOCS = Path(__file__).resolve().parent.parent / "docs" / "security.md"


def test_docs_security_lists_every_budget_with_its_default():
    page = DOCS.read_text(encoding="utf-8")
    start = page.index("<!-- budgets table")
    end = page.index("<!-- end of budgets table -->")
    table = page[start:end].split("\n", 1)[1].strip()
    assert table == budgets.markdown_table(), "docs/security.md's budget table is stale: regenerate it"


def test_every_budget_is_enforced_somewhere():
    root = Path(__file__).resolve().parent.parent
    sources = "\n".join(p.read_text(encoding="utf-8") for folder in ("compiler", "executor", "sgc")
                        for p in (root / folder).rglob("*.py") if p.name != "budgets.py")
    unused = [name for name in budgets.BUDGETS if f'"{name}"' not in sources]
    assert not unused, f"budgets nobody checks: {unused}"


def test_override_environment_and_message(monkeypatch):
    assert budgets.value("ir_depth") == budgets.BUDGETS["ir_depth"].default
    monkeypatch.setenv("SGC_MAX_IR_DEPTH", "7")
    assert budgets.value("ir_depth") == 7
    with budgets.budget_overrides(ir_depth=3):
        assert budgets.value("ir_depth") == 3
        with pytest.raises(budgets.BudgetExceeded, match=r"^x: 4 levels is over the ir_depth budget of 3 levels "
                                                         r"\(raise it with SGC_MAX_IR_DEPTH=N"):
            budgets.check("ir_depth", 4, "x")
    assert budgets.value("ir_depth") == 7
    monkeypatch.setenv("SGC_MAX_IR_DEPTH", "-1")
    with pytest.raises(ValueError, match="must be positive"):
        budgets.value("ir_depth")
    with pytest.raises(KeyError, match="unknown budget 'nope'"):
        budgets.value("nope")
    with pytest.raises(ValueError, match="positive"):
        budgets.set_budget("ir_depth", 0)


def test_scan_structure_skips_strings_and_comments():
    shape = budgets.scan_structure('{"a": "[[[{{", "b": [1, [2]]}  # [[[[\n', comments=True)
    assert (shape.depth, shape.depth_line) == (3, 1)
    assert shape.separators == 4 + 6  # , : : ,  and the brackets that are not in strings or comments
    assert budgets.scan_structure("").depth == 0
