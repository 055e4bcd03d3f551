"""`sgc.budgets`: the named limits on untrusted input (see `compiler.budgets` and docs/security.md).

```python
import sgc.budgets
sgc.budgets.set_budget("constraint_seconds", 60)          # this process
with sgc.budgets.budget_overrides(artifact_bytes=1 << 30):  # one block
    program = sgc.load("big.sgc")
```
"""

from compiler.budgets import (
    BUDGETS,
    Budget,
    BudgetExceeded,
    budget_overrides,
    check,
    over_budget,
    set_budget,
    value,
)

__all__ = ["BUDGETS", "Budget", "BudgetExceeded", "budget_overrides", "check", "over_budget", "set_budget", "value"]
