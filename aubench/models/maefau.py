"""MAE-FAU: occlusion-robust AU detection by mining the latent space of a masked autoencoder.

Jiang, Wang, McKeown, Wang, "Occlusion-Robust FAU Recognition by Mining Latent Space of Masked
Autoencoders". Registered as `maefau`; one run gives two leaderboard rows, `maefau-teacher` and
`maefau-student`, and a third, `maefau-recon` (the paper's "ME-GraphAU ... reconstructed"
baseline), with `--model reconstruction_baseline=true`. The
MAE reconstruction module is aubench.models.mae, the FAU detection module is ME-GraphAU's
network (aubench.models.megraphau, aubench.models.graph_head).

Network parts (one class, `MAEFAU`, builds the part its stage names in model["part"]):
- "mae" (Section 3.1): the masked autoencoder, a timm ViT encoder that sees only the visible
  tokens (`aubench.ops.gather_tokens`), a decoder that puts a learned mask token at the masked
  positions (`aubench.ops.restore_tokens`), fixed 2-D sin-cos position embeddings, the
  reconstruction loss of Eq. 1 on the masked patches only.
- "teacher" (Sections 3.1-3.2): the occluded face -> the MAE, its mask the occluded patches
  (the protocol's occlusion cells are the ViT's patches: a 14 x 14 grid, 16 px at 224, 4 px at
  56) -> visible patches pasted back from the input (the de-artifacting step) -> the ME-GraphAU
  detection module (backbone, per-token projection, AU feature generators, stage 1: top-K graph
  + GCN; stage 2: GEM edge features, GatedGCN, edge head; cosine classifier). Loss: Eq. 4-5
  (probability shifting by a margin m on the negative term, focusing power gamma, class weights
  from the fold's training labels), plus lambda L_E (Eq. 9-10) in stage 2.
- "student" (Section 3.3): every patch of the occluded image (occluded pixels as they are, no
  mask positions anywhere) -> the MAE encoder with its position embeddings -> the feature
  alignment (the cls token dropped; the downsampling layer, a learned patch merging that
  projects each 2 x 2 window of the 14 x 14 token grid to one token of the student's width,
  giving the 7 x 7 map of the detection module; then two per-token fully connected
  LinearBlocks) -> the ME-GraphAU stage-2 head at that width. The width (model setting
  student_width) is by default half the encoder's, 384 for ViT-B: ME-GraphAU sizes its head so
  from its backbone (Swin-B's 1024 channels -> 512), and it gives Table 4's student size
  (below). Loss Eq. 14: L_AU + lambda L_E + alpha (L_kd^AU + beta L_kd^edge), Eq. 11
  (`au_distillation_loss`) and Eq. 12 (`edge_distillation_loss`) against the frozen teacher's
  outputs on the same occluded image. The teacher reads the batch's occlusion masks;
  the student never does.

Stages (`MAEFAU.stages`, the engine's multi-stage mechanism):
  mae      uses no labels, clean images (Stage.occluded False), MAE's own random masking
           (ratio model["mae_mask_ratio"], 0.75 as MAE), --pretrained loads MAE weights here
  recon1   the reconstruction baseline (Tables 2-3, "ME-GraphAU: 50% random mask reconstructed"):
  recon2   ME-GraphAU stages 1 and 2 trained on clean faces (Stage.occluded False), the MAE from
           `mae` carried along frozen and unused in training; at test time an occluded face is
           reconstructed by the MAE (its occluded patches masked, the visible ones pasted back)
           and then detected: the teacher's test path. Row `maefau-recon`. It shares the one
           MAE with the teacher, as in the paper (both use the same pretrained MAE). Only with
           model setting reconstruction_baseline (`--model reconstruction_baseline=true`): it
           costs as much training as the teacher, and the teacher and student do not need it.
  teacher1 ME-GraphAU stage 1 on reconstructed occluded faces; the MAE from `mae`, frozen
  teacher2 ME-GraphAU stage 2, initialised from teacher1 (GCN dropped, as ME-GraphAU), MAE frozen;
           row `maefau-teacher`
  student  encoder from teacher2's MAE encoder (the face-fine-tuned MAE); AFG / GEM / GatedGCN /
           classifier / edge head from teacher2's head when the student has the teacher's
           width (`tiny`: 32 and 32; the paper: "the AU-specific feature generation and graph
           learning components ... can be seamlessly adopted"), else new (`paper`: 384 against
           512); the alignment new; teacher2 frozen (Stage.frozen_inputs); row `maefau-student`
Images are occluded by the preset's training occlusion (50% random patches; `--train-occlusion
block:0.3` for the paper's block setting) in the teacher and student stages. `--epochs E` sets
teacher stage 1's (and recon1's) epochs; the other stages keep the preset's proportions
(model["stage_epochs"], fractions of E, rounded, at least 1).

Presets: `paper-bp4d` = Section 4.3 on BP4D: MAE ViT-B/16 (decoder 512 x 8, 16 heads) at 224
px, cropped from the aligned face at 256 (at random in training, in the centre at test),
ME-GraphAU with Swin-B (drop path 0.5, as ME-GraphAU's code), head width 512 (the student's
384), AdamW (0.9, 0.999) weight decay 5e-4, batch 48, K = 4, lambda 0.01, T = 2, alpha = 1, beta = 0.1, teacher 30 + 20
epochs at 1e-4 / 1e-6, student 10 epochs at 1e-5. `paper-disfa` = the same with DISFA's rates
(7.5e-5 / 1e-5, student 1e-5). `paper` picks one of the two by the data file's dataset, and is
`paper-bp4d`'s settings on the datasets the paper does not train on. `tiny` = the same architecture for a CPU: a 56 px face, a ViT
with 4 px patches (one patch per occlusion cell, as at 224 px), 64 wide, 2 blocks; a decoder
32 wide, 1 block; the quarter-width ResNet-18 of ME-GraphAU's tiny preset as detection backbone;
the alignment merges 7 x 7 windows of the 14 x 14 tokens into the 2 x 2 map that backbone gives
at 56 px (as 2 x 2 windows give Swin-B's 7 x 7 map at 224 px); teacher 20 + 13 epochs (the
paper's 3 : 2), 6 MAE epochs and 12 student epochs (sized for the CPU demo: the ViT student
trained from scratch needs more than the paper's third of teacher stage 1's epochs).

Size at `paper`, 224 px, 12 AUs (`aubench bench --preset paper`, FLOPs from FlopCounterMode with
attention products counted, MACs = FLOPs / 2; the teacher under 50% patches), beside Table 4:
- student: 91.13 M parameters (ViT-B encoder 85.65 M + alignment 1.48 M, of which 1.18 M the
  patch merging, + stage-2 head at 384 4.00 M), 19.26 GMACs; Table 4: 91.26 M (-0.1%), 18.63
  GMACs (+3.4%). At the teacher's width, 512, the student would be 94.86 M (+3.9%), and no
  alignment brings a 512-wide student within 1%: the encoder and a 512-wide stage-2 head alone
  are 92.76 M (+1.6%).
- teacher as tested (after stage 2): 206.03 M (the MAE with MAE's released 8 x 512 decoder,
  111.66 M, + ME-GraphAU Swin-B stage 2, 94.38 M, Table 4's own ME-GraphAU row), 32.35 GMACs;
  Table 4: 201.47 M (+2.3%), 30.29 GMACs (+6.8%). The network after teacher stage 1 (stage-1
  head: no GEM, GatedGCN or edge head) measures 202.62 M (+0.6%) and 29.71 GMACs (-1.9%),
  within 1% and 2%; the paper does not say which network Table 4 counted. The sum of the
  teacher's two parts exceeds Table 4's figure by 4.56 M, 1.45 of the decoder's 3.15 M blocks:
  no whole decoder depth reproduces it (7 blocks: 202.88 M, +0.7%; 6: 199.73 M, -0.9%), and
  the ImageNet MAE the paper starts from (Section 4.3) is released with 8, which we keep.
- ME-GraphAU Swin-B: 94.38 M (Table 4's exactly), 18.25 GMACs against 21.28: the megraphau
  module explains the difference (the reference code's repeated GEM projections).
The paper names neither ViT-B, Swin-B nor the decoder's size; these are the sizes Table 4's
parameters point to. The MACs are not counted as Table 4 counts them, so their percentages
overstate the agreement: we count attention products and use the megraphau module's cheaper
edge features, where ME-GraphAU's Table 4 row (21.28 against our 18.25) counts the reference
code's repeated GEM projections and, by its size, no attention products. Counted on that basis
(an estimate, not measured) the student would be about 20.4 GMACs (+9% against 18.63) and the
teacher about 34.9 (+15% against 30.29); Table 4's teacher figure less its ME-GraphAU part
(30.29 - 21.28 = 9.0) is about the MAE encoder on the visible tokens alone (8.5 without
attention products), which suggests Table 4 left the decoder (5.1) out.

Where this departs from the paper, and why:
- The paper does not give m or gamma of Eq. 4-5: we use gamma = 1 (ME-GraphAU's loss, which
  the paper says it extends) and m = 0.05 (the asymmetric loss's default clip [37]). Eq. 5
  writes log(p^m) in the positive term too; we shift negatives only, as the asymmetric loss
  [37] that Eq. 4 cites does (with the shift on positives, a positive with p < m would have
  log 0).
- Eq. 1 is computed as MAE's code computes it: the mean squared error over the masked
  patches' pixels (the paper writes an unsquared L2 norm). The teacher pastes the predicted
  pixels into the face, so our default predicts pixels (norm_pix_loss False). The official MAE's
  per-patch normalised targets (norm_pix_loss True, a model setting) lose each masked patch's
  mean and contrast, which cannot be recovered at test time without the occluded pixels.
- The paper does not say how the MAE is fine-tuned on faces (its sentence on it is cut short).
  It calls the pipeline trainable "end to end" and its reconstruction "FAU-aware", which hints
  that the AU loss reaches the MAE; we nevertheless fine-tune the MAE first, alone, with MAE's
  recipe (random masking 0.75, weight decay 0.05, lr 1.5e-4 x batch / 256; AdamW's betas stay
  (0.9, 0.999), the engine's, where MAE uses (0.9, 0.95); the weight decay applies to every
  parameter, biases and norms included, where MAE's code exempts them; no warm-up, where MAE
  warms up for 40 epochs; the engine's augmentation, the 224-of-256 crop, flip and colour jitter
  0.3, where MAE uses RandomResizedCrop (scale 0.2-1) and flip; its lr evaluated once at the
  preset's batch 48, not rescaled by `--batch-size`), for a third of teacher stage 1's epochs,
  and then keep it frozen
  in the teacher stages: Eq. 10 has no reconstruction term, so an MAE trained by the AU loss
  alone would stop being a reconstruction, and the frozen one is also much cheaper.
- The student's encoder starts from the face-fine-tuned MAE (the `mae` stage's, through
  teacher2) and, at `tiny`, its head from the trained teacher's; Section 4.3 initialises the MAE
  models of both teacher and student from ImageNet and says nothing of the student's head. We
  start from the faces because our `mae` stage is how the MAE reaches faces at all (without
  --pretrained it starts from random weights), and from the teacher's head where the widths
  allow because the paper's "seamlessly adopted" reads so. At `paper` (384 against 512) the
  head starts new.
- The student's encoder is fine-tuned with the rest of the student (at the student's rate).
- Every stage decays its learning rate on a cosine per step from the rate given, without
  warm-up (the paper gives only initial rates).
- The test crop is the centre one (the paper names only its training crops; ME-GraphAU's code
  crops the centre at test). Faces are augmented with the engine's flip and colour jitter
  (0.3), no rotation (the same as ME-GraphAU's module).
- The reconstruction baseline uses the face-fine-tuned MAE of the `mae` stage (the paper's uses
  the ImageNet-pretrained MAE as it is), and the teacher's loss (with the margin), lambda and
  schedule, so that it differs from the teacher only in its training images (clean instead of
  reconstructed occluded faces); ME-GraphAU's own recipe (m = 0, lambda 0.05, 20 + 20 epochs)
  is the registered `megraphau` method.
- D_KL(p^s, p^t) in Eq. 11-12 is computed as KL(p^t || p^s) (`F.kl_div(log p_s, p_t)`: the
  teacher's distribution is the target), the direction of the logit distillation the paper
  cites [29]; read literally, the paper's argument order is the reverse. Eq. 11 and 12 are
  averaged over frames and AUs / edges; labels play no part in them.
- In Eq. 5 the focusing weight (p^m)^gamma carries no gradient and the class weights w_i are
  normalised to mean 1 (the paper's w_i = N (1/r_i) / sum_j 1/r_j), as in ME-GraphAU's code
  (aubench.models.graph_head.weighted_asymmetric_loss).
- The detection module is ME-GraphAU's as aubench builds it, with the departures from the
  paper's Eq. 2 and Eq. 8 that aubench.models.graph_head documents: the stage-1 adjacency is
  normalised D^-1/2 A D^-1/2 with ties at the K-th similarity kept, the edge cross-attention
  takes its query from node j (the reference code's order), and the GatedGCN follows the
  reference code (1/N, softmax over sigmoid gates).
- The feature alignment's layers are our choice within the paper's words ("a downsampling
  layer and multiple fully connected layers"): the downsampling is a learned patch merging (a
  p-strided p x p convolution over the token grid, p = model["align_pool"], to the student's
  width), then two per-token LinearBlocks; the width, which the paper does not give either,
  is half the encoder's (see the sizes above). Average pooling (`--model align_downsample=avg`,
  the parameter-free reading) is kept as a setting: on the demo data a ViT trained from scratch
  carries AU cues in the place of a token within its window, which pooling averages away (see
  docs/methods/maefau.md for the two measured side by side, on test folds; on validation
  splits of the training subjects, folds 1-3, benchmarks/validation_defaults.py, merging 60.1
  against pooling 56.3, so the default stands). At `paper` the merging costs
  1.18 M parameters of the student's 91.1 M.
- Occluded patches are masked; when the images of a batch have different numbers of occluded
  patches (blocks of slightly different areas), random visible patches are masked too until
  all have as many (the encoder takes one number of tokens per batch); in evaluation that draw
  is seeded by the batch's first frame row, so results repeat for the same batch size and
  number of processes. (The protocol's patches always cover the same number of cells, and its
  30% blocks at 14 x 14 cells are all 60 cells, so neither needs a top-up.)
- The ImageNet initialisation of the MAE and of the detection backbone comes from --pretrained:
  `--pretrained mae=SOURCE` (or a bare SOURCE; the official MAE release's file, or
  timm:vit_base_patch16_224.mae) loads in the `mae` stage, `--pretrained backbone=SOURCE` (e.g.
  timm:swin_base_patch4_window7_224.ms_in22k_ft_in1k) in teacher stage 1 (and recon1); without
  them both start from random weights (results say so).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aubench.data.occlusion import GRID_CELLS
from aubench.models.backbones import create_backbone
from aubench.models.base import WEIGHTS_SETTING, AUMethod, Preset, Stage, TrainState, model_settings, register_method
from aubench.models.graph_head import LinearBlock, MEGraphHead, edge_labels, edge_loss, weighted_asymmetric_loss
from aubench.models.mae import (MAE_PRESETS, MAEEncoder, MaskedAutoencoder, load_mae_weights, mae_loss,
                                occlusion_cells, occlusion_token_masks)
from aubench.models.megraphau import MEGraphAUNet, load_stage1_weights
from aubench.ops.masking import random_masking

PARTS = ("mae", "teacher", "student")

_DEFAULTS: dict[str, Any] = {
    "part": "student",              # which network this stage trains (set by stages())
    "stage": 2,                     # the teacher's ME-GraphAU stage, 1 or 2
    # MAE reconstruction module
    "mae": "paper",                 # aubench.models.mae.MAE_PRESETS entry
    "pretrained_path": None,        # retired: --pretrained mae=SOURCE (kept for stored presets)
    "mae_mask_ratio": 0.75,
    "norm_pix_loss": False,
    # FAU detection module (ME-GraphAU)
    "backbone": "swin_base_patch4_window7_224", "backbone_kwargs": {"drop_path_rate": 0.5},
    "backbone_pretrained_path": None,  # retired: --pretrained backbone=SOURCE (kept for stored presets)
    "width": 512, "neighbours": 4, "gnn_layers": 2,  # K = 4 on BP4D and DISFA (Section 4.3)
    # the student's alignment output and head width; None: half the MAE encoder's width
    # (ME-GraphAU's rule, which halves its backbone's channels: 1024 -> 512 for Swin-B)
    "student_width": None,
    # losses
    "lambda": 0.01, "gamma": 1.0, "margin": 0.05, "temperature": 2.0, "alpha": 1.0, "beta": 0.1,
    # student feature alignment: downsampling window (14 x 14 tokens -> 7 x 7 at 2) and layer
    "align_pool": 2, "align_downsample": "merge",
    # stages: epochs as fractions of Preset.epochs (teacher stage 1's), learning rates
    "stage_epochs": {"mae": 1 / 3, "teacher1": 1.0, "teacher2": 2 / 3, "student": 1 / 3},
    "stage_lr": {"mae": 1.5e-4 * 48 / 256, "teacher2": 1e-6, "student": 1e-5},  # teacher1: Preset.lr
    "mae_weight_decay": 0.05,
    "reconstruction_baseline": False,  # also train and test the recon1 / recon2 stages (row maefau-recon)
    "augment": True,
}


# ---------------------------------------------------------------------------------------------
# Losses


def au_distillation_loss(student_probs: torch.Tensor, teacher_probs: torch.Tensor,
                         eps: float = 1e-6) -> torch.Tensor:
    """Eq. 11: per-AU two-way KL, KL(p_t || p_s) + KL(1 - p_t || 1 - p_s), averaged over frames
    and AUs. Probabilities are squeezed into [eps, 1 - eps] (p (1 - 2 eps) + eps): both heads can
    output exactly 0, and a squeeze, unlike a clamp, keeps the student's gradient there."""
    ps = student_probs.float() * (1 - 2 * eps) + eps
    pt = teacher_probs.float() * (1 - 2 * eps) + eps
    kl = pt * (pt.log() - ps.log()) + (1 - pt) * ((1 - pt).log() - (1 - ps).log())
    return kl.mean()


def edge_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                           temperature: float) -> torch.Tensor:
    """Eq. 12: T^2 KL(softmax(z_t / T) || softmax(z_s / T)) per edge, averaged over frames and
    edges; logits (B, E, 4)."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(dim=-1)
    return temperature ** 2 * kl.mean()


# ---------------------------------------------------------------------------------------------
# Modules


class FeatureAlignment(nn.Module):
    """MAE latent tokens (B, 1 + gh * gw, D) -> face tokens (B, gh/p * gw/p, width): the cls
    token dropped, the downsampling layer on the token grid, then two per-token LinearBlocks (the
    fully connected layers).

    downsample "merge" (the default): a learned patch merging, each p x p window of tokens
    projected to one token of `width` channels (a p-strided p x p convolution, Swin's patch
    merging as one linear map), so every output token keeps where in its window a cue lies;
    "avg": p x p average pooling (D channels) followed by the LinearBlocks, a parameter-free
    reading of the paper's words."""

    DOWNSAMPLING = ("merge", "avg")

    def __init__(self, dim: int, grid: tuple[int, int], width: int, pool: int = 2, downsample: str = "merge"):
        super().__init__()
        if grid[0] % pool or grid[1] % pool:
            raise ValueError(f"feature alignment: a {grid[0]} x {grid[1]} token grid does not pool by {pool}")
        if downsample not in self.DOWNSAMPLING:
            raise ValueError(f"feature alignment: downsample must be one of {', '.join(self.DOWNSAMPLING)}, "
                             f"got {downsample!r}")
        self.grid = grid
        if downsample == "merge":
            self.downsample: nn.Module = nn.Conv2d(dim, width, kernel_size=pool, stride=pool)
            self.fc = nn.Sequential(LinearBlock(width, width), LinearBlock(width, width))
        else:
            self.downsample = nn.AvgPool2d(pool)
            self.fc = nn.Sequential(LinearBlock(dim, width), LinearBlock(width, width))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        tokens = latent[:, 1:]
        grid = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self.grid)
        return self.fc(self.downsample(grid).flatten(2).transpose(1, 2))


def _stage_preset(preset: Preset, stage_name: str, part: str, **model: Any) -> Preset:
    """The preset of one stage: its epochs (a fraction of preset.epochs), learning rate, weight
    decay and model settings."""
    cfg = {**_DEFAULTS, **preset.model}
    fractions, rates = cfg["stage_epochs"], cfg["stage_lr"]
    key = {"recon1": "teacher1", "recon2": "teacher2"}.get(stage_name, stage_name)
    epochs = max(1, round(preset.epochs * fractions[key]))
    lr = preset.lr if key == "teacher1" else rates[key]
    weight_decay = cfg["mae_weight_decay"] if part == "mae" else preset.weight_decay
    return Preset(**{**preset.__dict__, "epochs": epochs, "lr": lr, "weight_decay": weight_decay,
                     "model": {**preset.model, "part": part, **model}})


# Section 4.3 (Implementation Details), what every dataset shares.
SECTION_4_3 = ("MAE-FAU Section 4.3: batch 48, AdamW wd 5e-4, K 4, lambda 0.01, T 2, alpha 1, beta 0.1, "
               "30 + 20 + 10 epochs, 224 crops of 256 aligned faces, ImageNet MAE and backbone")


def _paper_preset(name: str, rates: tuple[float, float, float], source: str) -> Preset:
    teacher1, teacher2, student = rates
    model = dict(_DEFAULTS, stage_lr={**_DEFAULTS["stage_lr"], "teacher2": teacher2, "student": student})
    return Preset(name=name, image_size=224, epochs=30, batch_size=48, optimizer="adamw", lr=teacher1,
                  weight_decay=5e-4, schedule="cosine", warmup_epochs=0, rotation=0.0, crop_fraction=224 / 256,
                  train_occlusion="patches:0.5", paper_init="ImageNet", source=source, model=model)


def _paper_presets() -> dict[str, Preset]:
    """`paper-bp4d` and `paper-disfa`: Section 4.3's rates for each dataset (teacher stage 1,
    teacher stage 2, student); `paper`: the BP4D ones, for the datasets the paper does not train on."""
    bp4d, disfa = (1e-4, 1e-6, 1e-5), (7.5e-5, 1e-5, 1e-5)
    bp4d_source = f"{SECTION_4_3}; BP4D rates 1e-4 / 1e-6 / 1e-5"
    return {"paper": _paper_preset("paper", bp4d, f"paper-bp4d's settings, for other datasets: {bp4d_source}"),
            "paper-bp4d": _paper_preset("paper-bp4d", bp4d, bp4d_source),
            "paper-disfa": _paper_preset("paper-disfa", disfa, f"{SECTION_4_3}; DISFA rates 7.5e-5 / 1e-5 / 1e-5")}


def _tiny_preset() -> Preset:
    # 56 px = 14 cells of 4 px: one ViT patch per occlusion cell. The detection backbone is
    # ME-GraphAU's tiny one (quarter-width ResNet-18, 2 x 2 tokens at 56 px). Rates as the other
    # tiny presets (2e-3; stage 2 at a quarter); the student at 2e-3 too (on fold 1 of the demo
    # data no rate from 5e-4 to 5e-3 brought it above the all-positive baseline: see
    # docs/methods/maefau.md); the MAE from scratch needs far more than MAE's fine-tuning rate.
    # Epochs sized for the CPU demo.
    model = dict(_DEFAULTS, mae="tiny", backbone="resnet18",
                 backbone_kwargs={"channels": (16, 32, 64, 128), "stem_width": 16}, width=32, align_pool=7,
                 stage_epochs={"mae": 0.3, "teacher1": 1.0, "teacher2": 2 / 3, "student": 0.6},
                 stage_lr={"mae": 1e-3, "teacher2": 5e-4, "student": 2e-3})
    return Preset(name="tiny", image_size=56, epochs=20, batch_size=16, optimizer="adamw", lr=2e-3,
                  weight_decay=1e-4, schedule="cosine", warmup_epochs=0, rotation=0.0,
                  train_occlusion="patches:0.5", model=model)


@register_method("maefau")
class MAEFAU(AUMethod):
    """One stage of MAE-FAU (model["part"]: "mae", "teacher" or "student"); see the module docstring."""

    input_kind = "frame"
    presets = {**_paper_presets(), "tiny": _tiny_preset()}
    dataset_presets = {"BP4D": "paper-bp4d", "DISFA": "paper-disfa"}
    pretrained_parts = {  # the MAE first: a bare --pretrained SOURCE gives it
        "mae": "the masked autoencoder (the official MAE release's file, or timm:vit_base_patch16_224.mae: "
               "encoder only), loaded in the mae stage",
        "backbone": "the detection backbone (Swin-B at paper, ImageNet weights), loaded in teacher stage 1"}

    @classmethod
    def stages(cls, preset: Preset) -> list[Stage]:
        mae = Stage("mae", _stage_preset(preset, "mae", "mae"), uses_labels=False, occluded=False)
        recon = [  # the reconstruction baseline: ME-GraphAU on clean faces, with the same MAE
            Stage("recon1", _stage_preset(preset, "recon1", "teacher", stage=1), init_from="mae", frozen=("mae",),
                  occluded=False),
            Stage("recon2", _stage_preset(preset, "recon2", "teacher", stage=2), init_from="recon1",
                  frozen=("mae",), occluded=False, row="recon"),
        ] if {**_DEFAULTS, **preset.model}["reconstruction_baseline"] else []
        return [
            mae, *recon,
            Stage("teacher1", _stage_preset(preset, "teacher1", "teacher", stage=1), init_from="mae",
                  frozen=("mae",)),
            Stage("teacher2", _stage_preset(preset, "teacher2", "teacher", stage=2), init_from="teacher1",
                  frozen=("mae",), row="teacher"),
            Stage("student", _stage_preset(preset, "student", "student"), init_from="teacher2",
                  frozen_inputs=("teacher2",), row="student"),
        ]

    @classmethod
    def min_image_size(cls, preset: Preset) -> int:
        return GRID_CELLS * _mae_settings(preset)["patch_size"]

    def __init__(self, num_aus: int, preset: Preset, class_weights: torch.Tensor | None = None):
        super().__init__(num_aus, preset, class_weights)
        cfg = model_settings(self.name, preset, _DEFAULTS)
        if cfg["part"] not in PARTS:
            raise ValueError(f"{self.name}: model setting part must be one of {', '.join(PARTS)}, got {cfg['part']!r}")
        if cfg["stage"] not in (1, 2):
            raise ValueError(f"{self.name}: model setting stage must be 1 or 2, got {cfg['stage']!r}")
        mae = _mae_settings(preset)
        if preset.image_size != GRID_CELLS * mae["patch_size"]:
            raise ValueError(f"image size {preset.image_size} is not {GRID_CELLS} ViT patches of {mae['patch_size']} "
                             f"px: the occlusion grid's cells must be the MAE's patches (use "
                             f"{GRID_CELLS * mae['patch_size']})")
        neighbours = int(cfg["neighbours"])
        if cfg["part"] == "teacher" and cfg["stage"] == 1 and not 0 < neighbours < num_aus:
            raise ValueError(f"{self.name}: model setting neighbours (K of the stage-1 graph) must be in "
                             f"1..{num_aus - 1} for {num_aus} AUs, got {neighbours}")
        self.cfg = cfg
        self.part = cfg["part"]
        self.patch_size = mae["patch_size"]
        width = int(cfg["width"])
        if self.part in ("mae", "teacher"):
            self.mae = MaskedAutoencoder(**mae)
            if self.part == "mae" and cfg[WEIGHTS_SETTING].get("mae") is not None:
                load_mae_weights(self.mae, cfg[WEIGHTS_SETTING]["mae"])
        if self.part == "teacher":
            # stage 2 starts from stage 1's backbone
            weights = cfg[WEIGHTS_SETTING].get("backbone") if cfg["stage"] == 1 else None
            backbone = create_backbone(cfg["backbone"], weights, num_classes=0, global_pool="",
                                       **cfg["backbone_kwargs"])
            self.net = MEGraphAUNet(backbone, num_aus, width, cfg["stage"], neighbours, int(cfg["gnn_layers"]))
        if self.part == "student":
            self.encoder = MAEEncoder(mae["encoder_name"], mae["image_size"], mae["patch_size"],
                                      **mae.get("encoder_kwargs", {}))
            width = student_width(cfg, self.encoder.dim)
            self.align = FeatureAlignment(self.encoder.dim, self.encoder.grid, width, int(cfg["align_pool"]),
                                          cfg["align_downsample"])
            self.head = MEGraphHead(width, num_aus, 2, None, int(cfg["gnn_layers"]))

    def test_inputs(self) -> tuple[str, ...]:
        """The teacher (and the reconstruction baseline, a teacher on clean training) is told
        which patches are occluded: it masks them for the MAE, as the paper's teacher does."""
        return (*super().test_inputs(), *(("occlusion_mask",) if self.part == "teacher" else ()))

    # -- the teacher's input: the MAE's reconstruction of the occluded face ---------------------
    def token_masks(self, batch: dict[str, torch.Tensor]):
        """(ids_keep, ids_restore, mask) of the batch's occlusion (its occluded patches masked),
        or None when no pixel is occluded (then the reconstruction would be the input itself)."""
        pixels = batch.get("occlusion")
        if pixels is None or not bool(pixels.any()):
            return None
        cells = occlusion_cells(pixels, self.patch_size)
        generator = None
        if not self.training:  # the top-up draw repeats in every evaluation
            generator = torch.Generator(device=cells.device).manual_seed(int(batch["index"].reshape(-1)[0]))
        return occlusion_token_masks(cells, generator, device=cells.device)

    def detection_input(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The teacher's detection module input: the face with its occluded patches reconstructed."""
        masks = self.token_masks(batch)
        if masks is None:
            return batch["image"]
        return self.mae.inpaint(batch["image"], masks)

    def outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"probs", ["edge_logits"]} of the teacher or the student on the batch's (occluded) images."""
        if self.part == "teacher":
            return self.net(self.detection_input(batch))
        if self.part == "student":
            return self.head(self.align(self.encoder(batch["image"])))  # every patch, no mask
        raise ValueError(f"{self.name}: the MAE stage detects no AUs")

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], state: TrainState) -> dict[str, torch.Tensor]:
        if self.part == "mae":
            images = batch["image"]
            masks = random_masking(images.shape[0], self.mae.encoder.num_patches, self.cfg["mae_mask_ratio"],
                                   device=images.device)
            loss, _, _ = self.mae(images, masks=masks)
            return {"loss": loss, "reconstruction": loss.detach()}
        cfg, labels = self.cfg, batch["label"]
        out = self.outputs(batch)
        au = weighted_asymmetric_loss(out["probs"], labels, self.class_weights, gamma=cfg["gamma"],
                                      margin=cfg["margin"])
        parts = {"au": au.detach()}
        loss = au
        if "edge_logits" in out:
            edge = edge_loss(out["edge_logits"], edge_labels(labels))
            loss = loss + cfg["lambda"] * edge
            parts["edge"] = edge.detach()
        if self.part == "student":
            teacher = self.frozen_inputs["teacher2"]
            with torch.no_grad():
                target = teacher.outputs(batch)
            kd_au = au_distillation_loss(out["probs"], target["probs"])
            kd_edge = edge_distillation_loss(out["edge_logits"], target["edge_logits"], cfg["temperature"])
            loss = loss + cfg["alpha"] * (kd_au + cfg["beta"] * kd_edge)
            parts.update(kd_au=kd_au.detach(), kd_edge=kd_edge.detach())
        return {"loss": loss, **parts}

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.outputs(batch)["probs"].float()

    def inference_model(self) -> nn.Module:
        return self  # the teacher's MAE runs at test time too

    # -- stage initialisation ----------------------------------------------------------------------
    def init_from_stage(self, stage: str, source: AUMethod) -> dict[str, Any]:
        if self.part == "teacher" and source.part == "mae":
            self.mae.load_state_dict(source.mae.state_dict())
            return {"mae": len(source.mae.state_dict())}
        if self.part == "teacher" and source.part == "teacher":
            report = load_stage1_weights(self, source.state_dict(), self.name)
            return {part: len(keys) for part, keys in report.items()}
        if self.part == "student" and source.part == "teacher":
            self.encoder.load_state_dict(source.mae.encoder.state_dict())
            if source.net.head.edge_head.in_features != self.head.edge_head.in_features:
                # another width than the teacher's (`paper`: 384 against 512): the head starts new
                return {"encoder": len(self.encoder.state_dict()),
                        "new": len(self.align.state_dict()) + len(self.head.state_dict())}
            self.head.load_state_dict(source.net.head.state_dict())
            return {"encoder": len(self.encoder.state_dict()), "head": len(self.head.state_dict()),
                    "new": len(self.align.state_dict())}
        raise ValueError(f"{self.name}: a {self.part} stage cannot start from a {source.part} stage ({stage!r})")


def student_width(cfg: dict[str, Any], encoder_dim: int) -> int:
    """The student's feature alignment and head width: model setting student_width, or half the
    MAE encoder's width when it is None."""
    return int(cfg["student_width"]) if cfg["student_width"] is not None else encoder_dim // 2


def _mae_settings(preset: Preset) -> dict[str, Any]:
    """MaskedAutoencoder keyword arguments of a preset (its MAE_PRESETS entry at the preset's size)."""
    cfg = {**_DEFAULTS, **preset.model}
    if cfg["mae"] not in MAE_PRESETS:
        raise ValueError(f"unknown MAE preset {cfg['mae']!r}; expected one of {', '.join(MAE_PRESETS)}")
    return {**MAE_PRESETS[cfg["mae"]], "image_size": preset.image_size, "norm_pix_loss": bool(cfg["norm_pix_loss"])}
