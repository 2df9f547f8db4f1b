"""`aubench plot`: training curves from a real run's log.jsonl, one row per stage; the optional
TensorBoard writer of the same scalars."""
from __future__ import annotations

import builtins
import json

import matplotlib.image
import pytest

import aubench.models  # noqa: F401  (registers the methods)
from aubench.engine.logging import TensorboardScalars
from aubench.engine.run_files import LOG_NAME
from aubench.engine.config import RunConfig
from aubench.engine.trainer import Trainer
from aubench.errors import UserError
from aubench.plot import plot_run, read_log, stage_curves

from fixtures_h5 import write_au_h5

AUS8 = ("AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU25", "AU26")  # ME-GraphAU's tiny preset needs >= 4 AUs
# fold 1 trains on 44 frames = 5 batches of 8 per epoch
TINY = dict(preset="tiny", image_size=32, batch_size=8, epochs=1, progress=False, device="cpu", log_every=1)


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    return write_au_h5(tmp_path_factory.mktemp("plot") / "au8.h5", num_subjects=6, sequence_lengths=(6, 5),
                       au_names=AUS8)


def trained(h5, out, method: str, **extra) -> Trainer:
    trainer = Trainer(RunConfig(data=str(h5), out=str(out), method=method, **{**TINY, **extra}))
    trainer.fit()
    return trainer


def png_size(path) -> tuple[int, int]:
    """(width, height) in pixels of a PNG, decoded."""
    image = matplotlib.image.imread(path)
    return image.shape[1], image.shape[0]


def test_a_one_stage_run_plots_one_row_of_its_logged_steps(h5, tmp_path):
    run = tmp_path / "resnet"
    trained(h5, run, "resnet", model={"backbone": "test_resnet"}, epochs=2)
    stages = stage_curves(read_log(run / LOG_NAME))
    assert list(stages) == ["train"]
    assert sorted(stages["train"]["steps"]) == list(range(1, 11))  # 5 steps an epoch, one record each
    assert sorted(stages["train"]["epochs"]) == [0, 1]
    path = plot_run(run)
    assert path == run / "curves.png"
    assert png_size(path) == (1100, 300)


def test_a_two_stage_run_gets_one_row_per_stage_and_out_is_honoured(h5, tmp_path):
    run = tmp_path / "megraphau"
    trained(h5, run, "megraphau")
    stages = stage_curves(read_log(run / LOG_NAME))
    assert list(stages) == ["stage1", "stage2"]
    assert {"loss", "au", "edge"} <= set(stages["stage2"]["steps"][1])  # stage 2's loss parts were logged
    path = plot_run(run, tmp_path / "figures" / "megraph")
    assert path == tmp_path / "figures" / "megraph.png"
    assert png_size(path) == (1100, 600)
    assert not (run / "curves.png").exists()


def test_a_resumed_run_keeps_the_last_record_of_a_step_and_skips_torn_lines(h5, tmp_path, capsys):
    log = tmp_path / LOG_NAME
    records = [{"event": "step", "stage": "train", "epoch": 0, "step": 1, "lr": 0.1, "loss": 2.0},
               {"event": "step", "stage": "train", "epoch": 0, "step": 2, "lr": 0.1, "loss": 1.5},
               {"event": "resume", "stage": "train"},
               {"event": "step", "stage": "train", "epoch": 0, "step": 2, "lr": 0.1, "loss": 1.25}]
    lines = [json.dumps(r) for r in records]
    log.write_text("\n".join(lines[:2]) + '\n{"event": "st\n' + "\n".join(lines[2:]) + "\n")
    curves = stage_curves(read_log(log))
    assert {s: r["loss"] for s, r in curves["train"]["steps"].items()} == {1: 2.0, 2: 1.25}
    assert f"skipped 1 unreadable line(s) of {log} (first: line 3)" in capsys.readouterr().err
    assert png_size(plot_run(log)) == (1100, 300)
    with pytest.raises(UserError, match=r"^--out .*log\.jsonl: is .*log\.jsonl, an input of this command"):
        plot_run(log, log)
    assert stage_curves(read_log(log)) == curves  # the log is untouched


def test_a_run_without_a_log_or_without_step_records_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path / 'missing'}: no such run directory"):
        plot_run(tmp_path / "missing")
    with pytest.raises(UserError, match=f"{tmp_path}: no {LOG_NAME} in it"):
        plot_run(tmp_path)
    (tmp_path / LOG_NAME).write_text(json.dumps({"event": "start", "stage": "train"}) + "\n")
    with pytest.raises(UserError, match=f"{tmp_path / LOG_NAME}: no step records to plot"):
        plot_run(tmp_path)
    assert not (tmp_path / "curves.png").exists()


def test_tensorboard_scalars_read_back_per_stage(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = TensorboardScalars(tmp_path / "tb")
    for step in (1, 2, 3):
        scalars.add(step, {"loss": 1.0 / step, "lr": 0.01}, "stage1")
    scalars.add(1, {"loss": 0.5}, "stage2")
    scalars.close()
    scalars.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["stage1/loss", "stage1/lr", "stage2/loss"]
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("stage1/loss")] == [(1, 1.0), (2, 0.5), (3, 0.333333)]
    assert [e.value for e in events.Scalars("stage2/loss")] == [0.5]
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"^--tensorboard .*file/tb: cannot write \(.*file is a file, not a "
                                        r"directory\)$"):
        TensorboardScalars(tmp_path / "file" / "tb")


def test_tensorboard_without_the_package_is_one_line_and_other_ranks_need_nothing(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith(("tensorboard", "torch.utils.tensorboard")):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(UserError, match=r"^--tensorboard .*tb: the tensorboard package is not installed "
                                        r"\(pip install tensorboard\)$"):
        TensorboardScalars(tmp_path / "tb")
    quiet = TensorboardScalars(tmp_path / "tb", enabled=False)  # a rank other than 0 writes nothing
    quiet.add(1, {"loss": 1.0}, "train")
    quiet.close()
    assert not (tmp_path / "tb").exists()


def test_a_run_with_tensorboard_writes_each_stages_scalars(h5, tmp_path):
    """--tensorboard DIR (RunConfig.tensorboard): the logged steps' loss parts and lr and the
    epochs' means, per stage, as the log has them; `aubench evaluate` gives each run its own folder."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from aubench.cli import main

    run = tmp_path / "megraphau"
    trained(h5, run, "megraphau", tensorboard=str(tmp_path / "tb"))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"stage1/loss", "stage1/lr", "stage1/mean_loss", "stage2/loss", "stage2/mean_loss"} <= tags
    logged = [r for r in read_log(run / LOG_NAME) if r["event"] == "step" and r["stage"] == "stage2"]
    assert [(e.step, e.value) for e in events.Scalars("stage2/loss")] == [
        (r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in logged]

    out = tmp_path / "eval"
    assert main(["evaluate", "--methods", "resnet", "--data", str(h5), "--folds", "1", "--out", str(out),
                 "--epochs", "1", "--image-size", "32", "--batch-size", "8", "--device", "cpu", "--quiet",
                 "--model", "backbone=test_resnet", "--tensorboard", str(tmp_path / "tb_eval")]) == 0
    run_folder = next((out / "runs").glob("resnet/*/fold1"))
    events = EventAccumulator(str(tmp_path / "tb_eval" / run_folder.relative_to(out / "runs")))
    events.Reload()
    assert "train/mean_loss" in events.Tags()["scalars"]  # 5 steps, logged every 10: the epoch means
