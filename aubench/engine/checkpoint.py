"""Checkpoints: written atomically, read with torch.load(weights_only=True).

A checkpoint holds only tensors and plain containers (dicts, lists, numbers, strings), so it
loads without unpickling arbitrary objects. Random-number states are stored as tensors / lists:
torch (CPU and every CUDA device), numpy's global MT19937 state, Python's `random` state, and
the state of any torch.Generator a method keeps as an attribute.
"""
from __future__ import annotations

import random
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from aubench.errors import UserError
from aubench.files import atomic_file

FORMAT = "aubench-checkpoint-1"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """torch.save to a temporary file beside `path`, then os.replace: a crash never leaves half a file."""
    with atomic_file(path, "wb") as f:
        torch.save({"format": FORMAT, **payload}, f)


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
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise UserError(f"{path} cannot be read ({_why_unreadable(path, err)}); expected an aubench checkpoint "
                        "or a state dict of tensors saved with torch.save(model.state_dict(), path)") from None


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
