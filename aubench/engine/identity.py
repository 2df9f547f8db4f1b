"""What makes two runs the same run: the settings that change what is trained and tested.

One definition serves every check that asks "may these go together?":
- `train --resume` continues a checkpoint only when its identity equals the request's (plus the
  world size, which an exact resume needs);
- `evaluate --resume` reuses a stored result only when its identity equals the request's;
- the leaderboard averages results over folds only when their identities agree apart from
  the fold.
The identity: method, preset name and every resolved preset field (epochs, batch size, image
size, optimiser, learning rate, schedule, clip length, model settings ...), fold, label ratio,
seed, effective augmentation, resolved precision, --pretrained file, and the data file's
fingerprint. Left out on purpose, because they change speed or bookkeeping and not what is
learned: device, workers, channels-last, checkpoint interval, progress bars, output and data
paths (the data are identified by their fingerprint), timestamps, versions and throughput.

This module imports nothing heavy, so the leaderboard can use it without torch.
"""
from __future__ import annotations

import json
from typing import Any, Mapping


class MissingKey(KeyError):
    """A result record lacks a field the identity needs; `path` is the dotted key."""

    def __init__(self, path: str):
        super().__init__(path)
        self.path = path


def need(record: Mapping, *path: str) -> Any:
    """record[path[0]][path[1]]...; MissingKey names the first missing step ("config.seed")."""
    value: Any = record
    for i, key in enumerate(path):
        if not isinstance(value, Mapping) or key not in value:
            raise MissingKey(".".join(path[: i + 1]))
        value = value[key]
    return value


def run_identity(config: Mapping, preset: Mapping, fingerprint: str, precision: str) -> dict[str, Any]:
    """The identity of a run. config: asdict(RunConfig) (or a result's "config"); preset: the
    resolved Preset's fields (or a result's "preset"); precision: resolved ("fp32", "bf16" ...)."""
    identity = {"method": config["method"], "preset": config["preset"], "fold": config["fold"],
                "label_ratio": config["label_ratio"], "seed": config["seed"],
                **{k: v for k, v in preset.items() if k != "name"},
                # what the trainer does: --no-augment, or a preset whose model turns augmentation off
                "augment": bool(config["augment"] and preset["model"].get("augment", True)),
                "precision": precision, "pretrained": config["pretrained"], "fingerprint": fingerprint}
    return json.loads(json.dumps(identity))  # tuples -> lists, as a stored JSON result holds them


_CONFIG_KEYS = ("method", "preset", "fold", "label_ratio", "seed", "augment", "pretrained")
_PRESET_KEYS = ("epochs", "batch_size", "image_size", "model")


def result_identity(result: Mapping) -> dict[str, Any]:
    """The identity of a stored result record (aubench.engine.run.train_and_evaluate's output).
    Raises MissingKey naming the first field it lacks."""
    config = {k: need(result, "config", k) for k in _CONFIG_KEYS}
    for key in _PRESET_KEYS:
        need(result, "preset", key)
    return run_identity(config, result["preset"], need(result, "data", "fingerprint"), need(result, "precision"))


def show(key: str, value: Any) -> str:
    if key.endswith("fingerprint") and isinstance(value, str):
        return value[:12]  # enough to tell data files apart, short enough for one line
    return json.dumps(value) if isinstance(value, (dict, list)) else repr(value)


def identity_differences(stored: Mapping, wanted: Mapping, stored_as: str, ignore: tuple[str, ...] = ()
                         ) -> list[str]:
    """"key: <stored_as> X vs now Y" for every key (of either side, `ignore` left out) whose values
    differ. A key one side lacks counts as None there, so an older record never passes silently."""
    keys = [k for k in dict.fromkeys([*wanted, *stored]) if k not in ignore]
    return [f"{k}: {stored_as} {show(k, stored.get(k))} vs now {show(k, wanted.get(k))}"
            for k in keys if stored.get(k) != wanted.get(k)]


def differences_text(diffs: list[str], limit: int = 5) -> str:
    """The differences on one readable line: the first `limit`, then how many more."""
    more = f"; and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more
