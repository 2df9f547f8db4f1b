"""What makes two runs the same run: the settings that change what is trained and tested.

One definition serves every check that asks "may these go together?":
- `train --resume` continues a checkpoint only when its identity equals the request's (plus the
  world size, which an exact resume needs);
- `evaluate --resume` reuses a stored result only when its identity equals the request's;
- the leaderboard averages results over folds only when their identities agree apart from
  the fold.
The identity: method, preset name and every resolved preset field (epochs, batch size, image
size, optimiser, learning rate, schedule, clip length, crop, model settings ...; not the preset's
documentation, source and paper_init), fold, label ratio,
seed, effective augmentation, resolved precision, the --pretrained weights (pretrained_identity:
per part the source's name and the sha256 of its tensors, not its path), the data file's
fingerprint (and the --pretrain-data file's, when given), the training occlusion ("train_occlusion", a condition name such as "patches0.5")
and the stages ("stages": name -> the stage's preset, what it initialises from, freezes and
reads, whether it uses labels and whether the training occlusion applies to it). The training
occlusion is the resolved one (--train-occlusion, else the preset's train_occlusion), so the
preset field itself is left out: a run of a preset that trains with patches:0.5 is the same run
as one told --train-occlusion patches:0.5. The test occlusion is not part of it: one trained
run is tested under several conditions, each in its own result; nor is a stage's leaderboard
row name (Stage.row), which names results and changes nothing that is learned. Left out on purpose, because they change
speed or bookkeeping and not what is learned: device, workers, channels-last, checkpoint
interval, progress bars, output and data paths (the data are identified by their fingerprint),
timestamps, versions and throughput.

Settings that arrived after results were first written are left out of the identity while
they hold their default value (no training occlusion; the one plain stage of a single-stage
method; a stage that the training occlusion applies to; the run settings of
LATER_CONFIG_SETTINGS: the clean frame's landmarks under test occlusion, no validation split,
the last epoch's checkpoint tested, the fixed 0.5 threshold, no gradient accumulation, no
SyncBatchNorm), so results and checkpoints made before them keep their identity. The validation split (its share of the training subjects; the
seed that draws it is the run's), the checkpoint selection and the thresholds are part of it:
they change what is trained on or what is tested.

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


NO_OCCLUSION = "none"  # aubench.data.occlusion.condition_name(None)
STAGE_SETTINGS = ("name", "preset", "init_from", "frozen", "uses_labels", "frozen_inputs")  # Stage.settings()
# Stage settings that arrived later: a stored stage without one had the default, and a stage
# holding the default leaves it out of the identity.
LATER_STAGE_SETTINGS = {"occluded": True, "pretraining": False}
# Preset fields that are not identity as they stand: the run's training occlusion is there
# resolved (identity["train_occlusion"]).
RESOLVED_PRESET_FIELDS = ("name", "train_occlusion")
# Preset fields that document the preset (what the paper starts from, where its settings come
# from) and change nothing that is trained.
DOCUMENTATION_PRESET_FIELDS = ("paper_init", "source")
# Preset fields that arrived later: left out while they hold their default.
LATER_PRESET_FIELDS = {"weight_decay_end": None, "crop_fraction": None}
# Run settings (RunConfig fields) that arrived later: left out while they hold their default.
# occluded_landmarks: landmarks of occluded test images; validation: the share of the fold's
# training subjects held out; select: the tested checkpoint; thresholds: the decision thresholds;
# accumulate: micro-batches per optimiser step; sync_bn: batch statistics over every process.
LATER_CONFIG_SETTINGS = {"occluded_landmarks": "clean", "validation": 0.0, "select": "last", "thresholds": "fixed",
                         "accumulate": 1, "sync_bn": False}
SELECTIONS = ("last", "best-val", "best-test")  # the values of "select" (RunConfig.select, --select)
THRESHOLDS = ("fixed", "best-val")              # the values of "thresholds" (--thresholds)


def _preset_fields(preset: Mapping) -> dict[str, Any]:
    return {k: v for k, v in preset.items() if k not in RESOLVED_PRESET_FIELDS
            and k not in DOCUMENTATION_PRESET_FIELDS and not (k in LATER_PRESET_FIELDS and v == LATER_PRESET_FIELDS[k])}


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples -> lists, as a stored JSON result holds them


def stages_identity(stages: list[Mapping] | None, preset: Mapping) -> dict[str, Any] | None:
    """name -> settings (without the name) of a run's stages (Stage.settings(), or a result's
    "stages"; the row name and the presets' train_occlusion left out, "occluded" only when
    False); None for one plain stage: the run's preset as it is, nothing frozen or read from an
    earlier stage, labels used, occluded (every single-stage method)."""
    if not stages:
        return None
    settings = []
    for stage in _plain(list(stages)):
        one = {k: stage[k] for k in STAGE_SETTINGS}
        one["preset"] = _preset_fields(one["preset"])
        for key, default in LATER_STAGE_SETTINGS.items():
            if stage.get(key, default) != default:
                one[key] = stage[key]
        settings.append(one)
    if len(settings) == 1:
        only = settings[0]
        if (only["preset"] == _plain(_preset_fields(preset)) and only["init_from"] is None
                and not only["frozen"] and only["uses_labels"] and not only["frozen_inputs"]
                and not any(key in only for key in LATER_STAGE_SETTINGS)):
            return None
    return {s["name"]: {k: v for k, v in s.items() if k != "name"} for s in settings}


def run_identity(config: Mapping, preset: Mapping, fingerprint: str, precision: str,
                 stages: list[Mapping] | None = None, pretrain_fingerprint: str | None = None) -> dict[str, Any]:
    """The identity of a run. config: asdict(RunConfig) (or a result's "config"); preset: the
    resolved Preset's fields (or a result's "preset"); precision: resolved ("fp32", "bf16" ...);
    stages: [Stage.settings()] of the run's stages (or a result's "stages");
    pretrain_fingerprint: the --pretrain-data file's (None without one: left out)."""
    identity = {"method": config["method"], "preset": config["preset"], "fold": config["fold"],
                "label_ratio": config["label_ratio"], "seed": config["seed"],
                **_preset_fields(preset),
                # what the trainer does: --no-augment, or a preset whose model turns augmentation off
                "augment": bool(config["augment"] and preset["model"].get("augment", True)),
                "precision": precision, "pretrained": pretrained_identity(config), "fingerprint": fingerprint}
    train_occlusion = config.get("train_occlusion") or NO_OCCLUSION
    if train_occlusion != NO_OCCLUSION:
        identity["train_occlusion"] = train_occlusion
    stage_settings = stages_identity(stages, preset)
    if stage_settings is not None:
        identity["stages"] = stage_settings
    if pretrain_fingerprint is not None:
        identity["pretrain_fingerprint"] = pretrain_fingerprint
    for key, default in LATER_CONFIG_SETTINGS.items():
        if config.get(key, default) != default:
            identity[key] = config[key]
    return _plain(identity)


def pretrained_identity(config: Mapping) -> Any:
    """What a run's --pretrained weights put in its identity: config["pretrained_weights"] (the
    engine's record, aubench.engine.planning.resolve_pretrained: part -> {"name": the timm name or
    the file's name, "sha256": of its tensors}), so the same weights at two paths make one run;
    None without weights. Results made before weights were hashed have no record: their absolute
    --pretrained path (config["pretrained"]) stays their identity."""
    weights = config.get("pretrained_weights")
    return weights if weights is not None else config["pretrained"]


_CONFIG_KEYS = ("method", "preset", "fold", "label_ratio", "seed", "augment", "pretrained")
_PRESET_KEYS = ("epochs", "batch_size", "image_size", "model")


def result_identity(result: Mapping) -> dict[str, Any]:
    """The identity of a stored result record (aubench.engine.run.train_and_evaluate's output, or
    an ensemble's: ensemble_identity). Raises MissingKey naming the first field it lacks."""
    if "ensemble" in result:
        return ensemble_identity(result)
    config = {k: need(result, "config", k) for k in _CONFIG_KEYS}
    config["pretrained_weights"] = result["config"].get("pretrained_weights")  # results before it: None
    for key, default in LATER_CONFIG_SETTINGS.items():  # results before them: the default
        config[key] = result["config"].get(key, default)
    for key in _PRESET_KEYS:
        need(result, "preset", key)
    if "occlusion" in result:  # results made before occlusion conditions existed were trained without
        config["train_occlusion"] = need(result, "occlusion", "train")
    stages = result.get("stages")  # results made before stages existed: one plain stage
    for i, stage in enumerate(stages or []):
        missing = [key for key in STAGE_SETTINGS if not isinstance(stage, Mapping) or key not in stage]
        if missing:
            raise MissingKey(f"stages.{i}.{missing[0]}")
    return run_identity(config, result["preset"], need(result, "data", "fingerprint"), need(result, "precision"),
                        stages, result["data"].get("pretrain_fingerprint"))


def ensemble_identity(result: Mapping) -> dict[str, Any]:
    """The identity of an ensemble result (aubench.engine.postprocess.make_ensemble): its name,
    fold, label ratio and data file, and each member's weight and identity (without the fold), so
    the leaderboard averages an ensemble's folds only when they fuse the same kind of runs."""
    members = need(result, "ensemble", "members")
    if not isinstance(members, list) or not members:
        raise MissingKey("ensemble.members.0")
    return _plain({"method": need(result, "method"), "fold": need(result, "fold"),
                   "label_ratio": need(result, "label_ratio"), "fingerprint": need(result, "data", "fingerprint"),
                   "members": [{"weight": need(m, "weight"), **need(m, "identity")} for m in members]})


def show(key: str, value: Any) -> str:
    if key.endswith("fingerprint") and isinstance(value, str):
        return value[:12]  # enough to tell data files apart, short enough for one line
    return json.dumps(value) if isinstance(value, (dict, list)) else repr(value)


def identity_differences(stored: Mapping, wanted: Mapping, stored_as: str, ignore: tuple[str, ...] = (),
                         prefix: str = "") -> list[str]:
    """"key: <stored_as> X vs now Y" for every key (of either side, `ignore` left out) whose values
    differ; in settings that are mappings on both sides, for the inner keys that differ
    ("stages.stage2.preset.lr: ..."). A key one side lacks counts as None there, so an older
    record never passes silently."""
    keys = [k for k in dict.fromkeys([*wanted, *stored]) if k not in ignore]
    diffs = []
    for k in keys:
        a, b = stored.get(k), wanted.get(k)
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            diffs += identity_differences(a, b, stored_as, prefix=f"{prefix}{k}.")
        else:
            diffs.append(f"{prefix}{k}: {stored_as} {show(k, a)} vs now {show(k, b)}")
    return diffs


def differences_text(diffs: list[str], limit: int = 5) -> str:
    """The differences on one readable line: the first `limit`, then how many more."""
    more = f"; and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more
