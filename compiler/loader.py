"""Load a cluster description from YAML, keeping the line and column of every value."""

from __future__ import annotations

import json
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
            text += f"[{json.dumps(part)}]"
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


# Limits that keep a hostile file from exhausting memory or the stack: a 5,000-node
# description is about 0.5 MB, about 40,000 values and 6 levels deep.
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_VALUES = 1_000_000  # counted after aliases are expanded ("billion laughs")
MAX_DEPTH = 64
STRING_TAG = "tag:yaml.org,2002:str"
# C0 and C1 controls, DEL and the Unicode line and paragraph separators: no description field
# is multi-line, and such characters would end a line in a generated file or a message.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _position(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _control_character_problem(
    parts: tuple[PathPart, ...], text: str, node: yaml.Node, what: str
) -> Problem | None:
    match = CONTROL_CHARACTERS.search(text)
    if match is None:
        return None
    line, column = _position(node)
    return Problem(
        path=format_path(parts),
        message=f"found the control character U+{ord(match.group()):04X} in the {what}; "
        "expected text on one line",
        hint="remove line breaks, tabs and other control characters from the value",
        line=line, column=column,
    )


def _key_problem(parts: tuple[PathPart, ...], key_node: yaml.Node) -> Problem | None:
    if isinstance(key_node, yaml.ScalarNode) and key_node.tag == STRING_TAG:
        return _control_character_problem(parts, key_node.value, key_node, "key")
    line, column = _position(key_node)
    key_text = repr(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "a collection"
    return Problem(
        path=format_path(parts[:-1]),
        message=f"found the key {key_text}, which is not text; expected a string key",
        hint="quote the key", line=line, column=column,
    )


def _limit_problem(message: str, hint: str) -> DescriptionError:
    return DescriptionError("", [Problem(path="", message=message, hint=hint)])


def _walk(root: yaml.Node, description: Description, problems: list[Problem]) -> None:
    """Record positions and check keys and strings, without recursion and within limits."""
    stack: list[tuple[yaml.Node, tuple[PathPart, ...]]] = [(root, ())]
    visited = 0
    while stack:
        node, parts = stack.pop()
        visited += 1
        if visited > MAX_VALUES or len(parts) > MAX_DEPTH:
            raise _limit_problem(
                f"found a document nested more than {MAX_DEPTH} levels deep or with more than "
                f"{MAX_VALUES} values after expanding aliases",
                "remove self-referencing or repeated aliases (&anchor / *alias)",
            )
        description.positions.setdefault(parts, _position(node))
        if isinstance(node, yaml.ScalarNode) and node.tag == STRING_TAG:
            problem = _control_character_problem(parts, node.value, node, "value")
            if problem:
                problems.append(problem)
        elif isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            children: list[tuple[yaml.Node, tuple[PathPart, ...]]] = []
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
                child = (*parts, key)
                problem = _key_problem(child, key_node)
                if problem:
                    problems.append(problem)
                    continue
                if key in seen:
                    line, column = _position(key_node)
                    problems.append(Problem(
                        path=format_path(child), message=f'found the key "{key}" twice; '
                        "expected each key once", hint="remove one of the two entries",
                        line=line, column=column,
                    ))
                seen.add(key)
                description.key_positions[child] = _position(key_node)
                children.append((value_node, child))
            stack.extend(reversed(children))
        elif isinstance(node, yaml.SequenceNode):
            for index in reversed(range(len(node.value))):
                stack.append((node.value[index], (*parts, index)))


def _syntax_problem(error: yaml.YAMLError, text: str) -> Problem:
    if isinstance(error, yaml.reader.ReaderError):
        # The reader reports a character offset instead of a mark.
        before = text[:error.position]
        return Problem(
            path="", message=f"found the character U+{error.character:04X}, which YAML does "
            "not allow; expected printable text",
            hint="remove the character; descriptions are UTF-8 text",
            line=before.count("\n") + 1, column=len(before) - before.rfind("\n"),
        )
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
        _walk(root, description, problems)
        if problems:
            raise DescriptionError(filename, problems)
        loader = yaml.SafeLoader(text)
        try:
            description.data = loader.construct_document(root)
        finally:
            loader.dispose()
    except yaml.YAMLError as error:
        raise DescriptionError(filename, [_syntax_problem(error, text)]) from None
    except RecursionError:
        raise DescriptionError(filename, [Problem(
            path="", message=f"found a document nested more than {MAX_DEPTH} levels deep",
            hint="flatten the nesting; a description is at most a few levels deep",
        )]) from None
    except DescriptionError as error:
        raise DescriptionError(filename, error.problems) from None

    if problems:
        raise DescriptionError(filename, problems)
    return description


def load_description(path: Path) -> Description:
    """Read and parse a description file."""
    try:
        if not path.is_file():
            if path.exists():
                raise DescriptionError(str(path), [Problem(
                    path="", message="found something other than a regular file",
                    hint="pass the path of a YAML file",
                )])
            raise FileNotFoundError
        if path.stat().st_size > MAX_FILE_BYTES:
            raise DescriptionError(str(path), [Problem(
                path="", message=f"found a file of {path.stat().st_size} bytes; expected at "
                f"most {MAX_FILE_BYTES}", hint="a description of 5,000 nodes is about 0.5 MB; "
                "check that this is the right file",
            )])
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
