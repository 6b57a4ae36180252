"""Output writer: exact modes, atomic replacement, and no damage when a write fails."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from compiler import output
from compiler.errors import OutputError
from compiler.output import OutputFile, write_output


def tree(**files: bytes) -> dict[str, OutputFile]:
    return {
        name.replace("__", "/"): OutputFile(name.replace("__", "/"), content, 0o600)
        for name, content in files.items()
    }


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*")) if path.is_file()
    }


def test_writes_files_with_modes(tmp_path: Path) -> None:
    files = {
        "nodes/a/user-data": OutputFile("nodes/a/user-data", b"secret", 0o600),
        "index.json": OutputFile("index.json", b"{}", 0o644),
    }
    old_umask = os.umask(0o077)
    try:
        write_output(tmp_path / "c", files)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "c/nodes/a/user-data").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "c/index.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "fallback"])
def test_replaces_previous_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:
        monkeypatch.setattr(output, "_exchange", lambda first, second: False)
    target = tmp_path / "c"
    write_output(target, tree(old=b"1", nodes__gone__user_data=b"2"))
    write_output(target, tree(new=b"3"))
    assert read_tree(target) == {"new": b"3"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["c"]


def test_failed_write_keeps_previous_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "c"
    write_output(target, tree(a=b"old-a", b=b"old-b"))
    calls = []
    real_write = os.write

    def failing_write(fd: int, data: bytes) -> int:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(output.os, "write", failing_write)
    with pytest.raises(OutputError) as caught:
        write_output(target, tree(a=b"new-a", b=b"new-b"))
    monkeypatch.undo()

    assert str(caught.value) == (
        f"cannot write {target}: No space left on device; the previous output is unchanged"
    )
    assert read_tree(target) == {"a": b"old-a", "b": b"old-b"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["c"]


def test_unwritable_parent(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError) as caught:
        write_output(blocker / "c", tree(a=b"1"))
    assert str(caught.value).startswith(f"cannot create the output folder {blocker}")
