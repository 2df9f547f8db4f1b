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
from contextlib import contextmanager
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


class LockHeld(Exception):
    """Another process holds the lock; args[0] is its pid as its file says ("" when unreadable)."""


class LockFailed(Exception):
    """The lock file opened but could not be locked; args[0] is the OS's reason."""


@contextmanager
def pid_lock(path: Path):
    """An exclusive flock of `path` (created if missing) with this process's pid written in it,
    held while the block runs; the file is removed at the end, while still locked. LockHeld(pid)
    when another process holds it, LockFailed(reason) when it cannot be locked, OSError when it
    cannot be created. The lock of `datasets_tools convert`'s output and of aubench's run folders."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_pid(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockHeld(holder) from None
            raise LockFailed(e.strerror) from None
        # The previous holder removes the lock file when it finishes; if it did so between our
        # open and flock, we hold a lock on a removed file: lock the current one instead.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    try:
        yield
    finally:
        try:
            os.unlink(path)  # while still locked, so no other run can hold this file
        except OSError:
            pass
        os.close(fd)


class OutputLock:
    """Exclusive lock of one output for the lifetime of a conversion (a context manager)."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.path = lock_path(self.out)
        self.held = None

    def __enter__(self) -> "OutputLock":
        held = pid_lock(self.path)
        try:
            held.__enter__()
        except OSError as e:  # read-only folder or file system, permission denied, ...
            raise DatasetError(f"cannot create files in the output folder ({e.strerror})",
                               str(self.out.parent)) from None
        except LockFailed as e:
            raise DatasetError(f"cannot lock {self.path.name} ({e.args[0]})", str(self.out)) from None
        except LockHeld as e:
            raise DatasetError(f"another conversion (pid {e.args[0] or 'unknown'}) is writing this output "
                               f"(it holds {self.path.name}); wait for it to finish or stop it",
                               str(self.out)) from None
        self.held = held
        return self

    def __exit__(self, *exc) -> None:
        if self.held is not None:
            self.held.__exit__(None, None, None)
            self.held = None


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""
