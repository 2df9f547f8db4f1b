"""RegNet + transformer over the frame sequence: `regnet-tf`, the ensemble partner of the RegNetY +
ViViT paper (Vu, Huynh, Nguyen, Kim, ABAW 2023, Fig. 3 and Section 3.3).

The paper fuses its ViViT with the model of Nguyen, Huynh, Kim (ABAW 2022), which it describes
in Section 2.2: each frame's CNN feature is a token and a transformer is the classification head
over the sequence. Ours builds that on the same RegNetY embedding module as `vivit`
(`aubench/models/regnet_video.py`: RegNetY-400MF, first stage frozen): each frame's last
feature map is average-pooled (440 values), projected to the transformer width, given a learned
temporal position, and the transformer's output at each frame goes through a linear head, one
sigmoid per AU (frame-wise, like `vivit`, so the two fuse frame by frame). Loss, windows and
optimiser are `vivit`'s (focal loss on Robin Hood smoothed labels; SGD at 0.9 with warm
restarts in `paper`). The paper gives none of this model's sizes: ours are width 512, 4 layers,
8 heads, MLP 4 x width (half `vivit`'s width and layers: a head over one token per frame). It
departs from Nguyen et al.'s own model, which the paper does not describe further (its
multi-task, multi-modal parts are left out: this track has AU labels only).

The ensemble itself is post-processing: `aubench ensemble RUN --methods vivit,regnet-tf --name
vivit+regnet-tf --out DIR` averages the two models' per-frame probabilities (docs/postprocess.md).
"""
from __future__ import annotations

import torch
from torch import nn

from aubench.models.base import WEIGHTS_SETTING, Preset, model_settings, register_method
from aubench.models.regnet_video import (PAPER_SOURCE, PAPER_TRAINING, TINY_REGNET, TINY_TRAINING,
                                         FrameSequenceMethod, RegNetEmbedding, add_temporal_positions, transformer)

DEFAULTS = {"backbone": "regnety_004", "backbone_kwargs": None, "pretrained_path": None, "freeze_first_stage": "auto", "dim": 512, "heads": 8,
            "mlp_ratio": 4.0, "layers": 4, "dropout": 0.0, "rhls_beta": 0.2, "focal_alpha": -1.0,
            "focal_gamma": 2.0, "augment": True}


class RegNetTransformer(nn.Module):
    """Windows (B,T,3,H,W) -> per-frame AU logits (B,T,U): RegNet embedding, pooled to one token per
    frame, a transformer over the frames, a linear head per frame."""

    def __init__(self, num_aus: int, frames: int, backbone: str, backbone_kwargs: dict | None,
                 weights: str | None, freeze_first_stage: bool | str, dim: int, heads: int, mlp_ratio: float, layers: int, dropout: float):
        super().__init__()
        self.embedding = RegNetEmbedding(backbone, weights, backbone_kwargs, freeze_first_stage)
        self.project = nn.Linear(self.embedding.num_features, dim)
        self.temporal_pos = nn.Parameter(torch.zeros(1, frames, dim))
        nn.init.trunc_normal_(self.temporal_pos, std=0.02)
        self.temporal = transformer(dim, layers, heads, mlp_ratio, dropout)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_aus)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        b, t = windows.shape[:2]
        pooled = self.embedding(windows.flatten(0, 1)).mean(dim=(2, 3))     # (B*T, C)
        tokens = add_temporal_positions(self.project(pooled).reshape(b, t, -1), self.temporal_pos, "regnet-tf")
        return self.head(self.norm(self.temporal(tokens)))


@register_method("regnet-tf")
class RegNetTF(FrameSequenceMethod):
    presets = {
        # vivit's training (regnet_video.PAPER_TRAINING); the sizes are ours (module docstring)
        "paper": Preset(name="paper", **PAPER_TRAINING, model={},
                        source=f"{PAPER_SOURCE}; this model's sizes, epochs, batch and restart period ours"),
        # vivit's tiny scale and training on the small RegNet: width 64, 4 heads, 1 layer
        "tiny": Preset(name="tiny", **TINY_TRAINING,
                       model={"backbone": "regnety_002", "backbone_kwargs": TINY_REGNET, "augment": False,
                              "dim": 64, "heads": 4, "mlp_ratio": 2.0, "layers": 1}),
    }

    def __init__(self, num_aus: int, preset: Preset, class_weights: torch.Tensor | None = None):
        super().__init__(num_aus, preset, class_weights)
        self.settings = s = model_settings("regnet-tf", preset, DEFAULTS)
        self.net = RegNetTransformer(num_aus, preset.clip_len, s["backbone"], s["backbone_kwargs"],
                                     s[WEIGHTS_SETTING].get("backbone"), s["freeze_first_stage"], int(s["dim"]), int(s["heads"]), float(s["mlp_ratio"]),
                                     int(s["layers"]), float(s["dropout"]))
