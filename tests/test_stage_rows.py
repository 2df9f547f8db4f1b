"""A preset's training occlusion, stages kept clean of it (Stage.occluded), and stages tested as
their own leaderboard rows (Stage.row): names, identities, results, bench records, leaderboard
rows, and resuming a killed or finished run."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from aubench import leaderboard
from aubench.bench import benchmark_method
from aubench.cli import main
from aubench.data import normalize_images
from aubench.engine.checkpoint import load_checkpoint
from aubench.engine.config import RunConfig
from aubench.engine.identity import result_identity, run_identity
from aubench.engine.run_files import clear_run_files, kept_run_files
from aubench.engine.trainer import Trainer
from aubench.errors import UserError
from aubench.models.base import _METHODS, Stage, check_stages, register_method
from fixtures_h5 import write_au_h5
from test_stages import AUS8, ProbeMethod, assert_same, events, weights

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FAST = ["--device", "cpu", "--no-progress"]

# (stage, batch) of every training step of the methods below, the bench's included
BATCHES: list[tuple[str, dict]] = []


class OccludedProbe(ProbeMethod):
    """ProbeMethod (pre-training -> probe -> distilled student) whose preset trains under random
    patches; no leaderboard rows."""

    presets = {"tiny": replace(ProbeMethod.presets["tiny"], train_occlusion="patches:0.5")}

    def training_step(self, batch, state):
        BATCHES.append((state.stage, {k: v.clone() for k, v in batch.items()}))
        if self.phase == "distil" and "probe" not in self.frozen_inputs:  # the "chain" layout below
            return self._supervised(batch)
        return super().training_step(batch, state)

    def _supervised(self, batch):
        known = batch["label"] >= 0
        logits = self.logits(batch["image"])[known]
        return {"loss": torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["label"][known])}


class RowsMethod(OccludedProbe):
    """Pre-training on clean faces (occluded=False) -> probe (row "probe") -> student (row
    "student"). Layout "distil": the student is distilled from the frozen probe, which the
    trainer therefore holds. Layout "chain": the probe also reads the pre-trained method as a
    frozen input (its predict uses it), the student starts from the probe and reads nothing, so
    the probe is tested from its final-weights file with its frozen input loaded too."""

    layout = "distil"

    @classmethod
    def stages(cls, preset):
        pretrain, probe, distil = super().stages(preset)
        pretrain = replace(pretrain, occluded=False)
        if cls.layout == "chain":
            return [pretrain, replace(probe, frozen_inputs=("pretrain",), row="probe"),
                    replace(distil, init_from="probe", frozen_inputs=(), row="student")]
        return [pretrain, replace(probe, row="probe"), replace(distil, row="student")]

    @torch.no_grad()
    def predict(self, batch):
        probs = super().predict(batch)
        if self.phase == "probe" and self.layout == "chain":  # a stage that predicts with its frozen input
            pretrained = self.frozen_inputs["pretrain"]
            assert not pretrained.training
            probs = probs + 0 * pretrained.encoder(batch["image"]).sum()
        return probs


for _name, _cls in (("occl_probe_test", OccludedProbe), ("rows_test", RowsMethod)):
    if _name not in _METHODS:
        register_method(_name)(_cls)

ROWS = dict(method="rows_test", preset="tiny", progress=False, device="cpu", log_every=1)
ROW_FILES = ["rows_test-probe_fold1_full_train-patches0.5.json",
             "rows_test-probe_fold1_full_train-patches0.5_test-patches0.5.json",
             "rows_test-student_fold1_full_train-patches0.5.json",
             "rows_test-student_fold1_full_train-patches0.5_test-patches0.5.json"]


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    return write_au_h5(tmp_path_factory.mktemp("rows") / "au8.h5", num_subjects=6, sequence_lengths=(6, 5),
                       au_names=AUS8)


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def results_in(out: Path) -> dict[str, dict]:
    return {p.name: read(p) for p in sorted((out / "results").glob("*.json"))}


# ------------------------------------------------------------------ a preset's training occlusion


def test_a_preset_training_occlusion_names_the_run_as_the_option_would(h5, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    BATCHES.clear()
    assert main(["train", "--method", "occl_probe_test", "--data", str(h5), *FAST]) == 0
    out = tmp_path / "runs" / "occl_probe_test_fold1_full_train-patches0.5"        # the default --out
    result = read(out / "result.json")
    assert result["occlusion"] == {"train": "patches0.5", "test": "none"}
    assert result["config"]["train_occlusion"] == "patches:0.5" and result["tested_stage"] == "distil"
    assert result_identity(result)["train_occlusion"] == "patches0.5"
    assert load_checkpoint(out / "last.pt")["config"]["train_occlusion"] == "patches0.5"
    assert {stage for stage, _ in BATCHES} == {"pretrain", "probe", "distil"}
    assert all(batch["occlusion"].any() for _, batch in BATCHES)                  # every stage occluded

    evaluate = ["evaluate", "--methods", "occl_probe_test", "--folds", "1", "--data", str(h5), *FAST]
    assert main(evaluate + ["--out", "preset"]) == 0
    assert main(evaluate + ["--out", "option", "--train-occlusion", "patches:0.50"]) == 0
    name = "occl_probe_test_fold1_full_train-patches0.5.json"
    by_preset, by_option = results_in(tmp_path / "preset"), results_in(tmp_path / "option")
    assert list(by_preset) == list(by_option) == [name]
    assert (tmp_path / "preset" / "runs" / "occl_probe_test" / "full_train-patches0.5" / "fold1" / "last.pt").is_file()
    a, b = by_preset[name], by_option[name]
    assert result_identity(a) == result_identity(b) and a["metrics"] == b["metrics"]
    assert a["bench"]["occlusion"] == "patches0.5"          # measured under its training condition
    capsys.readouterr()
    assert main(evaluate + ["--out", "preset", "--resume", "--train-occlusion", "patches:0.5"]) == 0
    assert "kept" in capsys.readouterr().out

    # --train-occlusion none wins over the preset, in evaluate and in train
    BATCHES.clear()
    assert main(evaluate + ["--out", "clean", "--train-occlusion", "none"]) == 0
    clean = results_in(tmp_path / "clean")
    assert list(clean) == ["occl_probe_test_fold1_full.json"]
    result = clean["occl_probe_test_fold1_full.json"]
    assert result["occlusion"]["train"] == "none" and "train_occlusion" not in result_identity(result)
    assert result["bench"]["occlusion"] == "none"
    assert BATCHES and not any("occlusion" in batch for _, batch in BATCHES)
    BATCHES.clear()
    assert main(["train", "--method", "occl_probe_test", "--data", str(h5), "--train-occlusion", "none", *FAST]) == 0
    assert read(tmp_path / "runs" / "occl_probe_test_fold1_full" / "result.json")["occlusion"]["train"] == "none"
    assert BATCHES and not any("occlusion" in batch for _, batch in BATCHES)


# ------------------------------------------------------------------ a stage kept clean


def test_a_stage_that_is_not_occluded_trains_on_clean_images(h5, tmp_path):
    BATCHES.clear()
    trainer = Trainer(RunConfig(data=str(h5), out=str(tmp_path / "run"), augment=False, **ROWS))
    trainer.fit()
    clean = trainer.data.train_dataset("frame", trainer.stages[0].preset, 1.0, augment=False, labeled_only=False)
    clean_images = {int(row): normalize_images(clean[i]["image"][None])[0] for i, row in enumerate(clean.rows)}
    seen = {stage: 0 for stage in ("pretrain", "probe", "distil")}
    for stage, batch in BATCHES:
        seen[stage] += 1
        expected = torch.stack([clean_images[row] for row in batch["index"].tolist()])
        if stage == "pretrain":   # occluded=False: clean images, no mask
            assert "occlusion" not in batch
            assert torch.equal(batch["image"], expected)
        else:                     # occluded: the run's training occlusion (the preset's patches:0.5)
            mask = batch["occlusion"]
            assert mask.dtype == torch.bool and mask.shape == (len(batch["index"]), 32, 32)
            assert mask.any() and not mask.all()
            visible = ~mask[:, None].expand_as(expected)
            assert torch.equal(batch["image"][visible], expected[visible])
            assert batch["image"][~visible].abs().max() < 0.05 < (expected[~visible].abs().max())
    assert all(count > 0 for count in seen.values()), seen


def test_stage_settings_that_hold_their_default_leave_identities_unchanged(h5):
    preset = RowsMethod.presets["tiny"]
    stages = RowsMethod.stages(preset)
    new = [stage.settings() for stage in stages]
    # as results stored before occluded / row / train_occlusion existed hold them
    old = [{k: v for k, v in s.items() if k not in ("occluded", "row")} for s in new]
    for s in old:
        s["preset"] = {k: v for k, v in s["preset"].items() if k != "train_occlusion"}
    config = dict(method="rows_test", preset="tiny", fold=1, label_ratio=1.0, seed=0, augment=True, pretrained=None,
                  train_occlusion="patches0.5")
    identity = run_identity(config, preset.__dict__, "f", "fp32", new)
    assert identity["stages"]["pretrain"]["occluded"] is False                 # not the default: in it
    assert all("occluded" not in identity["stages"][s] for s in ("probe", "distil"))
    assert not any("row" in s or "train_occlusion" in s["preset"] for s in identity["stages"].values())
    old[0]["occluded"] = False
    old_preset = {k: v for k, v in preset.__dict__.items() if k != "train_occlusion"}
    assert run_identity(config, old_preset, "f", "fp32", old) == identity
    assert run_identity(config, old_preset, "f", "fp32", old[:1] + new[1:]) == identity


def test_results_stored_before_these_settings_are_kept_by_resume(h5, tmp_path, capsys):
    evaluate = ["evaluate", "--methods", "probe_test", "--folds", "1", "--data", str(h5), "--out", str(tmp_path),
                *FAST]
    assert main(evaluate) == 0
    path = tmp_path / "results" / "probe_test_fold1_full.json"
    result = read(path)
    assert result["tested_stage"] == "distil" and result["method"] == "probe_test"
    del result["tested_stage"]                 # as written before rows, occluded and train_occlusion existed
    del result["preset"]["train_occlusion"]
    for stage in result["stages"]:
        del stage["occluded"], stage["row"], stage["preset"]["train_occlusion"]
    path.write_text(json.dumps(result))
    capsys.readouterr()
    assert main(evaluate + ["--resume"]) == 0
    assert "kept" in capsys.readouterr().out and read(path) == result


def test_check_stages_refuses_rows_that_cannot_name_results():
    preset = RowsMethod.presets["tiny"]
    pretrain, probe, distil = RowsMethod.stages(preset)
    assert check_stages("m", [pretrain, probe, distil]) == [pretrain, probe, distil]
    with pytest.raises(ValueError, match=r"^m: stages 'probe' are leaderboard rows, so the last stage 'distil' "
                                         r"must be one too"):
        check_stages("m", [pretrain, probe, replace(distil, row=None)])
    with pytest.raises(ValueError, match=r"^m stage 'distil': two stages have the row name 'probe'"):
        check_stages("m", [pretrain, probe, replace(distil, row="probe")])
    for bad in ("", "a b", "-x", "a/b", 3):
        with pytest.raises(ValueError, match=r"^m stage 'probe': row .*: a row name is letters, digits"):
            check_stages("m", [pretrain, replace(probe, row=bad), distil])
    assert check_stages("m", [Stage("only", preset, row="solo")])[0].row == "solo"


# ------------------------------------------------------------------ rows through evaluate

EVALUATE_ROWS = ["evaluate", "--methods", "rows_test", "--folds", "1", "--test-occlusion", "none,patches:0.5",
                 "--checkpoint-every", "1", *FAST]


def evaluate_rows(h5, out, *extra) -> list[str]:
    return [*EVALUATE_ROWS, "--data", str(h5), "--out", str(out), *extra]


@pytest.fixture(scope="module")
def rows_evaluated(h5, tmp_path_factory):
    out = tmp_path_factory.mktemp("rows_ev") / "ev"
    assert main(evaluate_rows(h5, out)) == 0
    return out


def test_rows_are_tested_and_named_as_their_own_methods(rows_evaluated, tmp_path):
    results = results_in(rows_evaluated)
    assert list(results) == ROW_FILES
    for name, result in results.items():
        row = "probe" if name.startswith("rows_test-probe") else "student"
        stage = "probe" if row == "probe" else "distil"
        assert result["method"] == f"rows_test-{row}" and result["tested_stage"] == stage
        assert result["config"]["method"] == "rows_test" and result["occlusion"]["train"] == "patches0.5"
        assert result["occlusion"]["test"] == ("patches0.5" if name.endswith("_test-patches0.5.json") else "none")
        bench = result["bench"]
        assert (bench["method"], bench["stage"], bench["occlusion"]) == (result["method"], stage, "patches0.5")
        assert [s["row"] for s in result["stages"]] == [None, "probe", "student"]
    assert len({json.dumps(result_identity(r), sort_keys=True) for r in results.values()}) == 1
    log = events(rows_evaluated / "runs" / "rows_test" / "full_train-patches0.5" / "fold1")
    assert [r["stage"] for r in log if r["event"] == "start"] == ["pretrain", "probe", "distil"]   # trained once
    assert sorted((r["stage"], r["test_occlusion"]) for r in log if r["event"] == "evaluate") == [
        ("distil", "none"), ("distil", "patches0.5"), ("probe", "none"), ("probe", "patches0.5")]

    # The leaderboard: one row per row name and condition; settings labelled alike in both.
    other = tmp_path / "seed1"
    other.mkdir()
    for name, result in results.items():
        (other / name).write_text(json.dumps({**result, "config": {**result["config"], "seed": 1}}))
    rows = leaderboard.build_rows(leaderboard.find_results([rows_evaluated, other]), include_reported=False)
    ours = [r for r in rows if r["kind"] == "ours"]
    assert sorted((r["method"], r["occlusion_test"], r["setting"]) for r in ours) == sorted(
        (f"rows_test-{row}", test, f"seed={seed}") for row in ("probe", "student") for test in ("none", "patches0.5")
        for seed in (0, 1))
    assert all(r["params_m"] == results[ROW_FILES[0]]["bench"]["params_m"] for r in ours)
    lines = leaderboard.occlusion_series(rows)
    assert sorted(line["method"] for line in lines) == sorted(
        f"rows_test-{row} [seed={seed}]" for row in ("probe", "student") for seed in (0, 1))
    assert all(line["x"] == [0.0, 0.5] for line in lines)
    written = leaderboard.plot(rows, tmp_path / "plot.png")
    assert [p.name for p in written] == ["plot.png", "plot_occlusion.png"]


def test_rows_of_a_finished_run_are_tested_again_from_its_files(h5, rows_evaluated, tmp_path, capsys):
    out = tmp_path / "ev"
    shutil.copytree(rows_evaluated, out)
    before = results_in(out)
    lost = [ROW_FILES[0], ROW_FILES[3]]           # probe untested, student untested under patches
    for name in lost:
        (out / "results" / name).unlink()
    capsys.readouterr()
    assert main(evaluate_rows(h5, out, "--resume")) == 0
    assert capsys.readouterr().out.count("kept") == 2
    after = results_in(out)
    assert list(after) == ROW_FILES
    for name in ROW_FILES:
        if name in lost:
            assert after[name]["metrics"] == before[name]["metrics"] and after[name]["method"] == before[name]["method"]
        else:
            assert after[name] == before[name]
    log = events(out / "runs" / "rows_test" / "full_train-patches0.5" / "fold1")
    again = log[max(i for i, r in enumerate(log) if r["event"] == "resume"):]
    assert not any(r["event"] == "step" for r in again)                          # nothing trained
    assert [(r["stage"], r["test_occlusion"]) for r in again if r["event"] == "evaluate"] == [
        ("probe", "none"), ("distil", "patches0.5")]


def test_resume_refuses_a_row_result_of_another_stage(h5, rows_evaluated, tmp_path, capsys):
    out = tmp_path / "ev"
    shutil.copytree(rows_evaluated, out)
    path = out / "results" / ROW_FILES[0]
    result = read(path)
    path.write_text(json.dumps({**result, "tested_stage": "distil"}))
    capsys.readouterr()
    assert main(evaluate_rows(h5, out, "--resume")) == 2
    err = capsys.readouterr().err
    assert f"--resume: {path} was made with other settings (tested_stage: result 'distil' vs now 'probe')" in err, err


KILL_EVALUATE = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import test_stage_rows as rows
from aubench.cli import main
stage, step = sys.argv[2], int(sys.argv[3])
original = rows.RowsMethod.training_step

def training_step(self, batch, state):
    if state.stage == stage and state.step == step:  # the bench's steps, before training, are 0 and 1
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, batch, state)

rows.RowsMethod.training_step = training_step
sys.exit(main(sys.argv[4:]))
"""


@pytest.mark.parametrize("stage", ["probe", "distil"])
def test_a_killed_evaluate_resumes_and_tests_every_row(h5, rows_evaluated, tmp_path, stage):
    out = tmp_path / "ev"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
    proc = subprocess.run([sys.executable, "-c", KILL_EVALUATE, str(TESTS), stage, "3", *evaluate_rows(h5, out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run = out / "runs" / "rows_test" / "full_train-patches0.5" / "fold1"
    saved = load_checkpoint(run / "last.pt")
    assert saved["stage"]["name"] == stage and saved["train_state"]["step"] == 3
    assert not (out / "results").exists() or not list((out / "results").iterdir())
    assert main(evaluate_rows(h5, out, "--resume")) == 0
    after, uninterrupted = results_in(out), results_in(rows_evaluated)
    assert list(after) == ROW_FILES
    for name in ROW_FILES:
        assert after[name]["metrics"] == uninterrupted[name]["metrics"], name
        assert after[name]["method"] == uninterrupted[name]["method"]
    log = events(run)
    again = log[max(i for i, r in enumerate(log) if r["event"] == "resume"):]
    trained_again = {r["stage"] for r in again if r["event"] == "epoch"}
    assert trained_again == ({"probe", "distil"} if stage == "probe" else {"distil"})


# ------------------------------------------------------------------ rows through train


def test_train_writes_one_result_per_row_and_tests_a_row_from_its_final_weights(h5, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(RowsMethod, "layout", "chain")
    out = tmp_path / "run"
    train = ["train", "--method", "rows_test", "--data", str(h5), "--out", str(out), "--test-occlusion",
             "none,patches:0.5", *FAST]
    assert main(train) == 0
    names = ["result_probe.json", "result_probe_test-patches0.5.json", "result_student.json",
             "result_student_test-patches0.5.json"]
    assert sorted(p.name for p in out.glob("result*.json")) == names
    results = {name: read(out / name) for name in names}
    assert [r["method"] for r in results.values()] == ["rows_test-probe"] * 2 + ["rows_test-student"] * 2
    assert [r["tested_stage"] for r in results.values()] == ["probe"] * 2 + ["distil"] * 2
    assert results["result_probe.json"]["stages"][1]["frozen_inputs"] == ["pretrain"]

    # After training: the probe is no stage's input, so it is tested from final_probe.pt, with its
    # own frozen input loaded from final_pretrain.pt.
    trainer = Trainer(RunConfig(data=str(h5), out=str(out), resume=True, **ROWS))
    trainer.fit()
    assert not trainer.trained and not trainer.method.frozen_inputs
    probe = trainer.stage_method("probe")
    assert_same(weights(probe), load_checkpoint(out / "final_probe.pt")["model"])
    assert_same(weights(probe.frozen_inputs["pretrain"]), load_checkpoint(out / "final_pretrain.pt")["model"])
    assert trainer.evaluate(stage="probe") == results["result_probe.json"]["metrics"]
    assert trainer.evaluate(("patches", 0.5), "probe") == results["result_probe_test-patches0.5.json"]["metrics"]
    assert trainer.evaluate() == results["result_student.json"]["metrics"]

    # The row results are run files: a fresh run refuses, --overwrite replaces them all.
    assert set(names) <= set(kept_run_files(out))
    capsys.readouterr()
    assert main(train + ["--seed", "1"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    clear_run_files(out)
    assert not list(out.glob("result*.json"))


# ------------------------------------------------------------------ bench


def test_bench_measures_the_stage_asked_for_under_its_training_occlusion(tmp_path, capsys):
    BATCHES.clear()
    record = benchmark_method("rows_test", 8, "tiny", "cpu", batch_size=2, warmup=0, iters=1, stage="probe")
    assert (record["method"], record["stage"], record["occlusion"]) == ("rows_test-probe", "probe", "patches0.5")
    masks = [batch["occlusion"] for stage, batch in BATCHES if stage == "probe"]
    assert masks and all(m.dtype == torch.bool and m.shape == (2, 32, 32) and m.any() and not m.all() for m in masks)
    again = benchmark_method("rows_test", 8, "tiny", "cpu", batch_size=2, warmup=0, iters=1, train=False)
    assert (again["method"], again["stage"]) == ("rows_test-student", "distil")       # the last stage by default
    BATCHES.clear()
    clean = benchmark_method("rows_test", 8, "tiny", "cpu", batch_size=2, warmup=0, iters=1, stage="pretrain")
    assert clean["occlusion"] == "none" and clean["method"] == "rows_test"            # occluded=False, no row
    assert BATCHES and all("occlusion" not in b and "label" not in b for _, b in BATCHES)
    forced = benchmark_method("rows_test", 8, "tiny", "cpu", batch_size=2, warmup=0, iters=1, train=False,
                              stage="probe", train_occlusion="none")
    assert forced["occlusion"] == "none"
    with pytest.raises(UserError, match="method 'rows_test' has no stage 'nope' "):
        benchmark_method("rows_test", 8, "tiny", "cpu", batch_size=2, stage="nope")

    path = tmp_path / "bench.json"
    assert main(["bench", "--methods", "rows_test,probe_test", "--preset", "tiny", "--num-aus", "8", "--batch-size",
                 "2", "--warmup", "0", "--iters", "1", "--device", "cpu", "--json", str(path)]) == 0
    records = read(path)
    assert [(r["method"], r["stage"]) for r in records] == [("rows_test-probe", "probe"),
                                                            ("rows_test-student", "distil"), ("probe_test", "distil")]
    assert [r["occlusion"] for r in records] == ["patches0.5", "patches0.5", "none"]
    out = capsys.readouterr().out
    assert "rows_test-probe" in out and "rows_test-student" in out


# ------------------------------------------------------------------ each row's own training condition


class CleanRowMethod(RowsMethod):
    """Rows of one run trained under different conditions: the probe row trains on clean images
    (from the clean pre-training), the student under the preset's patches."""

    @classmethod
    def stages(cls, preset):
        pretrain, probe, distil = super().stages(preset)
        return [pretrain, replace(probe, occluded=False), distil]


if "clean_row_test" not in _METHODS:
    register_method("clean_row_test")(CleanRowMethod)


def test_each_row_names_its_own_training_condition(h5, tmp_path):
    """A row trained clean in a run whose other stages train occluded (MAE-FAU's reconstruction
    baseline beside its teacher) says "none" in its result, its file name and the leaderboard."""
    from aubench.models.base import trained_under
    from aubench.models.maefau import MAEFAU

    recon = MAEFAU.presets["tiny"]
    recon = replace(recon, model={**recon.model, "reconstruction_baseline": True})
    stages = {s.name: s for s in MAEFAU.stages(recon)}
    assert trained_under(list(stages.values()), stages["recon2"], "patches0.5") == "none"
    assert trained_under(list(stages.values()), stages["teacher2"], "patches0.5") == "patches0.5"
    assert trained_under(list(stages.values()), stages["student"], "patches0.5") == "patches0.5"

    out = tmp_path / "ev"
    assert main(["evaluate", "--methods", "clean_row_test", "--folds", "1", "--data", str(h5), "--out", str(out),
                 *FAST]) == 0
    results = results_in(out)
    assert sorted(results) == ["clean_row_test-probe_fold1_full.json",
                               "clean_row_test-student_fold1_full_train-patches0.5.json"]
    assert results["clean_row_test-probe_fold1_full.json"]["occlusion"]["train"] == "none"
    assert results["clean_row_test-student_fold1_full_train-patches0.5.json"]["occlusion"]["train"] == "patches0.5"
    rows = leaderboard.build_rows(leaderboard.find_results([out]), include_reported=False)
    assert {(r["method"], r["occlusion_train"]) for r in rows if r["kind"] == "ours"} == {
        ("clean_row_test-probe", "none"), ("clean_row_test-student", "patches0.5")}


def test_epoch_summary_line():
    """The line a finished epoch leaves on screen names the stage, the epoch, each loss part, lr,
    time, frames/s and the stage's ETA at the mean epoch time so far."""
    from aubench.engine.logging import epoch_summary

    line = epoch_summary("ks fold1 stage train", 1, 5, {"loss": 0.5, "l_self": 0.25}, 0.01, 10.0, 200, 30.0)
    assert line == ("[train] ks fold1 stage train epoch 2/5: loss 0.5 l_self 0.25, lr 0.01, 10 s, 20.0 frames/s, "
                    "stage done in about 45 s")
    assert epoch_summary("x", 4, 5, {"loss": 1.0}, 0.0, 2.0, 4, 10.0).endswith("2.0 frames/s, stage done")


def test_run_eta_of_a_run_of_stages():
    """A run of several stages also gives the run's ETA: this stage's epochs left at its own mean
    epoch time, later stages' at the mean epoch time of every epoch trained so far."""
    from aubench.engine.logging import epoch_summary
    from aubench.engine.progress import run_seconds_left
    from aubench.models.base import Preset, Stage

    stages = [Stage(name, Preset(name="tiny", image_size=32, epochs=epochs, batch_size=4)) for name, epochs in (("a", 2), ("b", 4), ("c", 3))]
    finished = [{"train_seconds": 20.0, "epochs": 2}]  # stage a: 10 s per epoch
    # stage b, 1 of 4 epochs in 30 s: 3 x 30 s left in b, then c's 3 epochs at (20 + 30) / 3 s
    assert run_seconds_left(finished, stages, 1, 1, 30.0) == 3 * 30.0 + 3 * 50.0 / 3
    assert run_seconds_left([], stages[:1], 0, 1, 5.0) is None
    line = epoch_summary("x", 0, 4, {"loss": 1.0}, 0.1, 30.0, 60, 30.0, 140.0)
    assert line.endswith("stage done in about 1 min 30 s, run in about 2 min 20 s")
