"""Reliability of run folders and checkpoints: two runs into one --out (real processes: the second
stops at once naming the first's pid; a killed run's lock is taken over), checkpoints damaged on
disk (a checksum verified on every load, resume falling back to the checkpoint before), weights
of the wrong shape, a loss that is not finite, a file-size limit while saving."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from aubench.cli import main
from aubench.engine.checkpoint import load_checkpoint, save_checkpoint
from aubench.errors import UserError
from fixtures_h5 import write_au_h5
from test_reliability_outputs import one_line_error

LOCK_NAME = "run.lock"  # aubench.engine.run_lock.LOCK_NAME
FAST = ["--preset", "tiny", "--image-size", "32", "--batch-size", "8", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    return write_au_h5(tmp_path_factory.mktemp("runs") / "tiny.h5", num_subjects=6, sequence_lengths=(6, 5))


def train(h5, out, *extra, epochs=1):
    return ["train", "--method", "resnet", "--data", str(h5), "--out", str(out), "--epochs", str(epochs), *FAST,
            *extra]


def evaluate(h5, out, *extra, epochs=1):
    return ["evaluate", "--methods", "resnet", "--folds", "1", "--data", str(h5), "--out", str(out), "--epochs",
            str(epochs), *FAST, *extra]


# ---- 1. one run at a time in a run folder ----------------------------------------------------

def start(args) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "aubench", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_two_evaluations_into_one_out_the_second_stops_naming_the_first(h5, tmp_path):
    out = tmp_path / "ev"
    lock = out / "runs" / "resnet" / "full" / "fold1" / LOCK_NAME
    first = start(evaluate(h5, out, epochs=2))
    try:
        wait_for(lock, first)
        first.send_signal(signal.SIGSTOP)  # it holds the lock for as long as the second one needs
        second = subprocess.run([sys.executable, "-m", "aubench", *map(str, evaluate(h5, out, epochs=3))],
                                capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2, second.stderr
    assert second.stderr.strip().splitlines() == [
        f"aubench: error: --out {lock.parent}: another run (pid {first.pid}) is writing this run folder (it holds "
        f"{lock}); wait for it to finish, stop it, or use another --out"]
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    result = json.loads((out / "results" / "resnet_fold1_full.json").read_text())
    assert result["preset"]["epochs"] == 2  # the first run's result, whole
    log = [json.loads(line) for line in (lock.parent / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log].count("start") == 1  # no event of the second run
    assert not lock.exists()  # removed when the run ended


def test_two_trainings_into_one_out_and_a_killed_runs_lock_is_taken_over(h5, tmp_path):
    out = tmp_path / "run"
    first = start(train(h5, out, epochs=50))
    wait_for(out / LOCK_NAME, first)
    first.send_signal(signal.SIGSTOP)
    second = subprocess.run([sys.executable, "-m", "aubench", *map(str, train(h5, out, "--overwrite"))],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert second.returncode == 2 and second.stderr.strip().splitlines() == [
        f"aubench: error: --out {out}: another run (pid {first.pid}) is writing this run folder (it holds "
        f"{out / LOCK_NAME}); wait for it to finish, stop it, or use another --out"], second.stderr
    first.kill()  # kill -9, while it holds the lock
    first.communicate()
    assert (out / LOCK_NAME).read_text().strip() == str(first.pid)  # left behind by kill -9
    assert main([str(a) for a in train(h5, out, "--overwrite")]) == 0
    assert not (out / LOCK_NAME).exists()


def test_train_into_a_locked_folder_stops_before_any_work(h5, tmp_path, capsys):
    from aubench.engine.run_lock import run_folder_lock

    out = tmp_path / "run"
    with run_folder_lock(out):  # another holder (this process, through another open file)
        assert main([str(a) for a in train(h5, out)]) == 2
        one_line_error(capsys, f"--out {out}: another run (pid {os.getpid()})")
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    assert main([str(a) for a in train(h5, out)]) == 0  # free again


# ---- 4. checkpoints damaged on disk ----------------------------------------------------------

@pytest.fixture(scope="module")
def trained(h5, tmp_path_factory):
    """A finished two-epoch run: last.pt and last.previous.pt (epoch 1)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main([str(a) for a in train(h5, out, epochs=2)]) == 0
    return out


def zero_inside_a_tensor(path: Path, length: int = 4096) -> None:
    """Zero `length` bytes in the middle of the largest tensor's bytes of a torch.save file: it
    still loads (the zip's CRCs are not checked), one weight tensor damaged."""
    with zipfile.ZipFile(path) as archive:
        member = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(member.header_offset + 26)
        name_length, extra_length = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        start = member.header_offset + 30 + name_length + extra_length + member.file_size // 2 - length // 2
        f.seek(start)
        f.write(bytes(length))


def test_damaged_checkpoint_is_named_on_every_load(trained, h5, tmp_path, capsys):
    damaged = tmp_path / "last.pt"
    damaged.write_bytes((trained / "last.pt").read_bytes())
    zero_inside_a_tensor(damaged)
    torch.load(damaged, weights_only=True)  # torch itself reads it without complaint
    with pytest.raises(UserError, match=rf"{damaged} is damaged: its contents do not match the checksum"):
        load_checkpoint(damaged)
    assert main([str(a) for a in train(h5, tmp_path / "other", "--pretrained", damaged)]) == 2
    one_line_error(capsys, f"--pretrained {damaged} is damaged")


def test_resume_falls_back_to_the_checkpoint_before_a_damaged_one(trained, h5, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("last.pt", "last.previous.pt", "log.jsonl"):
        (out / name).write_bytes((trained / name).read_bytes())
    assert load_checkpoint(out / "last.previous.pt")["train_state"]["epoch"] == 1
    zero_inside_a_tensor(out / "last.pt")
    capsys.readouterr()
    assert main([str(a) for a in train(h5, out, "--resume", epochs=2)]) == 0
    err = capsys.readouterr().err
    assert f"aubench: warning: {out / 'last.pt'} is damaged" in err
    assert f"resuming from the checkpoint before it, {out / 'last.previous.pt'}" in err
    assert load_checkpoint(out / "last.pt")["train_state"]["epoch"] == 2  # trained again from epoch 1
    # both damaged: one line, nothing written
    zero_inside_a_tensor(out / "last.pt")
    zero_inside_a_tensor(out / "last.previous.pt")
    before = (out / "result.json").read_bytes()
    assert main([str(a) for a in train(h5, out, "--resume", epochs=3)]) == 2
    one_line_error(capsys, f"{out / 'last.pt'} is damaged")
    assert (out / "result.json").read_bytes() == before


def test_save_keeps_the_replaced_checkpoint(tmp_path):
    from aubench.engine.checkpoint import previous_path

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(3)}}, keep_previous=True)
    assert not previous_path(path).exists()
    save_checkpoint(path, {"model": {"w": torch.ones(3)}}, keep_previous=True)
    assert torch.equal(load_checkpoint(previous_path(path))["model"]["w"], torch.zeros(3))
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.previous.pt", "last.pt"]


# ---- 10. weights of the wrong shape ----------------------------------------------------------

def test_resume_from_weights_of_the_wrong_shape_is_one_line(trained, h5, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    payload = load_checkpoint(trained / "last.pt")
    name = next(k for k, v in payload["model"].items() if v.ndim == 4)
    payload["model"][name] = payload["model"][name][:, :1]  # a checkpoint whose checksum holds, of another shape
    save_checkpoint(out / "last.pt", {k: v for k, v in payload.items() if k not in ("format", "checksum")})
    assert main([str(a) for a in train(h5, out, "--resume", epochs=2)]) == 2
    one_line_error(capsys, f"{out / 'last.pt'}: its weights do not fit the model", "size mismatch", name)


# ---- 11. a loss that is not finite -----------------------------------------------------------

def test_nan_loss_is_one_line_with_its_exit_code_and_keeps_the_last_checkpoint(h5, tmp_path, capsys, monkeypatch):
    from aubench.models.resnet_baseline import ResNetBaseline

    step = ResNetBaseline.training_step

    def diverges_in_epoch_two(self, batch, state):
        out = step(self, batch, state)
        return {**out, "loss": out["loss"] * float("nan")} if state.epoch >= 1 else out
    monkeypatch.setattr(ResNetBaseline, "training_step", diverges_in_epoch_two)
    out = tmp_path / "run"
    assert main([str(a) for a in train(h5, out, epochs=3)]) == 3
    line = one_line_error(capsys, "resnet: loss is nan at step 5 (stage train, epoch 1)", "try a lower learning rate")
    assert line.endswith(f"the last good checkpoint, {out / 'last.pt'}, is kept")
    assert load_checkpoint(out / "last.pt")["train_state"]["epoch"] == 1  # the end of the first epoch


# ---- 12. out of memory: checked first, one line where it happens ------------------------------

def test_a_batch_larger_than_the_memory_is_refused_before_any_work(h5, tmp_path, capsys):
    out = tmp_path / "ev"
    args = evaluate(h5, out, "--bench-batch-size", "10000000")
    args[args.index("--image-size") + 1] = "224"
    assert main(args) == 2
    one_line_error(capsys, "--bench-batch-size 10000000: one batch of 10000000 images at 224 px is",
                   "GB of input alone, more than the", "use a smaller --bench-batch-size")
    assert not out.exists()


def test_out_of_memory_in_training_or_benchmarking_is_one_line_naming_the_batch(h5, tmp_path, capsys, monkeypatch):
    from aubench.models.resnet_baseline import ResNetBaseline

    def no_memory(self, batch, state):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 26000000000 bytes. Error code 12 (Cannot allocate memory)")
    with monkeypatch.context() as patch:
        patch.setattr(ResNetBaseline, "training_step", no_memory)
        assert main([str(a) for a in train(h5, tmp_path / "run")]) == 3
    one_line_error(capsys, "out of memory while training stage train (epoch 0, step 0) at --batch-size 8",
                   "can't allocate memory", "try a smaller --batch-size; no checkpoint was written yet")

    def no_gpu_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 26.00 GiB")
    monkeypatch.setattr("aubench.bench.benchmark_method", no_gpu_memory)
    assert main([str(a) for a in evaluate(h5, tmp_path / "ev", "--bench-batch-size", "64")]) == 3
    one_line_error(capsys, "out of memory while measuring resnet at --bench-batch-size 64 (CUDA out of memory. "
                           "Tried to allocate 26.00 GiB); try a smaller --bench-batch-size")
    assert not (tmp_path / "ev" / "results").exists()


# ---- 13. a file-size limit while saving ------------------------------------------------------

def test_checkpoint_that_cannot_be_written_is_one_line_naming_it(h5, tmp_path, capsys):
    out = tmp_path / "run"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN  # Python's default: a write fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))  # the log fits, a checkpoint does not
    try:
        code = main([str(a) for a in train(h5, out)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert code == 2
    one_line_error(capsys, f"{out / 'last.pt'}: cannot write (File too large")
    assert not list(out.glob("*.tmp")) and not (out / "last.pt").exists()
