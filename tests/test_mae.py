"""The MAE reconstruction module (aubench.models.mae): embeddings, loss, encoder / decoder token
paths, paste-back, occlusion masks and official-checkpoint loading, on the tiny preset (CPU)."""
import math

import pytest
import torch

from aubench.data.occlusion import frame_occlusion_mask
from aubench.models import mae
from aubench.models.backbones import BackboneError
from aubench.ops import random_masking


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def tiny():
    model = mae.build_mae("tiny")
    return model.eval()


def tiny_masks(batch, ratio=0.75, seed=1):
    return random_masking(batch, 196, ratio, torch.Generator().manual_seed(seed))


def test_sincos_pos_embed_matches_hand_computation():
    emb = mae.sincos_pos_embed_2d(8, 2, 3, cls_token=True)
    assert emb.shape == (1 + 6, 8)
    assert torch.equal(emb[0], torch.zeros(8))
    for r in range(2):
        for c in range(3):
            # 8 dims: 4 for the column then 4 for the row; omega = 1, 1/10000^(1/2) = 0.01.
            hand = [math.sin(c), math.sin(0.01 * c), math.cos(c), math.cos(0.01 * c),
                    math.sin(r), math.sin(0.01 * r), math.cos(r), math.cos(0.01 * r)]
            assert torch.allclose(emb[1 + r * 3 + c], torch.tensor(hand), atol=1e-7), (r, c)
    assert mae.sincos_pos_embed_2d(8, 2, 3, cls_token=False).shape == (6, 8)
    with pytest.raises(ValueError, match="divisible by 4"):
        mae.sincos_pos_embed_2d(6, 2, 2)


def test_patchify_layout_and_round_trip():
    images = torch.randn(2, 3, 8, 12)
    patches = mae.patchify(images, 4)
    assert patches.shape == (2, 6, 48)
    # patch (row 1, col 2) = token 5; its value (i, j, ch) is pixel (4 + i, 8 + j) of channel ch
    assert torch.equal(patches[1, 5].reshape(4, 4, 3), images[1, :, 4:8, 8:12].permute(1, 2, 0))
    assert torch.equal(mae.unpatchify(patches, 4, 2, 3), images)


def test_mae_loss_hand_computation_masked_patches_only():
    # 1 x 2 image of 1 px patches: two patches of 3 values (RGB), the second masked.
    images = torch.tensor([[[[1.0, 2.0]], [[3.0, 6.0]], [[5.0, 1.0]]]])
    pred = torch.tensor([[[9.0, 9.0, 9.0], [0.5, -1.0, 0.25]]])
    mask = torch.tensor([[0.0, 1.0]])
    values = [2.0, 6.0, 1.0]
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2 + 1e-6)  # unbiased, as MAE
    hand = sum((p - (v - mean) / std) ** 2 for p, v in zip([0.5, -1.0, 0.25], values)) / 3
    assert mae.mae_loss(pred, images, mask).item() == pytest.approx(hand, rel=1e-6)
    raw = sum((p - v) ** 2 for p, v in zip([0.5, -1.0, 0.25], values)) / 3
    assert mae.mae_loss(pred, images, mask, norm_pix=False).item() == pytest.approx(raw, rel=1e-6)
    # the visible patch's prediction does not count
    other = pred.clone()
    other[0, 0] = -100.0
    assert mae.mae_loss(other, images, mask).item() == pytest.approx(hand, rel=1e-6)


def test_encoder_sees_exactly_the_visible_tokens(tiny, monkeypatch):
    images = torch.randn(2, 3, 56, 56)
    ids_keep, _, _ = tiny_masks(2)
    seen = {}
    real = mae.gather_tokens

    def spy(x, ids, validate=True):
        seen["x"], seen["ids"] = x.detach().clone(), ids
        return real(x, ids, validate=validate)

    monkeypatch.setattr(mae, "gather_tokens", spy)
    with torch.no_grad():
        out = tiny.encoder(images, ids_keep)
        encoder = tiny.encoder
        embedded = encoder.vit.patch_embed(images) + encoder.pos_embed[:, 1:]
        assert torch.allclose(seen["x"], embedded)
        assert seen["ids"] is ids_keep
        # reference path: torch.gather of the embedded patches, cls prepended, blocks, norm
        visible = torch.gather(embedded, 1, ids_keep[..., None].expand(-1, -1, embedded.shape[2]))
        cls = (encoder.vit.cls_token + encoder.pos_embed[:, :1]).expand(2, -1, -1)
        reference = encoder.vit.norm(encoder.vit.blocks(torch.cat([cls, visible], dim=1)))
    assert out.shape == (2, 1 + ids_keep.shape[1], encoder.dim)
    assert torch.allclose(out, reference, atol=1e-6)


def test_encoder_output_ignores_masked_pixels(tiny):
    images = torch.randn(1, 3, 56, 56)
    ids_keep, _, mask = tiny_masks(1)
    changed = mae.patchify(images, 4)
    changed[mask.bool()] = 1000.0
    with torch.no_grad():
        a = tiny.encoder(images, ids_keep)
        b = tiny.encoder(mae.unpatchify(changed, 4, 14), ids_keep)
        c = tiny.encoder(images)  # all tokens (the student's path) do see them
    assert torch.equal(a, b)
    assert c.shape == (1, 197, tiny.encoder.dim)


def test_decoder_input_has_mask_token_at_masked_positions(tiny):
    ids_keep, ids_restore, mask = tiny_masks(2)
    with torch.no_grad():
        latent = torch.randn(2, 1 + ids_keep.shape[1], tiny.encoder.dim)
        tokens = tiny.decoder.tokens(latent, ids_restore)
        embedded = tiny.decoder.embed(latent)
    assert tokens.shape == (2, 197, tiny.decoder.embed.out_features)
    assert torch.equal(tokens[:, 0], embedded[:, 0])  # cls kept aside and prepended
    mask_token = tiny.decoder.mask_token.reshape(-1)
    for b in range(2):
        for k, position in enumerate(ids_keep[b].tolist()):
            assert mask[b, position] == 0
            assert torch.equal(tokens[b, 1 + position], embedded[b, 1 + k])
        for position in mask[b].nonzero().flatten().tolist():
            assert torch.equal(tokens[b, 1 + position], mask_token)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_paste_visible_keeps_input_pixels_exactly(norm_pix):
    images = torch.randn(2, 3, 56, 56)
    _, _, mask = tiny_masks(2)
    pred = torch.randn(2, 196, 48)
    pasted = mae.paste_visible(pred, images, mask, 4, norm_pix=norm_pix)
    visible = mask[..., None].expand(-1, -1, 48) == 0
    assert torch.equal(mae.patchify(pasted, 4)[visible], mae.patchify(images, 4)[visible])
    if not norm_pix:
        assert torch.equal(mae.patchify(pasted, 4)[~visible], pred[~visible])
    # masked patches never depend on the (occluded) input pixels there
    occluded = mae.patchify(images, 4)
    occluded[mask.bool()] = 0.0
    again = mae.paste_visible(pred, mae.unpatchify(occluded, 4, 14), mask, 4, norm_pix=norm_pix)
    assert torch.equal(mae.patchify(again, 4)[~visible], mae.patchify(pasted, 4)[~visible])


def test_forward_loss_and_gradients_reach_every_parameter():
    model = mae.build_mae("tiny").train()
    images = torch.randn(2, 3, 56, 56)
    loss, pred, mask = model(images, mask_ratio=0.75, generator=torch.Generator().manual_seed(3))
    assert pred.shape == (2, 196, 48) and mask.shape == (2, 196)
    assert mask.sum(dim=1).tolist() == [147.0, 147.0]
    assert torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters()
               if p.grad is None or not torch.any(p.grad != 0)]
    assert no_grad == []
    # with given masks the same ones are used
    masks = tiny_masks(2, 0.5)
    _, _, mask_given = model(images, masks=masks)
    assert mask_given is masks[2]
    repeated = masks[0].clone()
    repeated[0, 1] = repeated[0, 0]
    with pytest.raises(ValueError, match="ids_keep"):
        model(images, masks=(repeated, masks[1], masks[2]), validate=True)


def test_occlusion_mask_maps_to_masked_tokens():
    generator = torch.Generator().manual_seed(0)
    cells = torch.zeros(2, 14, 14, dtype=torch.bool)
    cells[0, 2:5, 3:7] = True  # 12 cells
    cells[1, 10, 0] = cells[1, 13, 13] = True  # 2 cells: topped up to 12
    ids_keep, ids_restore, mask = mae.occlusion_token_masks(cells, generator)
    assert ids_keep.shape == (2, 196 - 12)
    assert torch.equal(mask[0].bool(), cells[0].flatten())
    assert mask[1].sum() == 12 and torch.all(mask[1][cells[1].flatten()] == 1)
    for b in range(2):
        assert torch.all(mask[b, ids_keep[b]] == 0)
        assert sorted(ids_restore[b].tolist()) == list(range(196))


def test_protocol_pixel_mask_gives_its_cells_as_patches(tiny):
    pixels = torch.stack([frame_occlusion_mask("block", 0.3, row, 56, 56) for row in range(2)])
    cells = mae.occlusion_cells(pixels, 4)
    assert cells.shape == (2, 14, 14)
    assert torch.equal(cells.repeat_interleave(4, 1).repeat_interleave(4, 2), pixels)
    _, _, mask = mae.occlusion_token_masks(cells)
    for b in range(2):
        occluded = cells[b].flatten()
        assert torch.all(mask[b][occluded] == 1)
    # a pixel mask whose cells are not the patches is refused
    with pytest.raises(ValueError, match="partly occluded"):
        mae.occlusion_cells(frame_occlusion_mask("block", 0.3, 0, 64, 64), 4)


def official_layout(model):
    """A state dict in the official MAE checkpoint's names, from our model's tensors."""
    ours_to_official = {"embed": "decoder_embed", "blocks": "decoder_blocks",
                        "norm": "decoder_norm", "pred": "decoder_pred", "mask_token": "mask_token"}
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("encoder.vit."):
            out[key[len("encoder.vit."):]] = value.clone()
        else:
            head, _, rest = key[len("decoder."):].partition(".")
            out[ours_to_official[head] + ("." + rest if rest else "")] = value.clone()
    out["pos_embed"] = model.encoder.pos_embed.clone()  # the files hold the fixed tables too
    out["decoder_pos_embed"] = model.decoder.pos_embed.clone()
    return out


def test_load_official_checkpoint_gives_equal_tensors(tmp_path):
    source = mae.build_mae("tiny")
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": official_layout(source), "epoch": 799}, path)
    target = mae.build_mae("tiny")
    report = mae.load_mae_weights(target, path)
    assert report["missing"] == []
    assert sorted(report["skipped"]) == ["decoder_pos_embed", "pos_embed"]
    assert len(report["loaded"]) == len(source.state_dict())
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_load_timm_encoder_only_reports_missing_decoder(tmp_path):
    source = mae.build_mae("tiny")
    encoder_only = {k: v for k, v in official_layout(source).items()
                    if not k.startswith("decoder") and k != "mask_token"}
    path = tmp_path / "vit_mae.pth"
    torch.save(encoder_only, path)
    target = mae.build_mae("tiny")
    decoder_before = {k: v.clone() for k, v in target.decoder.state_dict().items()}
    report = mae.load_mae_weights(target, path)
    assert report["missing"] and all(k.startswith("decoder.") for k in report["missing"])
    assert len(report["missing"]) == len(decoder_before)
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(target.encoder.state_dict()[key], value), key
    for key, value in decoder_before.items():
        assert torch.equal(target.decoder.state_dict()[key], value), key


def test_load_refuses_shape_mismatch_and_foreign_keys(tmp_path):
    weights = official_layout(mae.build_mae("tiny"))
    weights["decoder_pred.weight"] = torch.zeros(5, 5)
    path = tmp_path / "bad.pth"
    torch.save({"model": weights}, path)
    with pytest.raises(BackboneError, match=r"bad\.pth.*shape mismatches.*decoder_pred\.weight"):
        mae.load_mae_weights(mae.build_mae("tiny"), path)
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(BackboneError, match="does not have"):
        mae.load_mae_weights(mae.build_mae("tiny"), path)
    weights = official_layout(mae.build_mae("tiny"))
    weights["pos_embed"] = weights["pos_embed"] + 0.1 * torch.randn_like(weights["pos_embed"])
    torch.save({"model": weights}, path)
    with pytest.raises(BackboneError, match="pos_embed not MAE's fixed 2-D sin-cos table"):
        mae.load_mae_weights(mae.build_mae("tiny"), path)
    with pytest.raises(BackboneError, match="does not exist"):
        mae.load_mae_weights(mae.build_mae("tiny"), tmp_path / "none.pth")


def test_paper_preset_sizes():
    with torch.device("meta"):
        model = mae.build_mae("paper")
    encoder = sum(p.numel() for p in model.encoder.parameters())
    decoder = sum(p.numel() for p in model.decoder.parameters())
    tables = model.encoder.pos_embed.numel() + model.decoder.pos_embed.numel()
    # the official ViT-B MAE: 111.9 M counting its two fixed position tables (0.25 M)
    assert (encoder + decoder + tables) / 1e6 == pytest.approx(111.91, abs=0.01)
    assert model.encoder.grid == (14, 14) and model.decoder.pred.out_features == 768
