"""What a graph run returns: per-instance results, batch results with summed stats, and the error.

Stats are `{function: {node_id: {"time_s": ..., "cached_tokens": ...}}}`, the format
`compiler.codegen.dumps` takes (see `executor/program/graph_executor.py` for the keys).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from compiler.errors import ProgramError
from compiler.prompt_state import PromptState

__all__ = ["BatchResult", "GraphExecutionError", "InstanceResult", "Stats", "merge_stats"]

Stats = dict[str, dict[int, dict[str, float]]]


class GraphExecutionError(ProgramError):
    """A node failed: the message names the function, node, op, source loc and the frame path."""

    def __init__(self, message: str, *, function: str, node_id: int, opname: str, loc: str | None,
                 path: tuple[str, ...] = (), instance: int | None = None) -> None:
        where = f"@{function}: %{node_id} ({opname})" + (f" at {loc}" if loc else "")
        if path:
            where += " [in " + " <- ".join(path) + "]"
        if instance is not None:
            where = f"instance {instance}: " + where
        super().__init__(f"{where}: {message}", instance)
        self.function = function
        self.node_id = node_id
        self.opname = opname
        self.loc = loc
        self.path = path
        self.instance = instance
        self.reason = message


@dataclass
class InstanceResult:
    """One program instance's outcome: its final state or its error, and its per-node stats."""

    index: int
    state: PromptState | None
    error: GraphExecutionError | None
    stats: Stats
    time_s: float

    @property
    def ok(self) -> bool:
        return self.error is None

    def raise_for_error(self) -> PromptState:
        if self.error is not None:
            raise self.error
        assert self.state is not None
        return self.state


@dataclass
class BatchResult(Sequence[InstanceResult]):
    """The results of `run_batch`, in input order, with stats summed over instances."""

    results: list[InstanceResult]
    stats: Stats
    time_s: float

    def __getitem__(self, index):  # type: ignore[override]
        return self.results[index]

    def __len__(self) -> int:
        return len(self.results)

    @property
    def states(self) -> list[PromptState | None]:
        return [r.state for r in self.results]

    @property
    def errors(self) -> list[GraphExecutionError]:
        return [r.error for r in self.results if r.error is not None]


def merge_stats(into: Stats, stats: Mapping) -> None:
    """Add `stats` into `into`, node by node and key by key."""
    for function, nodes in stats.items():
        target = into.setdefault(function, {})
        for node_id, values in nodes.items():
            slot = target.setdefault(node_id, {})
            for key, value in values.items():
                slot[key] = slot.get(key, 0) + value
