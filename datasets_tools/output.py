"""The output of a conversion and its side files, checked and locked before any work.

``OUT`` is written as ``OUT.partial`` and renamed when complete; ``OUT.skipped.txt`` lists the
skipped frames; ``OUT.lock`` is held (flock) for the whole run, so two conversions never write
one output. The OS drops a flock when its holder dies, kill -9 included, so a killed run never
leaves the output locked: the next run takes the lock and resumes the ``.partial``.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from .errors import DatasetError


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def skipped_path(out: Path) -> Path:
    return out.with_name(out.name + ".skipped.txt")


def lock_path(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an output that cannot or must not be written, before any work is done."""
    parent = out.parent
    if not parent.exists():
        raise DatasetError("output folder does not exist", str(parent))
    if not parent.is_dir():
        raise DatasetError("output folder is a file, not a folder", str(parent))
    if out.is_dir():
        raise DatasetError("the output is a folder; name a file in it, e.g. OUT.h5", str(out))
    for path in (partial_path(out), skipped_path(out), lock_path(out)):
        if path.is_dir():
            raise DatasetError("is a folder where the output's side file should go; remove it", str(path))
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise DatasetError("output already exists; pass --overwrite to replace it (and its .skipped.txt)",
                           str(out))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DatasetError("output folder is not writable (permission denied)", str(parent))


class OutputLock:
    """Exclusive lock of one output for the lifetime of a conversion (a context manager)."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.path = lock_path(self.out)
        self.fd: int | None = None

    def __enter__(self) -> "OutputLock":
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:  # read-only folder or file system, permission denied, ...
                raise DatasetError(f"cannot create files in the output folder ({e.strerror})",
                                   str(self.out.parent)) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _read_pid(fd)
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise DatasetError(f"cannot lock {self.path.name} ({e.strerror})", str(self.out)) from None
                raise DatasetError(f"another conversion (pid {holder or 'unknown'}) is writing this output "
                                   f"(it holds {self.path.name}); wait for it to finish or stop it",
                                   str(self.out)) from None
            # The previous holder removes the lock file when it finishes; if it did so between our
            # open and flock, we hold a lock on a removed file: lock the current one instead.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked, so no other run can hold this file
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""
