"""What the RegNetY + ViViT ensemble's two models share (Vu, Huynh, Nguyen, Kim, ABAW 2023;
`aubench/models/vivit.py`, `aubench/models/regnet_tf.py`).

- `RegNetEmbedding` (paper 3.1): a timm RegNetY as the embedding module of every frame, its
  first stage frozen and the rest fine-tuned. The paper "unfreezes the last three blocks of the
  backbone while keeping the first block frozen"; a RegNet body has four stages, so the stem and
  the first stage are frozen (the stem comes before the first stage, and training it would
  change what the frozen stage sees). Frozen parts stay in eval mode, so their batch-norm
  statistics do not move either. ImageNet weights come from `--pretrained` (part "backbone",
  e.g. `timm:regnety_004.pycls_in1k`). The paper freezes pretrained layers: without weights
  (`freeze_first_stage` "auto", the default) nothing is frozen, since a frozen random stage
  would only pass random features on (its batch norm never normalising); true / false force it.
- `robin_hood_targets` (paper Eq. 3-4): Robin Hood label smoothing. With f_i the positive
  frequency of AU i on the training split (the labels the protocol shows: the fold's visible
  label statistics), alpha_i^+ = beta max(0, (2 f_i - 1) / f_i) and alpha_i^- = beta max(0,
  (1 - 2 f_i) / (1 - f_i)); the target is (1 - alpha_i^+ / 2) y + (alpha_i^- / 2)(1 - y). Only the
  majority class of each AU moves: a rare AU's negatives rise towards 1/2, a frequent AU's
  positives fall towards 1/2. beta is not given in the paper: ours is 0.2 (`rhls_beta`), so the
  majority class's target moves at most 0.1 from its hard label (alpha <= beta), the size of the
  usual label-smoothing 0.1; beta = 1 would put a very rare AU's negatives at nearly 1/2.
- `focal_loss_on_known`: torchvision's sigmoid focal loss on those targets (with gamma 2 its
  minimum for a soft target t lies below t, e.g. near 0.014 for t = 0.1, so the focal term pulls
  part of the smoothing back; the paper combines the two as we do), averaged over the
  known labels; a label -1 (not annotated, or hidden by the sparse-label protocol) contributes
  nothing. The paper names the loss only: gamma is torchvision's 2; alpha is off (-1, positives
  and negatives weighted alike), not torchvision's 0.25, which weighs positives a third as much
  as negatives (RetinaNet's choice for detection, where negatives dominate): AUs are frequent,
  and with 0.25 `vivit` tiny on the demo data (fold 1, 8 epochs) scored mean F1 24.8 against
  54.6 with -1 (a test fold: how the default was first chosen). Re-checked for `vivit` on
  validation splits of the training subjects (--validation 0.2, folds 1-3,
  benchmarks/validation_defaults.py, docs/validation.md): 51.6 with -1 against 32.1 with 0.25;
  not re-checked for `regnet-tf`. RHLS already answers the imbalance, as the paper intends.
- `FrameSequenceMethod`: the engine side of both models: windows of `clip_len` consecutive
  frames of one sequence (`window_training`: every frame of a training window with its visible
  label; the test split tiled by windows, a frame in two windows getting the mean), one
  probability per frame and AU.
"""
from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from aubench.models.backbones import backbone_stride, create_backbone
from aubench.models.base import AUMethod, Preset, TrainState

FROZEN_PARTS = ("stem", "s1")  # timm RegNet: the stem and the first of the four stages


# The training both models share. `paper`: Section 4.2 as printed (112 px faces, 256-frame
# sequences, SGD at lr 0.9 with cosine annealing warm restarts); epochs, batch, momentum, weight
# decay and the restart period are ours (vivit.py's docstring).
PAPER_TRAINING = dict(image_size=112, epochs=20, batch_size=4, optimizer="sgd", lr=0.9, momentum=0.9,
                      weight_decay=5e-4, schedule="sgdr:4", warmup_epochs=0, clip_len=256, paper_init="ImageNet")
# Where `paper`'s settings come from (the faces are the challenge's 112 px crops, not cropped again).
PAPER_SOURCE = ("ViViT-ensemble paper Section 4.2 (112 px faces, 256-frame windows, SGD lr 0.9, cosine warm "
                "restarts) and 3.1 (ImageNet RegNetY)")
# `tiny`: CPU scale, from random initialisation: 64 px, 8-frame windows (the demo's sequences
# are 10 frames long), AdamW at 3e-3 with one cosine cycle, no augmentation (model setting).
TINY_TRAINING = dict(image_size=64, epochs=12, batch_size=8, optimizer="adamw", lr=3e-3, weight_decay=1e-4,
                     schedule="cosine", warmup_epochs=0, clip_len=8)
# The tiny presets' RegNet: the same design space scaled down (timm RegNetCfg fields over
# regnety_002's: depth 8, w0 24, wa 16, wm 2, stem 24; stages of 1, 2, 4, 1 blocks, 0.2 M
# parameters; a 2 x 2 map at 64 px), without squeeze-and-excitation: from scratch, the SE gates
# kept our small RegNetY from learning (demo data, fold 1, the regnety_002 embedding as a frame
# classifier, 8 epochs: mean F1 38.8 with SE, 53.3 without); with ImageNet weights (`paper`)
# the RegNetY is the paper's, SE included.
TINY_REGNET = {"depth": 8, "w0": 24, "wa": 16.0, "wm": 2.0, "stem_width": 24, "se_ratio": 0.0}


def transformer(dim: int, depth: int, heads: int, mlp_ratio: float, dropout: float) -> nn.Sequential:
    """`depth` pre-norm transformer blocks (timm's ViT block: Eq. 1-2 of the paper)."""
    return nn.Sequential(*[Block(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True, proj_drop=dropout)
                           for _ in range(depth)])


def add_temporal_positions(frames: torch.Tensor, positions: torch.Tensor, method: str) -> torch.Tensor:
    """Frame tokens (B,T,D) plus the first T learned temporal positions (1,clip_len,D); ValueError
    for windows longer than the model was built for."""
    t = frames.shape[1]
    if t > positions.shape[1]:
        raise ValueError(f"{method}: windows of {t} frames, the model takes at most {positions.shape[1]} (clip_len)")
    return frames + positions[:, :t]


class RegNetEmbedding(nn.Module):
    """Frames (N,3,H,W) -> the RegNet's last feature map (N,C,h,w) (440 channels for RegNetY-400MF;
    4 x 4 at 112 px), the stem and first stage frozen."""

    def __init__(self, backbone: str = "regnety_004", weights: str | None = None,
                 backbone_kwargs: dict | None = None, freeze_first_stage: bool | str = "auto"):
        super().__init__()
        self.net = create_backbone(backbone, weights, num_classes=0, **(backbone_kwargs or {}))
        missing = [name for name in FROZEN_PARTS if not hasattr(self.net, name)]
        if missing:
            raise ValueError(f"backbone {backbone!r} has no {missing[0]!r}: the embedding module needs a timm "
                             f"RegNet (stem, s1..s4), e.g. regnety_004")
        if freeze_first_stage not in (True, False, "auto"):
            raise ValueError(f"freeze_first_stage must be true, false or \"auto\", got {freeze_first_stage!r}")
        freeze = weights is not None if freeze_first_stage == "auto" else freeze_first_stage
        # a plain list, not submodules: the parts are registered (and saved) once, under self.net
        self.frozen = [getattr(self.net, name) for name in FROZEN_PARTS] if freeze else []
        for part in self.frozen:
            part.requires_grad_(False)
        self.num_features = self.net.num_features

    def train(self, mode: bool = True):
        super().train(mode)
        for part in self.frozen:
            part.eval()  # frozen batch norm keeps its statistics too
        return self

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(frames)


def robin_hood_targets(labels: torch.Tensor, positive_rate: torch.Tensor, beta: float) -> torch.Tensor:
    """Eq. 3-4: labels (..., U) in {0, 1} (-1 entries come back as they are computed and must be
    masked by the caller), positive_rate f (U,) of the training split."""
    f = positive_rate.to(labels.dtype).clamp(0.0, 1.0)
    alpha_pos = beta * torch.where(f > 0.5, (2 * f - 1) / f.clamp(min=1e-12), torch.zeros_like(f))
    alpha_neg = beta * torch.where(f < 0.5, (1 - 2 * f) / (1 - f).clamp(min=1e-12), torch.zeros_like(f))
    y = labels.clamp(min=0)
    return (1 - alpha_pos / 2) * y + (alpha_neg / 2) * (1 - y)


def focal_loss_on_known(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, alpha: float,
                        gamma: float) -> torch.Tensor:
    """Mean sigmoid focal loss (torchvision) against `targets` over the entries whose label is
    known (labels >= 0); 0 for a batch without any."""
    known = labels >= 0
    loss = sigmoid_focal_loss(logits.float(), targets.float(), alpha=alpha, gamma=gamma, reduction="none")
    return (loss * known).sum() / known.sum().clamp(min=1)


class FrameSequenceMethod(AUMethod):
    """A model of windows (B,T,3,H,W) -> per-frame AU logits (B,T,U), trained with focal loss on
    Robin Hood smoothed labels. Subclasses build `self.net` from their settings."""

    input_kind = "clip"
    pretrained_parts = {"backbone": "the RegNetY frame embedding (ImageNet weights, e.g. timm:regnety_004.pycls_in1k "
                                    "at paper; its stem and first stage are then frozen)"}
    window_training = True

    def __init__(self, num_aus: int, preset: Preset, class_weights: torch.Tensor | None = None):
        super().__init__(num_aus, preset, class_weights)
        # f_i of Eq. 4: the training split's visible positive rates (set_training_data); 1/2 (no
        # smoothing) until the engine gives them
        self.register_buffer("positive_rate", torch.full((num_aus,), 0.5))

    def set_training_data(self, au_names: list[str], statistics: dict) -> None:
        super().set_training_data(au_names, statistics)
        if statistics is not None and "au_rate" in statistics:
            self.positive_rate = torch.as_tensor(statistics["au_rate"], dtype=torch.float32).to(self.positive_rate)

    @classmethod
    def min_image_size(cls, preset: Preset) -> int:
        return backbone_stride(preset.model.get("backbone", "regnety_004"), num_classes=0,
                               **(preset.model.get("backbone_kwargs") or {}))

    def loss_settings(self) -> tuple[float, float, float]:
        """(rhls beta, focal alpha, focal gamma)."""
        return self.settings["rhls_beta"], self.settings["focal_alpha"], self.settings["focal_gamma"]

    def training_step(self, batch: dict[str, torch.Tensor], state: TrainState) -> dict[str, torch.Tensor]:
        logits = self.net(batch["image"])
        beta, alpha, gamma = self.loss_settings()
        targets = robin_hood_targets(batch["label"], self.positive_rate, beta)
        loss = focal_loss_on_known(logits, batch["label"], targets, alpha, gamma)
        return {"loss": loss, "focal": loss.detach()}

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self.net(batch["image"]).float())

    def inference_model(self) -> nn.Module:
        return self.net
