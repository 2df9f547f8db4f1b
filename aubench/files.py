"""Output files: written atomically, and never over what they must not replace.

`atomic_file` writes a temporary file beside the target, then os.replace: a crash or a full disk
never leaves half a file under the target's name; parent directories are created as needed. A
symlink is written through (its target replaced atomically, the link kept); something that
exists and is not a regular file (a FIFO, a device such as /dev/stdout) is written directly, as
a shell redirection would, since it cannot be replaced by a rename.

`check_output` is the rule for an output a user names (`--csv`, `--output`, `--json`): it must
not be one of the command's inputs, nor a file the project manages (a result, a predictions
file, a checkpoint, a data file), which only the commands made to replace them write.
"""
from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

from aubench.errors import UserError

# What the project writes and reads back as its own, by how the name ends.
MANAGED_SUFFIXES = {".predictions.npz": "a predictions file", ".pt": "a checkpoint", ".h5": "a data file",
                    ".hdf5": "a data file"}
RESULT_PEEK = 4096  # a result JSON names its schema near its start


@contextmanager
def atomic_file(path: str | Path, mode: str = "w"):
    """Open a temporary file beside `path` (beside its target when `path` is a symlink) for
    writing; on success it is flushed, synced and renamed over it, on any error removed. An
    existing `path` that is not a regular file (a FIFO, a device) is opened and written directly."""
    path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    encoding = {} if "b" in mode else {"encoding": "utf-8"}
    if path.exists() and not path.is_file():  # a rename would put a file in its place
        with open(path, mode, **encoding) as f:
            yield f
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets what open() would give
        with os.fdopen(fd, mode, **encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))


def managed_kind(path: str | Path) -> str | None:
    """What project file an existing regular file at `path` (or its symlink's target) is: "a
    result", "a predictions file", "a checkpoint", "a data file"; None for anything else."""
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
    except OSError:
        return None
    name = path.resolve().name.lower()
    for suffix, kind in MANAGED_SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    if name.endswith(".json"):
        try:
            with open(path, "rb") as f:
                start = f.read(RESULT_PEEK)
        except OSError:
            return None
        from aubench.engine.results import RESULT_SCHEMA

        if re.search(rb'"schema"\s*:\s*"' + re.escape(RESULT_SCHEMA.encode()) + rb'"', start):
            return "a result"
    return None


def check_output(option: str, path: str | Path, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse (UserError naming `option` and the path) a user-named output that is one of the
    command's `inputs` or a file the project manages (managed_kind)."""
    path = Path(path)
    for source in inputs:
        try:
            same = os.path.samefile(path, source)
        except OSError:  # either does not exist: not the same file
            same = False
        if same:
            raise UserError(f"{option} {path}: is {source}, an input of this command; name another file")
    kind = managed_kind(path)
    if kind is not None:
        raise UserError(f"{option} {path}: is {kind} of aubench, which this command does not replace; name "
                        f"another file")


def why_unwritable(path: str | Path, err: OSError) -> str:
    """A short reason a write to `path` failed: names the file standing where a folder must be."""
    for parent in Path(path).parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, not a directory"
            break
    return err.strerror or str(err)
