"""The test tiers: the full suite (`pytest`, what CI runs) and the fast tier (`pytest -m "not slow"`).

The fast tier leaves out the `slow`-marked tests (end to end on the real default model, long
benchmarks; most have a fast twin on a tiny random model) and runs the property tests with fewer
examples: `tests/conftest.py` sets `FAST` when the run's marker expression deselects slow tests.

```python
from hypothesis import settings
from tests.tiers import examples

@settings(max_examples=examples(40), deadline=None)   # 40 in the full suite, 10 in the fast tier
def test_property(...): ...
```
"""

from __future__ import annotations

FAST = False  # set by tests/conftest.py before the test modules are imported


def examples(full: int, fast: int | None = None) -> int:
    """Hypothesis examples for a property test: `full` in the full suite, `fast` (default: a quarter of
    `full`, at least 5) in the fast tier."""
    if not FAST:
        return full
    return fast if fast is not None else max(5, full // 4)
