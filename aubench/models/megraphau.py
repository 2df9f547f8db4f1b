"""ME-GraphAU: AU relation graphs with multi-dimensional edge features, trained in two stages.

Luo, Song, Xie, Shen, Gunes, "Learning multi-dimensional edge feature-based AU relation graph
for facial action unit recognition", IJCAI 2022; reference code CVI-SZU/ME-GraphAU (model/ANFL.py
for stage 1, model/MEFL.py and model/graph_edge_model.py for stage 2, utils.py for the loss,
train_stage1.py / train_stage2.py, conf.py and config/*.yaml for the settings). The network parts
live in aubench.models.graph_head, shared with the methods that reuse this head.

Network (U AUs; 7 x 7 = 49 tokens at 224 px):
- a timm backbone's last feature map as tokens (ResNet-50: 2048 channels; Swin-B: 1024), a
  per-token LinearBlock (Linear + BatchNorm + ReLU) to the head width C (512 in `paper`, the
  reference's 2048 / 4 for ResNet and 1024 / 2 for Swin);
- AFG: U per-token LinearBlocks C -> C give the AU feature maps, their token means the nodes;
- stage 1 (ANFL): the top-K dot-product similarity graph of the detached nodes, normalised
  D^-1/2 A D^-1/2, one GCN layer with residual and BatchNorm (K: model["neighbours"]; default 4
  for 12 AUs (BP4D), 3 for 8 (DISFA), as config/BP4D_config.yaml and DISFA_config.yaml);
- stage 2 (MEFL): GEM edge features (AU map -> face map cross-attention, then node j -> node i
  for all U^2 ordered pairs), two GatedGCN layers, a 4-class edge head;
- p_u = cos(ReLU(t_u), ReLU(v_u)) with a learned vector t_u per AU: probabilities in [0, 1].

Losses: L_AU = the weighted asymmetric loss of the reference code (class weights = the fold's
inverse training occurrence rates normalised to mean 1, `self.class_weights`), and in stage 2
L = L_AU + lambda L_E, L_E the cross-entropy of the edge head against 2 y_i + y_j over every
ordered pair (self-pairs too, as the reference's label files); unknown labels (-1) count in
neither (an edge with one unknown AU is skipped).

Stages (model["stage"], 1 or 2; one class serves both). Registered as `megraphau`; the engine
trains `MEGraphAU.stages(preset)`: "stage1" with `stage_preset(preset, 1)`, then "stage2" with
`stage_preset(preset, 2)` (stage 2, stage-2 rate), initialised from stage 1, both with the run's
epochs, batch and data; the stage-2 network is the one tested. Stage 2 starts from stage 1's
weights: `init_from_stage1(state_dict)` loads the backbone, projection, AFG and classifier (and
their BatchNorm statistics) strictly and drops stage 1's GCN, as the reference's train_stage2.py
(load_state_dict(strict=False): the GCN's parameter names differ, so only the shared parts
load). Nothing is frozen in either stage; each stage has a fresh AdamW and its own cosine
schedule.

Presets: the repository README gives one command per dataset, and `paper` picks by the data
file's dataset (AUMethod.dataset_presets). `paper-bp4d` (BP4D, ResNet-50): stage 1 1e-4 (`-lr
0.0001`), stage 2 1e-5 (its stage-2 command passes no -lr, so conf.py's default 0.00001
applies), lambda 0.05 (`--lam 0.05`). `paper-disfa` (DISFA, Swin-B with drop path 0.5, as the
reference builds it): stage 1 1e-4, stage 2 1e-6 (`-lr 0.000001`), lambda 0.01. `paper` is
`paper-bp4d`'s settings, for the datasets the README has no command for. All: AdamW (0.9,
0.999), weight decay 5e-4, batch 64, 20 epochs per stage, cosine decay per step without
warm-up (utils.adjust_learning_rate), all from conf.py; the face resized to 256 and cropped to
224, at random in training and in the centre at test (utils.image_train / image_test,
Preset.crop_fraction). For comparison, the MAE-FAU paper (which uses this method as its
detection module) trains it at 1e-4 / 7.5e-5 (stage 1) and 1e-6 / 1e-5 (stage 2) on BP4D /
DISFA with lambda 0.01 (its `maefau` presets). Swin-B on BP4D: model overrides
backbone="swin_base_patch4_window7_224", backbone_kwargs={"drop_path_rate": 0.5}.

Size at 224 px, U = 12 (aubench.bench.count_params / flops_per_frame, MACs = FLOPs / 2):
ResNet-50 stage 1 28.25 M parameters, 4.30 GMACs; stage 2 31.67 M, 6.94 GMACs. Swin-B stage 1
90.96 M, 15.62 GMACs; stage 2 94.38 M, 18.25 GMACs. MAE-FAU's Table 4 gives ME-GraphAU (Swin-B)
94.38 M and 21.28 GMACs: the parameters agree exactly; the MACs of linear layers and
convolutions here (17.66 G) plus the reference's repeated GEM projections (3.60 G, below) make
21.26 G, so the published figure counts the reference code's layers without the attention
matrix products (as thop does). Tiny preset: 0.74 M (stage 1), 0.75 M (stage 2).

Where this departs from the paper or the reference code:
- Data: the reference resizes faces to 256, takes random 224 crops with flips and colour jitter
  0.4 (test: centre crop). The `paper` presets crop the same way (the tiny preset resizes to
  64 px without a crop) and augment with the engine's flip and colour jitter (0.3); rotation is
  off (0 deg), as the reference does not rotate.
- Backbones are timm's (the reference ships its own ResNet / Swin copies); ImageNet weights come
  from `--pretrained` (loaded in stage 1; stage 2 starts from stage 1), otherwise the backbone
  starts from random weights. timm's ResNet zero-initialises the last BatchNorm gamma of each
  residual block (`zero_init_last`), where the reference's model/resnet.py sets every gamma to 1;
  this matters only from random weights (loaded weights replace it).
- GEM computes each cross-attention projection once per face map / node and broadcasts it over
  the pairs; the reference projects U (FAM) and U^2 (ARM) repeated copies. Same values, fewer
  multiply-adds, so aubench's MAC count is lower than one taken on the reference code.
- Unknown labels: the reference has none (its losses average over every entry); here both losses
  average over the known entries only, which is the same when all are known.
- The stage-2 loading is strict on the shared parts (a missing or misshapen tensor is an error),
  where the reference's strict=False would silently keep random weights.
- Neighbours K for AU counts other than 12 and 8 have no reference value and must be given.
- OpenGraphAU's dropout in the GatedGCN layers is not used (ME-GraphAU's own code has none).
- K is chosen by the number of AUs, not by the dataset's name: a 12-AU file (BP4D, BP4D+) gets
  BP4D's K = 4, an 8-AU file (DISFA) DISFA's K = 3. MAE-FAU (Sec. 4.3) uses K = 4 on both, 30
  stage-1 epochs and batch 48; the `paper` preset follows the reference code instead.
- The README gives one backbone per dataset's command (ResNet-50 on BP4D, Swin-B on DISFA), so
  `paper-disfa` trains Swin-B, while the reported DISFA row beside it is the README's ResNet-50
  one; `--model backbone=resnet50 --model backbone_kwargs={}` gives ResNet-50 at DISFA's rates.
- The head width is a setting (512, the reference's value for ResNet-50 and Swin-B), not derived
  from the backbone (the reference: channels / 4 for ResNet, / 2 for Swin); set it for others.
- The top-K similarity is computed in fp32 even under mixed precision (bf16 would tie
  neighbours); only the `dots` similarity of the reference's three (`dots`, `cosine`, `l1`;
  `dots` its default) is offered.
- The engine drops a last incomplete training batch (BatchNorm needs two samples); the reference
  keeps it. Colour jitter applies brightness, contrast, saturation in a fixed order.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from aubench.models.backbones import backbone_stride, create_backbone
from aubench.models.base import WEIGHTS_SETTING, AUMethod, Preset, Stage, TrainState, model_settings, register_method
from aubench.models.graph_head import LinearBlock, MEGraphHead, edge_labels, edge_loss, weighted_asymmetric_loss

# The reference's K per dataset (config/BP4D_config.yaml, config/DISFA_config.yaml), by AU count.
DEFAULT_NEIGHBOURS = {12: 4, 8: 3}

_DEFAULTS: dict[str, Any] = {
    "backbone": "resnet50", "backbone_kwargs": {}, "pretrained_path": None,
    "width": 512,            # head width C (the reference: backbone channels / 4 for ResNet, / 2 for Swin)
    "stage": 1,
    "neighbours": None,      # K of the stage-1 graph; None: DEFAULT_NEIGHBOURS by AU count
    "gnn_layers": 2,
    "lambda": 0.05,          # weight of the edge loss in stage 2
    "stage2_lr": 1e-5,       # the learning rate of stage 2 (Preset.lr is stage 1's)
    "augment": True,
}


def feature_tokens(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The backbone's last feature map as tokens (B, T, C): NCHW (ResNet) and NHWC (Swin) maps
    are flattened, (B, T, C) outputs are taken as they are."""
    features = backbone(images)
    if features.dim() == 3:
        return features
    if features.dim() == 4:
        if getattr(backbone, "output_fmt", "NCHW") == "NHWC":
            return features.flatten(1, 2)
        return features.flatten(2).transpose(1, 2)
    raise ValueError(f"ME-GraphAU backbone must return a feature map, got shape {tuple(features.shape)}")


class MEGraphAUNet(nn.Module):
    """Backbone -> per-token projection -> ME-GraphAU head; images -> {"probs", ["edge_logits"]}."""

    def __init__(self, backbone: nn.Module, num_aus: int, width: int, stage: int, neighbours: int | None,
                 gnn_layers: int):
        super().__init__()
        self.backbone = backbone
        self.projection = LinearBlock(backbone.num_features, width)
        self.head = MEGraphHead(width, num_aus, stage, neighbours, gnn_layers)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(self.projection(feature_tokens(self.backbone, images)))


def stage_preset(preset: Preset, stage: int) -> Preset:
    """`preset` for one stage: model["stage"] set, and the stage's learning rate (stage 1:
    preset.lr as it is; stage 2: model["stage2_lr"])."""
    if stage not in (1, 2):
        raise ValueError(f"megraphau: stage must be 1 or 2, got {stage!r}")
    lr = preset.lr if stage == 1 else preset.model.get("stage2_lr", _DEFAULTS["stage2_lr"])
    return Preset(**{**preset.__dict__, "lr": lr, "model": {**preset.model, "stage": stage}})


# The reference repository's README at the commit the reported rows cite (aubench.reported).
README = "CVI-SZU/ME-GraphAU README @008f281"
# The reference's training: conf.py (20 epochs, AdamW, weight decay 5e-4, stage-2 lr 1e-5 unless
# -lr is given) and utils.py (image_train / image_test: a 224 crop of the face resized to 256).
REFERENCE_TRAINING = "conf.py: 20 epochs, wd 5e-4; utils.py: 224 crop of 256"


def _paper_preset(name: str, source: str, **model: Any) -> Preset:
    return Preset(name=name, image_size=224, epochs=20, batch_size=64, optimizer="adamw", lr=1e-4,
                  weight_decay=5e-4, schedule="cosine", warmup_epochs=0, rotation=0.0, crop_fraction=224 / 256,
                  paper_init="ImageNet", source=source, model=dict(_DEFAULTS, **model))


BP4D_SOURCE = (f"{README} lines 60 and 65 (BP4D, ResNet-50: -b 64 -lr 0.0001, stage 2 --lam 0.05 at conf.py's "
               f"lr 1e-5); {REFERENCE_TRAINING}; K 4 for 12 AUs (config/BP4D_config.yaml)")
DISFA_SOURCE = (f"{README} lines 70 and 75 (DISFA, Swin-B: -b 64 -lr 0.0001, stage 2 -lr 0.000001 --lam 0.01); "
                f"{REFERENCE_TRAINING}; K 3 for 8 AUs (config/DISFA_config.yaml)")


def _paper_presets() -> dict[str, Preset]:
    """`paper-bp4d` and `paper-disfa`: the README's command for each dataset; `paper`: the BP4D
    settings, for the datasets the README gives no command for (BP4D+, MME, Aff-Wild2)."""
    return {"paper": _paper_preset("paper", f"paper-bp4d's settings, for other datasets: {BP4D_SOURCE}"),
            "paper-bp4d": _paper_preset("paper-bp4d", BP4D_SOURCE),
            "paper-disfa": _paper_preset("paper-disfa", DISFA_SOURCE, backbone="swin_base_patch4_window7_224",
                                         backbone_kwargs={"drop_path_rate": 0.5}, stage2_lr=1e-6,
                                         **{"lambda": 0.01})}


def _tiny_preset() -> Preset:
    # The same architecture on a CPU: the ResNet-18 layout at a quarter width (as the other tiny
    # presets), 64 px (2 x 2 = 4 tokens), head width 32 (= 128 / 4, the reference's ratio).
    # AdamW at the other tiny presets' 2e-3, stage 2 at a quarter of it (the paper drops the rate
    # 10x for stage 2; untuned here). 15 + 15 epochs (20 + 20 before RRL joined the demo).
    model = dict(_DEFAULTS, backbone="resnet18", backbone_kwargs={"channels": (16, 32, 64, 128), "stem_width": 16},
                 width=32, stage2_lr=5e-4)
    return Preset(name="tiny", image_size=64, epochs=15, batch_size=16, optimizer="adamw", lr=2e-3,
                  weight_decay=1e-4, schedule="cosine", warmup_epochs=0, rotation=0.0, model=model)


@register_method("megraphau")
class MEGraphAU(AUMethod):
    """ME-GraphAU, one stage per instance (model["stage"]); see the module docstring."""

    input_kind = "frame"
    presets = {**_paper_presets(), "tiny": _tiny_preset()}
    dataset_presets = {"BP4D": "paper-bp4d", "DISFA": "paper-disfa"}
    pretrained_parts = {"backbone": "the backbone (ImageNet weights, e.g. timm:resnet50.tv_in1k), loaded in stage 1"}

    @classmethod
    def stages(cls, preset: Preset) -> list[Stage]:
        return [Stage("stage1", stage_preset(preset, 1)),
                Stage("stage2", stage_preset(preset, 2), init_from="stage1")]

    @classmethod
    def min_image_size(cls, preset: Preset) -> int:
        return backbone_stride(preset.model.get("backbone", _DEFAULTS["backbone"]), num_classes=0, global_pool="",
                               **(preset.model.get("backbone_kwargs") or {}))

    def __init__(self, num_aus: int, preset: Preset, class_weights: torch.Tensor | None = None):
        super().__init__(num_aus, preset, class_weights)
        cfg = model_settings("megraphau", preset, _DEFAULTS)
        stage = cfg["stage"]
        if stage not in (1, 2):
            raise ValueError(f"megraphau: model setting stage must be 1 or 2, got {stage!r}")
        neighbours = cfg["neighbours"]
        if neighbours is None:
            if num_aus not in DEFAULT_NEIGHBOURS:
                raise ValueError(f"megraphau: no default number of graph neighbours for {num_aus} AUs "
                                 f"(4 for 12, 3 for 8); set the model setting neighbours")
            neighbours = DEFAULT_NEIGHBOURS[num_aus]
        self.cfg = {**cfg, "neighbours": neighbours}
        self.stage = stage
        weights = cfg[WEIGHTS_SETTING].get("backbone") if stage == 1 else None  # stage 2 starts from stage 1
        backbone = create_backbone(cfg["backbone"], weights, num_classes=0, global_pool="",
                                   **cfg["backbone_kwargs"])
        self.net = MEGraphAUNet(backbone, num_aus, int(cfg["width"]), stage, neighbours, int(cfg["gnn_layers"]))

    def inference_model(self) -> nn.Module:
        return self.net

    def training_step(self, batch: dict[str, torch.Tensor], state: TrainState) -> dict[str, torch.Tensor]:
        out = self.net(batch["image"])
        labels = batch["label"]
        au = weighted_asymmetric_loss(out["probs"], labels, self.class_weights)
        if self.stage == 1:
            return {"loss": au, "au": au.detach()}
        edge = edge_loss(out["edge_logits"], edge_labels(labels))
        return {"loss": au + self.cfg["lambda"] * edge, "au": au.detach(), "edge": edge.detach()}

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(batch["image"])["probs"].float()

    def init_from_stage(self, stage: str, source: AUMethod) -> dict[str, Any]:
        report = self.init_from_stage1(source.state_dict())
        return {part: len(keys) for part, keys in report.items()}

    def init_from_stage1(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
        """Load a stage-1 MEGraphAU's state dict into this stage-2 one (`load_stage1_weights`)."""
        if self.stage != 2:
            raise ValueError("megraphau: init_from_stage1 is for a stage-2 model")
        return load_stage1_weights(self, state_dict, "megraphau")


def load_stage1_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                        name: str) -> dict[str, list[str]]:
    """Load a stage-1 model's state dict into the stage-2 `model` whose ME-GraphAU head is at
    `net.head` (MEGraphAU, or a method that wraps the same network with more parts).

    Every tensor the two stages share (backbone, projection, AFG, classifier, BatchNorm
    statistics included, and any other part of `model`) must be in `state_dict` with its shape;
    stage 1's GCN is dropped. Returns {"loaded": shared keys, "new": this stage's own keys (GEM,
    GatedGCN, edge head), "dropped": stage 1's own keys}. Raises ValueError naming `name` for a
    missing, misshapen or unknown key.
    """

    def own_part(key: str, stage: int) -> bool:
        return any(key.startswith(f"net.head.{part}.") for part in MEGraphHead.STAGE_PARTS[stage])

    own = model.state_dict()
    shared = [k for k in own if not own_part(k, 2)]
    new = [k for k in own if own_part(k, 2)]
    dropped = [k for k in state_dict if own_part(k, 1)]
    missing = [k for k in shared if k not in state_dict]
    unknown = [k for k in state_dict if k not in shared and k not in dropped]
    mismatched = [f"{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
                  for k in shared if k in state_dict and state_dict[k].shape != own[k].shape]
    problems = [f"{len(keys)} {what} (first: {keys[0]})" for what, keys in
                (("missing tensors", missing), ("shape mismatches", mismatched),
                 ("tensors that are not stage 1's", unknown)) if keys]
    if problems:
        raise ValueError(f"{name}: not a stage-1 state dict of this model: " + "; ".join(problems))
    model.load_state_dict({k: state_dict[k] for k in shared}, strict=False)
    return {"loaded": shared, "new": new, "dropped": dropped}
