"""Error hierarchy shared by every layer; only the CLI prints these."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One finding about the description, tied to a dotted path and a source position."""

    path: str
    message: str
    hint: str | None = None
    line: int | None = None
    column: int | None = None
    severity: Severity = "error"

    def format(self, filename: str) -> str:
        """Format as `FILE:LINE:COL: path: message`, plus a `hint:` line when there is one."""
        where = filename
        if self.line is not None:
            where = f"{filename}:{self.line}:{self.column or 1}"
        prefix = "warning: " if self.severity == "warning" else ""
        text = f"{where}: {prefix}{self.path}: {self.message}" if self.path else (
            f"{where}: {prefix}{self.message}"
        )
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    def sort_key(self) -> tuple[int, int, str]:
        return (self.line or 0, self.column or 0, self.path)


class KubeccError(Exception):
    """Base class of every error kubecc reports to the user."""

    exit_code = 1


class DescriptionError(KubeccError):
    """The cluster description is invalid; carries every problem found."""

    def __init__(self, filename: str, problems: Iterable[Problem]) -> None:
        self.filename = filename
        self.problems = sorted(problems, key=Problem.sort_key)
        super().__init__(self.format())

    def format(self) -> str:
        return "\n".join(problem.format(self.filename) for problem in self.problems)


class OutputError(KubeccError):
    """Writing the output was refused or failed; earlier output is left untouched."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.hint = hint
        super().__init__(message)


class StateError(KubeccError):
    """The state folder cannot be used as it is; nothing was written."""

    def __init__(self, path: object, problem: str, hint: str | None = None) -> None:
        self.path = path
        self.hint = hint
        super().__init__(f"{path} {problem}")


class InputError(KubeccError):
    """Input other than the description (a password, a flag's value) is invalid."""


class ConsistencyError(KubeccError):
    """Generated artifacts contradict each other; this is a kubecc bug, not a user error."""

    exit_code = 3
