"""Writing files so that a reader never sees a partial one and nothing is overwritten unasked."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from ..errors import OutputError

#: Errors of ``os.link`` from file systems without hard links, where publishing falls back to an
#: exclusive create followed by a rename over the file it reserved.
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}


#: Characters of the output's name in its temporary file's name.
_TMP_NAME_PART = 64


def umask() -> int:
    """The process' file mode creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable(path: str | Path, force: bool) -> None:
    """Refuse before any work an output that exists (unless ``force``; a dangling symlink counts
    as existing), is a folder, or whose folder is missing or not writable."""
    path = Path(path)
    folder = path.parent
    check_name(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder")
    if (path.is_symlink() or path.exists()) and not force:
        raise OutputError(f"{path} exists; pass --force to overwrite it")
    if not folder.is_dir():
        raise OutputError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: folder {folder} is not writable")


def check_name(path: Path) -> None:
    """Refuse a name longer than its folder's file system holds (ask before anything else about
    ``path``: even looking such a name up fails)."""
    folder = path.parent
    try:
        longest = os.pathconf(folder if folder.is_dir() else ".", "PC_NAME_MAX")
    except (OSError, ValueError):  # no limit to ask for here: the write will tell
        return
    if len(os.fsencode(path.name)) > longest:
        raise OutputError(f"cannot write {path}: its name is longer than the {longest} bytes the file system allows")


def write_atomic(path: str | Path, data: bytes, replace: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then publish it.

    With ``replace``, a FIFO or character device at ``path`` is written to directly, and a symlink
    keeps pointing where it did while the file it names is replaced. Without ``replace`` the
    publication is atomic and never overwrites: if anything exists at
    ``path`` by then (a file another process created meanwhile, a dangling symlink), it stays and
    ``OutputError`` is raised. The file's mode follows the umask, as any new file's. On any failure
    the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    if replace and _is_stream(path):  # a FIFO or a device: written through, as cp would
        try:
            with open(path, "wb") as f:
                f.write(data)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
        return
    if replace and path.is_symlink():  # the file the link names is replaced; the link stays
        path = path.resolve()
    try:
        # The name's start only: a name near the file system's limit still leaves room.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:_TMP_NAME_PART]}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)


def _is_stream(path: Path) -> bool:
    """Whether ``path`` is a FIFO or a character device (following symlinks)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def _publish_new(tmp: str, path: Path) -> None:
    """Give the finished ``tmp`` the name ``path`` if, and only if, nothing has that name."""
    try:
        os.link(tmp, path, follow_symlinks=False)
        return
    except FileExistsError as exc:
        raise OutputError(f"{path} appeared while this file was being written; it was left as it is") from exc
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError as exc:
        raise OutputError(f"{path} appeared while this file was being written; it was left as it is") from exc
    os.replace(tmp, path)
