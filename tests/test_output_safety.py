"""Output safety: short writes, interrupts, failed cleanups and targets that must not be replaced.

The tests run as root, so permission failures are simulated by monkeypatching, not by chmod.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import resource
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from compiler import output
from compiler.cli import main
from compiler.errors import OutputError
from compiler.output import OutputFile, recover_interrupted, write_output
from tests.conftest import EXAMPLES
from tests.test_output import read_tree, tree

HARD_WAY = str(EXAMPLES / "hard-way.yaml")


def entries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def run_cli(
    *args: str, cwd: Path, preexec_fn: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "compiler", *with_state(args, cwd)], cwd=cwd,
        capture_output=True, text=True, check=False, preexec_fn=preexec_fn,
    )


def with_state(args: tuple[str, ...], cwd: Path) -> tuple[str, ...]:
    """Keep the state of `build` in the test's folder instead of beside the example."""
    if args[:1] == ("build",) and "--state" not in args:
        return ("build", "--state", str(cwd / "state"), *args[1:])
    return args


def first_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stderr.splitlines()[0]


@pytest.fixture(params=[True, False], ids=["renameat2", "fallback"])
def exchange(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run the test with renameat2 and again with the two-rename fallback."""
    if not request.param:
        monkeypatch.setattr(output, "_exchange", lambda first, second: False)
    return bool(request.param)


# Short writes


def test_short_write_keeps_previous_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "c"
    write_output(target, tree(a=b"old-a"))
    real_write = os.write
    calls = []

    def write_half_then_fail(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.EFBIG, "File too large")
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(output.os, "write", write_half_then_fail)
    with pytest.raises(OutputError) as caught:
        write_output(target, tree(a=b"new-a-0123456789"))
    monkeypatch.undo()

    assert str(caught.value) == (
        f"cannot write {target}: File too large; the previous output is unchanged"
    )
    assert read_tree(target) == {"a": b"old-a"}
    assert entries(tmp_path) == ["c"]


def test_short_writes_are_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def write_three_bytes(fd: int, data: bytes) -> int:
        return real_write(fd, data[:3])

    monkeypatch.setattr(output.os, "write", write_three_bytes)
    write_output(tmp_path / "c", tree(a=b"0123456789", nodes__b__user_data=b"abcdefgh"))
    monkeypatch.undo()

    assert read_tree(tmp_path / "c") == {"a": b"0123456789", "nodes/b/user_data": b"abcdefgh"}


def test_zero_byte_write_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "c"
    write_output(target, tree(a=b"old-a"))
    monkeypatch.setattr(output.os, "write", lambda fd, data: 0)
    with pytest.raises(OutputError) as caught:
        write_output(target, tree(a=b"new-a"))
    monkeypatch.undo()

    assert str(caught.value) == (
        f"cannot write {target}: wrote only 0 of 5 bytes of a; the previous output is unchanged"
    )
    assert read_tree(target) == {"a": b"old-a"}
    assert entries(tmp_path) == ["c"]


def test_error_without_strerror_shows_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(fd: int, data: bytes) -> int:
        raise OSError("disk went away")

    monkeypatch.setattr(output.os, "write", fail)
    with pytest.raises(OutputError) as caught:
        write_output(tmp_path / "c", tree(a=b"1"))
    monkeypatch.undo()

    assert str(caught.value) == (
        f"cannot write {tmp_path / 'c'}: disk went away; the previous output is unchanged"
    )
    assert entries(tmp_path) == []


# Staging folder: mode, fsync and removal on interrupts


def test_staging_folder_mode_0700(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    staging_modes = []
    real_write = os.write

    def record_staging_mode(fd: int, data: bytes) -> int:
        staging_modes.extend(
            stat.S_IMODE(path.stat().st_mode) for path in tmp_path.glob(".c.new-*")
        )
        return real_write(fd, data)

    monkeypatch.setattr(output.os, "write", record_staging_mode)
    old_umask = os.umask(0)
    try:
        write_output(tmp_path / "c", tree(a=b"1"))
    finally:
        os.umask(old_umask)
    monkeypatch.undo()

    assert staging_modes == [0o700]


@pytest.mark.parametrize("has_syncfs", [True, False], ids=["syncfs", "fsync-each"])
def test_tree_durable_before_swap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, has_syncfs: bool
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def record_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def record_syncfs(fd: int) -> bool:
        synced.append("syncfs " + os.readlink(f"/proc/self/fd/{fd}"))
        return has_syncfs

    monkeypatch.setattr(output.os, "fsync", record_fsync)
    monkeypatch.setattr(output, "_syncfs", record_syncfs)
    write_output(tmp_path / "c", tree(a=b"1", nodes__n__user_data=b"2"))
    monkeypatch.undo()

    assert synced[0].startswith(f"syncfs {tmp_path}/.c.new-")
    staged = []
    for path in synced[1:-1]:
        staging, *inside = Path(path).relative_to(tmp_path).parts
        assert staging.startswith(".c.new-")
        staged.append("/".join(inside) or ".")
    expected = [] if has_syncfs else ["a", "nodes/n/user_data", "nodes/n", "nodes", "."]
    assert staged == expected
    assert synced[-1] == str(tmp_path)


def test_interrupt_removes_staging_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "c"
    write_output(target, tree(a=b"old-a", b=b"old-b"))
    real_write = os.write
    calls = []

    def interrupt_second_write(fd: int, data: bytes) -> int:
        calls.append(fd)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_write(fd, data)

    monkeypatch.setattr(output.os, "write", interrupt_second_write)
    with pytest.raises(KeyboardInterrupt):
        write_output(target, tree(a=b"new-a", b=b"new-b"))
    monkeypatch.undo()

    assert read_tree(target) == {"a": b"old-a", "b": b"old-b"}
    assert entries(tmp_path) == ["c"]


def test_failed_staging_removal_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def rmtree_denied(path: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(output.os, "write", fail)
    monkeypatch.setattr(output.shutil, "rmtree", rmtree_denied)
    with caplog.at_level(logging.WARNING, logger="compiler.output"), pytest.raises(OutputError):
        write_output(tmp_path / "c", tree(a=b"1"))
    monkeypatch.undo()

    [staging] = tmp_path.glob(".c.new-*")
    assert [record.getMessage() for record in caplog.records] == [
        f"failed to remove the staging folder {staging}: Permission denied. Delete it, "
        "because it contains private keys."
    ]


# Two-rename fallback: the previous tree is moved back when the second rename fails


def fail_second_rename(
    monkeypatch: pytest.MonkeyPatch, error: BaseException, restore_error: OSError | None = None
) -> None:
    """Make the rename of staging to the target raise `error`, and optionally the move back."""
    real_rename = os.rename
    calls = []

    def rename(source: Path, destination: Path) -> None:
        calls.append(source)
        if len(calls) == 2:
            raise error
        if len(calls) == 3 and restore_error is not None:
            raise restore_error
        real_rename(source, destination)

    monkeypatch.setattr(output, "_exchange", lambda first, second: False)
    monkeypatch.setattr(output.os, "rename", rename)


@pytest.mark.parametrize(
    "error", [OSError(errno.EXDEV, "Invalid cross-device link"), KeyboardInterrupt()],
    ids=["oserror", "interrupt"],
)
def test_fallback_failure_restores_previous_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    target = tmp_path / "c"
    write_output(target, tree(a=b"old-a"))
    fail_second_rename(monkeypatch, error)
    with pytest.raises((OutputError, KeyboardInterrupt)) as caught:
        write_output(target, tree(a=b"new-a"))
    monkeypatch.undo()

    if isinstance(error, OSError):
        assert str(caught.value) == (
            f"cannot write {target}: Invalid cross-device link; the previous output is unchanged"
        )
    else:
        assert caught.type is KeyboardInterrupt
    assert read_tree(target) == {"a": b"old-a"}
    assert entries(tmp_path) == ["c"]


def test_fallback_restore_failure_names_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "c"
    write_output(target, tree(a=b"old-a"))
    fail_second_rename(
        monkeypatch, OSError(errno.EXDEV, "Invalid cross-device link"),
        OSError(errno.EIO, "Input/output error"),
    )
    with pytest.raises(OutputError) as caught:
        write_output(target, tree(a=b"new-a"))
    monkeypatch.undo()

    [backup] = tmp_path.glob(".c.old-*")
    previous = backup / "tree"
    assert str(caught.value) == (
        f"cannot write {target}: Invalid cross-device link; the previous output was moved to "
        f"{previous} and moving it back failed: Input/output error"
    )
    assert caught.value.hint == f"rename {previous} to {target} to restore the previous output"
    assert read_tree(previous) == {"a": b"old-a"}
    assert entries(tmp_path) == [backup.name]


# Removal of the previous tree after the swap


def test_old_tree_removal_failure_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    exchange: bool,
) -> None:
    target = tmp_path / "c"
    write_output(target, tree(old=b"old-secret"))
    removed = []

    def rmtree_denied(path: Path, *args: object, **kwargs: object) -> None:
        removed.append(Path(path))
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(output.shutil, "rmtree", rmtree_denied)
    with caplog.at_level(logging.WARNING, logger="compiler.output"):
        write_output(target, tree(new=b"new-secret"))
    monkeypatch.undo()

    [leftover] = removed
    prefix = ".c.new-" if exchange else ".c.old-"
    assert leftover.parent == tmp_path
    assert leftover.name.startswith(prefix)
    assert read_tree(target) == {"new": b"new-secret"}
    assert entries(tmp_path) == sorted(["c", leftover.name])
    assert [record.getMessage() for record in caplog.records] == [
        f"wrote {target}, but failed to remove the previous output from {leftover}: "
        "Permission denied. Delete that folder, because it contains the previous build's "
        "private keys."
    ]


def test_removal_error_text_without_strerror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "c"
    write_output(target, tree(old=b"1"))

    def rmtree_link(path: Path, *args: object, **kwargs: object) -> None:
        raise OSError("Cannot call rmtree on a symbolic link")

    monkeypatch.setattr(output.shutil, "rmtree", rmtree_link)
    with caplog.at_level(logging.WARNING, logger="compiler.output"):
        write_output(target, tree(new=b"2"))
    monkeypatch.undo()

    [record] = caplog.records
    assert ": Cannot call rmtree on a symbolic link. Delete that folder" in record.getMessage()
    assert "None" not in record.getMessage()


def test_failed_parent_fsync_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_fsync_path = output._fsync_path

    def fsync_parent_fails(path: Path) -> None:
        if path == tmp_path:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync_path(path)

    monkeypatch.setattr(output, "_fsync_path", fsync_parent_fails)
    with caplog.at_level(logging.WARNING, logger="compiler.output"):
        write_output(tmp_path / "c", tree(a=b"1"))
    monkeypatch.undo()

    assert read_tree(tmp_path / "c") == {"a": b"1"}
    assert [record.getMessage() for record in caplog.records] == [
        f"wrote {tmp_path / 'c'}, but failed to flush the folder {tmp_path} to disk: "
        "Input/output error. A system crash before the kernel writes it back may restore "
        "the previous output."
    ]


def test_symlink_target_rejected_by_writer(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    write_output(elsewhere, tree(a=b"theirs"))
    target = tmp_path / "c"
    target.symlink_to("elsewhere")
    with pytest.raises(OutputError) as caught:
        write_output(target, tree(a=b"new"))

    assert str(caught.value) == (
        f"cannot write {target}: {target} exists and is not a folder; "
        "the previous output is unchanged"
    )
    assert os.readlink(target) == "elsewhere"
    assert read_tree(elsewhere) == {"a": b"theirs"}
    assert entries(tmp_path) == ["c", "elsewhere"]


# Command line: targets that must not be replaced


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_cli_symlink_target_rejected(tmp_path: Path, force: bool) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("mine")
    (tmp_path / "out").mkdir()
    link = tmp_path / "out/hard-way"
    link.symlink_to("../elsewhere")

    flags = ["--force"] if force else []
    result = run_cli("build", *flags, "-o", "out", HARD_WAY, cwd=tmp_path)

    assert result.returncode == 1
    assert first_line(result) == (
        "error: out/hard-way is a symbolic link; kubecc replaces only a real folder, so the "
        "link is left unchanged"
    )
    assert "  hint: remove the link, or choose another folder with -o" in result.stderr
    assert os.readlink(link) == "../elsewhere"
    assert entries(elsewhere) == ["notes.txt"]
    assert (elsewhere / "notes.txt").read_text() == "mine"
    assert entries(tmp_path / "out") == ["hard-way"]


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_cli_file_at_target_rejected(tmp_path: Path, force: bool) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out/hard-way").write_text("mine")

    flags = ["--force"] if force else []
    result = run_cli("build", *flags, "-o", "out", HARD_WAY, cwd=tmp_path)

    assert result.returncode == 1
    assert first_line(result) == (
        "error: out/hard-way exists and is not a folder; it is left unchanged"
    )
    assert "  hint: remove it, or choose another folder with -o" in result.stderr
    assert "internal error" not in result.stderr
    assert (tmp_path / "out/hard-way").read_text() == "mine"
    assert entries(tmp_path / "out") == ["hard-way"]


@pytest.mark.parametrize(
    "index", [None, '{"pages": []}', "not json"], ids=["no-index", "other-index", "invalid"]
)
def test_cli_force_keeps_foreign_folder(tmp_path: Path, index: str | None) -> None:
    foreign = tmp_path / "out/hard-way"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    if index is not None:
        (foreign / "index.json").write_text(index)
    before = read_tree(foreign)

    result = run_cli("build", "--force", "-o", "out", HARD_WAY, cwd=tmp_path)

    assert result.returncode == 1
    assert first_line(result) == (
        "error: out/hard-way exists and was not written by kubecc; it is left unchanged"
    )
    assert "--force never replaces a folder that kubecc did not write" in result.stderr
    assert read_tree(foreign) == before
    assert entries(tmp_path / "out") == ["hard-way"]


def test_cli_output_option_names_file(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("mine")
    result = run_cli("build", "-o", "out", HARD_WAY, cwd=tmp_path)

    assert result.returncode == 1
    assert first_line(result) == "error: cannot create the output folder out: File exists"
    assert (tmp_path / "out").read_text() == "mine"
    # The state is written first, so the next build reuses its keys.
    assert entries(tmp_path) == ["out", "state"]


def test_cli_empty_folder_replaced(tmp_path: Path) -> None:
    (tmp_path / "out/hard-way").mkdir(parents=True)
    result = run_cli("build", "-o", "out", HARD_WAY, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    index = json.loads((tmp_path / "out/hard-way/index.json").read_text())
    assert index["cluster"]["name"] == "hard-way"
    assert entries(tmp_path / "out") == ["hard-way"]


def test_cli_file_size_limit_keeps_previous(tmp_path: Path) -> None:
    assert run_cli("build", "-o", "out", HARD_WAY, cwd=tmp_path).returncode == 0
    before = read_tree(tmp_path / "out/hard-way")

    def limit_file_size() -> None:
        # Every user-data is larger than 16 KiB, so the first one is cut short at the limit.
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))

    result = run_cli(
        "build", "--force", "-o", "out", HARD_WAY, cwd=tmp_path, preexec_fn=limit_file_size
    )

    assert result.returncode == 1
    assert first_line(result) == (
        "error: cannot write out/hard-way: File too large; the previous output is unchanged"
    )
    assert read_tree(tmp_path / "out/hard-way") == before
    assert entries(tmp_path / "out") == ["hard-way"]


def test_cli_failed_removal_exits_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    assert main(["build", "--state", str(tmp_path / "first"), "-o", str(out), HARD_WAY]) == 0
    before = (out / "hard-way/ca.crt").read_bytes()
    real_rmtree = shutil.rmtree

    def rmtree_denied(path: Path, *args: object, **kwargs: object) -> None:
        if Path(path).name.startswith(".hard-way."):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        real_rmtree(path)

    monkeypatch.setattr(output.shutil, "rmtree", rmtree_denied)
    with caplog.at_level(logging.WARNING, logger="compiler.output"):
        second = ["--state", str(tmp_path / "second")]
        assert main(["build", *second, "--force", "-o", str(out), HARD_WAY]) == 0
    monkeypatch.undo()

    [leftover_name] = [name for name in entries(out) if name != "hard-way"]
    assert (out / "hard-way/ca.crt").read_bytes() != before
    assert (out / leftover_name / "ca.crt").read_bytes() == before
    assert [record.getMessage() for record in caplog.records] == [
        f"wrote {out / 'hard-way'}, but failed to remove the previous output from "
        f"{out / leftover_name}: Permission denied. Delete that folder, because it contains "
        "the previous build's private keys."
    ]


def test_leftovers_of_killed_build_removed(tmp_path: Path) -> None:
    target = tmp_path / "c"
    write_output(target, {"a": OutputFile("a", b"1", 0o600)})
    staging = tmp_path / ".c.new-dead"
    staging.mkdir()
    (staging / "admin.kubeconfig").write_text("secret")

    write_output(target, {"a": OutputFile("a", b"2", 0o600)})

    assert sorted(path.name for path in tmp_path.iterdir()) == ["c"]
    assert (target / "a").read_bytes() == b"2"


def test_previous_tree_restored_after_kill_between_renames(tmp_path: Path) -> None:
    target = tmp_path / "c"
    backup = tmp_path / ".c.old-dead"
    (backup / "tree").mkdir(parents=True)
    (backup / "tree" / "a").write_bytes(b"previous")

    recover_interrupted(target)

    assert (target / "a").read_bytes() == b"previous"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["c"]
