"""File records that renderers return: absolute node path -> content, mode and owner."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from compiler.errors import ConsistencyError

# Modes from the node file layout: secrets and anything that embeds one are 0600.
MODE_SECRET = 0o600
MODE_PUBLIC = 0o644
MODE_EXECUTABLE = 0o755
MODE_PRIVATE_EXECUTABLE = 0o700


@dataclass(frozen=True)
class File:
    path: str
    content: bytes
    mode: int
    owner: str = "root:root"

    @property
    def permissions(self) -> str:
        """Return the mode as cloud-init expects it: a four-digit octal string."""
        return f"{self.mode:04o}"


FileMap = dict[str, File]


def text_file(path: str, text: str, mode: int) -> File:
    """Build a File from text, encoded as UTF-8."""
    return File(path=path, content=text.encode("utf-8"), mode=mode)


def merge_files(*groups: Mapping[str, File] | Iterable[File]) -> FileMap:
    """Merge file groups into one map; two concerns writing one path is a bug."""
    merged: FileMap = {}
    for group in groups:
        files = group.values() if isinstance(group, Mapping) else group
        for file in files:
            if file.path in merged:
                raise ConsistencyError(f"two renderers write {file.path}")
            merged[file.path] = file
    return merged
