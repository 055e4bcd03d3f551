"""The compiler driver: trace -> passes -> compile-constraints, one call (used by Runtime, load, the CLI).

```python
result = compile_program(fn, tokenizer=tok)                # one Function (bound args from fn.bind)
result = compile_program_file("prog.py", opt_level=0)       # every @function of a file
result = compile_program(fn, disable_passes=["hoist-prefix"])  # an ablation: one pass left out
result.module, result.breaks, result.fsms                    # optimized IR, graph breaks, token FSMs
fsms = compile_constraint_tables(module, tokenizer)          # re-derive the FSMs (another tokenizer)
```

The optimization level is `opt_level`, else `$SGC_OPT_LEVEL`, else 1 (the default pipeline); 0 runs
no passes but compile-constraints. `tokenizer` is anything `compiler.constraints.as_vocabulary`
takes (a `tokenizers.Tokenizer`, an engine tokenizer's `.backend`); without it gens keep their
regex/schema and the engine compiles them on first use. Never imports the executor.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from compiler import ir
from compiler.passes.compile_constraints import CompileConstraints
from compiler.passes.manager import PassManager

__all__ = ["CompileResult", "compile_constraint_tables", "compile_program", "compile_program_file",
           "optimize", "resolve_opt_level", "tokenizer_fingerprint"]


@dataclass
class CompileResult:
    module: ir.Module
    breaks: list[Any] = field(default_factory=list)
    fsms: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None
    opt_level: int = 1


def resolve_opt_level(opt_level: int | None = None) -> int:
    """`opt_level`, else `$SGC_OPT_LEVEL`, else 1."""
    if opt_level is None:
        env = os.environ.get("SGC_OPT_LEVEL", "").strip().upper().removeprefix("-").removeprefix("O")
        opt_level = int(env) if env else 1
    if opt_level < 0:
        raise ValueError(f"optimization level must be >= 0, got {opt_level}")
    return opt_level


def _vocab_source(tokenizer: Any) -> Any:
    """The object the constraint compiler walks: an engine tokenizer's `.backend`, else itself."""
    return getattr(tokenizer, "backend", tokenizer)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """The vocabulary fingerprint token FSMs of this tokenizer carry (what artifacts record)."""
    from compiler.constraints import as_vocabulary

    return as_vocabulary(_vocab_source(tokenizer)).fingerprint


def optimize(module: ir.Module, *, opt_level: int | None = None, tokenizer: Any = None,
             print_after: tuple[str, ...] | list[str] = (), print_after_all: bool = False,
             stream: TextIO | None = None, verify: bool = False,
             disable_passes: Iterable[str] = ()) -> dict[str, Any]:
    """Run the pipeline of `opt_level` on `module` in place; returns the compiled FSMs by id.

    `disable_passes` leaves those passes out of the pipeline (ablations; `UnknownPassError` for a typo).
    """
    constraints = CompileConstraints(_vocab_source(tokenizer)) if tokenizer is not None else None
    pm = PassManager.for_level(resolve_opt_level(opt_level), constraints=constraints, verify=verify,
                               print_after=print_after, print_after_all=print_after_all, stream=stream,
                               disable=disable_passes)
    pm.run(module)
    return dict(constraints.fsms) if constraints is not None else {}


def compile_program(fn: Any, *, bind: dict[str, Any] | None = None, opt_level: int | None = None,
                    tokenizer: Any = None, **options: Any) -> CompileResult:
    """Trace one `Function` and optimize it."""
    from compiler.parser.tracer import compile_function

    level = resolve_opt_level(opt_level)
    module, breaks = compile_function(fn, bind=bind)
    fsms = optimize(module, opt_level=level, tokenizer=tokenizer, **options)
    fp = tokenizer_fingerprint(tokenizer) if tokenizer is not None else None
    return CompileResult(module, breaks, fsms, fp, level)


def compile_program_file(path: str | os.PathLike[str], *, functions: list[str] | None = None,
                         opt_level: int | None = None, tokenizer: Any = None, **options: Any) -> CompileResult:
    """Import a program file, trace its @functions (all, or those named) and optimize them."""
    from compiler.errors import CompileError
    from compiler.parser.tracer import compile_file

    level = resolve_opt_level(opt_level)
    module, breaks = compile_file(path)
    if functions:
        missing = [f for f in functions if f not in module]
        if missing:
            raise CompileError(f"no @function {missing[0]!r} in this file (functions: "
                               f"{', '.join(g.name for g in module)})", str(path), None)
        for name in [g.name for g in module if g.name not in functions]:
            module.remove(name)
        module.verify()
        breaks = [b for b in breaks if b.function in functions]
    fsms = optimize(module, opt_level=level, tokenizer=tokenizer, **options)
    fp = tokenizer_fingerprint(tokenizer) if tokenizer is not None else None
    return CompileResult(module, breaks, fsms, fp, level)


def compile_constraint_tables(module: ir.Module, tokenizer: Any) -> dict[str, Any]:
    """The token FSMs of every constrained gen of `module` for `tokenizer` (sets each gen's `fsm`)."""
    constraints = CompileConstraints(_vocab_source(tokenizer))
    for graph in module:
        constraints.run(graph)
    return dict(constraints.fsms)
