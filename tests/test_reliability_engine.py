"""Reliability of train / evaluate / leaderboard against realistic misuse: resumes reuse only runs
made with the same settings, nothing is overwritten without --overwrite, bad values and files give
one-line errors, the leaderboard averages only results that belong together."""
from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from aubench import leaderboard
from aubench.cli import main
from aubench.engine.evaluate import evaluate_runs
from aubench.errors import UserError
from fixtures_h5 import write_au_h5
from test_leaderboard import AUS, fake_result

def fast(epochs=1, image_size=32, batch_size=8):
    return ["--preset", "tiny", "--image-size", image_size, "--batch-size", batch_size, "--epochs", epochs,
            "--device", "cpu", "--no-progress"]


FAST = fast()


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    return write_au_h5(tmp_path_factory.mktemp("rel") / "tiny.h5", num_subjects=6, sequence_lengths=(6, 5))


@pytest.fixture(scope="module")
def other_h5(tmp_path_factory):
    """The same layout with other labels: another data fingerprint."""
    return write_au_h5(tmp_path_factory.mktemp("rel") / "other.h5", num_subjects=6, sequence_lengths=(6, 5), seed=1)


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def expect_one_line_error(args, capsys, *fragments):
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("aubench: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def evaluate(h5, out, *extra, **settings):
    return ["evaluate", "--methods", "resnet", "--folds", "1", "--data", h5, "--out", out, *fast(**settings), *extra]


# ------------------------------------------------------------------ evaluate --resume


@pytest.fixture(scope="module")
def evaluated(h5, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluated") / "ev"
    assert main([str(a) for a in evaluate(h5, out)]) == 0
    return out


def test_evaluate_resume_keeps_a_result_made_with_the_same_settings(h5, evaluated, capsys):
    result = evaluated / "results" / "resnet_fold1_full.json"
    before = result.read_bytes()
    code, out, err = run_cli(evaluate(h5, evaluated, "--resume"), capsys)
    assert code == 0, err
    assert "kept" in out and result.read_bytes() == before


@pytest.mark.parametrize("extra, settings, key", [
    ([], {"epochs": 2}, "epochs: result 1 vs now 2"),
    ([], {"image_size": 64}, "image_size: result 32 vs now 64"),
    ([], {"batch_size": 4}, "batch_size: result 8 vs now 4"),
    (["--seed", "3"], {}, "seed: result 0 vs now 3"),
    (["--no-augment"], {}, "augment: result True vs now False"),
    (["--precision", "bf16"], {}, "precision: result 'fp32' vs now 'bf16'"),
])
def test_evaluate_resume_refuses_a_result_made_with_other_settings(h5, evaluated, capsys, extra, settings, key):
    result = evaluated / "results" / "resnet_fold1_full.json"
    before = result.read_bytes()
    expect_one_line_error(evaluate(h5, evaluated, "--resume", *extra, **settings), capsys, "--resume:", str(result),
                          key)
    assert result.read_bytes() == before


def test_evaluate_resume_refuses_a_result_of_another_data_file(other_h5, evaluated, capsys):
    result = evaluated / "results" / "resnet_fold1_full.json"
    expect_one_line_error(evaluate(other_h5, evaluated, "--resume"), capsys, str(result), "fingerprint: result")


def test_evaluate_resume_refuses_a_result_it_cannot_read(h5, tmp_path, capsys):
    result = tmp_path / "ev" / "results" / "resnet_fold1_full.json"
    result.parent.mkdir(parents=True)
    result.write_text('{"schema": "aubench-result-1", "metrics": {')  # a half-written file from elsewhere
    expect_one_line_error(evaluate(h5, tmp_path / "ev", "--resume"), capsys, f"--resume: {result} cannot be read")
    result.write_text(json.dumps({"schema": "aubench-result-1", "config": {"method": "resnet"}}))
    expect_one_line_error(evaluate(h5, tmp_path / "ev", "--resume"), capsys, f"--resume: {result} has no 'config.")


# ------------------------------------------------------------------ overwrites


def test_train_refuses_a_directory_holding_another_run_unless_overwrite(h5, tmp_path, capsys):
    out = tmp_path / "run"
    train = ["train", "--method", "resnet", "--data", h5, "--out", out, *FAST]
    assert main([str(a) for a in train]) == 0
    files = {name: (out / name).read_bytes() for name in ("last.pt", "result.json", "log.jsonl")}
    capsys.readouterr()
    expect_one_line_error(train + ["--seed", "7"], capsys, f"--out {out} already holds a run (last.pt, result.json)",
                          "--overwrite")
    assert {name: (out / name).read_bytes() for name in files} == files  # untouched

    assert main([str(a) for a in train + ["--seed", "7", "--overwrite"]]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["seed"] == 7
    assert torch.load(out / "last.pt", weights_only=True)["config"]["seed"] == 7
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log].count("start") == 1  # the old run's log went with it
    assert log[0]["config"]["seed"] == 7


def test_a_fresh_run_replaces_the_log_of_a_run_killed_before_its_first_checkpoint(h5, tmp_path):
    from aubench.engine.config import RunConfig
    from aubench.engine.trainer import Trainer

    small = dict(method="resnet", data=str(h5), out=str(tmp_path / "run"), image_size=32, batch_size=8, epochs=1,
                 progress=False, device="cpu", log_every=1, model={"backbone": "test_resnet"})

    class Killed(Exception):
        pass

    def kill(state, parts):
        raise Killed

    with pytest.raises(Killed):
        Trainer(RunConfig(**small), step_callback=kill).fit()
    assert not (tmp_path / "run" / "last.pt").exists() and (tmp_path / "run" / "log.jsonl").exists()
    Trainer(RunConfig(**small)).fit()  # nothing worth keeping was there: no --overwrite needed
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log].count("start") == 1


def test_evaluate_refuses_an_out_holding_results_unless_resume_or_overwrite(h5, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main([str(a) for a in evaluate(h5, out)]) == 0
    result = out / "results" / "resnet_fold1_full.json"
    before = result.read_bytes()
    capsys.readouterr()
    expect_one_line_error(evaluate(h5, out, "--seed", "5"), capsys, f"--out {out} already holds",
                          "results/resnet_fold1_full.json", "--resume", "--overwrite")
    assert result.read_bytes() == before
    expect_one_line_error(evaluate(h5, out, "--resume", "--overwrite"), capsys, "--overwrite")

    assert main([str(a) for a in evaluate(h5, out, "--seed", "5", "--overwrite")]) == 0
    assert json.loads(result.read_text())["config"]["seed"] == 5
    log = (out / "runs" / "resnet" / "full" / "fold1" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in log].count("start") == 1


def test_demo_rerun_keeps_its_results_and_resumes_a_killed_run(h5, tmp_path, capsys):
    """The demo's own evaluate arguments (resume, never overwrite), on tiny data: a rerun keeps
    every finished result and finishes the one whose result was never written."""
    from dataclasses import replace

    from aubench.demo import demo_evaluate_request

    request = demo_evaluate_request(tmp_path, h5, ["resnet"], "cpu", 0)
    request.folds = [1, 2]
    request.run = replace(request.run, epochs=1, image_size=32, batch_size=8)
    first = evaluate_runs(request)
    kept = {p: p.read_bytes() for p in first}
    assert len(first) == 4          # 2 folds x the demo's 2 test conditions
    killed = first[2]                # fold 2, clean faces
    killed.unlink()  # as if killed after the last checkpoint, before the result was written
    second = evaluate_runs(copy.copy(request))
    assert second == first
    assert all(p.read_bytes() == kept[p] for p in first if p != killed)
    assert json.loads(killed.read_text())["fold"] == 2


# ------------------------------------------------------------------ bad values


@pytest.mark.parametrize("args, argument", [
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-4"], "--batch-size"),
    (["--batch-size", "1"], "--batch-size"),
    (["--image-size", "0"], "--image-size"),
    (["--image-size", "-32"], "--image-size"),
    (["--epochs", "0"], "--epochs"),
    (["--workers", "-1"], "--workers"),
    (["--checkpoint-every", "-2"], "--checkpoint-every"),
    (["--label-ratio", "0"], "--label-ratio"),
    (["--label-ratio", "1.5"], "--label-ratio"),
    (["--label-ratio", "nan"], "--label-ratio"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**64)], "--seed"),
    (["--epochs", "two"], "--epochs"),
])
def test_train_refuses_bad_numbers_while_parsing(h5, tmp_path, capsys, args, argument):
    out = tmp_path / "never"
    base = ["train", "--method", "resnet", "--data", h5, "--out", out, "--device", "cpu", "--no-progress"]
    expect_one_line_error(base + args, capsys, f"argument {argument}:")
    assert not out.exists()


@pytest.mark.parametrize("args, argument", [
    (["--folds", "1,1"], "--folds"),
    (["--folds", ","], "--folds"),
    (["--label-ratios", "0.5,0"], "--label-ratios"),
    (["--label-ratios", "0.2,0.2"], "--label-ratios"),
    (["--methods", ","], "--methods"),
    (["--bench-batch-size", "0"], "--bench-batch-size"),
])
def test_evaluate_refuses_bad_lists_while_parsing(h5, tmp_path, capsys, args, argument):
    out = tmp_path / "never"
    base = ["evaluate", "--data", h5, "--out", out, "--device", "cpu", "--no-progress"]
    if "--methods" not in args:
        base += ["--methods", "resnet"]
    expect_one_line_error(base + args, capsys, f"argument {argument}:")
    assert not out.exists()


def test_batch_of_one_sample_per_process_is_refused(h5, tmp_path):
    """--batch-size 2 passes the parser, but under two processes each would train on one sample."""
    from aubench.engine.config import RunConfig
    from aubench.engine.distributed import DistEnv
    from aubench.engine.trainer import Trainer

    env = DistEnv(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    config = RunConfig(method="resnet", data=str(h5), out=str(tmp_path / "never"), image_size=32, batch_size=2,
                       epochs=1, progress=False, device="cpu")
    with pytest.raises(UserError, match="--batch-size 2 leaves fewer than 2 samples"):
        Trainer(config, env=env)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("method", ["resnet", "ks"])
def test_image_size_below_the_backbone_stride_is_refused(h5, tmp_path, capsys, method):
    from aubench.models import method_class

    cls = method_class(method)
    assert all(cls.min_image_size(p) == 32 for p in cls.presets.values())  # ResNet layouts: total stride 32
    base = ["train", "--method", method, "--data", h5, "--out", tmp_path / "never", "--device", "cpu",
            "--no-progress", "--epochs", "1", "--batch-size", "4"]
    for size in ("7", "31"):
        expect_one_line_error(base + ["--image-size", size], capsys, f"--image-size {size}", "at least 32 px")
    expect_one_line_error(["evaluate", "--methods", method, "--data", h5, "--out", tmp_path / "never",
                           "--image-size", "16", "--device", "cpu"], capsys, "--image-size 16", "at least 32 px")
    expect_one_line_error(["bench", "--methods", method, "--preset", "tiny", "--image-size", "16", "--device", "cpu"],
                          capsys, "--image-size 16")
    assert not (tmp_path / "never").exists()


def test_bench_refuses_bad_numbers(capsys):
    for args, argument in ((["--batch-size", "0"], "--batch-size"), (["--iters", "0"], "--iters"),
                           (["--warmup", "-1"], "--warmup"), (["--num-aus", "0"], "--num-aus")):
        expect_one_line_error(["bench", "--methods", "resnet", "--device", "cpu", *args], capsys,
                              f"argument {argument}:")


# ------------------------------------------------------------------ --pretrained files


class NotWeights:
    pass


@pytest.fixture(scope="module")
def trained_tiny(h5, tmp_path_factory):
    out = tmp_path_factory.mktemp("src") / "run"
    assert main([str(a) for a in ["train", "--method", "resnet", "--data", h5, "--out", out, *FAST]]) == 0
    return out / "last.pt"


@pytest.mark.parametrize("kind", ["text", "random bytes", "pickle of objects", "torch pickle of objects",
                                  "wrong keys", "wrong shapes", "checkpoint of another preset"])
def test_pretrained_that_is_not_usable_weights_is_one_line(h5, tmp_path, capsys, trained_tiny, kind):
    path = tmp_path / "weights.pth"
    if kind == "text":
        path.write_text("these are not weights\n")
    elif kind == "random bytes":
        path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    elif kind == "pickle of objects":
        path.write_bytes(pickle.dumps({"model": NotWeights()}))
    elif kind == "torch pickle of objects":
        torch.save({"model": NotWeights()}, path)
    elif kind == "wrong keys":
        torch.save({"encoder.weight": torch.zeros(3, 3)}, path)
    elif kind == "wrong shapes":
        torch.save({"conv1.weight": torch.zeros(3, 3)}, path)
    else:  # an aubench checkpoint of the tiny preset, loaded into the paper preset's (wider) network
        path = trained_tiny
    preset = "paper" if kind == "checkpoint of another preset" else "tiny"
    args = ["train", "--method", "resnet", "--data", h5, "--out", tmp_path / "run", *FAST, "--preset", preset,
            "--pretrained", path]
    line = expect_one_line_error(args, capsys, f"--pretrained {path}")
    if kind in ("text", "random bytes", "pickle of objects", "torch pickle of objects"):
        assert "expected an aubench checkpoint or a state dict of tensors" in line
    assert len(line) < 400


# ------------------------------------------------------------------ leaderboard grouping


def write_results(folder: Path, results) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(results):
        (folder / f"r{i}.json").write_text(json.dumps(r))


def three_folds(**settings):
    """Folds 1-3 of resnet; `settings` maps fold -> function editing that fold's record."""
    out = []
    for fold, v in zip((1, 2, 3), (0.2, 0.4, 0.6)):
        r = fake_result("resnet", fold, [v] * len(AUS))
        settings.get(f"fold{fold}", lambda r: None)(r)
        out.append(r)
    return out


def ours(rows):
    return [r for r in rows if r["kind"] == "ours"]


@pytest.mark.parametrize("edit, label", [
    (lambda r: r["data"].update(fingerprint="a" * 64), "fingerprint=aaaaaaaa"),
    (lambda r: r["preset"].update(epochs=2), "epochs=2"),
    (lambda r: r["preset"].update(image_size=112), "image_size=112"),
    (lambda r: r["preset"]["model"].update(backbone="resnet50"), "model.backbone=resnet50"),
    (lambda r: r["config"].update(seed=1), "seed=1"),
])
def test_results_with_other_settings_get_their_own_row(tmp_path, edit, label):
    write_results(tmp_path, three_folds(fold3=edit))
    rows = leaderboard.build_rows(leaderboard.find_results([tmp_path]), include_reported=False)
    mine = ours(rows)
    assert sorted(r["folds"] for r in mine) == [[1, 2], [3]]
    odd = next(r for r in mine if r["folds"] == [3])
    assert odd["setting"] == label
    assert odd["mean_f1"]["mean"] == pytest.approx(60.0)
    md = leaderboard.to_markdown(rows)
    assert f"resnet [{label}]" in md

    merged = leaderboard.build_rows(leaderboard.find_results([tmp_path]), include_reported=False, merge=True)
    (row,) = ours(merged)
    assert row["folds"] == [1, 2, 3] and row["setting"].startswith("mixed: ")
    assert row["mean_f1"]["mean"] == pytest.approx(40.0)


def test_per_run_details_do_not_split_a_row(tmp_path):
    def per_run(r):
        r.update(device="cuda (H100)", created="2030-01-01T00:00:00+00:00", world_size=4,
                 versions={"torch": "9.9"}, bench={"infer_frames_per_s": 1.0})
        r["data"]["path"] = "/elsewhere/bp4d.h5"
        r["config"].update(workers=8, channels_last=True, out="/x", device="cuda", resume=True)

    write_results(tmp_path, three_folds(fold2=per_run))
    (row,) = ours(leaderboard.build_rows(leaderboard.find_results([tmp_path]), include_reported=False))
    assert row["folds"] == [1, 2, 3] and row["setting"] == ""
    # ... but the same data under another fingerprint gets its own all-positive baseline
    write_results(tmp_path / "more", [fake_result("ks", 1, [0.5] * len(AUS))])
    r = json.loads((tmp_path / "more" / "r0.json").read_text())
    r["data"]["fingerprint"] = "b" * 64
    (tmp_path / "more" / "r0.json").write_text(json.dumps(r))
    rows = leaderboard.build_rows(leaderboard.find_results([tmp_path]), include_reported=False)
    baselines = [r for r in rows if r["kind"] == "baseline"]
    assert sorted(b["setting"] for b in baselines) == ["fingerprint=bbbbbbbb", "fingerprint=ffffffff"]


def test_corrupt_and_incomplete_files_are_named_and_skipped(tmp_path, capsys):
    write_results(tmp_path, three_folds())
    (tmp_path / "half.json").write_text('{"schema": "aubench-result-1", "method": ')
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    broken = fake_result("ks", 1, [0.5] * len(AUS))
    del broken["metrics"]["mean_f1"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    no_config = fake_result("ks", 2, [0.5] * len(AUS))
    del no_config["config"]["seed"]
    (tmp_path / "no_config.json").write_text(json.dumps(no_config))

    code, out, err = run_cli(["leaderboard", tmp_path, "--format", "csv", "--no-reported"], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    warnings = err.splitlines()
    for name, what in (("half.json", "not valid JSON"), ("binary.json", "not valid JSON"),
                       ("broken.json", "no 'metrics.mean_f1'"), ("no_config.json", "no 'config.seed'")):
        assert any(str(tmp_path / name) in w and what in w and w.startswith("aubench: warning:") for w in warnings), err
    assert "resnet" in out and ",ks," not in out  # built from the good results only
    expect_one_line_error(["leaderboard", tmp_path / "broken.json"], capsys, str(tmp_path / "broken.json"),
                          "metrics.mean_f1")


def test_leaderboard_help_states_the_grouping_rule(capsys):
    assert main(["leaderboard", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--merge" in text and "fingerprint" in text and "apart from the fold" in text


# ------------------------------------------------------------------ leaderboard output paths


@pytest.fixture
def result_dir(tmp_path):
    write_results(tmp_path / "runs", three_folds())
    return tmp_path / "runs"


def test_output_into_a_missing_folder_is_created(result_dir, tmp_path, capsys):
    target = tmp_path / "new" / "deeper" / "table.md"
    code, out, err = run_cli(["leaderboard", result_dir, "--out", target], capsys)
    assert code == 0, err
    code, printed, _ = run_cli(["leaderboard", result_dir], capsys)
    assert printed == target.read_text() + "\n"  # print() adds one newline


def test_plot_and_output_under_a_regular_file_are_one_line_errors(result_dir, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # tests run as root: a path under a regular file is unwritable for anyone
    expect_one_line_error(["leaderboard", result_dir, "--plot", blocker / "f1.png"], capsys,
                          f"--plot {blocker / 'f1.png'}", "not a directory")
    expect_one_line_error(["leaderboard", result_dir, "--out", blocker / "t.md"], capsys,
                          f"--out {blocker / 't.md'}", "not a directory")


def test_plot_reports_the_files_it_wrote(result_dir, tmp_path, capsys):
    folder = tmp_path / "plots"
    folder.mkdir()
    for target, expected in ((folder, folder / "leaderboard.png"), (tmp_path / "f1", tmp_path / "f1.png"),
                             (tmp_path / "chart.png", tmp_path / "chart.png")):
        code, _, err = run_cli(["leaderboard", result_dir, "--plot", target], capsys)
        assert code == 0, err
        reported = [Path(line.removeprefix("plot: ")) for line in err.splitlines() if line.startswith("plot: ")]
        assert reported == [expected]
        assert expected.read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "plots.png").exists()


def test_build_rows_rejects_an_incomplete_record_passed_directly():
    r = fake_result("resnet", 1, [0.5] * len(AUS))
    del r["precision"]
    r["_file"] = "x.json"
    with pytest.raises(UserError, match="x.json.*precision"):
        leaderboard.build_rows([r])


def test_atomic_writes_get_the_permissions_open_would_give(tmp_path):
    import os
    from aubench.files import write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "table.md", "x")
        (tmp_path / "plain.md").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "table.md").stat().st_mode & 0o777 == (tmp_path / "plain.md").stat().st_mode & 0o777 == 0o644
