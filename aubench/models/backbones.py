"""Backbones shared by the methods: timm models built by name, with weights from a --pretrained source.

A source is one of
- `timm:<model name>[.<tag>]`: timm's pretrained weights of that model (`timm:resnet18.a1_in1k`,
  `timm:swin_base_patch4_window7_224.ms_in22k_ft_in1k`), or `hf-hub:<repo id>` (also
  `timm:hf-hub:<repo id>`): a timm model on the Hugging Face hub. timm fetches them itself into its
  cache (the hub cache, HF_HOME / HF_HUB_CACHE); with HF_HUB_OFFLINE=1 only from that cache.
- a local file: a state dict saved by timm or torchvision, the official Swin (Microsoft) or MAE
  release ({"model": ...}), a training checkpoint ({"state_dict": ...}, Lightning's included, with
  DDP's "module." prefix) or a .safetensors file.

`create_backbone("resnet50", "timm:resnet50.a1_in1k", num_classes=0)` builds the timm model and
loads the source's tensors through timm's own pretrained loading (`timm.create_model(name,
pretrained=True)` with the tensors as its state dict): the model family's checkpoint filter
converts the layouts it knows (the official Swin release's, torchvision's RegNet ...), a
classifier the model lacks or sizes differently is dropped (AU heads are always new), and a
features_only model gets its weights before timm wraps it. torchvision's Swin names, which no timm
filter converts, are renamed to timm's first. Without a source nothing is loaded or downloaded.
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import logging
import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

import timm

from aubench.errors import UserError


class BackboneError(UserError, ValueError):
    """A backbone name or weight file that cannot be used (a user error)."""


class WeightsError(BackboneError):
    """A --pretrained source that cannot be read, fetched or loaded; the message starts with the source."""


TIMM_PREFIX = "timm:"        # timm:<model name>[.<tag>]: timm's pretrained weights of that model
HF_HUB_PREFIX = "hf-hub:"    # hf-hub:<repo id>: a timm model on the Hugging Face hub
# Keys of a wrapping checkpoint under which the weights may sit.
_WRAPPER_KEYS = ("state_dict", "model", "model_state", "module", "net")
# Prefixes that wrappers put before every key: DDP, torch.compile, a training module's attribute.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "backbone.", "model.")
# A backbone takes a source that fills at least this share of its tensors (classifier left out).
MIN_LOADED = 0.5


def is_hub_source(source: str) -> bool:
    """Whether `source` names weights timm fetches (timm:..., hf-hub:...) rather than a local file."""
    return source.startswith((TIMM_PREFIX, HF_HUB_PREFIX))


def source_name(source: str) -> str:
    """What identifies a source apart from where it lies: the timm / hub name, or the file's name."""
    return source if is_hub_source(source) else Path(source).name


def _unwrap(obj: Any, path: Path | str) -> dict[str, torch.Tensor]:
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
        raise WeightsError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"{path}: holds no tensors")
    stripped = True
    while stripped:  # "module.model.conv1.weight" -> "conv1.weight"
        prefix = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in tensors)), None)
        stripped = prefix is not None
        if stripped:
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def _close_names(name: str) -> str:
    close = difflib.get_close_matches(name, timm.list_models(), n=5)
    return f"; similar names: {', '.join(close)}" if close else ""


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0][:120] if lines else ''}"


def _hub_tensors(source: str) -> dict[str, torch.Tensor]:
    """timm's pretrained weights of a timm:/hf-hub: source, in timm's layout (timm fetches them)."""
    name = source[len(TIMM_PREFIX):] if source.startswith(TIMM_PREFIX) else source
    if not name.startswith(HF_HUB_PREFIX):  # a registered name: checked without the network
        if not timm.is_model(name):
            raise WeightsError(f"{source}: timm has no model {name!r}{_close_names(name.split('.')[0])}")
        try:
            cfg = timm.models.get_pretrained_cfg(name)
        except RuntimeError as err:  # an unknown tag
            tags = ", ".join(timm.list_pretrained(f"{name.split('.')[0]}.*")[:8])
            raise WeightsError(f"{source}: {err} (its tags: {tags or 'none'})") from None
        if cfg is None or not (cfg.hf_hub_id or cfg.url):
            raise WeightsError(f"{source}: timm has no pretrained weights for {name}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = timm.create_model(name, pretrained=True)
    except Exception as err:  # the hub client, the network and timm raise many kinds
        from huggingface_hub import constants

        raise WeightsError(f"{source}: not in the local cache ({constants.HF_HUB_CACHE}) and the hub cannot be "
                           f"reached ({_first_line(err)}); fetch it once where the hub is reachable "
                           f"(HF_HOME names the cache)") from None
    return model.state_dict()


def _read(source: str) -> Any:
    """What a source holds as read: a local file's contents, or a hub source's tensors."""
    if is_hub_source(source):
        return _hub_tensors(source)
    path = Path(source)
    if not path.is_file():
        raise WeightsError(f"{path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as err:  # safetensors raises its own error kinds
            raise WeightsError(f"{path} cannot be read as safetensors ({_first_line(err)})") from None
    from aubench.engine.checkpoint import read_weights_file  # the one safe torch.load, with one-line errors

    try:
        return read_weights_file(path)
    except UserError as err:
        raise WeightsError(str(err)) from None


def _tensors(source: str, raw: Any) -> dict[str, torch.Tensor]:
    """The weights in what `_read` gave: a hub source's as timm gave them, a file's unwrapped."""
    return raw if is_hub_source(source) else _unwrap(raw, source)


def read_source(source: str) -> dict[str, torch.Tensor]:
    """The tensors of a --pretrained source by name, out of any training-checkpoint wrapper and
    without a prefix every key shares (DDP's "module." ...). On the meta device (a dry build) they
    come back on it: names and shapes only. WeightsError, one line naming the source, otherwise."""
    tensors = _tensors(source, _read(source))
    if torch.get_default_device().type == "meta":
        tensors = {k: v.to("meta") for k, v in tensors.items()}
    return tensors


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the tensors in name order (each name, dtype, shape and bytes): the same
    weights give the same digest wherever and however the file was saved."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


@dataclass(frozen=True)
class SourceDigest:
    sha256: str                # of the source's tensors (tensors_sha256)
    aubench_checkpoint: bool   # a checkpoint written by aubench's trainer: a whole method's weights


@functools.lru_cache(maxsize=16)
def _digest(source: str, stat: tuple[int, int] | None) -> SourceDigest:
    from aubench.engine.checkpoint import is_checkpoint_payload

    raw = _read(source)
    return SourceDigest(tensors_sha256(_tensors(source, raw)), is_checkpoint_payload(raw))


def digest_source(source: str) -> SourceDigest:
    """The sha256 of a source's tensors and whether it is an aubench checkpoint; a file is read
    again only when its size or modification time changed."""
    path = Path(source)
    stat = None if is_hub_source(source) or not path.is_file() else (path.stat().st_size, path.stat().st_mtime_ns)
    return _digest(source, stat)


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


def _from_torchvision_swin(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's Swin (swin_t / swin_s / swin_b) keys in timm's names, for timm's Swin filter:
    features.0 is the patch embedding, features.2k+1 stage k's blocks, features.2k the patch
    merging that starts stage k; other state dicts come back as they are."""
    if "features.0.0.weight" not in tensors or not any(k.endswith("attn.relative_position_bias_table")
                                                       for k in tensors):
        return tensors

    def timm_name(key: str) -> str:
        key = re.sub(r"^features\.0\.0\.", "patch_embed.proj.", key)
        key = re.sub(r"^features\.0\.2\.", "patch_embed.norm.", key)
        key = re.sub(r"^features\.(\d+)\.(\d+)\.", lambda m: f"layers.{int(m[1]) // 2}.blocks.{m[2]}.", key)
        key = re.sub(r"^features\.(\d+)\.", lambda m: f"layers.{int(m[1]) // 2}.downsample.", key)
        key = re.sub(r"^head\.", "head.fc.", key)
        return key.replace(".mlp.0.", ".mlp.fc1.").replace(".mlp.3.", ".mlp.fc2.")

    return {timm_name(k): v for k, v in tensors.items()}


@contextmanager
def _recorded_loads() -> Iterator[list[tuple[nn.Module, Any]]]:
    """Within it, every nn.Module.load_state_dict call's (module, result). timm's pretrained
    loader makes that call and only logs the missing and unexpected keys it returns (its log is
    silenced here: _check_fit reports them)."""
    calls: list[tuple[nn.Module, Any]] = []
    original = nn.Module.load_state_dict
    timm_log = logging.getLogger("timm.models._builder")
    level = timm_log.level

    def recorded(module, *args, **kwargs):
        result = original(module, *args, **kwargs)
        calls.append((module, result))
        return result

    nn.Module.load_state_dict = recorded
    timm_log.setLevel(logging.ERROR)
    try:
        yield calls
    finally:
        nn.Module.load_state_dict = original
        timm_log.setLevel(level)


def _check_fit(source: str, name: str, module: nn.Module, result: Any, dry: bool) -> None:
    """Refuse (WeightsError) a source that filled less than MIN_LOADED of the backbone's tensors;
    print what it left as initialised and what it held that the backbone does not take."""
    classifier = _classifier_names(module)

    def counted(key: str) -> bool:  # a new classifier and batch counters are not the backbone's weights
        return not key.endswith("num_batches_tracked") and not any(key == c or key.startswith(c + ".")
                                                                    for c in classifier)

    own = [k for k in module.state_dict() if counted(k)]
    missing = [k for k in result.missing_keys if counted(k)]
    unexpected = list(result.unexpected_keys)
    if len(own) - len(missing) < MIN_LOADED * len(own):
        raise WeightsError(f"{source} does not fit backbone {name}: it fills {len(own) - len(missing)} of its "
                           f"{len(own)} tensors (missing: {', '.join(missing[:3])}; the source's tensors it "
                           f"does not take: {', '.join(unexpected[:3]) or 'none'})")
    notes = ([f"{len(missing)} of its tensors not in the source, left as initialised (first: "
              f"{', '.join(missing[:3])})"] if missing else []) + \
            ([f"{len(unexpected)} tensors of the source unused (first: {', '.join(unexpected[:3])})"]
             if unexpected else [])
    if notes and not dry and os.environ.get("RANK", "0") == "0":  # once under torchrun
        print(f"[aubench] --pretrained {source} into backbone {name}: {'; '.join(notes)}", flush=True)


def create_backbone(name: str, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """A timm model by name, with the weights of the --pretrained source `weights` if given.

    kwargs go to timm.create_model (e.g. num_classes=0 for a pooled feature extractor,
    global_pool="" for feature maps). `model.num_features` is the feature width. The weights load
    through timm (see the module docstring). Backbone tensors the source lacks (left as
    initialised) and tensors of the source the backbone does not take are printed; WeightsError
    (naming the source and the first keys) for a tensor of the wrong shape, or a source that fills
    less than half of the backbone's tensors. On the meta device (a dry build, e.g.
    aubench.engine.planning.check_stages_build) the same checks run and nothing is copied.
    """
    if not timm.is_model(name):
        raise BackboneError(f"unknown timm backbone {name!r}{_close_names(name)}")
    kwargs.pop("pretrained", None)
    if weights is None:
        return timm.create_model(name, pretrained=False, **kwargs)
    tensors = _from_torchvision_swin(read_source(weights))
    dry = torch.get_default_device().type == "meta"
    with _recorded_loads() as loads, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")  # a dry build
        try:
            # Without a classifier of the weights' size (num_classes=0, features_only) timm loads
            # non-strictly and leaves the check to _check_fit.
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(state_dict=tensors),
                                      **kwargs)
        except Exception as err:  # torch's shape check, or a family filter meeting a layout it does not know
            lines = [line.strip() for line in str(err).splitlines()]
            sizes = [line for line in lines if line.startswith("size mismatch")]
            keys = [line for line in lines if line.startswith(("Missing key", "Unexpected key"))]
            detail = (f"{len(sizes)} shape mismatches (first: {sizes[0][:200]})" if sizes
                      else keys[0][:200] if keys else _first_line(err))
            raise WeightsError(f"{weights} does not fit backbone {name}: {detail}") from None
    if not loads:  # timm loaded without nn.Module.load_state_dict: nothing to check against
        raise WeightsError(f"{weights}: timm loads {name} in its own way; aubench cannot check the weights")
    _check_fit(weights, name, *loads[-1], dry)
    return model


def backbone_stride(name: str, **kwargs: Any) -> int:
    """Total stride of a timm backbone (32 for a ResNet): the smallest input side that still gives
    its last stage one feature cell; below it that stage sees padding only. 1 when timm does not say.
    The model is built on the meta device: no memory, no weights, milliseconds."""
    with torch.device("meta"):
        model = create_backbone(name, **kwargs)
    info = getattr(model, "feature_info", None)
    return int(info[-1]["reduction"]) if info else 1
