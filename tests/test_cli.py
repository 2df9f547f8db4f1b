"""The `aubench` command line: a small train + leaderboard run, and clear user errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from aubench.cli import main
from fixtures_h5 import write_au_h5

REPO = Path(__file__).resolve().parents[1]
FAST = ["--preset", "tiny", "--image-size", "32", "--batch-size", "8", "--epochs", "1", "--device", "cpu",
        "--no-progress"]


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    return write_au_h5(tmp_path_factory.mktemp("cli") / "tiny.h5", num_subjects=6, sequence_lengths=(6, 5))


@pytest.fixture(scope="module")
def trained(h5, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "resnet"
    assert main(["train", "--method", "resnet", "--data", str(h5), "--fold", "2", "--out", str(out), *FAST]) == 0
    return out


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_writes_result_and_leaderboard_reads_it(trained, capsys, tmp_path):
    result = json.loads((trained / "result.json").read_text())
    assert result["method"] == "resnet" and result["fold"] == 2 and result["protocol"] == "full"
    assert set(result["metrics"]["f1"]) == {"AU1", "AU2", "AU4", "AU6", "AU12"}
    assert result["data"]["fingerprint"] and result["versions"]["torch"]
    assert (trained / "last.pt").is_file()
    log = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "start" and log[-1]["event"] == "evaluate"
    code, out, _ = run_cli(["leaderboard", str(trained), "--format", "csv"], capsys)
    assert code == 0 and out.startswith("dataset,protocol,kind,method")
    assert "resnet" in out and "all-positive" in out


def expect_user_error(args, capsys, message):
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    assert message in err, err
    assert "Traceback" not in err
    assert err.startswith("aubench: error:")


def test_unknown_method(h5, capsys, tmp_path):
    expect_user_error(["train", "--method", "nope", "--data", str(h5), "--out", str(tmp_path), *FAST], capsys,
                      "unknown method 'nope'; available methods:")
    expect_user_error(["evaluate", "--methods", "resnet,nope", "--data", str(h5), "--out", str(tmp_path), *FAST],
                      capsys, "unknown method 'nope'")


def test_fold_out_of_range(h5, capsys, tmp_path):
    expect_user_error(["train", "--method", "resnet", "--data", str(h5), "--fold", "4", "--out", str(tmp_path),
                       *FAST], capsys, "--fold 4 is out of range")
    expect_user_error(["evaluate", "--methods", "resnet", "--data", str(h5), "--folds", "0,1", "--out", str(tmp_path),
                       *FAST], capsys, "--fold 0 is out of range")


def test_wrong_dataset_file(capsys, tmp_path):
    bad = tmp_path / "notes.h5"
    bad.write_text("plain text")
    expect_user_error(["train", "--method", "resnet", "--data", str(bad), "--out", str(tmp_path), *FAST], capsys,
                      "not a usable aubench dataset")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    expect_user_error(["train", "--method", "resnet", "--data", str(tmp_path / "other.h5"), "--out", str(tmp_path),
                       *FAST], capsys, "not an aubench HDF5 file")
    expect_user_error(["train", "--method", "resnet", "--data", str(tmp_path / "missing.h5"), "--out",
                       str(tmp_path), *FAST], capsys, "no such file")


def test_au_set_mismatch(trained, capsys, tmp_path):
    other = write_au_h5(tmp_path / "disfa_like.h5", num_subjects=6, sequence_lengths=(6, 5))
    with h5py.File(other, "a") as f:
        f.attrs["au_names"] = np.array(["AU1", "AU2", "AU4", "AU6", "AU25"], dtype=object)
    expect_user_error(["train", "--method", "resnet", "--data", str(other), "--pretrained",
                       str(trained / "last.pt"), "--out", str(tmp_path / "x"), *FAST], capsys, "AU set mismatch")


def test_missing_checkpoint(h5, capsys, tmp_path):
    expect_user_error(["train", "--method", "resnet", "--data", str(h5), "--resume", "--out", str(tmp_path / "new"),
                       *FAST], capsys, "--resume: no checkpoint")
    expect_user_error(["train", "--method", "resnet", "--data", str(h5), "--pretrained", str(tmp_path / "w.pth"),
                       "--out", str(tmp_path / "new"), *FAST], capsys, "does not exist")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage")
    expect_user_error(["train", "--method", "resnet", "--data", str(h5), "--pretrained", str(junk),
                       "--out", str(tmp_path / "new"), *FAST], capsys, "cannot be read")


def test_leaderboard_without_results(capsys, tmp_path):
    expect_user_error(["leaderboard", str(tmp_path)], capsys, "no aubench result files")
    expect_user_error(["leaderboard", str(tmp_path / "nowhere")], capsys, "no such run directory")


def test_console_process_has_no_traceback(tmp_path):
    """The real process: exit status 2 and one error line."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "aubench.cli", "train", "--method", "resnet", "--data",
                           str(tmp_path / "missing.h5"), "--out", str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("aubench:")]
    assert errors == [f"aubench: error: --data {tmp_path / 'missing.h5'}: no such file "
                      "(convert a dataset with `datasets_tools convert`)"]


def test_demo_refuses_a_directory_of_another_demo(capsys, tmp_path):
    from aubench.demo import check_demo_dir, demo_config

    check_demo_dir(tmp_path, seed=0)  # a fresh directory gets the stamp
    assert json.loads((tmp_path / "demo_config.json").read_text()) == demo_config(0)
    check_demo_dir(tmp_path, seed=0)  # the same configuration resumes
    expect_user_error(["demo", "--out", str(tmp_path), "--seed", "1"], capsys, "another configuration")
    old = tmp_path / "old"
    (old / "run").mkdir(parents=True)
    expect_user_error(["demo", "--out", str(old)], capsys, "earlier demo")


def test_model_settings_from_the_command_line(h5, capsys, tmp_path):
    from aubench.cli import build_parser, _run_config

    args = build_parser().parse_args(["train", "--method", "megraphau", "--data", str(h5), "--model", "neighbours=2",
                                      "--model", "backbone=resnet18", "--model", 'backbone_kwargs={"stem_width": 8}'])
    config = _run_config(args, args.method, 1, 1.0, "out")
    assert config.model == {"neighbours": 2, "backbone": "resnet18", "backbone_kwargs": {"stem_width": 8}}
    expect_user_error(["train", "--method", "megraphau", "--data", str(h5), "--model", "neighbours"], capsys,
                      "expected KEY=VALUE")
    expect_user_error(["train", "--method", "megraphau", "--data", str(h5), "--out", str(tmp_path / "r"),
                       "--model", "no_such_setting=1", *FAST], capsys, "unknown model settings ['no_such_setting']")
    code, out, _ = run_cli(["bench", "--methods", "megraphau", "--preset", "tiny", "--image-size", "32",
                            "--batch-size", "2", "--warmup", "0", "--iters", "1", "--no-train",
                            "--model", "width=16", "--json", str(tmp_path / "b.json")], capsys)
    assert code == 0
    record = json.loads((tmp_path / "b.json").read_text())[0]
    assert record["model_overrides"] == {"width": 16}
    assert record["params_m"] < 0.74   # a narrower head than the tiny preset's


def test_evaluate_prints_its_plan_before_training(h5, capsys, tmp_path):
    """The plan: runs and results, what --resume keeps or continues, and the training time
    estimated from bench figures (here one whose frames/s make the fold's epoch two hours)."""
    from aubench.data.h5file import AUFile

    with AUFile(h5) as file:
        frames = len(file.rows(1, "train"))
    figure = {"method": "resnet", "preset": "tiny", "stage": "train", "device": "cpu (a test CPU)", "image_size": 32,
              "train_frames_per_s": frames / 7200, "model_overrides": {}}
    figures = tmp_path / "bench.json"
    figures.write_text(json.dumps([figure, {**figure, "image_size": 64, "train_frames_per_s": 1e9}]))
    out = tmp_path / "ev"
    command = ["evaluate", "--methods", "resnet", "--data", str(h5), "--folds", "1", "--out", str(out),
               "--test-occlusion", "none,patches:0.5", *FAST]
    code, stdout, _ = run_cli([*command, "--bench-figures", str(figures)], capsys)
    assert code == 0
    plan = [line for line in stdout.splitlines() if line.startswith("[aubench] ") and "preset" not in line]
    assert plan == ["[aubench] plan: 1 method(s) (resnet) x 1 label ratio(s) x 1 fold(s) = 1 run(s); 2 result(s) "
                    "under 2 test condition(s) (none, patches0.5)",
                    "[aubench] estimate: about 2 h 00 min of training on one cpu process, from aubench bench figures"]
    assert stdout.index("[aubench] estimate") < stdout.index("mean F1")  # before training
    # one result lost: its run continues from its checkpoint; no figure for it: no estimate
    (out / "results" / "resnet_fold1_full_test-patches0.5.json").unlink()
    figures.write_text("[]")
    code, stdout, _ = run_cli([*command, "--resume", "--bench-figures", str(figures)], capsys)
    assert code == 0
    assert ("[aubench] --resume: 0 run(s) finished (1 result(s) stay), 1 continue(s) from its checkpoint, "
            "0 train(s) from the start") in stdout
    assert "[aubench] no estimate: run aubench bench first (no cpu figures for resnet tiny train" in stdout
    code, stdout, _ = run_cli([*command, "--resume"], capsys)  # everything done
    assert code == 0 and "[aubench] --resume: 1 run(s) finished (2 result(s) stay)" in stdout
    assert "[aubench] nothing to train" in stdout


def test_plot_command_line(tmp_path, capsys, monkeypatch):
    """`aubench plot RUN [--out PNG]` hands both to aubench.plot.plot_run and prints the path it wrote."""
    import aubench.plot

    expect_user_error(["plot", str(tmp_path / "nowhere")], capsys, "nowhere")
    calls = []
    monkeypatch.setattr(aubench.plot, "plot_run", lambda run, out: calls.append((run, out)) or Path("w.png"))
    for extra, out in (([], None), (["--out", "c.png"], Path("c.png"))):
        code, _, err = run_cli(["plot", "runs/r", *extra], capsys)
        assert code == 0 and err == "curves: w.png\n"
        assert calls.pop() == (Path("runs/r"), out)


def test_tensorboard_option_reaches_the_run_config():
    from aubench.cli import _run_config, build_parser

    args = build_parser().parse_args(["train", "--method", "resnet", "--data", "d.h5", "--tensorboard", "tb"])
    assert args.tensorboard == "tb"
    assert _run_config(args, "resnet", 1, 1.0, "o").tensorboard == "tb"
