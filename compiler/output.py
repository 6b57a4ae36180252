"""Write a build to `out/<cluster>/`: all of it or nothing.

The new tree is written beside the old one, every file and folder fsynced, and the two are
exchanged in one step with renameat2(RENAME_EXCHANGE); only then is the old tree removed. A
failure at any point leaves the previous output intact.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from compiler.errors import OutputError

logger = logging.getLogger(__name__)

RENAME_EXCHANGE = 2  # from <linux/fs.h>
AT_FDCWD = -100


@dataclass(frozen=True)
class OutputFile:
    relative_path: str
    content: bytes
    mode: int


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_tree(root: Path, files: Mapping[str, OutputFile]) -> None:
    folders = {root}
    for relative, file in sorted(files.items()):
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        folders.update(parent for parent in target.parents if root in (parent, *parent.parents))
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file.mode)
        try:
            os.write(fd, file.content)
            os.fchmod(fd, file.mode)  # the umask must not widen or narrow the mode
            os.fsync(fd)
        finally:
            os.close(fd)
    for folder in sorted(folders, key=lambda path: len(path.parts), reverse=True):
        _fsync_path(folder)


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


def write_output(target: Path, files: Mapping[str, OutputFile]) -> None:
    """Replace the folder `target` with exactly `files`, atomically."""
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=parent))
    except OSError as error:
        raise OutputError(
            f"cannot create the output folder {parent}: {error.strerror}",
            "choose a writable folder with -o",
        ) from None
    try:
        os.chmod(staging, 0o700)  # holds private keys
        _write_tree(staging, files)
        _swap_into_place(staging, target)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(
            f"cannot write {target}: {error.strerror}; the previous output is unchanged",
            "check free space and permissions of the output folder",
        ) from None
    _fsync_path(parent)


def _swap_into_place(staging: Path, target: Path) -> None:
    if not target.exists():
        os.rename(staging, target)
        return
    if _exchange(staging, target):
        # `staging` now holds the previous tree.
        shutil.rmtree(staging)
        return
    # NOTE: without renameat2 there is a short window in which `target` is missing; the
    # previous tree then sits at `<target>.old-*` until the second rename.
    backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rename(target, backup / "tree")
    os.rename(staging, target)
    shutil.rmtree(backup)
