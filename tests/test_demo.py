"""`aubench demo`: the CPU it names, its runs side by side, its estimate of what is left, its check,
and its report; and evaluate's measure-once mode that the demo's parallel runs rely on."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from aubench import demo
from aubench.engine.evaluate import evaluate_runs
from fixtures_h5 import write_au_h5


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    return write_au_h5(tmp_path_factory.mktemp("demo") / "tiny.h5", num_subjects=6, sequence_lengths=(6, 5))


def test_cpu_info_names_the_kernels_and_what_forced_them(monkeypatch):
    import torch

    from aubench.bench import cpu_info, cpu_text, device_name

    info = cpu_info()
    assert info["capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["brand"] and info["torch"] == torch.__version__ and info["threads"] == torch.get_num_threads()
    assert info["capability"] in device_name(torch.device("cpu")) and info["brand"] in cpu_text(info)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert cpu_info()["kernel_variables"] == {"ATEN_CPU_CAPABILITY": "avx2"}
    assert "ATEN_CPU_CAPABILITY=avx2" in cpu_text()


def test_estimate_schedules_what_is_left_on_the_parallel_runs(monkeypatch):
    monkeypatch.setattr(demo, "REFERENCE_SECONDS", {"a": 100.0, "b": 60.0, "c": 50.0, "d": 10.0})
    units = [("a", 1), ("b", 1), ("c", 1), ("d", 1)]
    progress = demo.Progress(units, lanes=2, started=0.0)
    # on the reference machine: a | b, then c after b (60 + 50 = 110), d after a (100 + 10)
    assert progress.seconds_left(0.0, 1.0) == 110.0
    progress.start(("a", 1), 0.0)
    progress.start(("b", 1), 0.0)
    # b took 120 s here: this machine runs at half the reference speed
    progress.start(("c", 1), 120.0)
    line = progress.finished("b", 1, 120.0, now=120.0)
    assert "1/4 b fold 1 done in 2 min 00 s; 2 min 00 s elapsed" in line
    # a has 200 - 120 = 80 s to go; c 100 s from now; d goes to a's lane: 80 + 20 = 100
    assert progress.seconds_left(120.0, 2.0) == 100.0
    assert "about 1 min 40 s left" in line
    progress.start(("d", 1), 200.0)
    progress.finished("a", 1, 200.0, now=200.0)
    progress.finished("c", 1, 100.0, now=220.0)
    assert progress.finished("d", 1, 20.0, now=220.0).endswith("3 min 40 s elapsed")  # nothing is left


def test_every_registered_method_has_its_reference_time_from_the_reference_report():
    """REFERENCE_SECONDS are the unit times of the committed reference demo report, on its CPU."""
    from pathlib import Path

    from aubench.models import available_methods, method_class

    # the project's methods (tests register methods of their own)
    ours = {name for name in available_methods() if method_class(name).__module__.startswith("aubench.models.")}
    assert set(demo.REFERENCE_SECONDS) == ours
    report = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "demo-avx512.json"
    if not report.is_file():
        pytest.skip(f"{report} is not here")
    data = json.loads(report.read_text())
    assert data["cpu"]["brand"] in demo.REFERENCE_CPU and data["cpu"]["capability"] in demo.REFERENCE_CPU
    measured = {unit["method"]: unit["seconds"] for unit in data["seconds"]["units"]}
    assert measured == pytest.approx(demo.REFERENCE_SECONDS, rel=0.25)  # a busy machine varies


def test_the_check_reads_clean_faces_only():
    def summary(method, test, f1, fold=1):
        return {"method": method, "protocol": "sparse0.2", "fold": fold, "test": test, "mean_f1": f1,
                "all_positive_mean_f1": 0.6}

    assert demo.baseline_check([summary("a", "none", 0.61), summary("a", "patches0.5", 0.4)]) == []
    failed = demo.baseline_check([summary("a", "none", 0.61), summary("b", "none", 0.6, fold=2)])
    assert failed == ["b (sparse0.2, fold 2): mean F1 60.0 vs all-positive 60.0"]


def test_parallelism_is_one_single_thread_run_per_core_on_the_cpu(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert demo.demo_parallelism("cpu", runs=7) == (3, 1)
    assert demo.demo_parallelism("cpu", runs=1) == (1, 3)     # more cores than runs: threads


def test_measure_only_trains_nothing_and_its_records_are_used(h5, tmp_path, monkeypatch):
    import aubench.bench

    request = demo.demo_evaluate_request(tmp_path, h5, ["resnet"], "cpu", 0)
    request.run = replace(request.run, epochs=1, image_size=32, batch_size=8)
    measuring = replace(request, measure_only=True)
    assert evaluate_runs(measuring) == []
    assert not (tmp_path / "run" / "runs").exists() and not (tmp_path / "run" / "results").exists()
    assert list(measuring.benches) == [("resnet", None, "train")]
    record = measuring.benches[("resnet", None, "train")]

    def never(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(aubench.bench, "benchmark_method", never)
    paths = evaluate_runs(replace(request, benches=measuring.benches))
    assert paths and all(json.loads(p.read_text())["bench"] == record for p in paths)


def test_demo_end_to_end_in_parallel_processes(h5, tmp_path, monkeypatch, capfd):
    """The whole demo on a tiny file (two methods, one epoch, 32 px), its runs in worker processes:
    a progress line per run, the report with the CPU and every result, the exit status of the
    check; a rerun keeps every result."""
    original = demo.demo_evaluate_request

    def quick(out, data, methods, device, seed):
        request = original(out, data, methods, device, seed)
        request.run = replace(request.run, epochs=1, image_size=32, batch_size=8)
        return request

    monkeypatch.setattr(demo, "demo_evaluate_request", quick)
    monkeypatch.setattr(demo, "make_demo_dataset", lambda out, seed: h5)
    monkeypatch.setattr(demo, "demo_parallelism", lambda device, runs: (2, 1))
    code = demo.run_demo(tmp_path, methods=["resnet", "ks"], device="cpu")
    out = capfd.readouterr().out
    report = json.loads((tmp_path / demo.REPORT_NAME).read_text())
    assert "[demo] CPU: " in out and report["cpu"]["capability"] in out
    assert "2 at a time (1 thread each)" in out
    assert "[demo] 1/2 " in out and "[demo] 2/2 " in out
    assert sorted(u["method"] for u in report["seconds"]["units"]) == ["ks", "resnet"]
    assert {(r["method"], r["test"]) for r in report["results"]} == {
        (m, t) for m in ("resnet", "ks") for t in ("none", "patches0.5")}
    failed = demo.baseline_check(report["results"])
    assert code == (1 if failed else 0) and report["check"] == {"holds": not failed, "failed": failed}
    assert ("check FAILED" in out) == bool(failed)
    # the sizes were measured once, before the runs, with the parent's threads
    assert all(r["params_m"] for r in report["results"])
    kept = {p: p.read_bytes() for p in [*(tmp_path / "run" / "results").glob("*.json"),
                                        *(tmp_path / "run" / "runs").rglob("log.jsonl")]}
    demo.run_demo(tmp_path, methods=["resnet", "ks"], device="cpu")
    # (the workers' own lines may go to the stdout their forkserver was started with)
    assert "[demo] 2/2 " in capfd.readouterr().out
    assert all(p.read_bytes() == data for p, data in kept.items())  # nothing trained or tested again
