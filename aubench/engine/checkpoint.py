"""Checkpoints: written atomically, read with torch.load(weights_only=True), checked by a checksum.

A checkpoint holds only tensors and plain containers (dicts, lists, numbers, strings), so it
loads without unpickling arbitrary objects. Random-number states are stored as tensors / lists:
torch (CPU and every CUDA device), numpy's global MT19937 state, Python's `random` state, and
the state of any torch.Generator a method keeps as an attribute.

Every checkpoint records the sha256 of its contents ("checksum": every tensor's bytes, dtype and
shape and every other value, in order; `contents_checksum`), and every load verifies it: a file
damaged on disk is one line naming it, never a model with a damaged weight. `keep_previous`
keeps the checkpoint a save replaces as `<name>.previous.pt`, which `load_checkpoint_or_previous`
falls back to, saying so, when the newest is damaged.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from aubench.errors import UserError
from aubench.files import atomic_file, why_unwritable

FORMAT = "aubench-checkpoint-1"


CHECKSUM = "checksum"


def previous_path(path: str | Path) -> Path:
    """Where save_checkpoint(keep_previous=True) keeps the checkpoint it replaces: last.pt -> last.previous.pt."""
    path = Path(path)
    return path.with_name(f"{path.stem}.previous{path.suffix}")


def contents_checksum(payload: Any) -> str:
    """sha256 hex digest of a checkpoint's contents (its "checksum" entry left out): every tensor's
    dtype, shape and bytes and every other value's repr, keys and order included."""
    digest = hashlib.sha256()

    def add(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().contiguous()
            digest.update(f"tensor {value.dtype} {tuple(value.shape)};".encode())
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            items = [(key, item) for key, item in value.items() if key != CHECKSUM]
            digest.update(f"dict {len(items)};".encode())
            for key, item in items:
                add(key)
                add(item)
        elif isinstance(value, (list, tuple)):
            digest.update(f"{type(value).__name__} {len(value)};".encode())
            for item in value:
                add(item)
        else:
            digest.update(f"{type(value).__name__} {value!r};".encode())

    add(payload)
    return digest.hexdigest()


def save_checkpoint(path: str | Path, payload: dict[str, Any], keep_previous: bool = False) -> None:
    """torch.save to a temporary file beside `path`, then os.replace: a crash never leaves half a
    file. The payload is stored with its contents_checksum. `keep_previous`: the file it replaces
    is kept as previous_path(path) (a hard link, made before the replacement)."""
    payload = {"format": FORMAT, **payload}
    payload[CHECKSUM] = contents_checksum(payload)
    try:
        with atomic_file(path, "wb") as f:
            torch.save(payload, f)
            if keep_previous and Path(path).is_file():
                _link_atomic(Path(path), previous_path(path))
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as a RuntimeError
        raise UserError(f"{path}: cannot write ({_why_unwritable(path, err)}); the file is left as it was") from None


def _why_unwritable(path: str | Path, err: Exception) -> str:
    """What the system said about a failed checkpoint write: torch.save's RuntimeError carries
    the OSError of the failed write (a full disk, a file-size limit) as its context."""
    cause = err if isinstance(err, OSError) else err.__context__
    if isinstance(cause, OSError):
        return why_unwritable(path, cause)
    text = str(err).strip()
    return text.splitlines()[0][:160] if text else type(err).__name__


def _link_atomic(source: Path, target: Path) -> None:
    """`target` := the file `source` (a hard link, a copy where links fail), replaced atomically."""
    linked = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    linked.unlink(missing_ok=True)
    try:
        os.link(source, linked)
    except OSError:  # a file system without hard links
        shutil.copy2(source, linked)
    os.replace(linked, target)


def checksum_problem(payload: Any) -> str | None:
    """None when an aubench checkpoint's contents match the checksum it records (or it records
    none: checkpoints written before checksums); else what is wrong."""
    if not (is_checkpoint_payload(payload) and CHECKSUM in payload):
        return None
    if contents_checksum(payload) != payload[CHECKSUM]:
        return ("its contents do not match the checksum saved with them: the file was damaged after it was "
                "written (disk, copy or edit)")
    return None


def _why_unreadable(path: Path, err: Exception) -> str:
    """A short reason for a failed torch.load (torch's own text runs to many lines)."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it holds Python objects, not only tensors ({found.group(1)})"
    with open(path, "rb") as f:
        first_byte = f.read(1)
    if not (zipfile.is_zipfile(path) or first_byte == b"\x80"):  # torch.save writes a zip (or, legacy, a pickle)
        return "not a file written by torch.save"
    found = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    line = found.group(1) if found else (text.strip().splitlines() or [type(err).__name__])[0]
    return line[:160]


def read_weights_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """torch.load(weights_only=True): tensors and plain containers only, never arbitrary objects.
    Any failure is one UserError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise UserError(f"{path} cannot be read ({_why_unreadable(path, err)}); expected an aubench checkpoint "
                        "or a state dict of tensors saved with torch.save(model.state_dict(), path)") from None
    problem = checksum_problem(payload)
    if problem:
        raise UserError(f"{path} is damaged: {problem}")
    return payload


def is_checkpoint_payload(payload: Any) -> bool:
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    payload = read_weights_file(path, map_location)
    if not is_checkpoint_payload(payload):
        raise UserError(f"{path} is not an aubench checkpoint (no '{FORMAT}' marker)")
    return payload


def load_checkpoint_or_previous(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """load_checkpoint(path); when it cannot be read or is damaged and the checkpoint it replaced
    is kept (previous_path), that one, with a warning on stderr naming both, and `path` is made
    that checkpoint again (the damaged file removed). The error of `path` otherwise."""
    try:
        return load_checkpoint(path, map_location)
    except UserError as err:
        previous = previous_path(path)
        if not previous.is_file():
            raise
        try:
            payload = load_checkpoint(previous, map_location)
        except UserError:
            raise err from None
        print(f"aubench: warning: {err}; resuming from the checkpoint before it, {previous}", file=sys.stderr,
              flush=True)
        _link_atomic(previous, Path(path))  # the damaged file replaced: the next save keeps a good one
        return payload


def _generators(module: nn.Module) -> dict[str, torch.Generator]:
    """torch.Generator attributes of a module and its submodules, by dotted name."""
    found = {}
    for prefix, sub in module.named_modules():
        for key, value in vars(sub).items():
            if isinstance(value, torch.Generator):
                found[f"{prefix}.{key}" if prefix else key] = value
    return found


def capture_rng_state(module: nn.Module | None = None) -> dict[str, Any]:
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
        "generators": {},
    }
    if module is not None:
        state["generators"] = {name: g.get_state() for name, g in _generators(module).items()}
    return state


def restore_rng_state(state: dict[str, Any], module: nn.Module | None = None) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]][: torch.cuda.device_count()])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if module is not None:
        generators = _generators(module)
        for name, g_state in state.get("generators", {}).items():
            if name in generators:
                generators[name].set_state(g_state.cpu())


def load_model_state(module: nn.Module, state: Any, path: str | Path) -> None:
    """module.load_state_dict(state) (strict); a state of other keys or shapes is one UserError
    naming the checkpoint file and the first mismatch, not torch's many-line RuntimeError."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        first = next((line for line in lines if "size mismatch" in line), lines[1] if len(lines) > 1 else
                     (lines[0] if lines else type(err).__name__))
        raise UserError(f"{path}: its weights do not fit the model ({first[:200]}); was it saved by another "
                        f"preset or version?") from None


def kept_checkpoint_text(path: str | Path) -> str:
    """"; the last good checkpoint, PATH, is kept" when there is one (for messages of a run that stops)."""
    return f"; the last good checkpoint, {path}, is kept" if Path(path).is_file() else "; no checkpoint was written yet"
