"""The lock of a run folder: one `train` or `evaluate` run writes it at a time.

A run holds an exclusive flock on `OUT/run.lock` (for `evaluate`, on each run unit's folder
`OUT/runs/<method>/<protocol>/fold<k>`) for its whole life, with its pid written in the file. A
second run into the same folder stops at once with one line naming the first one's pid. The OS
drops a flock when its holder dies, kill -9 included, so the lock of a killed run is simply taken
over by the next run, as `datasets_tools convert` does with its output.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterable

from aubench.errors import UserError
from datasets_tools.output import LockFailed, LockHeld, pid_lock

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
    held = pid_lock(path)
    try:
        try:
            held.__enter__()
        except OSError as err:
            raise UserError(f"{option} {folder}: cannot create {LOCK_NAME} ({err.strerror or err})") from None
        except LockFailed as err:
            raise UserError(f"{option} {folder}: cannot lock {LOCK_NAME} ({err.args[0]})") from None
        except LockHeld as err:
            raise UserError(f"{option} {folder}: another run (pid {err.args[0] or 'unknown'}) is writing this "
                            f"run folder (it holds {path}); wait for it to finish, stop it, or use another "
                            f"{option}") from None
        try:
            yield
        finally:
            held.__exit__(None, None, None)
    finally:
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

