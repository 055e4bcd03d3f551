"""The pass manager: runs a pipeline of passes over a graph or a module, verifying and dumping on request.

```python
pm = PassManager(verify=True, print_after={"hoist-prefix"}, stream=sys.stderr)
pm.run(module)                        # the default pipeline
PassManager.for_level(0).run(module)  # -O0: no passes
PassManager.for_level(1, disable={"hoist-prefix"}).run(module)  # an ablation: one pass left out
```
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Protocol, TextIO

from compiler.ir import Graph, IRError, Module
from compiler.ir_text import print_graph, print_module

# Importing the pass modules registers them.
from compiler.passes import chain_gens, dce, fold_constants, fuse_fork_gens, hoist_prefix, lower_select  # noqa: F401
from compiler.passes.base import PASSES, UnknownPassError, get_pass

__all__ = [
    "CONSTRAINT_PASS_NAME", "DEFAULT_PIPELINE", "PassLike", "PassManager", "PassVerificationError",
    "default_pipeline",
]

# The default pipeline, by name. dce runs first too: inlining switches on constants exposes appends
# that fold. lower-select runs before hoist-prefix so a `gen` with choices, lowered to `score`, gets its
# choices' prefix hoisted as well; fuse-fork-gens after hoist-prefix (which only looks at appends).
# chain-gens last: it only marks gens (meta), on the final graph.
DEFAULT_PIPELINE: tuple[str, ...] = (
    "dce", "fold-constants", "lower-select", "hoist-prefix", "fuse-fork-gens", "dce", "chain-gens",
)

# compile-constraints needs a tokenizer, so it is not built by name: hand an instance to
# `default_pipeline(constraints=...)`; it runs after this pass (it sees the final gens and batch_gens).
CONSTRAINT_PASS_NAME = "compile-constraints"
CONSTRAINT_SLOT = "fuse-fork-gens"


class PassLike(Protocol):
    """Anything with a `name` and `run(graph) -> bool` (the registered passes, compile-constraints)."""

    name: str

    def run(self, graph: Graph) -> bool: ...


def default_pipeline(*, constraints: PassLike | None = None, disable: Iterable[str] = ()) -> list[PassLike]:
    """Fresh instances of the default pipeline; with `constraints`, that pass runs in its slot.

    `disable` names passes to leave out (every occurrence), for ablations: benchmarks switch one
    optimization off at a time. Unknown names raise `UnknownPassError`; compile-constraints cannot be
    disabled (constrained gens need their FSMs).
    """
    skip = frozenset(disable)
    for name in sorted(skip):
        if name == CONSTRAINT_PASS_NAME:
            raise ValueError(f"{CONSTRAINT_PASS_NAME} cannot be disabled: constrained gens need their FSMs")
        get_pass(name)  # UnknownPassError for a typo
    passes: list[PassLike] = [get_pass(name)() for name in DEFAULT_PIPELINE if name not in skip]
    if constraints is not None:
        slot = len([name for name in DEFAULT_PIPELINE[: DEFAULT_PIPELINE.index(CONSTRAINT_SLOT) + 1]
                    if name not in skip])
        passes.insert(slot, constraints)
    return passes


class PassVerificationError(IRError):
    """The IR no longer verifies after a pass: `pass_name` says which one broke it."""

    def __init__(self, pass_name: str, error: IRError) -> None:
        self.pass_name = pass_name
        self.message = f"after pass {pass_name}: {error.message}"
        self.node, self.graph = error.node, error.graph
        ValueError.__init__(self, f"after pass {pass_name}: {error}")


class PassManager:
    """Runs passes in order over every graph of a module (or one graph).

    `verify`: check the IR before the first pass and after every pass (tests turn it on; a failure is a
    `PassVerificationError` naming the pass). `print_after` (pass names) and `print_after_all` write the
    IR to `stream` (default stderr) after those passes, each dump headed by a `// after NAME` comment
    line, so every dump still parses. Names are checked: an unknown one is an `UnknownPassError`.
    """

    def __init__(self, passes: Sequence[PassLike] | None = None, *, verify: bool = False,
                 print_after: Iterable[str] = (), print_after_all: bool = False,
                 stream: TextIO | None = None, meta: bool = False) -> None:
        self.passes: list[PassLike] = list(default_pipeline() if passes is None else passes)
        self.verify = verify
        self.print_after = frozenset(print_after)
        known = set(PASSES) | {CONSTRAINT_PASS_NAME} | {p.name for p in self.passes}
        for name in sorted(self.print_after):
            if name not in known:
                raise UnknownPassError(name)
        self.print_after_all = print_after_all
        self.stream = stream
        self.meta = meta
        self.history: list[tuple[str, bool]] = []  # (pass name, changed) of the last run, in order

    @classmethod
    def from_names(cls, names: Iterable[str], **options) -> PassManager:
        """A manager running the registered passes `names`, in order (`UnknownPassError` if unknown)."""
        return cls([get_pass(name)() for name in names], **options)

    @classmethod
    def for_level(cls, level: int, *, constraints: PassLike | None = None, disable: Iterable[str] = (),
                  **options) -> PassManager:
        """`-O0`: no passes (only `constraints`, which the executor needs for constrained gens);
        `-O1` and up: the default pipeline, less the passes named in `disable`."""
        if level < 0:
            raise ValueError(f"optimization level must be >= 0, got {level}")
        pipeline = default_pipeline(constraints=constraints, disable=disable)  # checks the names at any level
        if level == 0:
            return cls([constraints] if constraints is not None else [], **options)
        return cls(pipeline, **options)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.passes]

    def run(self, target: Graph | Module) -> bool:
        """Run the pipeline on a graph or on every graph of a module; return whether anything changed."""
        self.history = []
        if self.verify:
            self._verify(target, "the input")
        changed_any = False
        for pass_ in self.passes:
            graphs = [target] if isinstance(target, Graph) else list(target)
            changed = False
            for graph in graphs:
                changed |= bool(pass_.run(graph))
            self.history.append((pass_.name, changed))
            changed_any |= changed
            if self.verify:
                self._verify(target, pass_.name)
            if self.print_after_all or pass_.name in self.print_after:
                self._dump(target, pass_.name, changed)
        return changed_any

    def _verify(self, target: Graph | Module, stage: str) -> None:
        try:
            target.verify()
        except IRError as exc:
            if stage == "the input":
                raise
            raise PassVerificationError(stage, exc) from exc

    def _dump(self, target: Graph | Module, name: str, changed: bool) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        text = print_graph(target, meta=self.meta) if isinstance(target, Graph) else print_module(target, meta=self.meta)
        stream.write(f"// after {name}{'' if changed else ' (no change)'}\n{text}")
