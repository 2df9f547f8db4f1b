"""Presets that are the papers': per-dataset `paper` presets picked by the data file's dataset, their
sources, the crop protocol per paper; the preset line of `train` / `evaluate`; every fold by
default; the leaderboard's preset and init columns and its comparability footnote."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import replace

import h5py
import pytest

from aubench import leaderboard
from aubench.cli import main
from aubench.engine.config import RunConfig
from aubench.engine.identity import run_identity
from aubench.engine.planning import resolve_preset, run_stages
from aubench.models import available_methods, method_class
from aubench.models.base import _METHODS, dataset_preset_name, register_method
from aubench.models.megraphau import stage_preset
from aubench.models.resnet_baseline import ResNetBaseline
from fixtures_h5 import write_au_h5
from test_leaderboard import AUS, fake_result

PER_DATASET = ("megraphau", "maefau")            # the papers that give settings per dataset
CROPPED = ("megraphau", "maefau")                # the papers that take 224 crops of a 256 face
FAST = ["--device", "cpu", "--no-progress"]


def project_methods() -> list[str]:
    """The registered methods of aubench itself (tests register their own beside them)."""
    return [name for name in available_methods() if method_class(name).__module__.startswith("aubench.")]


# ------------------------------------------------------------------ the presets


def test_paper_picks_the_datasets_preset():
    for name in project_methods():
        cls = method_class(name)
        assert set(cls.dataset_presets.values()) <= set(cls.presets), name
        assert "paper" in cls.presets and "tiny" in cls.presets, name
        assert dataset_preset_name(cls, "tiny", "DISFA") == "tiny"
        assert dataset_preset_name(cls, "paper", "MME") == "paper"   # no settings of its own: the default
        expected = {"BP4D": "paper-bp4d", "DISFA": "paper-disfa"} if name in PER_DATASET else {}
        for dataset in ("BP4D", "DISFA", "Aff-Wild2"):
            assert dataset_preset_name(cls, "paper", dataset) == expected.get(dataset, "paper"), (name, dataset)
        config = RunConfig(method=name, data="", preset="paper", epochs=3)
        preset = resolve_preset(cls, config, "DISFA")
        assert preset.name == expected.get("DISFA", "paper") and preset.epochs == 3   # overrides still apply
        assert resolve_preset(cls, replace(config, preset="paper-disfa" if name in PER_DATASET else "tiny"),
                              "BP4D").name == ("paper-disfa" if name in PER_DATASET else "tiny")


def test_every_paper_preset_names_its_source_and_what_it_starts_from():
    for name in project_methods():
        for preset_name, preset in method_class(name).presets.items():
            if preset_name.startswith("paper"):
                assert preset.source and preset.name == preset_name, (name, preset_name)
            else:  # tiny presets: aubench's CPU scale, no paper's setting, the plain resize
                assert (preset.source, preset.paper_init, preset.crop_fraction) == ("", "", None), (name, preset_name)
    # RRL pre-trains without naming ImageNet weights; the others start from them
    assert [n for n in project_methods() if not method_class(n).presets["paper"].paper_init] == ["rrl"]


def test_the_crop_protocol_is_where_the_papers_crop():
    for name in project_methods():
        for preset_name, preset in method_class(name).presets.items():
            cropped = name in CROPPED and preset_name.startswith("paper")
            assert preset.crop_fraction == (224 / 256 if cropped else None), (name, preset_name)


def test_per_dataset_settings_are_the_papers():
    presets = method_class("megraphau").presets
    for name, backbone, stage2_lr, lam in (("paper-bp4d", "resnet50", 1e-5, 0.05),
                                           ("paper-disfa", "swin_base_patch4_window7_224", 1e-6, 0.01)):
        preset = presets[name]
        assert (preset.model["backbone"], preset.model["lambda"], preset.batch_size, preset.epochs) == \
            (backbone, lam, 64, 20)
        assert (stage_preset(preset, 1).lr, stage_preset(preset, 2).lr) == (1e-4, stage2_lr)
    maefau = method_class("maefau")
    for name, rates in (("paper-bp4d", [1e-4, 1e-6, 1e-5]), ("paper-disfa", [7.5e-5, 1e-5, 1e-5])):
        stages = {s.name: s.preset for s in maefau.stages(maefau.presets[name])}
        assert [stages[s].lr for s in ("teacher1", "teacher2", "student")] == rates
    for cls in (method_class("megraphau"), maefau):  # `paper` is BP4D's settings under another name
        bp4d, paper = cls.presets["paper-bp4d"], cls.presets["paper"]
        assert replace(paper, name=bp4d.name, source=bp4d.source) == bp4d


def test_sources_and_the_papers_initialisation_are_not_part_of_a_runs_identity():
    cls = method_class("megraphau")
    preset = cls.presets["paper-bp4d"]
    config = {"method": "megraphau", "preset": preset.name, "fold": 1, "label_ratio": 1.0, "seed": 0,
              "augment": True, "pretrained": None}
    stages = [s.settings() for s in run_stages(cls, preset)]
    identity = run_identity(config, preset.__dict__, "f" * 64, "fp32", stages)
    relabelled = replace(preset, source="elsewhere", paper_init="")
    assert run_identity(config, relabelled.__dict__, "f" * 64, "fp32",
                        [s.settings() for s in run_stages(cls, relabelled)]) == identity
    assert identity["crop_fraction"] == 0.875
    tiny = cls.presets["tiny"]  # a preset without a crop has the identity it had before crops existed
    tiny_identity = run_identity({**config, "preset": "tiny"}, tiny.__dict__, "f" * 64, "fp32")
    assert not {"crop_fraction", "source", "paper_init"} & set(json.dumps(tiny_identity).replace('"', " ").split())


# ------------------------------------------------------------------ the command line


class PerDatasetTest(ResNetBaseline):
    """The tiny ResNet with a `paper` preset per dataset, as a paper with DISFA settings of its own."""

    tiny = replace(ResNetBaseline.presets["tiny"], image_size=32, epochs=1, batch_size=8)
    presets = {"tiny": tiny,
               "paper": replace(tiny, name="paper", source="test: BP4D settings", paper_init="ImageNet"),
               "paper-disfa": replace(tiny, name="paper-disfa", lr=1e-3, crop_fraction=0.875,
                                      source="test: DISFA settings", paper_init="ImageNet")}
    dataset_presets = {"DISFA": "paper-disfa"}


if "per_dataset_test" not in _METHODS:
    register_method("per_dataset_test")(PerDatasetTest)


@pytest.fixture
def disfa(tmp_path):
    path = write_au_h5(tmp_path / "disfa.h5", num_folds=2)
    with h5py.File(path, "a") as f:
        f.attrs["dataset"] = "DISFA"
    return path


def test_train_names_the_resolved_preset_and_records_it(disfa, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--method", "per_dataset_test", "--preset", "paper", "--data", str(disfa), "--out",
                 str(out), *FAST]) == 0
    assert "[aubench] preset paper on DISFA: per_dataset_test paper-disfa" in capsys.readouterr().out.splitlines()
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["preset"] == result["preset"]["name"] == "paper-disfa"
    assert (result["preset"]["lr"], result["preset"]["crop_fraction"]) == (1e-3, 0.875)
    row = leaderboard.build_rows(leaderboard.find_results([out]), include_reported=False)[0]
    assert (row["preset"], row["init"]) == ("paper-disfa", "random")
    assert row["caveat"] == "random initialisation; the paper starts from ImageNet weights"


def test_without_preset_one_line_names_the_default(disfa, tmp_path, capsys):
    assert main(["train", "--method", "resnet", "--data", str(disfa), "--out", str(tmp_path / "run"),
                 "--image-size", "32", "--batch-size", "8", "--epochs", "1", *FAST]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[aubench] preset")]
    assert len(lines) == 1 and lines[0].startswith("[aubench] preset: tiny (the default")
    assert json.loads((tmp_path / "run" / "result.json").read_text())["config"]["preset"] == "tiny"


def test_evaluate_runs_every_fold_of_the_file_by_default(disfa, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "--methods", "per_dataset_test", "--preset", "tiny", "--data", str(disfa), "--out",
                 str(out), *FAST]) == 0
    assert not any(line.startswith("[aubench] preset") for line in capsys.readouterr().out.splitlines())
    folds = sorted(json.loads(p.read_text())["fold"] for p in (out / "results").glob("*.json"))
    assert folds == [1, 2]   # the file's two folds, not 1,2,3


def test_methods_lists_what_each_preset_sets_and_its_source(capsys):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    for name in available_methods():
        cls = method_class(name)
        assert f"\n{name}  (" in f"\n{text}"
        for preset in cls.presets.values():
            if preset.source:
                assert f"source: {preset.source}" in text
    assert "paper on BP4D: paper-bp4d, DISFA: paper-disfa, other datasets: paper" in text
    assert "224 px cropped from 256 px" in text


# ------------------------------------------------------------------ the leaderboard


def write(tmp_path, name, result):
    (tmp_path / f"{name}.json").write_text(json.dumps(result))


def test_short_initialisation():
    short = leaderboard.short_initialisation
    assert short("random (no --pretrained)") == "random"
    assert short("pretrained: /data/weights/resnet50_a1.pth") == "file resnet50_a1.pth"
    assert short("timm:regnety_004.pycls_in1k") == "timm:regnety_004.pycls_in1k"
    assert short("pretrained: timm:resnet50.a1_in1k (backbone)") == "timm:resnet50.a1_in1k"
    assert short("backbone: /w/resnet18.pth (sha256 1a2b3c4d...)") == "file resnet18.pth"
    assert short("mae: /w/mae_vit_base.pth (sha256 1a2b3c4d...); backbone: timm:swin_base_patch4_window7_224 "
                 "(sha256 5e6f7a8b...)") == "mae file mae_vit_base.pth, backbone timm:swin_base_patch4_window7_224"
    assert short(None) == "-"


def leaderboard_results(tmp_path):
    """Three rows of ours on BP4D: tiny (3 folds), paper from random weights (1 fold), paper from
    a weights file (1 fold)."""
    for fold in (1, 2, 3):
        write(tmp_path, f"tiny{fold}", {**fake_result("resnet", fold, [0.2 * fold] * len(AUS)),
                                        "initialisation": "random (no --pretrained)"})
    paper = fake_result("megraphau", 1, [0.6] * len(AUS))
    paper["config"]["preset"] = paper["preset"]["name"] = "paper-bp4d"
    paper["preset"]["paper_init"] = "ImageNet"
    write(tmp_path, "random", {**paper, "initialisation": "random (no --pretrained)"})
    pretrained = json.loads(json.dumps(paper))
    pretrained["method"] = pretrained["config"]["method"] = "ks"
    pretrained["config"]["pretrained"] = "/w/resnet18.pth"
    write(tmp_path, "file", {**pretrained, "initialisation": "pretrained: /w/resnet18.pth"})
    return leaderboard.build_rows(leaderboard.find_results([tmp_path]))


def test_preset_init_and_caveat_agree_across_formats(tmp_path):
    rows = leaderboard_results(tmp_path)
    ours = {r["method"]: r for r in rows if r["kind"] == "ours"}
    assert {m: (r["preset"], r["init"]) for m, r in ours.items()} == {
        "resnet": ("tiny", "random"), "megraphau": ("paper-bp4d", "random"), "ks": ("paper-bp4d", "file resnet18.pth")}
    assert "tiny" in ours["resnet"]["caveat"]
    assert ours["megraphau"]["caveat"] == "random initialisation; the paper starts from ImageNet weights"
    assert ours["ks"]["caveat"] == ""
    as_json = json.loads(leaderboard.to_json(rows))
    as_csv = list(csv.DictReader(io.StringIO(leaderboard.to_csv(rows))))
    text = leaderboard.to_markdown(rows)
    md = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
          if line.startswith("| ") and not line.startswith("| method")]
    assert len(as_json) == len(as_csv) == len(md) == len(rows)
    for j, c, m in zip(as_json, as_csv, md):
        assert (j["preset"], j["init"], j["caveat"]) == (c["preset"], c["init"], c["caveat"])
        assert (m[-2], m[-1]) == (j["preset"] or "-", j["init"] or "-")
        assert m[0].endswith(leaderboard.CAVEAT_MARK) == bool(j["caveat"])
    footnote = next(line for line in text.splitlines() if line.startswith(leaderboard.CAVEAT_MARK))
    assert ours["resnet"]["caveat"] in footnote and ours["megraphau"]["caveat"] in footnote


def test_an_ensemble_row_names_its_members_presets(tmp_path):
    from aubench.engine.identity import result_identity

    member = fake_result("resnet", 1, [0.5] * len(AUS))
    identity = {k: v for k, v in result_identity(member).items() if k != "fold"}
    ensemble = {key: member[key] for key in ("schema", "dataset", "fold", "protocol", "label_ratio", "au_names",
                                             "metrics", "data")}
    write(tmp_path, "pair", {**ensemble, "method": "pair",
                             "ensemble": {"members": [{"weight": 0.5, "identity": identity}] * 2}})
    row = leaderboard.build_rows(leaderboard.find_results([tmp_path]), include_reported=False)[0]
    assert (row["method"], row["preset"], row["init"]) == ("pair", "tiny", "-") and "tiny" in row["caveat"]


def test_a_single_fold_shows_no_std(tmp_path):
    rows = leaderboard_results(tmp_path)
    one = next(r for r in rows if r["method"] == "megraphau")
    three = next(r for r in rows if r["method"] == "resnet")
    assert one["mean_f1"]["std"] is None and three["mean_f1"]["std"] is not None
    line = next(line for line in leaderboard.to_markdown(rows).splitlines() if line.startswith("| megraphau"))
    assert "±" not in line and "60.0" in line
    csv_row = next(r for r in csv.DictReader(io.StringIO(leaderboard.to_csv(rows))) if r["method"] == "megraphau")
    assert csv_row["mean_f1_std"] == "" and float(csv_row["mean_f1_mean"]) == pytest.approx(60.0)


def test_the_plot_shows_reported_rows_only_when_asked(tmp_path, monkeypatch):
    import matplotlib.axes

    rows = leaderboard_results(tmp_path)
    assert any(r["kind"] == "reported" for r in rows)
    drawn: list[str] = []
    bar = matplotlib.axes.Axes.bar

    def recorded_bar(self, *args, **kwargs):
        drawn.append(kwargs["label"])
        return bar(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", recorded_bar)
    leaderboard.plot(rows, tmp_path / "f1.png")
    assert drawn and not any("(reported)" in label for label in drawn)
    assert any(label.startswith("all-positive") for label in drawn)
    drawn.clear()
    leaderboard.plot(rows, tmp_path / "f1.png", reported=True)
    assert any("(reported)" in label for label in drawn)


def test_a_self_supervised_row_names_its_pretraining_data(tmp_path):
    """A method with a pre-training stage names what it pre-trained on in the init column: the
    fold's training subjects by default, the file of --pretrain-data otherwise; the random-weights
    caveat still reads the initialisation itself."""
    def stage(name, pretraining):
        return {"name": name, "preset": {"epochs": 1}, "init_from": None, "frozen": [], "uses_labels": not pretraining,
                "frozen_inputs": [], "occluded": False, "row": None, "pretraining": pretraining}

    stages = [stage("pretrain", True), stage("probe", False)]
    own = {**fake_result("rrl", 1, [0.5] * len(AUS)), "initialisation": "random (no --pretrained)", "stages": stages}
    own["preset"]["paper_init"] = "ImageNet"
    write(tmp_path, "own", own)
    other = json.loads(json.dumps(own))
    other["data"]["pretrain_path"] = "/data/emotionet_like.h5"
    other["config"]["seed"] = 1  # another run, so it gets a row of its own
    write(tmp_path, "other", other)
    supervised = {**fake_result("resnet", 1, [0.5] * len(AUS)), "initialisation": "random (no --pretrained)",
                  "stages": [stage("train", False)]}
    write(tmp_path, "supervised", supervised)
    rows = [r for r in leaderboard.build_rows(leaderboard.find_results([tmp_path]), include_reported=False)
            if r["kind"] == "ours"]
    inits = sorted(r["init"] for r in rows)
    assert inits == ["random", "random; self-supervised on file emotionet_like.h5",
                     "random; self-supervised on the fold's training subjects"]
    rrl_rows = [r for r in rows if r["method"] == "rrl"]
    assert all("random initialisation" in r["caveat"] for r in rrl_rows)
