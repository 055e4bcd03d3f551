"""Which replica runs which instance of a batch: prefix keys from the compiled graph, and the queue.

**Prefix keys.** Instances whose prompts start alike should run on the same replica, whose radix
cache then computes the shared prefix once. The compiled graph says, before anything runs, what an
instance's first prompt is: `first_prefix(graph, arguments, chat_format)` evaluates the entry
graph's text ops (the IR interpreter on real `PromptState`s) up to its first model call and returns
the text that call shares with its siblings:

- a `prefill` (the hoist-prefix pass puts one before a fork): its hinted text, exactly the prefix the
  compiler found the fork's branches share;
- a `gen` / `select` / `score` / `batch_gen`: the prompt up to the end of the first appended text
  that depends on an argument (the system prompt, the few-shot examples and the instance's document:
  rows with the same document group together, rows that differ there do not);
- a `switch` or a `host` step before any model call: the text so far.

`prefix_key(text)` hashes it (rows are grouped by the hash; the text itself never travels).

**The queue** (`AffinityQueue`): rows wait in groups by key, in input order. Replicas pull: a free
replica takes the oldest row of a group homed on it, else adopts the oldest group nobody has yet
(its home from then on), else, so that no replica idles while another has a queue, takes rows of
the largest group homed on the most loaded replica (a steal: the group keeps its home) when that
replica's load exceeds this one's by more than `steal_margin`. Load is rows in flight plus rows
waiting in the groups homed there. Nothing runs ahead of the oldest unwritten row by more than
`lookahead` rows, so the writer's reorder buffer stays bounded. A row whose replica died is put back at the front of its group (`requeue`).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from compiler import ir
from compiler.errors import ProgramError
from compiler.ir import Graph, Node
from compiler.ir_interpreter import EnterRegion, Interpreter, Pending
from compiler.prompt_state import PromptState, to_text

__all__ = ["AffinityQueue", "first_prefix", "prefix_key"]

_MODEL_OPS = frozenset({"gen", "batch_gen", "select", "score"})


class _Stop(Exception):
    """The walk reached the first node that needs the model (or the host, or a region)."""

    def __init__(self, text: str, cut_at_argument: bool) -> None:
        super().__init__(text)
        self.text = text
        self.cut_at_argument = cut_at_argument


class _TextDomain:
    """The interpreter's domain for the walk: real text ops; anything that runs stops the walk."""

    def __init__(self, chat_format: Any) -> None:
        self.chat_format = chat_format

    def new_state(self) -> PromptState:
        return PromptState()

    def text(self, value: Any) -> str:
        return to_text(value)

    def opaque_case(self, value: Any, num_regions: int) -> int | None:
        return None

    def generate(self, node: Node, states: Sequence[Any]) -> Pending:
        raise _Stop(states[0].text if states else "", True)

    def choose(self, node: Node, text: Any, candidates: Sequence[str], method: str) -> Pending:
        raise _Stop(text, True)

    def prefill(self, node: Node, state: Any, text: Any) -> Pending:
        raise _Stop(text, False)

    def host(self, node: Node, values: Sequence[Any]) -> Any:
        state = next((v for v in values if isinstance(v, PromptState)), None)
        raise _Stop(state.text if state is not None else "", False)


class _Frame:
    def __init__(self, arguments: Mapping[str, Any]) -> None:
        self.incoming = PromptState()
        self.arguments = arguments
        self.values: dict[int, Any] = {}

    def lookup(self, node: Node) -> Any:
        return self.values[node.id]


def first_prefix(graph: Graph, arguments: Mapping[str, Any], chat_format: Any) -> str:
    """The text an instance's first model call shares with other instances (module docstring).

    Raises `ProgramError` when the instance fails before its first model call (a missing argument):
    the caller runs it anyway, where it fails with the executor's own message."""
    interpreter = Interpreter(_TextDomain(chat_format))
    frame = _Frame(arguments)
    depends_on_argument: set[int] = set()
    cut: dict[int, int] = {}  # state node id -> end of its first argument-dependent append
    for node in graph.body:
        if node.op.opname == "switch":
            state = frame.lookup(node.operands[0])
            return state.text
        try:
            value = interpreter.run_node(frame, node)
        except _Stop as stop:
            state_cut = cut.get(node.operands[0].id) if node.operands else None
            if stop.cut_at_argument and state_cut is not None:
                return stop.text[:state_cut]
            return stop.text
        if isinstance(value, (Pending, EnterRegion)):  # not reached: the domain stops first
            break
        frame.values[node.id] = value
        if node.op.opname == "arg" or any(o.id in depends_on_argument for o in node.operands
                                          if o.kind is not ir.Kind.STATE):
            depends_on_argument.add(node.id)
        if node.kind is ir.Kind.STATE and node.operands:
            previous = cut.get(node.operands[0].id)
            if previous is not None:
                cut[node.id] = previous
            elif node.op.opname == "append" and node.operands[1].id in depends_on_argument:
                cut[node.id] = len(value.text)
    output = graph.body.output
    return frame.values[output.operands[0].id].text if output is not None and output.operands else ""


def prefix_key(text: str) -> str:
    """A short stable hash of a prefix text (the grouping key)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def instance_key(graph: Graph, arguments: Mapping[str, Any], chat_format: Any) -> str:
    """`prefix_key(first_prefix(...))`; an instance whose walk fails gets a key of its own text."""
    try:
        return prefix_key(first_prefix(graph, arguments, chat_format))
    except ProgramError as exc:
        return prefix_key(f"\0failed: {exc}")
    except Exception as exc:  # hostile arguments must not stop the run: it fails the row later
        return prefix_key(f"\0failed: {type(exc).__name__}: {exc}")


@dataclass
class _Group:
    key: str
    waiting: deque[int] = field(default_factory=deque)
    home: int | None = None


class AffinityQueue:
    """Rows waiting to run, grouped by prefix key, pulled by replicas (module docstring)."""

    def __init__(self, keys: Mapping[int, str], num_replicas: int, *, lookahead: int = 4096,
                 steal_margin: int = 2) -> None:
        """`keys`: row index -> prefix key, for the rows to run (in input order)."""
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be at least 1, got {num_replicas}")
        self.num_replicas = num_replicas
        self.lookahead = lookahead
        self.steal_margin = steal_margin
        self._groups: dict[str, _Group] = {}
        self._order: OrderedDict[str, None] = OrderedDict()  # groups with waiting rows, oldest first
        for index in sorted(keys):
            group = self._groups.get(keys[index])
            if group is None:
                group = self._groups[keys[index]] = _Group(keys[index])
            group.waiting.append(index)
        self._key_of = dict(keys)
        self._resort()
        self.in_flight = [0] * num_replicas
        self.alive = [True] * num_replicas
        self.oldest_unfinished = min(keys, default=0)

    def _resort(self) -> None:
        groups = sorted((g for g in self._groups.values() if g.waiting), key=lambda g: g.waiting[0])
        self._order = OrderedDict((g.key, None) for g in groups)

    # -- state ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Rows waiting (not in flight)."""
        return sum(len(g.waiting) for g in self._groups.values())

    def home_of(self, key: str) -> int | None:
        group = self._groups.get(key)
        return None if group is None else group.home

    def load(self, replica: int) -> int:
        """Rows in flight on `replica` plus rows waiting in the groups homed on it."""
        waiting = sum(len(g.waiting) for g in self._groups.values() if g.home == replica)
        return self.in_flight[replica] + waiting

    # -- pulling --------------------------------------------------------------------------------
    def take(self, replica: int, limit: int) -> list[int]:
        """Up to `limit` rows for `replica`, all of one group (they share their prefix); [] if none
        may run now. The caller counts them in flight until `done` or `requeue`."""
        if limit <= 0 or not self.alive[replica]:
            return []
        horizon = self.oldest_unfinished + self.lookahead
        group = self._pick(replica, horizon)
        if group is None:
            return []
        if group.home is None or not self.alive[group.home]:
            group.home = replica
        rows: list[int] = []
        while group.waiting and len(rows) < limit and group.waiting[0] < horizon:
            rows.append(group.waiting.popleft())
        if not group.waiting:
            self._order.pop(group.key, None)
        self.in_flight[replica] += len(rows)
        return rows

    def _pick(self, replica: int, horizon: int) -> _Group | None:
        own = adopt = None
        for key in self._order:
            group = self._groups[key]
            if group.waiting[0] >= horizon:
                break  # groups are in order of their oldest row: the rest are beyond the horizon too
            if group.home == replica:
                own = group
                break
            if adopt is None and (group.home is None or not self.alive[group.home]):
                adopt = group
        if own is not None or adopt is not None:
            return own or adopt
        # Steal, so no replica idles while another has a queue: a row of the largest group homed on
        # the most loaded replica, if that one has `steal_margin` more rows than this one.
        waiting_by_home = [0] * self.num_replicas
        for g in self._groups.values():
            if g.home is not None:
                waiting_by_home[g.home] += len(g.waiting)
        load = [self.in_flight[r] + waiting_by_home[r] for r in range(self.num_replicas)]
        candidates = [self._groups[k] for k in self._order
                      if self._groups[k].waiting[0] < horizon and self._groups[k].home is not None]
        candidates = [g for g in candidates if load[g.home] > load[replica] + self.steal_margin]  # type: ignore[index]
        if not candidates:
            return None
        return max(candidates, key=lambda g: (load[g.home], len(g.waiting)))  # type: ignore[index]

    # -- results --------------------------------------------------------------------------------
    def done(self, replica: int, rows: Iterable[int], oldest_unfinished: int) -> None:
        """`rows` finished on `replica`; `oldest_unfinished` is the first row not yet written."""
        self.in_flight[replica] -= len(list(rows))
        self.oldest_unfinished = oldest_unfinished

    def requeue(self, replica: int, rows: Sequence[int]) -> None:
        """`rows` did not finish on `replica` (it died): they wait again, first in their groups."""
        self.in_flight[replica] -= len(rows)
        for index in sorted(rows, reverse=True):
            group = self._groups[self._key_of[index]]
            group.waiting.appendleft(index)
        self._resort()

    def mark_dead(self, replica: int) -> None:
        """`replica` takes nothing more; the groups homed on it are adopted by whoever pulls them next."""
        self.alive[replica] = False
