"""The textual IR reader: parses what `compiler.ir_text` prints back into graphs.

The grammar is `compiler/ir_grammar.lark` (lark, LALR). Node ids are kept as printed, so per-node
records keyed by id (timings, cached tokens) stay valid across a print/parse round trip. Errors are
`IRParseError`s with the line and column and what was expected there.
"""

from __future__ import annotations

import dataclasses
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import lark

from compiler import budgets
from compiler.ir import (
    OPS,
    Graph,
    IRError,
    Module,
    Region,
    Switch,
    attribute_types,
    check_attribute,
    describe_type,
)

__all__ = ["IRParseError", "parse_graph", "parse_module"]

GRAMMAR_PATH = Path(__file__).resolve().parent.parent / "ir_grammar.lark"

# How lark's terminal names read in "expected ..." messages.
_TERMINALS = {
    "VALUE_ID": "a value like %3", "NAME": "a name", "STRING": "a string", "NUMBER": "a number",
    "LOC": "a '# file:line' location", "_NL": "the end of the line", "FUNC_NAME": "a function name like @f",
    "LBRACE": "'{'", "RBRACE": "'}'", "LSQB": "'['", "RSQB": "']'", "COMMA": "','", "COLON": "':'",
    "EQUAL": "'='", "FUNC": "'func'", "CASE": "'case'", "DEFAULT": "'default'", "TRUE": "'true'",
    "FALSE": "'false'", "NULL": "'null'", "$END": "the end of the text",
}


class IRParseError(IRError):
    """Text that is not valid IR; `line` and `column` are 1-based."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None,
                 source: str | None = None) -> None:
        self.line, self.column = line, column
        where = f"line {line}:{column}: " if line is not None else ""
        text = where + message
        if source is not None and line is not None and column is not None:
            lines = source.splitlines()
            if 0 < line <= len(lines):
                text += f"\n    {lines[line - 1]}\n    {' ' * (column - 1)}^"
        super().__init__(text)


@lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    return lark.Lark(GRAMMAR_PATH.read_text(encoding="utf-8"), parser="lalr", lexer="contextual",
                     maybe_placeholders=False)


def parse_module(text: str, *, verify: bool = True) -> Module:
    """Parse a module (any number of `func` blocks). Verifies it unless `verify=False`."""
    module = Module(_Reader(text).graphs())
    if verify:
        module.verify()
    return module


def parse_graph(text: str, *, verify: bool = True) -> Graph:
    """Parse exactly one `func` block. Verifies it unless `verify=False` (calls are not resolved)."""
    graphs = _Reader(text).graphs()
    if len(graphs) != 1:
        raise IRParseError(f"expected exactly one function, found {len(graphs)}")
    if verify:
        graphs[0].verify()
    return graphs[0]


def _expected(names: set[str] | frozenset[str]) -> str:
    words = sorted({_TERMINALS.get(n, repr(n.lower()) if n.isupper() else n) for n in names})
    return ", ".join(words)


_NODE_START = re.compile(r"^[ \t]*%[0-9]+[ \t]*=", re.MULTILINE)
_ESCAPE = re.compile(r'\\(?:u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|(["\\nrt]))')
_SIMPLE = {'"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text if text.endswith("\n") else text + "\n"

    def error(self, message: str, token: Any = None) -> IRParseError:
        line = getattr(token, "line", None)
        column = getattr(token, "column", None)
        return IRParseError(message, line, column, self.text)

    def check_budgets(self) -> None:
        """Refuse text too big or too deep to parse in bounded time and memory (before lark sees it)."""
        size = len(self.text)
        if size > budgets.value("ir_text_bytes"):
            raise IRParseError(budgets.over_budget("ir_text_bytes", size, "the IR text"))
        nodes = len(_NODE_START.findall(self.text))
        if nodes > budgets.value("ir_nodes"):
            raise IRParseError(budgets.over_budget("ir_nodes", nodes, "the IR text"))
        shape = budgets.scan_structure(self.text, comments=True)
        if shape.depth > budgets.value("ir_depth"):
            raise IRParseError(budgets.over_budget("ir_depth", shape.depth, f"the IR's nesting at line {shape.depth_line}"))
        if shape.separators > budgets.value("ir_separators"):
            raise IRParseError(budgets.over_budget("ir_separators", shape.separators, "the IR text"))

    def graphs(self) -> list[Graph]:
        self.check_budgets()
        try:
            tree = _parser().parse(self.text)
        except lark.UnexpectedCharacters as exc:
            char = self.text[exc.pos_in_stream] if exc.pos_in_stream < len(self.text) else ""
            raise IRParseError(f"unexpected character {char!r}; expected {_expected(exc.allowed)}",
                               exc.line, exc.column, self.text) from None
        except lark.UnexpectedToken as exc:
            token = exc.token
            shown = {"$END": "end of text", "_NL": "end of line"}.get(token.type, repr(str(token)))
            raise IRParseError(f"unexpected {shown}; expected {_expected(exc.accepts or exc.expected)}",
                               token.line, token.column, self.text) from None
        except lark.UnexpectedEOF as exc:
            raise IRParseError(f"unexpected end of text; expected {_expected(set(exc.expected))}") from None
        graphs: list[Graph] = []
        names: set[str] = set()
        for func in tree.children:
            name_token, *nodes = func.children
            name = self.func_name(name_token)
            if name in names:
                raise self.error(f"function @{name} is defined twice", name_token)
            names.add(name)
            graph = Graph(name)
            self.read_region(graph, graph.body, nodes, {})
            graphs.append(graph)
        return graphs

    # -- nodes ------------------------------------------------------------------------------------
    def read_region(self, graph: Graph, region: Region, items: list[lark.Tree], scope: dict[int, Any]) -> None:
        scope = dict(scope)  # values defined inside a region are not visible after it
        for item in items:
            id_token, name_token, operands_tree, *rest = item.children
            attrs: list[lark.Tree] = []
            loc = None
            blocks: list[lark.Tree] = []
            for child in rest:
                if isinstance(child, lark.Tree) and child.data == "attr":
                    attrs.append(child)
                elif isinstance(child, lark.Token) and child.type == "LOC":
                    loc = child[1:].strip() or None
                else:
                    blocks.append(child)
            opname = str(name_token)
            op_cls = OPS.get(opname)
            if op_cls is None:
                raise self.error(f"unknown op {opname!r}; ops are {', '.join(sorted(OPS))}", name_token)
            fields = attribute_types(op_cls)
            values: dict[str, Any] = {}
            meta: dict[str, Any] = {}
            for attr in attrs:
                key_token, value_tree = attr.children
                key = str(key_token)
                if key in values or (key == "meta" and meta):
                    raise self.error(f"attribute {key!r} is given twice", key_token)
                value = self.value(value_tree)
                if key == "meta":
                    if not isinstance(value, dict):
                        raise self.error("meta must be an object {...}", key_token)
                    meta = value
                    continue
                if key not in fields or (op_cls is Switch and key in ("cases", "default")):
                    known = [f for f in fields if not (op_cls is Switch and f in ("cases", "default"))]
                    hint = "; a switch's cases are written as case blocks" if op_cls is Switch else ""
                    raise self.error(f"{opname} has no attribute {key!r} (attributes: "
                                     f"{', '.join(known) or 'none'}){hint}", key_token)
                try:
                    check_attribute(op_cls, key, value)
                except IRError as exc:
                    raise self.error(exc.message, key_token) from None
                values[key] = value
            if op_cls is Switch:
                values["cases"], values["default"] = self.case_labels(blocks, item)
            elif item.data == "region_node":
                raise self.error(f"{opname} has no regions", name_token)
            missing = [f.name for f in dataclasses.fields(op_cls)
                       if f.name not in values and f.default is dataclasses.MISSING]
            if missing:
                raise self.error(f"{opname} needs attribute(s) {', '.join(missing)} "
                                 f"({'; '.join(f'{m}: {describe_type(fields[m])}' for m in missing)})",
                                 name_token)
            try:
                op = op_cls(**values)
            except IRError as exc:
                raise self.error(exc.message, name_token) from None
            operands = []
            for token in operands_tree.children:
                value_id = int(token[1:])
                if value_id not in scope:
                    raise self.error(f"%{value_id} is not defined before this use", token)
                operands.append(scope[value_id])
            node_id = int(id_token[1:])
            if node_id in graph:
                raise self.error(f"%{node_id} is defined twice", id_token)
            try:
                node = graph.add(op, operands, region=region, loc=loc, meta=meta, id=node_id)
            except IRError as exc:
                raise self.error(exc.message, id_token) from None
            scope[node_id] = node
            for block, inner in zip(blocks, node.regions):
                self.read_region(graph, inner, [c for c in block.children if isinstance(c, lark.Tree)
                                                and c.data in ("plain_node", "region_node")], scope)

    def case_labels(self, blocks: list[lark.Tree], item: lark.Tree) -> tuple[list[Any], bool]:
        cases: list[Any] = []
        default = False
        for block in blocks:
            if default:
                raise self.error("the default block must be the last one", _first_token(block))
            if block.data == "default_region":
                default = True
            else:
                label = self.value(block.children[0])
                if isinstance(label, (list, dict)):
                    raise self.error("a case label must be a string, number, boolean or null",
                                     _first_token(block))
                cases.append(label)
        if not blocks:
            raise self.error("a switch needs at least one case or default block", item.children[1])
        return cases, default

    # -- values -----------------------------------------------------------------------------------
    def value(self, tree: Any) -> Any:
        kind = tree.data
        if kind == "string":
            return self.string(tree.children[0])
        if kind == "number":
            token = tree.children[0]
            text = str(token)
            if any(c in text for c in ".eE"):
                return float(text)
            if len(text) > 40:  # past any count or id the IR holds (and Python's int digit limit)
                raise self.error(f"the number {text[:20]}... has {len(text)} digits", token)
            return int(text)
        if kind == "true":
            return True
        if kind == "false":
            return False
        if kind == "null":
            return None
        if kind == "list":
            return [self.value(child) for child in tree.children]
        if kind == "object":
            out: dict[str, Any] = {}
            for pair in tree.children:
                key_token, value_tree = pair.children
                key = self.string(key_token)
                if key in out:
                    raise self.error(f"key {key!r} is given twice", key_token)
                out[key] = self.value(value_tree)
            return out
        raise AssertionError(kind)

    def string(self, token: lark.Token) -> str:
        body = str(token)[1:-1]
        parts: list[str] = []
        pos = 0
        while True:
            slash = body.find("\\", pos)
            if slash < 0:
                parts.append(body[pos:])
                return "".join(parts)
            parts.append(body[pos:slash])
            match = _ESCAPE.match(body, slash)
            if match is None:
                raise IRParseError(f"invalid escape {body[slash:slash + 2]!r} in a string",
                                   token.line, token.column + 1 + slash, self.text)
            short, four, eight = match.group(3), match.group(1), match.group(2)
            if short:
                parts.append(_SIMPLE[short])
            else:
                code = int(four or eight, 16)
                if code > 0x10FFFF:
                    raise IRParseError(f"\\U{eight} is beyond the last code point",
                                       token.line, token.column + 1 + slash, self.text)
                parts.append(chr(code))
            pos = match.end()

    def func_name(self, token: lark.Token) -> str:
        text = str(token)[1:]
        if text.startswith('"'):
            return self.string(lark.Token("STRING", text, line=token.line, column=token.column + 1))
        return text


def _first_token(tree: lark.Tree) -> Any:
    for token in tree.scan_values(lambda v: isinstance(v, lark.Token)):
        return token
    return None
