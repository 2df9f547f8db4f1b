"""The lock of a run folder: one `train` or `evaluate` run writes it at a time.

A run holds an exclusive flock on `OUT/run.lock` (for `evaluate`, on each run unit's folder
`OUT/runs/<method>/<protocol>/fold<k>`) for its whole life, with its pid written in the file. A
second run into the same folder stops at once with one line naming the first one's pid. The OS
drops a flock when its holder dies, kill -9 included, so the lock of a killed run is simply taken
over by the next run, as `datasets_tools convert` does with its output.
"""
from __future__ import annotations

import errno
import fcntl
import os
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterable

from aubench.errors import UserError

LOCK_NAME = "run.lock"


@contextmanager
def run_folder_lock(folder: str | Path, option: str = "--out"):
    """Hold the lock of the run folder `folder` (created if missing; removed again, with the parents
    made for it, when the run left it empty) while the block runs; UserError naming the folder and
    the holder's pid when another process holds it."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{option} {folder}: cannot create the run folder ({err.strerror or err})") from None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UserError(f"{option} {folder}: cannot create {LOCK_NAME} ({err.strerror or err})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_pid(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"{option} {folder}: cannot lock {LOCK_NAME} ({err.strerror})") from None
            raise UserError(f"{option} {folder}: another run (pid {holder or 'unknown'}) is writing this run "
                            f"folder (it holds {path}); wait for it to finish, stop it, or use another "
                            f"{option}") from None
        # The previous holder removes the file when it finishes; if it did so between our open and
        # flock, we hold a lock on a removed file: lock the current one instead.
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
        for made in created:  # a run refused before it wrote anything leaves no folders behind
            try:
                made.rmdir()
            except OSError:  # not empty: the run's files
                break


@contextmanager
def run_folder_locks(folders: Iterable[str | Path], option: str = "--out"):
    """run_folder_lock of every folder (in order, each once), all held while the block runs."""
    with ExitStack() as stack:
        for folder in dict.fromkeys(map(str, folders)):
            stack.enter_context(run_folder_lock(folder, option))
        yield


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""
