"""--pretrained: weights by timm name (from a hub cache the test builds) and from every common
file layout, one PART=SOURCE mechanism for every method's parts, identities by sha256 not path."""
from __future__ import annotations

import json
import re
import shutil

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

import aubench.models  # noqa: F401  (registers the methods)
from aubench.cli import build_parser, main, _run_config
from aubench.engine.checkpoint import save_checkpoint
from aubench.engine.config import RunConfig
from aubench.engine.identity import result_identity
from aubench.engine.trainer import Trainer
from aubench.errors import UserError
from aubench.models.backbones import WeightsError, _digest, create_backbone, tensors_sha256
from aubench.models.maefau import MAEFAU

from fixtures_h5 import write_au_h5
from test_maefau import AUS8
from test_maefau import RUN as MAEFAU_RUN
from test_rrl import RUN as RRL_RUN
from test_rrl import landmark_h5

TINY_RESNET = dict(channels=(16, 32, 64, 128), stem_width=16)   # the tiny presets' quarter-width ResNet-18
SWIN = dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 1, 1))   # Swin-T's layout, 8 wide
SWIN_T = "swin_tiny_patch4_window7_224"
SMALL = dict(method="resnet", preset="tiny", image_size=32, batch_size=8, epochs=1, progress=False, device="cpu",
             log_every=1)


def random_model(name: str, seed: int, **kwargs) -> torch.nn.Module:
    """A timm model whose every float tensor is random (BatchNorm statistics and norms included),
    so a tensor left as initialised never equals the one in the file by chance."""
    torch.manual_seed(seed)
    model = timm.create_model(name, **kwargs).eval()
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5)
    return model


def assert_holds(backbone: torch.nn.Module, reference: dict[str, torch.Tensor]) -> None:
    """Every tensor of the backbone is the reference's of that name."""
    own = backbone.state_dict()
    assert own
    for key, value in own.items():
        assert torch.equal(value, reference[key]), key


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    return write_au_h5(tmp_path_factory.mktemp("pretrained") / "tiny.h5", num_subjects=6, sequence_lengths=(6, 5),
                       image_size=(32, 32))


@pytest.fixture(scope="module")
def tiny_resnet_file(tmp_path_factory):
    """(path, state dict) of a quarter-width ResNet-18 in timm's layout."""
    state = random_model("resnet18", 1, **TINY_RESNET).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18_tiny.pth"
    torch.save(state, path)
    return path, state


# ------------------------------------------------------------------ file layouts


@pytest.mark.parametrize("layout", ["timm", "lightning+ddp", "safetensors"])
def test_timm_state_dict_layouts_fill_the_backbone(tmp_path, capsys, layout):
    state = random_model("resnet18", 2, **TINY_RESNET).state_dict()
    if layout == "timm":
        path = tmp_path / "w.pth"
        torch.save(state, path)
    elif layout == "lightning+ddp":   # a Lightning checkpoint of a DDP-wrapped model
        path = tmp_path / "epoch=3.ckpt"
        torch.save({"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0",
                    "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        path = tmp_path / "w.safetensors"
        save_file(state, path)
    backbone = create_backbone("resnet18", str(path), num_classes=0, **TINY_RESNET)
    assert_holds(backbone, state)
    assert capsys.readouterr().out == ""   # nothing missing, nothing left over (the classifier is not the backbone's)


def test_torchvision_resnet_gives_the_same_features(tmp_path):
    torch.manual_seed(3)
    reference = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path / "resnet18_tv.pth"
    torch.save(reference.state_dict(), path)
    backbone = create_backbone("resnet18", str(path), num_classes=0).eval()
    images = torch.randn(2, 3, 64, 64)
    features = torch.nn.Sequential(*list(reference.children())[:-1])(images).flatten(1)
    torch.testing.assert_close(backbone(images), features)


def test_torchvision_swin_gives_the_same_features(tmp_path, capsys):
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(4)
    reference = SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 1, 1, 1],
                                window_size=[7, 7], num_classes=10).eval()
    path = tmp_path / "swin_t_tv.pth"
    torch.save(reference.state_dict(), path)
    backbone = create_backbone(SWIN_T, str(path), num_classes=0, **SWIN).eval()
    assert capsys.readouterr().out == ""
    images = torch.randn(2, 3, 224, 224)
    features = reference.avgpool(reference.permute(reference.norm(reference.features(images)))).flatten(1)
    torch.testing.assert_close(backbone(images), features)


def microsoft_swin(model: torch.nn.Module) -> dict:
    """The official Swin release's layout of a timm Swin (timm's filter inverted): each patch
    merging at the end of the stage before, the classifier as head, the relative position index
    and attention-mask buffers stored, all under "model"."""
    state = {}
    for key, value in model.state_dict().items():
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", key)
        state[key.replace("head.fc.", "head.")] = value
    for key, value in model.named_buffers():
        if key.endswith(("relative_position_index", "attn_mask")):
            state[key] = value
    return {"model": state}


def test_microsoft_swin_release_fills_the_backbone_and_its_features(tmp_path, capsys):
    source = random_model(SWIN_T, 5, **SWIN)
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    official = microsoft_swin(source)
    assert "layers.0.downsample.reduction.weight" in official["model"] and "head.weight" in official["model"]
    torch.save(official, path)
    backbone = create_backbone(SWIN_T, str(path), num_classes=0, **SWIN)
    assert_holds(backbone, source.state_dict())
    features = create_backbone(SWIN_T, str(path), features_only=True, out_indices=(-2, -1), **SWIN)
    assert capsys.readouterr().out == ""
    images = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(features.eval()(images)[-1], source.layers(source.patch_embed(images)))


def test_a_file_that_mostly_does_not_fit_is_refused_naming_it(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3), "encoder.bias": torch.zeros(3)}, path)
    with pytest.raises(WeightsError, match=rf"{re.escape(str(path))} does not fit backbone resnet18: it fills 0 "
                                           rf"of its \d+ tensors \(missing: conv1.weight.*encoder.weight"):
        create_backbone("resnet18", str(path), num_classes=0, **TINY_RESNET)
    full = tmp_path / "resnet18_full.pth"   # ImageNet-sized weights into the quarter-width model
    torch.save(timm.create_model("resnet18").state_dict(), full)
    with pytest.raises(WeightsError, match=r"resnet18_full.pth does not fit backbone resnet18: \d+ shape mismatches"):
        create_backbone("resnet18", str(full), num_classes=0, **TINY_RESNET)


def test_a_partial_file_loads_and_says_what_it_left(tmp_path, capsys, tiny_resnet_file):
    _, state = tiny_resnet_file
    partial = {k: v for k, v in state.items() if k != "layer4.1.conv2.weight"}
    partial["projector.weight"] = torch.zeros(2)
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    backbone = create_backbone("resnet18", str(path), num_classes=0, **TINY_RESNET)
    note = capsys.readouterr().out
    assert "1 of its tensors not in the source, left as initialised (first: layer4.1.conv2.weight)" in note
    assert "1 tensors of the source unused (first: projector.weight)" in note
    assert torch.equal(backbone.state_dict()["layer4.1.conv1.weight"], state["layer4.1.conv1.weight"])


def test_the_sha256_is_of_the_tensors_not_the_file(tmp_path, tiny_resnet_file):
    _, state = tiny_resnet_file
    torch.save(state, tmp_path / "a.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 1}, tmp_path / "b.ckpt")
    save_file(state, tmp_path / "c.safetensors")
    digests = {_digest(str(tmp_path / name), None).sha256 for name in ("a.pth", "b.ckpt", "c.safetensors")}
    assert digests == {tensors_sha256(state)}
    other = dict(state, **{"conv1.weight": state["conv1.weight"] + 1})
    assert tensors_sha256(other) != tensors_sha256(state)


# ------------------------------------------------------------------ timm:<name> from the hub cache


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face hub cache holding timm's test_resnet.r160_in1k (random weights), offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    repo = cache / "models--timm--test_resnet.r160_in1k"
    snapshot = repo / "snapshots" / ("1" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("1" * 40)
    state = random_model("test_resnet", 6).state_dict()
    save_file(state, snapshot / "model.safetensors")
    (snapshot / "config.json").write_text(json.dumps({"architecture": "test_resnet", "num_classes": 1000,
                                                      "pretrained_cfg": {"tag": "r160_in1k", "num_classes": 1000,
                                                                         "classifier": "fc"}}))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))   # read when huggingface_hub was imported
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _digest.cache_clear()
    yield state
    _digest.cache_clear()


@pytest.mark.parametrize("source", ["timm:test_resnet.r160_in1k", "timm:test_resnet", "hf-hub:timm/test_resnet.r160_in1k"])
def test_timm_names_load_through_timm_from_the_hub_cache(hub_cache, source):
    backbone = create_backbone("test_resnet", source, num_classes=0)
    assert_holds(backbone, hub_cache)


def test_a_timm_name_neither_cached_nor_reachable_is_one_line(hub_cache):
    for source, says in (("timm:test_vit.r160_in1k", "not in the local cache"),
                         ("timm:test_resnt.r160_in1k", "timm has no model 'test_resnt.r160_in1k'; similar names: "
                                                       "test_resnet"),
                         ("timm:test_resnet.in22k", r"Invalid pretrained tag \(in22k\).*test_resnet.r160_in1k")):
        with pytest.raises(WeightsError, match=rf"^{re.escape(source)}: .*{says}") as caught:
            create_backbone("test_resnet", source, num_classes=0)
        assert "\n" not in str(caught.value)


def test_train_from_a_timm_name_records_it_in_the_result(hub_cache, h5, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--method", "resnet", "--data", str(h5), "--out", str(out), "--image-size", "32",
            "--batch-size", "8", "--epochs", "1", "--no-progress", "--device", "cpu", "--model", "backbone=test_resnet",
            "--model", "backbone_kwargs={}", "--pretrained", "timm:test_resnet.r160_in1k"]
    assert main(args) == 0
    result = json.loads((out / "result.json").read_text())
    sha = tensors_sha256(hub_cache)
    assert result["initialisation"] == f"backbone: timm:test_resnet.r160_in1k (sha256 {sha[:8]}...)"
    assert result_identity(result)["pretrained"] == {"backbone": {"name": "timm:test_resnet.r160_in1k", "sha256": sha}}


# ------------------------------------------------------------------ identity


def test_the_same_weights_at_two_paths_are_the_same_run(h5, tmp_path, tiny_resnet_file):
    path, state = tiny_resnet_file
    copy = tmp_path / "elsewhere" / path.name
    copy.parent.mkdir()
    shutil.copy(path, copy)
    out = str(tmp_path / "run")
    config = dict(data=str(h5), model={"backbone": "resnet18", "backbone_kwargs": TINY_RESNET}, **SMALL)
    first = Trainer(RunConfig(out=out, pretrained={"backbone": str(path)}, **config))
    assert first.identity["pretrained"] == {"backbone": {"name": path.name, "sha256": tensors_sha256(state)}}
    assert_holds(first.method.net.backbone, state)
    first.fit()
    again = Trainer(RunConfig(out=out, pretrained=str(copy), resume=True, **config))   # a bare source: the backbone
    assert again.identity == first.identity
    again.fit()   # --resume accepts the checkpoint: the same run
    other = tmp_path / "other" / path.name
    other.parent.mkdir()
    torch.save(dict(state, **{"conv1.weight": state["conv1.weight"] * 2}), other)
    with pytest.raises(UserError, match=r"different run \(pretrained.backbone.sha256"):
        Trainer(RunConfig(out=out, pretrained=str(other), resume=True, **config)).fit()


# ------------------------------------------------------------------ parts


def test_maefau_takes_its_mae_and_its_backbone_as_parts(tmp_path, tiny_resnet_file):
    path, state = tiny_resnet_file
    h5 = write_au_h5(tmp_path / "au8.h5", num_subjects=6, sequence_lengths=(6, 5), au_names=AUS8)
    torch.manual_seed(7)
    mae = MAEFAU(len(AUS8), MAEFAU.stages(MAEFAU.presets["tiny"])[0].preset).mae
    official = {"model": {k.replace("encoder.vit.", "", 1): v for k, v in mae.state_dict().items()
                          if k.startswith("encoder.vit.")}}   # the official release's encoder names
    mae_path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save(official, mae_path)
    args = build_parser().parse_args(["train", "--method", "maefau", "--data", str(h5), "--pretrained",
                                      f"mae={mae_path}", "--pretrained", f"backbone={path}"])
    config = _run_config(args, "maefau", 1, 1.0, str(tmp_path / "run"))
    assert config.pretrained == {"mae": str(mae_path), "backbone": str(path)}
    trainer = Trainer(RunConfig(**{**config.__dict__, **MAEFAU_RUN}))
    assert set(trainer.identity["pretrained"]) == {"mae", "backbone"}
    for key, value in mae.encoder.state_dict().items():          # the mae stage holds the MAE's encoder
        assert torch.equal(trainer.method.mae.encoder.state_dict()[key], value), key
    teacher1 = trainer.build_stage(1, {"mae": trainer.method})  # teacher stage 1 builds the backbone
    assert trainer.stages[1].name == "teacher1"
    assert_holds(teacher1.net.backbone, state)
    full = tmp_path / "resnet18_full.pth"   # a backbone that does not fit: refused before the mae stage trains
    torch.save(timm.create_model("resnet18").state_dict(), full)
    with pytest.raises(UserError, match=rf"^--pretrained {re.escape(str(full))} does not fit backbone resnet18"):
        Trainer(RunConfig(**{**config.__dict__, **MAEFAU_RUN, "pretrained": {"mae": str(mae_path),
                                                                             "backbone": str(full)}}))


def test_rrl_takes_its_backbone_as_a_part(tmp_path, tiny_resnet_file):
    path, state = tiny_resnet_file
    h5 = landmark_h5(tmp_path / "au.h5")
    trainer = Trainer(RunConfig(data=str(h5), out=str(tmp_path / "run"), pretrained={"backbone": str(path)},
                                **RRL_RUN))
    assert trainer.stage.name == "pretrain"
    for branch in (trainer.method.online, trainer.method.target):   # the EMA target starts as the online one
        own = branch.encoder.backbone.state_dict()
        assert own and all(torch.equal(value, state[key]) for key, value in own.items())


def test_parts_and_sources_that_do_not_go_together_are_one_line(h5, tmp_path, tiny_resnet_file):
    path, _ = tiny_resnet_file
    config = dict(data=str(h5), out=str(tmp_path / "run"), **SMALL)
    with pytest.raises(UserError, match=r"--pretrained head=.*: method 'resnet' has no pretrained part 'head' "
                                        r"\(its parts: backbone"):
        Trainer(RunConfig(pretrained={"head": str(path)}, **config))
    checkpoint = tmp_path / "last.pt"
    save_checkpoint(checkpoint, {"config": {"method": "resnet"}, "model": {"net.head.weight": torch.zeros(5, 2)}})
    with pytest.raises(UserError, match="an aubench checkpoint initialises the whole method; give it alone"):
        Trainer(RunConfig(pretrained={"backbone": str(checkpoint)}, **config))
    with pytest.raises(UserError, match=r"resnet: model setting pretrained_path is retired; give the weights with "
                                        r"--pretrained SOURCE"):
        Trainer(RunConfig(model={"pretrained_path": str(path)}, **config))
    tiny = MAEFAU.presets["tiny"]
    with pytest.raises(ValueError, match=r"backbone_pretrained_path is retired; give the weights with --pretrained "
                                         r"backbone=SOURCE"):
        MAEFAU(8, type(tiny)(**{**tiny.__dict__, "model": {**tiny.model, "backbone_pretrained_path": str(path)}}))


def test_methods_lists_each_methods_parts(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "--pretrained mae=SOURCE (or SOURCE): the masked autoencoder" in out
    assert "--pretrained backbone=SOURCE: the detection backbone" in out
    for name in aubench.models.available_methods():
        cls = aubench.models.method_class(name)
        if cls.__module__.startswith("aubench."):   # not the test methods other test modules register
            assert cls.pretrained_parts and f"{name}  (" in out, name
