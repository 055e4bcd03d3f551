"""The graph IR of sgc: the contract between the tracer, the passes, codegen and the graph executor.

An SGLang program threads a prompt *state* through operations. The IR makes that dataflow explicit:
one `Graph` per `@function`, a `Module` of named graphs per program. Every `Node` has an id, a frozen
`Op` (the op's kind and its typed attributes), operands (earlier nodes) and produces one value of a
`Kind`: a prompt `state`, a `text`, a `value` (any JSON value: an argument, a variable) or a `fork` (a
bundle of branch states). A `switch` node owns *regions*: nested node lists that take the incoming
state (`state_in`) and end in an `output`, one per case.

Nodes are owned by their graph: read `node.op`, `node.operands`, `node.regions` freely, change them
only through `Graph` methods (`add`, `set_operands`, `set_op`, `replace_all_uses`, `move`, `erase`),
which keep the `networkx.DiGraph` of use-def edges (`graph.dataflow`, keyed by node id) in sync.
`node.meta` is a free dict for analyses. `Graph.verify()` checks every invariant listed in
`docs/ir.md` and raises `IRError`, whose message names the node and prints the graph around it.

The IR is three modules under this one name: `compiler.ir_values` (JSON values inside ops),
`compiler.ir_ops` (the op set) and this one (nodes, regions, graphs, modules, the verifier), which
re-exports the other two. Import from `compiler.ir`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import networkx as nx

from compiler.ir_ops import (
    OPS,
    Append,
    Arg,
    BatchGen,
    Branch,
    Const,
    Fork,
    Gen,
    GetVar,
    Host,
    IRError,
    Join,
    Kind,
    Op,
    Output,
    Prefill,
    RoleBegin,
    RoleEnd,
    Score,
    Select,
    SetVar,
    Slot,
    StateIn,
    StateNew,
    StateUse,
    Switch,
    VarScopeBegin,
    VarScopeEnd,
    attribute_types,
    check_attribute,
    describe_type,
)
from compiler.ir_text import excerpt, print_graph, print_module, print_node
from compiler.ir_values import NO_DEFAULT, FrozenDict, Json, freeze_json, thaw_json

__all__ = [
    "NO_DEFAULT", "OPS", "Append", "Arg", "BatchGen", "Branch", "Const", "Fork", "FrozenDict",
    "Gen", "GetVar", "Graph", "Host", "IRError", "Join", "Json", "Kind", "Module", "Node", "Op", "Output",
    "Prefill", "Region", "RoleBegin", "RoleEnd", "Score", "Select", "SetVar", "Slot", "StateIn", "StateNew",
    "StateUse", "Switch", "VarScopeBegin", "VarScopeEnd", "attribute_types", "branch_origin", "check_attribute",
    "describe_type", "excerpt", "freeze_json", "state_lineage", "thaw_json",
]


# ---------------------------------------------------------------------------------------------------
# Nodes, regions, graphs


_LOC_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _check_loc(loc: str | None) -> str | None:
    if loc is None:
        return None
    if not isinstance(loc, str) or not loc or loc != loc.strip() or _LOC_FORBIDDEN.search(loc):
        raise IRError(f"loc must be a one-line, non-empty, stripped string like 'file.py:12', got {loc!r}")
    return loc


class Node:
    """One node of a graph. Read its fields; change them only through the owning `Graph`."""

    __slots__ = ("_id", "_op", "_operands", "_regions", "_region", "_loc", "meta")

    def __init__(self, id: int, op: Op, operands: tuple[Node, ...], region: Region,
                 loc: str | None, meta: dict[str, Any] | None) -> None:
        self._id = id
        self._op = op
        self._operands = operands
        self._region = region
        self._regions: tuple[Region, ...] = ()
        self._loc = _check_loc(loc)
        self.meta: dict[str, Any] = dict(meta) if meta else {}

    @property
    def id(self) -> int:
        return self._id

    @property
    def op(self) -> Op:
        return self._op

    @property
    def operands(self) -> tuple[Node, ...]:
        return self._operands

    @property
    def regions(self) -> tuple[Region, ...]:
        """The node's own regions (a switch's cases, in order; the default last)."""
        return self._regions

    @property
    def region(self) -> Region:
        """The region the node is in (`graph.body` for top-level nodes)."""
        return self._region

    @property
    def graph(self) -> Graph:
        return self._region.graph

    @property
    def parent(self) -> Node | None:
        """The switch whose region holds this node, or None at top level."""
        return self._region.parent

    @property
    def kind(self) -> Kind:
        return self._op.result_kind()

    @property
    def loc(self) -> str | None:
        return self._loc

    @loc.setter
    def loc(self, loc: str | None) -> None:
        self._loc = _check_loc(loc)

    def __repr__(self) -> str:
        return f"<Node %{self._id} = {self._op.opname}>"

    def __str__(self) -> str:
        return print_node(self)


class Region:
    """An ordered list of nodes: a graph's body, or one case of a switch."""

    __slots__ = ("_graph", "_parent", "_nodes")

    def __init__(self, graph: Graph, parent: Node | None) -> None:
        self._graph = graph
        self._parent = parent
        self._nodes: list[Node] = []

    @property
    def graph(self) -> Graph:
        return self._graph

    @property
    def parent(self) -> Node | None:
        """The switch owning this region; None for the graph's body."""
        return self._parent

    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(self._nodes)

    @property
    def index(self) -> int | None:
        """This region's position among its switch's regions (None for the body)."""
        if self._parent is None:
            return None
        return next(i for i, r in enumerate(self._parent.regions) if r is self)

    @property
    def case(self) -> Any:
        """The case value this region runs for; NO_DEFAULT for the default region and the body."""
        index = self.index
        if index is None or self._parent is None:
            return NO_DEFAULT
        cases = self._parent.op.cases  # type: ignore[attr-defined]
        return cases[index] if index < len(cases) else NO_DEFAULT

    @property
    def is_default(self) -> bool:
        """Whether this is a switch's default region (taken when no case matches)."""
        return self._parent is not None and self.case is NO_DEFAULT

    @property
    def entry(self) -> Node | None:
        """The region's `state_new`/`state_in` (the first one), if any."""
        return next((n for n in self._nodes if isinstance(n.op, (StateNew, StateIn))), None)

    @property
    def output(self) -> Node | None:
        return next((n for n in self._nodes if isinstance(n.op, Output)), None)

    def __iter__(self) -> Iterator[Node]:
        return iter(tuple(self._nodes))

    def __len__(self) -> int:
        return len(self._nodes)

    def __repr__(self) -> str:
        where = "body" if self._parent is None else f"region {self.index} of %{self._parent.id}"
        return f"<Region {where}: {len(self._nodes)} nodes>"


NodeRef = Node | int


class Graph:
    """One function's IR: `body` (a region), all nodes by id, and `dataflow`, the use-def DiGraph.

    `dataflow` has one networkx node per IR node id and an edge `a -> b` when b uses a as an operand
    (also across region boundaries). It is kept in sync by every mutating method.
    """

    def __init__(self, name: str = "main") -> None:
        self.name = name
        self.body = Region(self, None)
        self.dataflow = nx.DiGraph()
        self.module: Module | None = None
        self.meta: dict[str, Any] = {}
        self._nodes: dict[int, Node] = {}
        self._next_id = 0
        self._version = 0
        self._positions: tuple[int, dict[int, int]] | None = None

    # -- lookup ------------------------------------------------------------------------------------
    def node(self, id: int) -> Node:
        try:
            return self._nodes[id]
        except KeyError:
            raise IRError(f"graph @{self.name} has no node %{id}") from None

    def __contains__(self, item: object) -> bool:
        if isinstance(item, Node):
            return self._nodes.get(item.id) is item
        return item in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def nodes(self) -> Iterator[Node]:
        """All nodes in printing order: each switch before the nodes of its regions."""
        return iter(self._preorder(self.body))

    def _preorder(self, region: Region) -> list[Node]:
        out: list[Node] = []
        for node in region._nodes:
            out.append(node)
            for r in node._regions:
                out.extend(self._preorder(r))
        return out

    def position(self, node: Node) -> int:
        """The node's index in printing order (cached until the next mutation)."""
        if self._positions is None or self._positions[0] != self._version:
            self._positions = (self._version, {n.id: i for i, n in enumerate(self.nodes())})
        return self._positions[1][node.id]

    def users(self, node: NodeRef) -> list[Node]:
        """The nodes that use `node` as an operand (in any region), in printing order."""
        node = self._resolve(node)
        users = [self._nodes[i] for i in self.dataflow.successors(node.id)]
        return sorted(users, key=self.position)

    @property
    def entry(self) -> Node | None:
        return self.body.entry

    @property
    def output(self) -> Node | None:
        return self.body.output

    @property
    def args(self) -> list[Node]:
        """The `arg` nodes, in order."""
        return [n for n in self.body if isinstance(n.op, Arg)]

    # -- mutation ----------------------------------------------------------------------------------
    def add(self, op: Op, operands: Sequence[NodeRef] = (), *, region: Region | None = None,
            before: NodeRef | None = None, after: NodeRef | None = None, loc: str | None = None,
            meta: dict[str, Any] | None = None, id: int | None = None) -> Node:
        """Create a node. It goes at the end of `region` (default: the body), or before/after a node.

        A switch gets its regions (empty) at creation: fill them with `add(..., region=node.regions[i])`.
        `id` is for readers that must keep printed ids; by default the next free id is used.
        """
        if not isinstance(op, Op) or type(op) not in OPS.values():
            raise TypeError(f"expected an IR op, got {op!r}")
        resolved = tuple(self._resolve(o) for o in operands)
        target, index = self._insertion_point(region, before, after)
        if id is None:
            id = self._next_id
        elif not isinstance(id, int) or isinstance(id, bool) or id < 0:
            raise IRError(f"node ids are non-negative ints, got {id!r}")
        elif id in self._nodes:
            raise IRError(f"node id %{id} is already used in @{self.name}", node=self._nodes[id])
        node = Node(id, op, resolved, target, loc, meta)
        node._regions = tuple(Region(self, node) for _ in range(op.num_regions()))
        target._nodes.insert(index, node)
        self._nodes[id] = node
        self._next_id = max(self._next_id, id + 1)
        self.dataflow.add_node(id)
        for operand in resolved:
            self.dataflow.add_edge(operand.id, id)
        self._version += 1
        return node

    def set_operands(self, node: NodeRef, operands: Sequence[NodeRef]) -> None:
        node = self._resolve(node)
        resolved = tuple(self._resolve(o) for o in operands)
        self._unlink(node)
        node._operands = resolved
        for operand in resolved:
            self.dataflow.add_edge(operand.id, node.id)
        self._version += 1

    def set_op(self, node: NodeRef, op: Op) -> None:
        """Give `node` a new op (e.g. new attributes); a switch must keep its number of regions."""
        node = self._resolve(node)
        if not isinstance(op, Op):
            raise TypeError(f"expected an IR op, got {op!r}")
        if op.num_regions() != len(node._regions):
            raise IRError(
                f"%{node.id}: the new op needs {op.num_regions()} regions, the node has {len(node._regions)}",
                node=node,
            )
        node._op = op
        self._version += 1

    def replace_all_uses(self, old: NodeRef, new: NodeRef) -> int:
        """Make every user of `old` use `new` instead; returns how many users changed."""
        old, new = self._resolve(old), self._resolve(new)
        if old is new:
            return 0
        users = self.users(old)
        for user in users:
            self.set_operands(user, [new if o is old else o for o in user._operands])
        return len(users)

    def erase(self, node: NodeRef) -> None:
        """Remove a node (and its regions' nodes). It must have no users outside itself."""
        node = self._resolve(node)
        inner = {n.id for r in node._regions for n in self._preorder(r)} | {node.id}
        outside = [u for i in inner for u in self.users(i) if u.id not in inner]
        if outside:
            names = ", ".join(f"%{u.id}" for u in sorted(set(outside), key=self.position))
            raise IRError(f"cannot erase %{node.id}: it is still used by {names}", node=node)
        self._erase_subtree(node)

    def _erase_subtree(self, node: Node) -> None:
        for region in node._regions:
            for inner in reversed(region._nodes):
                self._erase_subtree(inner)
        node._region._nodes.remove(node)
        self.dataflow.remove_node(node.id)
        del self._nodes[node.id]
        self._version += 1

    def move(self, node: NodeRef, *, region: Region | None = None, before: NodeRef | None = None,
             after: NodeRef | None = None) -> None:
        """Move a node (with its regions) to the end of `region`, or before/after another node."""
        node = self._resolve(node)
        target, _ = self._insertion_point(region, before, after)
        probe: Node | None = target.parent
        while probe is not None:
            if probe is node:
                raise IRError(f"cannot move %{node.id} into its own region", node=node)
            probe = probe.parent
        node._region._nodes.remove(node)
        target, index = self._insertion_point(region, before, after)
        target._nodes.insert(index, node)
        node._region = target
        self._version += 1

    def _insertion_point(self, region: Region | None, before: NodeRef | None,
                         after: NodeRef | None) -> tuple[Region, int]:
        if sum(x is not None for x in (region, before, after)) > 1:
            raise TypeError("give at most one of region, before, after")
        if before is not None:
            anchor = self._resolve(before)
            return anchor._region, anchor._region._nodes.index(anchor)
        if after is not None:
            anchor = self._resolve(after)
            return anchor._region, anchor._region._nodes.index(anchor) + 1
        target = region if region is not None else self.body
        if target.graph is not self:
            raise IRError("the region belongs to another graph")
        return target, len(target._nodes)

    def _unlink(self, node: Node) -> None:
        for operand in set(node._operands):
            if self.dataflow.has_edge(operand.id, node.id):
                self.dataflow.remove_edge(operand.id, node.id)

    def _resolve(self, ref: NodeRef) -> Node:
        if isinstance(ref, Node):
            if self._nodes.get(ref.id) is not ref:
                raise IRError(f"%{ref.id} is not a node of graph @{self.name}")
            return ref
        if isinstance(ref, int) and not isinstance(ref, bool):
            return self.node(ref)
        raise TypeError(f"expected a Node or a node id, got {ref!r}")

    # -- orders ------------------------------------------------------------------------------------
    def topological_order(self, region: Region | None = None) -> list[Node]:
        """The nodes of `region` (default: the body) in a dependency order, ties by position.

        A use inside a nested region counts as a use by the switch that owns it, so a switch comes
        after everything its regions read.
        """
        region = region if region is not None else self.body
        lift: dict[int, Node] = {}
        for top in region._nodes:
            lift[top.id] = top
            for r in top._regions:
                for inner in self._preorder(r):
                    lift[inner.id] = top
        order = nx.DiGraph()
        order.add_nodes_from(n.id for n in region._nodes)
        for node_id, top in lift.items():
            for pred in self.dataflow.predecessors(node_id):
                if pred in lift and lift[pred] is not top:
                    order.add_edge(lift[pred].id, top.id)
        index = {n.id: i for i, n in enumerate(region._nodes)}
        try:
            ids = list(nx.lexicographical_topological_sort(order, key=index.__getitem__))
        except nx.NetworkXUnfeasible:
            cycle = nx.find_cycle(order)
            raise IRError(
                "the graph has a cycle: " + " -> ".join(f"%{a}" for a, _ in cycle),
                graph=self, node=self._nodes[cycle[0][0]],
            ) from None
        return [self._nodes[i] for i in ids]

    # -- whole-graph operations ------------------------------------------------------------------
    def copy(self, name: str | None = None) -> Graph:
        """A deep copy with the same node ids (meta dicts are copied shallowly)."""
        clone = Graph(self.name if name is None else name)
        clone.meta = dict(self.meta)

        def copy_region(src: Region, dst: Region) -> None:
            for node in src._nodes:
                new = clone.add(node.op, [o.id for o in node.operands], region=dst, loc=node.loc,
                                meta=node.meta, id=node.id)
                for r_src, r_dst in zip(node._regions, new._regions):
                    copy_region(r_src, r_dst)

        copy_region(self.body, clone.body)
        clone._next_id = self._next_id
        return clone

    def verify(self) -> None:
        """Check every invariant (docs/ir.md); raise `IRError` naming the first bad node."""
        _Verifier(self).run()

    def __str__(self) -> str:
        return print_graph(self)

    def __repr__(self) -> str:
        return f"<Graph @{self.name}: {len(self._nodes)} nodes>"


class Module:
    """The graphs of one program, by function name (in insertion order)."""

    def __init__(self, graphs: Iterable[Graph] = ()) -> None:
        self.graphs: dict[str, Graph] = {}
        for graph in graphs:
            self.add(graph)

    def add(self, graph: Graph) -> Graph:
        if graph.name in self.graphs:
            raise IRError(f"the module already has a function @{graph.name}")
        if graph.module is not None and graph.module is not self:
            raise IRError(f"@{graph.name} already belongs to another module")
        graph.module = self
        self.graphs[graph.name] = graph
        return graph

    def remove(self, name: str) -> Graph:
        graph = self.graphs.pop(name)
        graph.module = None
        return graph

    def __getitem__(self, name: str) -> Graph:
        return self.graphs[name]

    def __contains__(self, name: object) -> bool:
        return name in self.graphs

    def __iter__(self) -> Iterator[Graph]:
        return iter(tuple(self.graphs.values()))

    def __len__(self) -> int:
        return len(self.graphs)

    def verify(self) -> None:
        for graph in self:
            graph.verify()

    def __str__(self) -> str:
        return print_module(self)

    def __repr__(self) -> str:
        return f"<Module: {', '.join('@' + n for n in self.graphs)}>"


# ---------------------------------------------------------------------------------------------------
# State lineage: how states continue one another


def state_lineage(node: Node) -> Iterator[Node]:
    """`node` (a state), the state it continues, and so on back to a root.

    Each state-producing op continues its operand 0, except the roots: `state_new`, `state_in` and a
    `branch` of a `fork`. A `branch` of a `batch_gen` continues that batch_gen's operand `index`.
    """
    seen: set[int] = set()
    current: Node | None = node
    while current is not None and current.kind is Kind.STATE and current.id not in seen:
        seen.add(current.id)
        yield current
        op = current.op
        if isinstance(op, (StateNew, StateIn)):
            return
        if isinstance(op, Branch):
            source = current.operands[0] if current.operands else None
            if source is not None and isinstance(source.op, BatchGen) and op.index < len(source.operands):
                current = source.operands[op.index]
                continue
            return
        current = current.operands[0] if current.operands else None


def branch_origin(node: Node) -> tuple[Node, int] | None:
    """The (fork node, index) whose branch state `node` descends from, or None."""
    root = None
    for root in state_lineage(node):  # noqa: B007 (the last one is the root)
        pass
    if root is None or not isinstance(root.op, Branch) or not root.operands:
        return None
    source = root.operands[0]
    if not isinstance(source.op, Fork):
        return None
    return source, root.op.index


# ---------------------------------------------------------------------------------------------------
# The verifier


class _Verifier:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    def fail(self, node: Node | None, message: str) -> None:
        prefix = f"%{node.id} ({node.op.opname}): " if node is not None else ""
        raise IRError(f"@{self.graph.name}: {prefix}{message}", node=node, graph=self.graph)

    def run(self) -> None:
        self.check_bookkeeping()
        self.check_region(self.graph.body, visible={})
        nodes = list(self.graph.nodes())
        for node in nodes:
            self.check_attributes(node)
            self.check_kinds(node)
        for node in nodes:
            self.check_node(node)
        self.check_linearity(nodes)
        self.check_branches(nodes)
        self.check_dataflow(nodes)

    def check_bookkeeping(self) -> None:
        seen: dict[int, Node] = {}
        for node in self.graph.nodes():
            if node.id in seen:
                self.fail(node, f"node id %{node.id} appears twice")
            seen[node.id] = node
            if self.graph._nodes.get(node.id) is not node:
                self.fail(node, "the node is not registered in its graph")
            if node.region.graph is not self.graph:
                self.fail(node, "the node's region belongs to another graph")
        if len(seen) != len(self.graph._nodes):
            stray = sorted(set(self.graph._nodes) - set(seen))
            self.fail(None, f"nodes {', '.join(f'%{i}' for i in stray)} are registered but in no region")

    def check_region(self, region: Region, visible: dict[int, Node]) -> None:
        """Operands defined before use; outer values read only; entry and output in place."""
        local: dict[int, Node] = {}
        is_body = region.parent is None
        entries = [n for n in region if isinstance(n.op, (StateNew, StateIn))]
        outputs = [n for n in region if isinstance(n.op, Output)]
        where = "the function body" if is_body else f"region {region.index} of %{region.parent.id}"
        for node in region:
            if node.region is not region:
                self.fail(node, "the node's region link is stale")
            for i, operand in enumerate(node.operands):
                if local.get(operand.id) is operand:
                    continue
                if visible.get(operand.id) is operand:
                    if operand.kind in (Kind.STATE, Kind.FORK):
                        self.fail(node, f"operand {i} (%{operand.id}) is a {operand.kind} from outside "
                                        f"{where}; a region threads only its own state_in")
                    continue
                if operand.id in self.graph._nodes and self.graph._nodes[operand.id] is operand:
                    self.fail(node, f"operand {i} (%{operand.id}) is not defined before this use "
                                    "in this region or an enclosing one")
                self.fail(node, f"operand {i} (%{operand.id}) is not a node of this graph")
            if not is_body and isinstance(node.op, (Arg, StateNew)):
                self.fail(node, f"{node.op.opname} may only appear in the function body")
            if len(node.regions) != node.op.num_regions():
                self.fail(node, f"has {len(node.regions)} regions, its op needs {node.op.num_regions()}")
            for inner in node.regions:
                if inner.parent is not node:
                    self.fail(node, "a region's parent link is stale")
                self.check_region(inner, {**visible, **local})
            local[node.id] = node
        if len(entries) != 1:
            what = "a state_new or state_in" if is_body else "a state_in"
            self.fail(entries[1] if entries else region.parent,
                      f"{where} must have exactly one {what}, found {len(entries)}")
        if len(outputs) != 1:
            self.fail(outputs[1] if outputs else region.parent,
                      f"{where} must have exactly one output, found {len(outputs)}")
        if region.nodes[-1] is not outputs[0]:
            self.fail(region.nodes[-1], f"the output must be the last node of {where}")

    def check_attributes(self, node: Node) -> None:
        op = node.op
        try:
            rebuilt = type(op)(**op.attributes())
        except IRError as exc:
            self.fail(node, f"ill-typed attributes: {exc.message}")
        if rebuilt != op:
            self.fail(node, "ill-typed attributes (they change when validated)")

    def check_kinds(self, node: Node) -> None:
        op = node.op
        problem = op.arity_problem(len(node.operands))
        if problem:
            self.fail(node, problem)
        for i, operand in enumerate(node.operands):
            slot = op.slot(i)
            if not slot.accepts(operand.kind):
                self.fail(node, f"operand {i} (%{operand.id}) must be a {slot}, "
                                f"but %{operand.id} ({operand.op.opname}) is a {operand.kind}")

    def check_node(self, node: Node) -> None:
        op = node.op
        if isinstance(op, Output) and self.graph.users(node):
            self.fail(node, "an output has no users")
        elif isinstance(op, Branch):
            source = node.operands[0]
            size = source.op.n if isinstance(source.op, Fork) else len(source.operands)
            if op.index >= size:
                self.fail(node, f"index {op.index} is out of range: %{source.id} has {size} branches")
        elif isinstance(op, Join):
            self.check_join(node)
        elif isinstance(op, Host) and op.returns == "state" and node.operands[0].kind is not Kind.STATE:
            self.fail(node, "returns a state, so operand 0 must be the state it continues")
        elif isinstance(op, Arg):
            same = [n for n in self.graph.args if n.op.name == op.name]  # type: ignore[attr-defined]
            if same[0] is not node:
                self.fail(node, f"argument {op.name!r} is already defined by %{same[0].id}")

    def check_join(self, node: Node) -> None:
        parent, branches = node.operands[0], node.operands[1:]
        origins = [branch_origin(b) for b in branches]
        fork: Node | None = None
        for i, (state, origin) in enumerate(zip(branches, origins), start=1):
            if origin is None:
                self.fail(node, f"operand {i} (%{state.id}) does not descend from a branch of a fork")
            if fork is None:
                fork = origin[0]
            elif origin[0] is not fork:
                self.fail(node, f"operand {i} (%{state.id}) descends from fork %{origin[0].id}, "
                                f"operand 1 from fork %{fork.id}: a join joins the branches of one fork")
        assert fork is not None
        n = fork.op.n  # type: ignore[attr-defined]
        if len(branches) != n:
            self.fail(node, f"joins {len(branches)} branch states but fork %{fork.id} has n={n}")
        for i, (state, origin) in enumerate(zip(branches, origins), start=1):
            if origin[1] != i - 1:
                self.fail(node, f"operand {i} (%{state.id}) descends from branch {origin[1]}; "
                                f"branch states must be given in index order")
        forked = fork.operands[0]
        if all(s is not forked for s in state_lineage(parent)):
            self.fail(node, f"operand 0 (%{parent.id}) does not continue %{forked.id}, "
                            f"the state fork %{fork.id} forked")

    def check_linearity(self, nodes: list[Node]) -> None:
        """A state is continued by at most one op: divergent states must go through a fork."""
        continued_by: dict[int, Node] = {}
        for node in nodes:
            for i, operand in enumerate(node.operands):
                if operand.kind is not Kind.STATE or not node.op.consumes(i):
                    continue
                first = continued_by.setdefault(operand.id, node)
                if first is not node:
                    self.fail(node, f"state %{operand.id} is already continued by %{first.id}; "
                                    "a state may be continued once (use fork for parallel branches)")

    def check_branches(self, nodes: list[Node]) -> None:
        taken: dict[tuple[int, int], Node] = {}
        for node in nodes:
            if isinstance(node.op, Branch):
                key = (node.operands[0].id, node.op.index)
                if key in taken:
                    self.fail(node, f"branch {key[1]} of %{key[0]} is already taken by %{taken[key].id}")
                taken[key] = node
        for node in nodes:
            if isinstance(node.op, BatchGen):
                for i in range(len(node.operands)):
                    if (node.id, i) not in taken:
                        self.fail(node, f"its state {i} is never taken by a branch (its text would be lost)")

    def check_dataflow(self, nodes: list[Node]) -> None:
        expected = {(o.id, n.id) for n in nodes for o in n.operands}
        actual = set(self.graph.dataflow.edges)
        if expected != actual or set(self.graph.dataflow.nodes) != {n.id for n in nodes}:
            self.fail(None, "the dataflow DiGraph is out of sync with the operands "
                            f"(missing {sorted(expected - actual)}, extra {sorted(actual - expected)})")
