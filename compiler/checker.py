"""Problem collector shared by the semantic checks."""

from __future__ import annotations

from dataclasses import dataclass

from compiler.errors import Problem
from compiler.loader import Description, PathPart


@dataclass
class Checker:
    """Collects problems for one description."""

    description: Description
    problems: list[Problem]

    def error(self, parts: tuple[PathPart, ...], message: str, hint: str | None = None) -> None:
        self.problems.append(self.description.problem(parts, message, hint))

    def warning(self, parts: tuple[PathPart, ...], message: str, hint: str | None = None) -> None:
        self.problems.append(self.description.problem(parts, message, hint, severity="warning"))
