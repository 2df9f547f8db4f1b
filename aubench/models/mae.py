"""Masked autoencoder (MAE) reconstruction module of MAE-FAU (Jiang et al., Section 3.1).

Faithful to the official MAE (He et al., facebookresearch/mae, models_mae.py):
- encoder: a timm ViT (built with `create_backbone`, never downloaded) that sees only the visible
  patch tokens: patch embedding, fixed 2-D sine-cosine position embeddings (not learned), the
  visible tokens kept with `aubench.ops.gather_tokens`, the cls token prepended (with its zero
  position embedding), the blocks and the final norm. Without ids_keep every token goes through
  (the path of MAE-FAU's student, Section 3.3).
- decoder: a linear from encoder to decoder width, a learned mask token put at the masked
  places with `aubench.ops.restore_tokens` (the cls token kept aside and prepended, as in MAE),
  fixed sine-cosine position embeddings, timm `Block`s, a norm and a per-patch pixel prediction.
- loss (Eq. 1): mean squared error per patch, averaged over the masked patches only; with
  norm_pix_loss (MAE's option and this class's default; MAE-FAU passes False, see
  aubench.models.maefau) against targets normalised per patch.
- `paste_visible`: MAE-FAU's de-artifacting step, visible patches from the input, masked ones
  from the reconstruction.

Presets (`MAE_PRESETS`, `build_mae`): "paper" is ViT-B/16 at 224 px with MAE's decoder (512 wide,
8 blocks, 16 heads); "tiny" is a 56 px ViT with 4 px patches, so that, like 16 px patches at
224 px, one patch is exactly one cell of the occlusion protocol's 14 x 14 grid.

Departure from MAE: the encoder keeps timm's initialisation (MAE re-initialises every linear
xavier-uniform and the patch projection as a linear); the decoder follows MAE's. This only
matters when training from scratch; MAE-FAU starts from pretrained MAE weights.

Index tensors follow `aubench.ops.masking`: ids_keep (B, L_keep), ids_restore (B, L), mask (B, L)
float (1 = masked). Positions are row-major on the patch grid, as the occlusion cells are.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from timm.models.vision_transformer import Block

from aubench.models.backbones import BackboneError, WeightsError, create_backbone, read_source, weight_problems
from aubench.ops.masking import _masks_from_order, random_masking
from aubench.ops.token_gather import gather_tokens, restore_tokens

_LAYER_NORM = partial(nn.LayerNorm, eps=1e-6)  # MAE's norm layer

MAE_PRESETS: dict[str, dict[str, Any]] = {
    # The official MAE ViT-B/16: encoder 768 x 12 (12 heads), decoder 512 x 8 (16 heads).
    "paper": dict(encoder_name="vit_base_patch16_224", image_size=224, patch_size=16,
                  decoder_dim=512, decoder_depth=8, decoder_heads=16),
    # 56 px / 4 px patches = the protocol's 14 x 14 cells; small enough for CPU tests.
    "tiny": dict(encoder_name="vit_tiny_patch16_224", image_size=56, patch_size=4,
                 encoder_kwargs=dict(embed_dim=64, depth=2, num_heads=2),
                 decoder_dim=32, decoder_depth=1, decoder_heads=2),
}


# ---------------------------------------------------------------------------------------------
# Position embeddings, patches, loss


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(N, dim): sin(pos * omega_i) then cos(pos * omega_i), omega_i = 1 / 10000^(2i / dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.reshape(-1, 1).double() * omega
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings, (grid_h * grid_w [+ 1], dim) float32.

    The official MAE's form: the first dim / 2 channels encode the column (x) coordinate, the
    last dim / 2 the row (y), each with `_sincos_1d`; positions are row-major. With cls_token a
    zero row comes first (the cls token's embedding). dim must be a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {dim}")
    rows = torch.arange(grid_h).repeat_interleave(grid_w)
    cols = torch.arange(grid_w).repeat(grid_h)
    emb = torch.cat([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb])
    return emb.float()


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, patch * patch * C), patches row-major, each flattened as
    (row, col, channel): the official MAE's layout, so its decoder_pred weights fit."""
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image {h} x {w} is not a whole number of {patch} px patches")
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(x: torch.Tensor, patch: int, grid_h: int, grid_w: int | None = None) -> torch.Tensor:
    """Inverse of `patchify`: (B, L, patch * patch * C) -> (B, C, grid_h * patch, grid_w * patch)."""
    grid_w = grid_h if grid_w is None else grid_w
    b, length, width = x.shape
    channels = width // (patch * patch)
    if length != grid_h * grid_w or channels * patch * patch != width:
        raise ValueError(f"{length} tokens of width {width} are not a {grid_h} x {grid_w} grid of "
                         f"{patch} px patches")
    x = x.reshape(b, grid_h, grid_w, patch, patch, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(b, channels, grid_h * patch, grid_w * patch)


def _patch_stats(patches: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch mean and sqrt(var + eps) over the patch's pixels (torch's default unbiased
    variance, as the official MAE)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return mean, (var + eps) ** 0.5


def mae_loss(pred: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True,
             patch: int | None = None) -> torch.Tensor:
    """Eq. 1 / MAE's loss: per-patch mean squared error, averaged over masked patches only.

    pred (B, L, p*p*C), images (B, C, H, W), mask (B, L) with 1 = masked. With norm_pix the
    target of each patch is normalised by its own mean and variance (eps 1e-6). The patch size
    is inferred from pred when not given. A mask with no masked patch gives 0 (not NaN).
    """
    if patch is None:
        patch = int(round((pred.shape[-1] / images.shape[1]) ** 0.5))
    target = patchify(images, patch)
    if norm_pix:
        mean, std = _patch_stats(target)
        target = (target - mean) / std
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1)


def paste_visible(reconstruction: torch.Tensor, images: torch.Tensor, mask: torch.Tensor,
                  patch: int, norm_pix: bool = False) -> torch.Tensor:
    """MAE-FAU's de-artifacting step: visible patches copied from `images`, masked patches from
    the reconstruction. Returns (B, C, H, W); visible pixels equal the input exactly.

    reconstruction: the decoder's prediction (B, L, p*p*C). With norm_pix=False it is in the
    input's pixel units (the official MAE visualisation, `x * (1 - mask) + y * mask`, does this
    with a model trained on raw pixels). With norm_pix=True (a model trained with norm_pix_loss)
    each predicted patch is in its own normalised units, and its true mean and variance are
    unknown where the patch is occluded; MAE-FAU does not say how it de-normalises, so we use
    only visible information: each masked patch gets mean = the average of the visible patches'
    means and std = the average of their stds, per image. (Using the masked patches' own
    statistics, as MAE's notebook effectively does, would leak the occluded pixels.)
    """
    target = patchify(images, patch)
    if reconstruction.shape != target.shape:
        raise ValueError(f"reconstruction {tuple(reconstruction.shape)} does not match the "
                         f"images' patches {tuple(target.shape)}")
    keep = (mask < 0.5).unsqueeze(-1)
    if norm_pix:
        mean, std = _patch_stats(target)
        weight = keep.to(target.dtype)
        count = weight.sum(dim=1, keepdim=True).clamp_min(1)
        visible_mean = (mean * weight).sum(dim=1, keepdim=True) / count
        visible_std = (std * weight).sum(dim=1, keepdim=True) / count
        reconstruction = reconstruction * visible_std + visible_mean
    pasted = torch.where(keep, target, reconstruction.to(target.dtype))
    grid_h, grid_w = images.shape[2] // patch, images.shape[3] // patch
    return unpatchify(pasted, patch, grid_h, grid_w)


# ---------------------------------------------------------------------------------------------
# Masks


def occlusion_cells(pixel_mask: torch.Tensor, patch: int) -> torch.Tensor:
    """Bool (B, H / patch, W / patch) patch grid of a protocol pixel mask (B, H, W) or (H, W)
    (`aubench.data.occlusion.occlusion_mask`, True = occluded). Each patch must be wholly
    occluded or wholly visible, which holds when a patch is one cell of the 14 x 14 grid (both
    presets); otherwise ValueError, as a patch-level mask would then be ambiguous."""
    if pixel_mask.dim() == 2:
        pixel_mask = pixel_mask.unsqueeze(0)
    b, h, w = pixel_mask.shape
    if h % patch or w % patch:
        raise ValueError(f"occlusion mask {h} x {w} is not a whole number of {patch} px patches")
    per_patch = pixel_mask.reshape(b, h // patch, patch, w // patch, patch).permute(0, 1, 3, 2, 4)
    per_patch = per_patch.reshape(b, h // patch, w // patch, patch * patch)
    cells = per_patch.all(dim=-1)
    if not torch.equal(cells, per_patch.any(dim=-1)):
        raise ValueError(f"occlusion mask has {patch} px patches that are only partly occluded: "
                         "its cells are not the model's patches")
    return cells


def occlusion_token_masks(cells: torch.Tensor, generator: torch.Generator | None = None,
                          device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids_keep, ids_restore, mask) from protocol occlusion masks on the patch grid.

    cells: bool (B, gh, gw) (or (gh, gw) for one image), True = occluded cell; with one patch per
    cell (both presets) an occluded cell is a masked token. `gather_tokens` needs one L_keep for
    the batch, so, as `block_masking` tops up its rectangle, images with fewer occluded cells
    than the batch's most occluded one get random extra visible patches masked (drawn from
    `generator`) until every image masks that many. Every occluded patch is always masked.
    """
    if cells.dim() == 2:
        cells = cells.unsqueeze(0)
    if cells.dim() != 3 or cells.dtype != torch.bool:
        raise ValueError(f"occlusion cells must be a bool (B, gh, gw) tensor, got "
                         f"{cells.dtype} {tuple(cells.shape)}")
    occluded = cells.reshape(cells.shape[0], -1)
    length = occluded.shape[1]
    num_mask = int(occluded.sum(dim=1).max()) if occluded.shape[0] else 0
    noise = torch.rand(occluded.shape, generator=generator,
                       device=generator.device if generator is not None else occluded.device)
    # Occluded patches score above every visible one, so they sort into the masked tail.
    score = noise + 2.0 * occluded.to(noise.device)
    return _masks_from_order(score, length - num_mask, device)


# ---------------------------------------------------------------------------------------------
# Modules


class MAEEncoder(nn.Module):
    """A timm ViT that encodes the visible patches only (see the module docstring)."""

    def __init__(self, name: str = "vit_base_patch16_224", image_size: int = 224,
                 patch_size: int = 16, **kwargs: Any):
        super().__init__()
        # pos_embed="none": timm's learned table is replaced by MAE's fixed sin-cos one.
        self.vit = create_backbone(name, num_classes=0, global_pool="", img_size=image_size,
                                   patch_size=patch_size, pos_embed="none", **kwargs)
        self.patch_size = patch_size
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.dim = self.vit.embed_dim
        if self.vit.cls_token is None:
            raise BackboneError(f"MAE needs a ViT with a cls token; {name} has none")
        self.register_buffer("pos_embed", sincos_pos_embed_2d(self.dim, *self.grid)[None],
                             persistent=False)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens with their position embeddings, (B, L, D), before any masking."""
        return self.vit.patch_embed(images) + self.pos_embed[:, 1:].to(images.dtype)

    def forward(self, images: torch.Tensor, ids_keep: torch.Tensor | None = None,
                validate: bool = False) -> torch.Tensor:
        """(B, 1 + L_keep, D): the cls token then the kept tokens (in ids_keep's order).
        validate=False as ids come from the mask makers; pass True for hand-made ids."""
        x = self.embed(images)
        if ids_keep is not None:
            x = gather_tokens(x, ids_keep, validate=validate)
        cls = (self.vit.cls_token + self.pos_embed[:, :1]).to(x.dtype).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = self.vit.norm_pre(x)
        x = self.vit.blocks(x)
        return self.vit.norm(x)


class MAEDecoder(nn.Module):
    """MAE's light decoder: encoder tokens + mask tokens -> per-patch pixels (B, L, p*p*C)."""

    def __init__(self, encoder_dim: int, grid: tuple[int, int], patch_size: int, dim: int = 512,
                 depth: int = 8, num_heads: int = 16, mlp_ratio: float = 4.0, in_chans: int = 3):
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(dim, *grid)[None], persistent=False)
        self.blocks = nn.Sequential(*[
            Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=_LAYER_NORM)
            for _ in range(depth)
        ])
        self.norm = _LAYER_NORM(dim)
        self.pred = nn.Linear(dim, patch_size * patch_size * in_chans)
        self._init_weights()

    def _init_weights(self) -> None:
        # As MAE: normal(0.02) mask token, xavier-uniform linears with zero bias, unit LayerNorms.
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def tokens(self, latent: torch.Tensor, ids_restore: torch.Tensor | None,
               validate: bool = False) -> torch.Tensor:
        """The decoder's input (B, 1 + L, dim) before position embeddings: the cls token, then
        every position in order, the visible ones from `latent` and the mask token elsewhere."""
        x = self.embed(latent)
        cls, patches = x[:, :1], x[:, 1:]
        if ids_restore is not None:
            patches = restore_tokens(patches, ids_restore, self.mask_token.to(x.dtype),
                                     validate=validate)
        return torch.cat([cls, patches], dim=1)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor | None = None,
                validate: bool = False) -> torch.Tensor:
        x = self.tokens(latent, ids_restore, validate) + self.pos_embed.to(latent.dtype)
        x = self.norm(self.blocks(x))
        return self.pred(x)[:, 1:]


class MaskedAutoencoder(nn.Module):
    """Encoder + decoder + MAE loss. `forward(images, mask_ratio=0.75)` masks at random (MAE's
    random_masking); `forward(images, masks=(ids_keep, ids_restore, mask))` uses given masks,
    e.g. from `occlusion_token_masks` or `block_masking`. Returns (loss, pred, mask)."""

    def __init__(self, encoder_name: str = "vit_base_patch16_224", image_size: int = 224,
                 patch_size: int = 16, decoder_dim: int = 512, decoder_depth: int = 8,
                 decoder_heads: int = 16, norm_pix_loss: bool = True,
                 encoder_kwargs: dict[str, Any] | None = None):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of patch size {patch_size}")
        self.encoder = MAEEncoder(encoder_name, image_size, patch_size, **(encoder_kwargs or {}))
        self.decoder = MAEDecoder(self.encoder.dim, self.encoder.grid, patch_size, decoder_dim,
                                  decoder_depth, decoder_heads)
        self.patch_size = patch_size
        self.norm_pix_loss = norm_pix_loss

    def forward(self, images: torch.Tensor, mask_ratio: float = 0.75,
                masks: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                generator: torch.Generator | None = None, validate: bool = False):
        """Given masks are trusted (validate=False) as they should come from the mask makers;
        pass validate=True for hand-made ones (a bad index is then a ValueError naming it)."""
        if masks is None:
            masks = random_masking(images.shape[0], self.encoder.num_patches, mask_ratio,
                                   generator, device=images.device)
        ids_keep, ids_restore, mask = masks
        latent = self.encoder(images, ids_keep, validate=validate)
        pred = self.decoder(latent, ids_restore, validate=validate)
        loss = mae_loss(pred, images, mask, self.norm_pix_loss, self.patch_size)
        return loss, pred, mask

    def reconstruct(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The de-artifacted image for the FAU detection module (`paste_visible`)."""
        return paste_visible(pred, images, mask, self.patch_size, norm_pix=self.norm_pix_loss)

    def inpaint(self, images: torch.Tensor,
                masks: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Occluded images in, reconstructed images out: the encoder sees the kept patches only,
        the decoder fills the masked ones, the visible patches are pasted back from `images`
        (MAE-FAU Section 3.1). No loss: the masked pixels of `images` are occluded, not targets."""
        ids_keep, ids_restore, mask = masks
        pred = self.decoder(self.encoder(images, ids_keep), ids_restore)
        return self.reconstruct(images, pred, mask)


def build_mae(preset: str = "paper", **overrides: Any) -> MaskedAutoencoder:
    """A MaskedAutoencoder from `MAE_PRESETS` ("paper" or "tiny"), with keyword overrides."""
    if preset not in MAE_PRESETS:
        raise ValueError(f"unknown MAE preset {preset!r}; expected one of {', '.join(MAE_PRESETS)}")
    return MaskedAutoencoder(**{**MAE_PRESETS[preset], **overrides})


# ---------------------------------------------------------------------------------------------
# Weights

# Official MAE decoder names -> ours (under "decoder.").
_DECODER_NAMES = {"decoder_embed": "embed", "decoder_blocks": "blocks", "decoder_norm": "norm",
                  "decoder_pred": "pred", "mask_token": "mask_token"}
# Fixed sin-cos tables in the files: recomputed here, so skipped.
_FIXED = ("pos_embed", "decoder_pos_embed")


def _our_name(key: str) -> str | None:
    if key in _FIXED:
        return None
    head, _, rest = key.partition(".")
    if head in _DECODER_NAMES:
        return "decoder." + _DECODER_NAMES[head] + (("." + rest) if rest else "")
    return "encoder.vit." + key


def load_mae_weights(model: MaskedAutoencoder, source: str | Path) -> dict[str, list[str]]:
    """Load MAE weights from a --pretrained source (aubench.models.backbones.read_source: a
    file, or timm's `timm:vit_base_patch16_224.mae`): the official layout ({"model": {...}} with
    encoder and decoder keys) or timm's vit_base_patch16_224.mae state dict (encoder only).

    Every tensor of the source must map onto a tensor of the model with the same shape (else
    BackboneError naming the source); the fixed position tables are skipped (recomputed here),
    after checking they are MAE's sin-cos ones where their shape is ours. Returns
    {"loaded": [...], "missing": [...], "skipped": [...]} in our names ("missing": the model's
    tensors the file lacks, e.g. the whole decoder for an encoder-only file; they keep their
    initial values). A file that fills no encoder tensor is refused. On the meta device (a dry
    build) names and shapes are checked and nothing is copied.
    """
    weights = read_source(str(source))
    own = model.state_dict()
    mapped, skipped, unexpected, mismatched, different = {}, [], [], [], []
    for key, value in weights.items():
        ours = _our_name(key)
        if ours is None:
            fixed = (model.encoder if key == "pos_embed" else model.decoder).pos_embed
            # A table that is not MAE's sin-cos one (e.g. a fine-tuned learned one) would be
            # silently dropped, and the weights used with the wrong positions: refuse it.
            if value.shape == fixed.shape and not value.is_meta and (value.float() - fixed).abs().max() > 1e-4:
                different.append(key)
            skipped.append(key)
        elif ours not in own:
            unexpected.append(key)
        elif own[ours].shape != value.shape:
            mismatched.append(f"{key}: file {tuple(value.shape)} vs model {tuple(own[ours].shape)}")
        else:
            mapped[ours] = value
    problems = weight_problems(mismatched, [], unexpected)
    if different:
        problems.append(f"{', '.join(different)} not MAE's fixed 2-D sin-cos table")
    if not problems and not any(k.startswith("encoder.") for k in mapped):
        problems.append("no encoder tensor")
    if problems:
        raise WeightsError(f"{source} does not match the MAE model: " + "; ".join(problems))
    model.load_state_dict(mapped, strict=False)
    missing = [k for k in own if k not in mapped]
    return {"loaded": sorted(mapped), "missing": missing, "skipped": skipped}
