"""The plain frame classifier: a timm ResNet and one linear layer, weighted BCE.

This is the "ResNet-50" baseline the AU papers (Knowledge-Spreader among them) compare against,
and the simplest method the engine runs. The loss is binary cross-entropy per AU weighted by the
fold's class weights (inverse occurrence rate, normalised to mean 1, as JAA-Net / ME-GraphAU),
averaged over known labels only (label -1 contributes nothing).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aubench.models.backbones import backbone_stride, create_backbone
from aubench.models.base import WEIGHTS_SETTING, AUMethod, Preset, TrainState, model_settings, register_method


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
    """Mean of class-weighted BCE over the known entries of labels (-1 = unknown)."""
    known = labels >= 0
    targets = labels.clamp(min=0).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    weights = class_weights.to(loss.dtype).expand_as(loss) * known
    # Normalised by the count of known labels so a batch without labels gives 0, not NaN.
    return (loss * weights).sum() / known.sum().clamp(min=1)


class ResNetAU(nn.Module):
    """Backbone -> global average pool -> dropout -> linear, one logit per AU."""

    def __init__(self, backbone: str, num_aus: int, weights: str | None = None, dropout: float = 0.0,
                 backbone_kwargs: dict | None = None):
        super().__init__()
        self.backbone = create_backbone(backbone, weights, num_classes=0, **(backbone_kwargs or {}))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.num_features, num_aus)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(images)))


@register_method("resnet")
class ResNetBaseline(AUMethod):
    input_kind = "frame"
    pretrained_parts = {"backbone": "the timm ResNet (ImageNet weights, e.g. timm:resnet50.a1_in1k at paper)"}
    presets = {
        # ResNet-50 at 224 px, SGD with cosine decay: the common AU baseline configuration.
        "paper": Preset(name="paper", image_size=224, epochs=20, batch_size=64, optimizer="sgd", lr=0.01,
                        momentum=0.9, weight_decay=5e-4, schedule="cosine", warmup_epochs=1, paper_init="ImageNet",
                        source="no paper of its own: the ImageNet ResNet-50 baseline of the AU papers, "
                               "settings ours", model={"backbone": "resnet50"}),
        # The ResNet-18 layout at a quarter of the width (the backbone of Knowledge-Spreader's tiny
        # preset), 64 px, AdamW: small enough for a CPU in a minute. 20 epochs: at 8 it underfit an
        # earlier 12-subject demo (test mean F1 0.41 at 8 epochs, 0.51 at 20, fold 1); on today's
        # demo data (fold 1, label ratio 0.2) it reached 0.684 at 20 (all-positive 0.601); 15 since
        # RRL joined the demo and its budget was shared out.
        "tiny": Preset(name="tiny", image_size=64, epochs=15, batch_size=16, optimizer="adamw", lr=2e-3,
                       weight_decay=1e-4, schedule="cosine", warmup_epochs=0,
                       model={"backbone": "resnet18",
                              "backbone_kwargs": {"channels": (16, 32, 64, 128), "stem_width": 16}}),
    }

    def __init__(self, num_aus: int, preset: Preset, class_weights: torch.Tensor | None = None):
        super().__init__(num_aus, preset, class_weights)
        settings = model_settings("resnet", preset, {"backbone": "resnet50", "backbone_kwargs": None,
                                                      "pretrained_path": None, "dropout": 0.0, "augment": True})
        self.net = ResNetAU(settings["backbone"], num_aus, settings[WEIGHTS_SETTING].get("backbone"), settings["dropout"],
                            settings["backbone_kwargs"])

    @classmethod
    def min_image_size(cls, preset: Preset) -> int:
        return backbone_stride(preset.model.get("backbone", "resnet50"), num_classes=0,
                               **(preset.model.get("backbone_kwargs") or {}))

    def training_step(self, batch: dict[str, torch.Tensor], state: TrainState) -> dict[str, torch.Tensor]:
        logits = self.net(batch["image"])
        loss = weighted_bce(logits, batch["label"], self.class_weights)
        return {"loss": loss, "bce": loss.detach()}

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self.net(batch["image"]).float())

    def inference_model(self) -> nn.Module:
        return self.net
