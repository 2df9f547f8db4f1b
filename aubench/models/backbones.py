"""Backbones shared by the methods: timm models built by name, weights from a local file only.

`create_backbone("resnet50", pretrained_path="resnet50.pth", num_classes=0)` builds the timm
model with `pretrained=False` (nothing is ever downloaded) and then loads a state dict saved by
timm or torchvision (`torch.save(model.state_dict(), path)`), also when it is wrapped in a
training checkpoint ({"state_dict": ...} / {"model": ...}) or carries DDP's "module." prefix.
The classifier of the file is dropped when the backbone has none or a different one, because
AU heads are always new.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

import timm

from aubench.errors import UserError


class BackboneError(UserError, ValueError):
    """A backbone name or weight file that cannot be used (a user error)."""


# Keys of a wrapping checkpoint under which the weights may sit.
_WRAPPER_KEYS = ("state_dict", "model", "model_state", "module", "net")


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # nested wrappers, e.g. {"model": {"state_dict": ...}}
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping) or not obj:
        raise BackboneError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise BackboneError(f"{path}: holds no tensors")
    for prefix in ("module.", "backbone.", "model."):
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def _classifier_names(model: nn.Module) -> tuple[str, ...]:
    """Prefixes of the classifier parameters of a timm model (and torchvision's 'fc')."""
    names = {"fc", "head", "classifier", "head.fc"}
    get = getattr(model, "default_cfg", None) or getattr(model, "pretrained_cfg", None) or {}
    clf = get.get("classifier") if isinstance(get, Mapping) else None
    if isinstance(clf, str):
        names.add(clf)
    elif isinstance(clf, (list, tuple)):
        names.update(clf)
    return tuple(sorted(names))


def weight_problems(mismatched: list[str], missing: list[str], unexpected: list[str]) -> list[str]:
    """What a weights file gets wrong about a model, one phrase per kind, each with its first case."""
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches (first: {mismatched[0]})")
    if missing:
        problems.append(f"{len(missing)} tensors missing from the file (first: {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} tensors the model does not have (first: {unexpected[0]})")
    return problems


def load_backbone_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load a local timm/torchvision state dict into `model`.

    Returns the names of the file's classifier tensors that were skipped. Raises BackboneError
    naming the file when it is missing, unreadable, or does not fit the model (missing tensors,
    shape mismatches, unexpected tensors).
    """
    from aubench.engine.checkpoint import read_weights_file  # the one safe torch.load, with one-line errors

    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"pretrained weights file {path} does not exist")
    try:
        raw = read_weights_file(path)
    except UserError as err:
        raise BackboneError(str(err)) from None
    weights = _unwrap(raw, path)
    own = model.state_dict()
    classifier = _classifier_names(model)

    def is_classifier(key: str) -> bool:
        return any(key == c or key.startswith(c + ".") for c in classifier)

    skipped = [k for k in weights if is_classifier(k) and (k not in own or own[k].shape != weights[k].shape)]
    weights = {k: v for k, v in weights.items() if k not in skipped}
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in weights.items() if k in own and own[k].shape != v.shape]
    unexpected = [k for k in weights if k not in own]
    missing = [k for k in own if k not in weights and not is_classifier(k)
               and not k.endswith("num_batches_tracked")]
    problems = weight_problems(mismatched, missing, unexpected)
    if problems:
        raise BackboneError(f"{path} does not match backbone {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(weights, strict=False)
    return skipped


def create_backbone(name: str, pretrained_path: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """A timm model by name (never downloaded), with weights from `pretrained_path` if given.

    kwargs go to timm.create_model (e.g. num_classes=0 for a pooled feature extractor,
    global_pool="" for feature maps). `model.num_features` is the feature width.
    """
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        hint = f"; similar names: {', '.join(close)}" if close else ""
        raise BackboneError(f"unknown timm backbone {name!r}{hint}")
    kwargs.pop("pretrained", None)
    model = timm.create_model(name, pretrained=False, **kwargs)
    if pretrained_path is not None:
        load_backbone_weights(model, pretrained_path)
    return model


def backbone_stride(name: str, **kwargs: Any) -> int:
    """Total stride of a timm backbone (32 for a ResNet): the smallest input side that still gives
    its last stage one feature cell; below it that stage sees padding only. 1 when timm does not say.
    The model is built on the meta device: no memory, no weights, milliseconds."""
    with torch.device("meta"):
        model = create_backbone(name, **kwargs)
    info = getattr(model, "feature_info", None)
    return int(info[-1]["reduction"]) if info else 1
