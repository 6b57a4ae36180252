"""Load a cluster description from YAML, keeping the line and column of every value."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from compiler.errors import DescriptionError, Problem

PathPart = str | int
SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def format_path(parts: tuple[PathPart, ...] | list[PathPart]) -> str:
    """Format path parts as a dotted path: `spec.nodes[1].name`."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not SIMPLE_KEY.match(part):
            # Label keys such as topology.kubernetes.io/zone contain dots themselves.
            text += f'["{part}"]'
        else:
            text += f".{part}" if text else part
    return text


@dataclass
class Description:
    """A parsed description: plain data plus a position for every mapping key and value."""

    filename: str
    data: Any
    positions: dict[tuple[PathPart, ...], tuple[int, int]] = field(default_factory=dict)
    key_positions: dict[tuple[PathPart, ...], tuple[int, int]] = field(default_factory=dict)

    def problem(
        self,
        parts: tuple[PathPart, ...],
        message: str,
        hint: str | None = None,
        *,
        at_key: bool = False,
        severity: str = "error",
    ) -> Problem:
        """Build a Problem for a path, located at the nearest known position."""
        table = self.key_positions if at_key else self.positions
        position = table.get(parts)
        probe = parts
        while position is None and probe:
            probe = probe[:-1]
            position = self.positions.get(probe)
        line, column = position if position else (None, None)
        return Problem(
            path=format_path(parts), message=message, hint=hint, line=line, column=column,
            severity="warning" if severity == "warning" else "error",
        )


def _walk(
    node: yaml.Node,
    parts: tuple[PathPart, ...],
    description: Description,
    problems: list[Problem],
) -> None:
    description.positions[parts] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            child = (*parts, key)
            position = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key in seen:
                problems.append(Problem(
                    path=format_path(child), message=f'found the key "{key}" twice; '
                    "expected each key once", hint="remove one of the two entries",
                    line=position[0], column=position[1],
                ))
            seen.add(key)
            description.key_positions[child] = position
            _walk(value_node, child, description, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*parts, index), description, problems)


def _syntax_problem(error: yaml.YAMLError) -> Problem:
    mark = getattr(error, "problem_mark", None)
    reason = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    message = f"invalid YAML: {reason}" + (f" ({context})" if context else "")
    return Problem(
        path="", message=message,
        hint="check the indentation and quoting on this line and the one before it; quote "
        "values that contain ': ' or start with a special character",
        line=mark.line + 1 if mark else None, column=mark.column + 1 if mark else None,
    )


def load_description_text(text: str, filename: str) -> Description:
    """Parse description text; raise DescriptionError for syntax errors and duplicate keys."""
    description = Description(filename=filename, data=None)
    problems: list[Problem] = []
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        if len(nodes) != 1 or nodes[0] is None:
            found = "an empty file" if not nodes or nodes[0] is None else f"{len(nodes)} documents"
            raise DescriptionError(filename, [Problem(
                path="", message=f"found {found}; expected exactly one YAML document",
                hint="put one Cluster description in the file",
            )])
        root = nodes[0]
        _walk(root, (), description, problems)
        loader = yaml.SafeLoader(text)
        try:
            description.data = loader.construct_document(root)
        finally:
            loader.dispose()
    except yaml.YAMLError as error:
        raise DescriptionError(filename, [_syntax_problem(error)]) from None

    if problems:
        raise DescriptionError(filename, problems)
    return description


def load_description(path: Path) -> Description:
    """Read and parse a description file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DescriptionError(str(path), [Problem(
            path="", message="file not found", hint="check the path of the description",
        )]) from None
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "it is not UTF-8 text"
        raise DescriptionError(str(path), [Problem(
            path="", message=f"cannot read the file: {reason}",
            hint="pass a readable UTF-8 YAML file",
        )]) from None
    return load_description_text(text, str(path))
