"""Write a build to `out/<cluster>/`: all of it or nothing.

The new tree is written to a staging folder beside the old one, with mode 0700 because it
contains private keys, and every file and folder is fsynced. The two trees are then exchanged in
one step with renameat2(RENAME_EXCHANGE), and only then is the old tree removed. A failure or an
interrupt before the exchange removes the staging folder and leaves the previous output intact.
After the exchange the new output is in place, so a failure to remove the old tree is logged as
a warning that names the leftover folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from compiler import faults
from compiler.errors import OutputError

logger = logging.getLogger(__name__)

RENAME_EXCHANGE = 2  # from <linux/fs.h>
AT_FDCWD = -100


@dataclass(frozen=True)
class OutputFile:
    relative_path: str
    content: bytes
    mode: int


def os_error_reason(error: OSError) -> str:
    """Return the OS reason, or the whole text where the error has no errno (as from shutil)."""
    return error.strerror or str(error)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        faults.checkpoint("out-fsync-folder")
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, content: bytes, relative: str) -> None:
    """Write every byte of `content`, because os.write may write fewer (at `ulimit -f`, say)."""
    written = 0
    while written < len(content):
        faults.checkpoint("out-write")
        count = os.write(fd, content[written:])
        if count <= 0:
            raise OSError(
                errno.EIO, f"wrote only {written} of {len(content)} bytes of {relative}"
            )
        written += count


def _write_tree(root: Path, files: Mapping[str, OutputFile]) -> None:
    folders = {root}
    for relative, file in sorted(files.items()):
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        folders.update(parent for parent in target.parents if root in (parent, *parent.parents))
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file.mode)
        try:
            _write_all(fd, file.content, relative)
            os.fchmod(fd, file.mode)  # the umask must not widen or narrow the mode
        finally:
            os.close(fd)
    _sync_tree(root, [root / relative for relative in files], folders)


def _sync_tree(root: Path, paths: list[Path], folders: set[Path]) -> None:
    """Make every file and folder of the new tree durable before it is swapped in.

    One syncfs(2) flushes the whole filesystem at once, which for thousands of small files
    is far faster than an fsync each. Where syncfs is missing, every file and folder is
    fsynced.
    """
    fd = os.open(root, os.O_RDONLY)
    try:
        faults.checkpoint("out-syncfs")
        if _syncfs(fd):
            return
    finally:
        os.close(fd)
    for path in paths:
        file_fd = os.open(path, os.O_RDONLY)
        try:
            faults.checkpoint("out-fsync")
            os.fsync(file_fd)
        finally:
            os.close(file_fd)
    for folder in sorted(folders, key=lambda path: len(path.parts), reverse=True):
        _fsync_path(folder)


def _syncfs(fd: int) -> bool:
    """Call syncfs(2) on the filesystem of `fd`; return False where it is unavailable."""
    libc_name = ctypes.util.find_library("c")
    syncfs = getattr(ctypes.CDLL(libc_name, use_errno=True), "syncfs", None) if libc_name else None
    if syncfs is None:
        return False
    if syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return True


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically; return False where renameat2 is unavailable."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(
        AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(code, os.strerror(code), str(first))


def recover_interrupted(target: Path) -> None:
    """Clean up after a build that was killed while writing `target`.

    A kill can leave a staging folder (`.<name>.new-*`, holding private keys) and, without
    renameat2, the previous tree in `.<name>.old-*/tree` with `target` missing. The previous
    tree is moved back first; then every such folder is removed.
    """
    parent = target.parent
    for backup in sorted(parent.glob(f".{target.name}.old-*")):
        tree = backup / "tree"
        if not target.exists() and tree.is_dir():
            os.rename(tree, target)
            logger.warning("restored %s from %s, left by an interrupted build", target, tree)
        shutil.rmtree(backup, ignore_errors=True)
    for staging in sorted(parent.glob(f".{target.name}.new-*")):
        shutil.rmtree(staging, ignore_errors=True)
        logger.warning("removed %s, left by an interrupted build", staging)


def write_output(target: Path, files: Mapping[str, OutputFile]) -> None:
    """Replace the folder `target` with exactly `files`, atomically.

    Raises OutputError when the new tree cannot be written or moved into place. The previous
    output is then unchanged, unless the message names the folder that now contains it. Any
    other exception, such as KeyboardInterrupt, is re-raised after the staging folder is removed.
    Failures after the new tree is in place are logged as warnings.
    """
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        recover_interrupted(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=parent))
    except OSError as error:
        raise OutputError(
            f"cannot create the output folder {parent}: {os_error_reason(error)}",
            "choose a writable folder with -o",
        ) from None
    try:
        # The folder gets private keys, and the umask may have narrowed mkdtemp's 0700.
        os.chmod(staging, 0o700)
        _write_tree(staging, files)
        leftover = _swap_into_place(staging, target)
    except OSError as error:
        _remove_staging(staging)
        raise OutputError(
            f"cannot write {target}: {os_error_reason(error)}; the previous output is unchanged",
            "check free space and permissions of the output folder",
        ) from None
    except BaseException:
        _remove_staging(staging)
        raise
    _finish_replacement(target, leftover)


def _remove_staging(staging: Path) -> None:
    try:
        shutil.rmtree(staging)
    except FileNotFoundError:
        pass
    except OSError as error:
        logger.warning(
            "failed to remove the staging folder %s: %s. Delete it, because it contains "
            "private keys.", staging, os_error_reason(error),
        )


def _swap_into_place(staging: Path, target: Path) -> Path | None:
    """Move `staging` to `target` and return the folder that now contains the previous tree."""
    try:
        mode = target.lstat().st_mode
    except FileNotFoundError:
        faults.checkpoint("out-rename")
        os.rename(staging, target)
        return None
    if not stat.S_ISDIR(mode):
        # Exchanging would move a symbolic link or a file aside and then fail to remove it.
        raise OSError(errno.ENOTDIR, f"{target} exists and is not a folder")
    faults.checkpoint("out-exchange")
    if _exchange(staging, target):
        return staging
    return _move_aside_and_replace(staging, target)


def _move_aside_and_replace(staging: Path, target: Path) -> Path:
    """Replace `target` with two renames where renameat2 is unavailable, and return the backup.

    NOTE: between the two renames `target` is missing. A failure or an interrupt there moves
    the previous tree back before the exception propagates.
    """
    backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    previous = backup / "tree"
    try:
        faults.checkpoint("out-rename-aside")
        os.rename(target, previous)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rmdir(backup)
        raise
    try:
        faults.checkpoint("out-rename")
        os.rename(staging, target)
    except BaseException as error:
        reason = os_error_reason(error) if isinstance(error, OSError) else "interrupted"
        _move_back(previous, target, reason)
        with contextlib.suppress(OSError):
            os.rmdir(backup)
        raise
    return backup


def _move_back(previous: Path, target: Path, reason: str) -> None:
    try:
        os.rename(previous, target)
    except OSError as error:
        raise OutputError(
            f"cannot write {target}: {reason}; the previous output was moved to {previous} "
            f"and moving it back failed: {os_error_reason(error)}",
            f"rename {previous} to {target} to restore the previous output",
        ) from None


def _finish_replacement(target: Path, leftover: Path | None) -> None:
    """Make the replacement durable and remove the previous tree, which is in `leftover`.

    The new output is already in place, so failures here are logged as warnings, not raised.
    """
    try:
        _fsync_path(target.parent)
    except OSError as error:
        logger.warning(
            "wrote %s, but failed to flush the folder %s to disk: %s. A system crash before "
            "the kernel writes it back may restore the previous output.",
            target, target.parent, os_error_reason(error),
        )
    if leftover is None:
        return
    # A KeyboardInterrupt here propagates with the new output in place; the CLI's message
    # for interrupts allows for either build.
    try:
        shutil.rmtree(leftover)
    except OSError as error:
        logger.warning(
            "wrote %s, but failed to remove the previous output from %s: %s. Delete that "
            "folder, because it contains the previous build's private keys.",
            target, leftover, os_error_reason(error),
        )
