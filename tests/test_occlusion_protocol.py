"""The occlusion-robustness protocol (MAE-FAU, Section 4): masks on a 14 x 14 cell grid at every
image size, fixed test masks per frame, random training masks, occlusion conditions in the
leaderboard (rows, formats, F1-vs-occlusion plot) and the papers' reported rows."""
import csv
import io
import json
import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from aubench.data import ClipDataset, FrameDataset, block_mask, patch_mask
from fixtures_h5 import write_au_h5

KINDS = ("patches", "block")


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    return write_au_h5(tmp_path_factory.mktemp("occl") / "occl.h5", sequence_lengths=(7, 5))


def cell_pattern(mask: torch.Tensor) -> torch.Tensor:
    """The mask sampled at the centres of a 14 x 14 grid of cells."""
    h, w = mask.shape
    ys = [int((k + 0.5) * h / 14) for k in range(14)]
    xs = [int((k + 0.5) * w / 14) for k in range(14)]
    return mask[ys][:, xs]


# ------------------------------------------------------------------ masks on the cell grid


@pytest.mark.parametrize("make", [patch_mask, block_mask])
@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_cells_are_a_fixed_fraction_of_the_image(make, ratio):
    """16 px cells at 224 px, and the same cells (1/14 of the side) at 64 px and at odd sizes."""
    masks = {size: make(*size, ratio, generator=torch.Generator().manual_seed(4))
             for size in ((224, 224), (64, 64), (50, 71))}
    big = masks[(224, 224)]
    assert torch.equal(big, big[::16, ::16].repeat_interleave(16, 0).repeat_interleave(16, 1))
    for size, mask in masks.items():
        assert torch.equal(cell_pattern(mask), cell_pattern(big)), size
        # covered fraction: the ratio, up to the one-pixel differences between cells
        assert abs(mask.float().mean().item() - ratio) < 0.035, size


def test_test_masks_of_one_frame_are_nested_across_ratios():
    """A sweep (Fig. 3) adds occlusion to the same images instead of drawing new masks."""
    from aubench.data import frame_occlusion_mask

    for row in (0, 7, 123):
        masks = [frame_occlusion_mask("patches", r, row, 64, 64) for r in (0.3, 0.5, 0.7)]
        assert all(bool((small & ~big).sum() == 0) for small, big in zip(masks, masks[1:]))
        assert masks[0].sum() < masks[1].sum() < masks[2].sum()
    assert not torch.equal(frame_occlusion_mask("patches", 0.5, 0, 64, 64),
                           frame_occlusion_mask("patches", 0.5, 1, 64, 64))


def test_condition_names_round_trip():
    from aubench.data import condition_name, parse_condition

    assert parse_condition("none") is None and condition_name(None) == "none"
    assert parse_condition("patches:0.5") == ("patches", 0.5)
    assert parse_condition("block:0.3") == ("block", 0.3)
    for spec in (("patches", 0.5), ("block", 0.3), ("patches", 0.05), ("block", 1.0)):
        name = condition_name(spec)
        assert name == f"{spec[0]}{spec[1]:g}"
        assert parse_condition(name.replace(spec[0], spec[0] + ":")) == spec
    for bad in ("", "None", "patches", "patches:", "patches:x", "patches:0", "block:1.5", "circle:0.3",
                "patches0.5", "patches:-0.1"):
        with pytest.raises(ValueError) as err:
            parse_condition(bad)
        message = str(err.value)
        assert repr(bad) in message and "'none'" in message and "patches:<ratio>" in message
        assert "block:<ratio>" in message
    with pytest.raises(ValueError, match="unknown occlusion kind"):
        condition_name(("circle", 0.3))


# ------------------------------------------------------------------ test masks fixed per frame


def masks_by_row(dataset, num_workers=0, shuffle=False) -> dict[int, torch.Tensor]:
    loader = DataLoader(dataset, batch_size=3, num_workers=num_workers, shuffle=shuffle,
                        generator=torch.Generator().manual_seed(5))
    out = {}
    for batch in loader:
        rows = batch["index"].reshape(-1).tolist()
        masks = batch["occlusion"].reshape(-1, *batch["occlusion"].shape[-2:])
        for row, mask in zip(rows, masks):
            out[row] = mask
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_test_masks_depend_on_the_frame_only(h5, kind):
    occlusion = (kind, 0.5 if kind == "patches" else 0.3)
    frames = FrameDataset(h5, fold=1, split="test", image_size=56, occlusion=occlusion, seed=1)
    reference = masks_by_row(frames)
    assert len(reference) == len(frames)
    # another seed, no seed, shuffled batches in two workers, the uint8 path
    for other in (FrameDataset(h5, fold=1, split="test", image_size=56, occlusion=occlusion, seed=2),
                  FrameDataset(h5, fold=1, split="test", image_size=56, occlusion=occlusion)):
        assert all(torch.equal(m, reference[row]) for row, m in masks_by_row(other).items())
    workers = masks_by_row(frames, num_workers=2, shuffle=True)
    assert workers.keys() == reference.keys()
    assert all(torch.equal(m, reference[row]) for row, m in workers.items())
    fast = FrameDataset(h5, fold=1, split="test", image_size=56, occlusion=occlusion, normalize=False)
    assert all(torch.equal(m, reference[row]) for row, m in masks_by_row(fast).items())
    # a frame in a test clip is occluded as that frame alone (clips overlap: some frames twice)
    clips = ClipDataset(h5, fold=1, split="test", clip_len=3, image_size=56, occlusion=occlusion, seed=9)
    seen = 0
    for i in range(len(clips)):
        item = clips[i]
        assert item["occlusion"].shape == (3, 56, 56)
        for row, mask, image in zip(item["index"].tolist(), item["occlusion"], item["image"]):
            single = frames[int(np.flatnonzero(frames.rows == row)[0])]
            assert torch.equal(mask, reference[row]) and torch.equal(single["occlusion"], mask)
            torch.testing.assert_close(image, single["image"])
            seen += 1
    assert seen >= len(frames)
    # ... and the masks of different frames differ (one block has a few hundred shapes and
    # places on the grid, so two frames may share one)
    distinct = {tuple(m.flatten().tolist()) for m in reference.values()}
    assert len(distinct) == len(reference) if kind == "patches" else len(distinct) > 0.7 * len(reference)


def test_training_masks_are_new_every_epoch(h5):
    """The engine's way: one DataLoader per epoch, its generator seeded from (seed, epoch)."""
    train = FrameDataset(h5, fold=1, split="train", image_size=56, occlusion=("patches", 0.5))

    def epoch_masks(seed, epoch):
        loader = DataLoader(train, batch_size=4, num_workers=2,
                            generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        return {row: mask for batch in loader for row, mask in zip(batch["index"].tolist(), batch["occlusion"])}

    first, second = epoch_masks(0, 0), epoch_masks(0, 1)
    assert first.keys() == second.keys()
    differing = sum(not torch.equal(first[row], second[row]) for row in first)
    assert differing == len(first)
    again = epoch_masks(0, 0)  # the same training seed and epoch: the same masks
    assert all(torch.equal(again[row], first[row]) for row in first)
    # a training clip: one draw, the same mask on all its frames
    clip = ClipDataset(h5, fold=1, split="train", clip_len=3, image_size=56, occlusion=("block", 0.3))[0]
    assert clip["occlusion"].shape == (3, 56, 56) and clip["occlusion"].any()
    assert all(torch.equal(m, clip["occlusion"][0]) for m in clip["occlusion"])


# ------------------------------------------------------------------ leaderboard under occlusion

from aubench import leaderboard  # noqa: E402
from aubench.errors import UserError  # noqa: E402
from aubench import reported  # noqa: E402
from aubench.reported import AUS as REPORTED_AUS, REPORTED, protocol_of, reported_for  # noqa: E402
from aubench.reported import SMOOTHED_PROTOCOL  # noqa: E402
from test_leaderboard import AUS, fake_result  # noqa: E402

# (method, train condition) -> {test condition: F1 of folds 1, 2, 3 (None: fold not run)}
RUNS = {
    ("resnet", "none"): {"none": (0.60, 0.62, 0.64), "patches0.3": (0.50, 0.52, 0.54),
                         "patches0.5": (0.30, 0.33, 0.36), "block0.3": (0.45, 0.45, 0.45)},
    ("maefau", "patches0.5"): {"none": (0.63, None, None), "patches0.5": (0.61, None, None),
                               "patches0.7": (0.55, None, None)},
}


def occluded_result(method, fold, f1, train, test):
    r = fake_result(method, fold, [f1] * len(AUS))
    if (train, test) != ("none", "none") or fold != 1:  # fold 1 clean: a result from before the key
        r["occlusion"] = {"train": train, "test": test}
    return r


@pytest.fixture
def occlusion_runs(tmp_path):
    for (method, train), by_test in RUNS.items():
        for test, f1s in by_test.items():
            for fold, f1 in enumerate(f1s, 1):
                if f1 is not None:
                    r = occluded_result(method, fold, f1, train, test)
                    (tmp_path / f"{method}_{train}_{test}_{fold}.json").write_text(json.dumps(r))
    return tmp_path


def test_rows_per_occlusion_condition(occlusion_runs):
    rows = leaderboard.build_rows(leaderboard.find_results([occlusion_runs]))
    ours = {(r["method"], r["occlusion_train"], r["occlusion_test"]): r for r in rows if r["kind"] == "ours"}
    assert len(ours) == sum(len(v) for v in RUNS.values())
    for (method, train), by_test in RUNS.items():
        for test, f1s in by_test.items():
            row = ours[(method, train, test)]
            got = [f for f in f1s if f is not None]
            assert row["folds"] == list(range(1, len(got) + 1)) and row["setting"] == ""
            assert row["mean_f1"]["mean"] == pytest.approx(100 * np.mean(got))
    # one section per test condition, in order: none, patches by ratio, block
    sections = list(dict.fromkeys(r["occlusion_test"] for r in rows))
    assert sections == ["none", "patches0.3", "patches0.5", "patches0.7", "block0.3"]
    # the papers' rows of each test condition, with their train condition
    reported = {(r["method"], r["occlusion_train"], r["occlusion_test"]) for r in rows if r["kind"] == "reported"}
    assert ("ME-GraphAU", "none", "patches0.5") in reported
    assert ("MAE-FAU student", "patches0.5", "patches0.5") in reported
    assert ("MAE-FAU teacher", "block0.3", "block0.3") in reported
    assert ("ME-GraphAU + MAE reconstruction", "none", "block0.3") in reported
    assert ("MAE-FAU student (one fold)", "patches0.5", "patches0.7") in reported
    assert ("ME-GraphAU", "none", "none") in reported and ("KS", "none", "none") in reported
    assert not any(test == "patches0.3" for _, _, test in reported)  # the papers have none there
    # --merge mixes settings, never conditions
    merged = leaderboard.build_rows(leaderboard.find_results([occlusion_runs]), merge=True)
    assert len([r for r in merged if r["kind"] == "ours"]) == len(ours)


def test_occlusion_formats_agree(occlusion_runs):
    rows = leaderboard.build_rows(leaderboard.find_results([occlusion_runs]))
    as_json = json.loads(leaderboard.to_json(rows))
    as_csv = list(csv.DictReader(io.StringIO(leaderboard.to_csv(rows))))
    lines = [line for line in leaderboard.to_markdown(rows).splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    md = [[c.strip() for c in line.strip("|").split("|")] for line in lines if not line.startswith("| method")]
    assert len(as_json) == len(as_csv) == len(md) == len(rows)
    col = {name: header.index(name) for name in ("train occlusion", "test occlusion", "mean F1")}
    for j, c, m in zip(as_json, as_csv, md):
        assert j["method"] == c["method"] and m[0].startswith(j["method"])
        assert (j["occlusion_train"], j["occlusion_test"]) == (c["occlusion_train"], c["occlusion_test"])
        assert (m[col["train occlusion"]], m[col["test occlusion"]]) == (j["occlusion_train"], j["occlusion_test"])
        assert float(c["mean_f1_mean"]) == pytest.approx(j["mean_f1"]["mean"])
        assert float(re.match(r"[\d.]+", m[col["mean F1"]]).group()) == pytest.approx(j["mean_f1"]["mean"], abs=0.05)
    assert "reported: " + f"{REPORTED[0]['source']}" in leaderboard.to_markdown(rows)


def test_f1_against_occlusion_plot(occlusion_runs, tmp_path):
    rows = leaderboard.build_rows(leaderboard.find_results([occlusion_runs]))
    series = {(s["method"], s["train"]): s for s in leaderboard.occlusion_series(rows)}
    assert set(series) == set(RUNS)
    resnet = series[("resnet", "none")]
    assert resnet["x"] == [0.0, 0.3, 0.5]  # block conditions are not on the ratio axis
    by_test = RUNS[("resnet", "none")]
    assert resnet["y"] == pytest.approx([100 * np.mean(by_test[t]) for t in ("none", "patches0.3", "patches0.5")])
    assert resnet["yerr"] == pytest.approx([100 * np.std(by_test[t]) for t in ("none", "patches0.3", "patches0.5")])
    mae = series[("maefau", "patches0.5")]
    assert mae["x"] == [0.0, 0.5, 0.7] and mae["y"] == pytest.approx([63.0, 61.0, 55.0])
    assert mae["yerr"] is None  # one fold: no error bars
    written = leaderboard.plot(rows, tmp_path / "out" / "f1.png")
    assert [p.name for p in written] == ["f1.png", "f1_occlusion.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)
    # one test condition only: no such plot
    clean = [r for r in rows if r["occlusion_test"] == "none"]
    assert [p.name for p in leaderboard.plot(clean, tmp_path / "clean.png")] == ["clean.png"]


def test_malformed_occlusion_field(occlusion_runs, capsys):
    bad = fake_result("resnet", 1, [0.5] * len(AUS))
    bad["occlusion"] = {"train": "none", "test": "patches:0.5"}  # the command-line spelling
    (occlusion_runs / "bad.json").write_text(json.dumps(bad))
    results = leaderboard.find_results([occlusion_runs])
    assert all(not r["_file"].endswith("bad.json") for r in results)
    err = capsys.readouterr().err
    assert "bad.json" in err and "occlusion.test" in err and "patches:0.5" in err
    with pytest.raises(UserError, match="bad.json.*occlusion.test"):
        leaderboard.find_results([occlusion_runs / "bad.json"])


def test_condition_names_are_read_back():
    from aubench.data import condition_name

    for spec in (None, ("patches", 0.5), ("patches", 0.05), ("block", 0.3), ("block", 1.0)):
        assert leaderboard.parse_condition_name(condition_name(spec)) == spec
    for bad in ("patches:0.5", "patches", "block0.30", "Patches0.5", "patches1.5", 0.5):
        with pytest.raises(ValueError):
            leaderboard.parse_condition_name(bad)


# ------------------------------------------------------------------ the papers' reported rows


def test_reported_entries_are_well_formed():
    from datasets_tools.bp4d import BP4D_AUS
    from datasets_tools.disfa import DISFA_AUS

    from aubench.engine.run import protocol_name

    from datasets_tools.affwild2 import AFFWILD2_AUS

    reference = {"BP4D": [f"AU{n}" for n in BP4D_AUS], "DISFA": [f"AU{n}" for n in DISFA_AUS],
                 "Aff-Wild2": [f"AU{n}" for n in AFFWILD2_AUS]}
    assert REPORTED_AUS == reference
    protocols = {protocol_name(r) for r in (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)}
    assert all(protocol_of(r) == protocol_name(r) for r in (0.01, 0.15, 0.5, 1.0))
    seen = set()
    for entry in REPORTED:
        what = f"{entry['method']} {entry['dataset']} {entry['protocol']} {entry['occlusion']}"
        assert list(entry["f1"]) == reference[entry["dataset"]], what
        assert entry["source"] and entry["protocol"] in protocols | {reported.PROBE, SMOOTHED_PROTOCOL}, what
        assert entry["split"] == ("official" if entry["dataset"] == "Aff-Wild2" else None), what
        for name in entry["occlusion"].values():
            leaderboard.parse_condition_name(name)
        scores = list(entry["f1"].values())
        assert all(s is None or 0 <= s <= 100 for s in scores) and 0 < entry["mean_f1"] <= 100, what
        if None not in scores and not entry["paper_mean_differs"]:
            assert abs(np.mean(scores) - entry["mean_f1"]) <= 0.6, what
        key = (entry["method"], entry["dataset"], entry["split"], entry["protocol"],
               tuple(entry["occlusion"].values()))
        assert key not in seen, f"two entries for {what}"
        seen.add(key)
    # the self-supervised tables: RRL's linear-probe rows on both datasets, its ablations on BP4D
    for dataset in ("BP4D", "DISFA"):
        assert "RRL" in {r["method"] for r in reported_for(dataset, None, reported.PROBE, "none")}, dataset
    assert {"RRL: global", "RRL: global+local", "RRL: global+relation"} <= {
        r["method"] for r in reported_for("BP4D", None, reported.PROBE, "none")}
    # the label-ratio tables: Knowledge-Spreader at every ratio it reports, on both datasets
    for dataset in ("BP4D", "DISFA"):
        ks = {r["protocol"] for r in REPORTED if r["method"] == "KS" and r["dataset"] == dataset}
        assert ks == protocols
    # the occlusion tables: ME-GraphAU clean, under 50% patches and a 30% block, on both datasets
    for dataset in ("BP4D", "DISFA"):
        for test in ("patches0.5", "block0.3"):
            methods = {r["method"] for r in reported_for(dataset, None, "full", test)}
            assert {"ME-GraphAU", "ME-GraphAU + MAE reconstruction", "MAE-FAU teacher",
                    "MAE-FAU student"} <= methods, (dataset, test)


def test_reported_rows_match_dataset_protocol_and_condition(tmp_path):
    for i, (dataset, protocol, ratio, test) in enumerate((("DISFA", "sparse0.1", 0.1, "none"),
                                                          ("DISFA", "full", 1.0, "block0.3"))):
        r = fake_result("ks", 1, [0.5] * len(AUS), protocol, ratio, dataset=dataset)
        disfa = REPORTED_AUS["DISFA"]
        r["au_names"] = disfa
        r["metrics"].update(f1={au: 0.5 for au in disfa}, all_positive_f1={au: 0.3 for au in disfa})
        r["occlusion"] = {"train": "none", "test": test}
        (tmp_path / f"{i}.json").write_text(json.dumps(r))
    rows = leaderboard.build_rows(leaderboard.find_results([tmp_path]))
    reported = [r for r in rows if r["kind"] == "reported"]
    got = {(r["method"], r["protocol"], r["occlusion_test"]) for r in reported}
    want = {(e["method"], e["protocol"], e["occlusion"]["test"]) for e in REPORTED if e["dataset"] == "DISFA"
            and (e["protocol"], e["occlusion"]["test"]) in (("sparse0.1", "none"), ("full", "block0.3"))}
    assert got == want and ("KS", "sparse0.1", "none") in got and ("MAE-FAU student", "full", "block0.3") in got
    assert all(r["dataset"] == "DISFA" for r in reported)
    student = next(r for r in reported if r["method"] == "MAE-FAU student")
    assert student["f1"]["AU9"]["mean"] == pytest.approx(38.94) and student["occlusion_train"] == "block0.3"
