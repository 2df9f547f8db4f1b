"""The leaderboard's Markdown, CSV and JSON carry the same numbers; mean +- std over folds."""
import csv
import io
import json
import re

import numpy as np
import pytest

from aubench import leaderboard
from aubench.errors import UserError
from aubench.leaderboard import RESULT_SCHEMA
from aubench.reported import reported_for

AUS = ["AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24"]


def fake_result(method, fold, f1s, protocol="full", ratio=1.0, dataset="BP4D"):
    f1 = dict(zip(AUS, f1s))
    return {"schema": RESULT_SCHEMA, "method": method, "dataset": dataset, "fold": fold, "protocol": protocol,
            "label_ratio": ratio, "au_names": AUS,
            "metrics": {"f1": f1, "mean_f1": float(np.mean(f1s)),
                        "all_positive_f1": {au: 0.3 for au in AUS}, "all_positive_mean_f1": 0.3},
            "bench": {"params_m": 11.2, "gflops_per_frame": 0.3, "infer_frames_per_s": 100.0,
                      "train_frames_per_s": 30.0},
            # the settings every real result records (aubench.engine.identity reads them)
            "config": {"method": method, "preset": "tiny", "fold": fold, "label_ratio": ratio, "seed": 0,
                       "augment": True, "pretrained": None},
            "preset": {"name": "tiny", "epochs": 20, "batch_size": 16, "image_size": 64,
                       "model": {"backbone": "resnet18"}},
            "data": {"fingerprint": "f" * 64}, "precision": "fp32"}


@pytest.fixture
def run_dir(tmp_path):
    rng = np.random.default_rng(0)
    for method in ("resnet", "ks"):
        for ratio in (0.1, 1.0):
            protocol = "full" if ratio == 1.0 else f"sparse{ratio:g}"
            for fold in (1, 2, 3):
                r = fake_result(method, fold, rng.random(len(AUS)).tolist(), protocol, ratio)
                (tmp_path / f"{method}_{fold}_{protocol}.json").write_text(json.dumps(r))
    (tmp_path / "unrelated.json").write_text("{\"not\": \"a result\"}")
    return tmp_path


def test_formats_agree(run_dir):
    rows = leaderboard.build_rows(leaderboard.find_results([run_dir]))
    as_json = json.loads(leaderboard.to_json(rows))
    as_csv = list(csv.DictReader(io.StringIO(leaderboard.to_csv(rows))))
    md = [line for line in leaderboard.to_markdown(rows).splitlines() if line.startswith("| ") and "---" not in line]
    md_rows = [[c.strip() for c in line.strip("|").split("|")] for line in md if not line.startswith("| method")]
    assert len(as_json) == len(as_csv) == len(md_rows) == len(rows)
    kinds = [r["kind"] for r in rows]
    reported = len(reported_for("BP4D", None, "full")) + len(reported_for("BP4D", None, "sparse0.1"))
    assert kinds.count("ours") == 4 and kinds.count("baseline") == 2 and kinds.count("reported") == reported
    for j, c, m in zip(as_json, as_csv, md_rows):
        assert j["method"] == c["method"] and m[0].startswith(j["method"])
        for k, au in enumerate(AUS):
            stat = j["f1"][au]
            if stat is None:  # a reported figure the paper does not give per AU
                assert c[f"{au}_mean"] == "" and m[6 + k] == "-"
                continue
            assert float(c[f"{au}_mean"]) == pytest.approx(stat["mean"])
            cell = m[6 + k]
            mean = float(re.match(r"[\d.]+", cell).group())
            assert mean == pytest.approx(stat["mean"], abs=0.05)
        assert float(c["mean_f1_mean"]) == pytest.approx(j["mean_f1"]["mean"])


def test_mean_and_std_over_folds(tmp_path):
    for fold, v in zip((1, 2, 3), (0.2, 0.4, 0.6)):
        (tmp_path / f"{fold}.json").write_text(json.dumps(fake_result("resnet", fold, [v] * len(AUS))))
    rows = leaderboard.build_rows(leaderboard.find_results([tmp_path]), include_reported=False)
    ours = rows[0]
    assert ours["f1"]["AU1"]["mean"] == pytest.approx(40.0)
    assert ours["f1"]["AU1"]["std"] == pytest.approx(np.std([20, 40, 60]))
    assert ours["folds"] == [1, 2, 3]
    assert rows[1]["kind"] == "baseline" and rows[1]["mean_f1"]["mean"] == pytest.approx(30.0)


def test_reported_rows_are_marked_and_sourced(run_dir):
    rows = leaderboard.build_rows(leaderboard.find_results([run_dir]))
    reported = [r for r in rows if r["kind"] == "reported"]
    assert {r["protocol"] for r in reported} == {"full", "sparse0.1"}  # the protocols of the results
    assert all(r["source"] for r in reported)
    assert "(reported)" in leaderboard.to_markdown(rows)


def test_plots(run_dir, tmp_path):
    rows = leaderboard.build_rows(leaderboard.find_results([run_dir]))
    written = leaderboard.plot(rows, tmp_path / "plots" / "f1.png")
    assert [p.name for p in written] == ["f1.png", "f1_label_ratio.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)


def test_errors(tmp_path):
    with pytest.raises(UserError, match="no aubench result files"):
        leaderboard.find_results([tmp_path])
    a = fake_result("resnet", 1, [0.5] * len(AUS))
    b = fake_result("ks", 1, [0.5] * len(AUS))
    b["au_names"] = AUS[:-1] + ["AU25"]
    for key in ("f1", "all_positive_f1"):  # a consistent record of another AU set
        b["metrics"][key]["AU25"] = b["metrics"][key].pop("AU24")
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    with pytest.raises(UserError, match="AU set mismatch"):
        leaderboard.build_rows(leaderboard.find_results([tmp_path]))
