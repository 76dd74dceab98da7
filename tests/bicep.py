"""Reads Bicep files with tree-sitter-bicep into plain Python values, for structural tests of ``infra/``.

The Bicep CLI cannot be installed here, so templates are checked by parsing: a file must
parse without error nodes, and its declarations become dictionaries whose literals are
Python values and whose other expressions are :class:`Expr` (their source text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tree_sitter_bicep
from tree_sitter import Language, Node, Parser

_PARSER = Parser(Language(tree_sitter_bicep.language()))


@dataclass(frozen=True)
class Expr:
    """A Bicep expression that is not a plain literal, kept as its source text."""

    text: str


@dataclass
class Declaration:
    """A ``param``, ``var``, ``resource``, ``module`` or ``output`` with its decorators."""

    kind: str
    name: str
    type: str  # resource type@version, module path, or the param/output type
    value: Any
    decorators: list[str] = field(default_factory=list)
    condition: str | None = None  # the ``if (...)`` of a conditional resource or module
    loop: str | None = None  # the ``for ... in ...`` of a resource or module loop
    existing: bool = False  # a ``resource ... existing``: a reference to a resource deployed elsewhere


@dataclass
class BicepFile:
    """One parsed file."""

    path: Path
    declarations: list[Declaration]
    target_scope: str | None

    def all(self, kind: str) -> dict[str, Declaration]:
        return {d.name: d for d in self.declarations if d.kind == kind}

    def resources(self, type_prefix: str) -> list[Declaration]:
        """Resources whose type (without the API version) is ``type_prefix``."""
        return [d for d in self.declarations if d.kind == "resource" and d.type.split("@")[0] == type_prefix]


def errors(node: Node) -> list[str]:
    """Error and missing nodes under ``node``, as ``line:column`` texts."""
    found = []
    if node.type == "ERROR" or node.is_missing:
        found.append(f"{node.start_point[0] + 1}:{node.start_point[1] + 1} {node.type}")
    for child in node.children:
        found += errors(child)
    return found


def _text(node: Node) -> str:
    return (node.text or b"").decode()


def value(node: Node) -> Any:
    """A Python value for literals, objects and arrays; :class:`Expr` for anything else."""
    named = [c for c in node.children if c.is_named and c.type != "comment"]
    if node.type == "object":
        out = {}
        for prop in named:
            if prop.type != "object_property":
                continue
            key, *rest = [c for c in prop.children if c.is_named and c.type != "comment"]
            name = _text(key)
            out[name.strip("'") if key.type == "string" else name] = value(rest[-1])
        return out
    if node.type == "array":
        return [value(child) for child in named]
    if node.type == "string" and all(c.type in ("'", "string_content", "escape_sequence") for c in node.children):
        return "".join(_text(c) for c in node.children if c.type != "'").replace("\\'", "'")
    if node.type == "number":
        return int(_text(node))
    if node.type == "boolean":
        return _text(node) == "true"
    if node.type == "parenthesized_expression" and len(named) == 1:
        return value(named[0])
    return Expr(_text(node))


def parse(path: Path) -> BicepFile:
    """Parse ``path``; raise AssertionError listing any syntax error."""
    tree = _PARSER.parse(path.read_bytes())
    problems = errors(tree.root_node)
    assert not problems, f"{path}: syntax errors at {problems}"
    declarations: list[Declaration] = []
    scope = None
    decorators: list[str] = []
    for node in tree.root_node.children:
        if node.type == "decorators":
            decorators = [_text(d) for d in node.children if d.is_named]
            continue
        kinds = {"parameter_declaration": "param", "variable_declaration": "var", "resource_declaration": "resource",
                 "module_declaration": "module", "output_declaration": "output"}
        if node.type == "target_scope_assignment":
            scope = value([c for c in node.children if c.is_named][-1])
        elif node.type in kinds:
            named = [c for c in node.children if c.is_named and c.type != "comment"]
            inner_decorators = [_text(d) for c in node.children if c.type == "decorators" for d in c.children
                                if d.is_named]
            named = [c for c in named if c.type != "decorators"]
            name = _text(named[0])
            kind = kinds[node.type]
            declared_type = value(named[1]) if kind in ("resource", "module") else _text(named[1])
            body = named[-1] if len(named) > 2 or kind == "var" else None
            condition = loop = None
            if body is not None and body.type == "if_statement":
                condition = _text([c for c in body.children if c.is_named][0])
                body = [c for c in body.children if c.is_named][-1]
            if body is not None and body.type == "for_statement":
                loop = _text(body)
                body = [c for c in body.children if c.is_named][-1]
            existing = any(c.type == "existing" for c in node.children)
            declarations.append(Declaration(kind, name, declared_type if isinstance(declared_type, str) else
                                            str(declared_type), value(body) if body is not None else None,
                                            decorators + inner_decorators, condition, loop, existing))
        decorators = []
    return BicepFile(path, declarations, scope)
