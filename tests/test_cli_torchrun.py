"""A user error under torchrun: one line (rank 0's), every rank's exit code the documented one, and
no traceback of aubench's (torchrun's launcher prints its own failure report; docs/reliability.md,
"Exit codes")."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from datasets_tools.command_line import EXIT_USER_ERROR

REPO = Path(__file__).resolve().parents[1]


def torchrun_train(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "aubench.cli", "train", "--method", "resnet", "--data", str(tmp_path / "missing.h5"),
               "--out", str(tmp_path / "run"), "--device", "cpu", *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=180, cwd=tmp_path)


def rank_exit_codes(report: str) -> dict[int, int]:
    """Each failed rank's exit code, from torchrun's failure report."""
    pairs = re.findall(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)", report)
    return {int(rank): int(code) for rank, code in pairs}


@pytest.mark.parametrize("extra, fragment", [
    ((), "missing.h5: no such file"),                     # refused at start, by every rank
    (("--batch-size", "1"), "argument --batch-size"),     # refused while parsing
])
def test_a_user_error_is_printed_once_and_every_rank_exits_with_its_code(tmp_path, extra, fragment):
    proc = torchrun_train(tmp_path, *extra)
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("aubench:")]
    assert len(ours) == 1 and ours[0].startswith("aubench: error: ") and fragment in ours[0], proc.stderr
    assert rank_exit_codes(proc.stderr) == {0: EXIT_USER_ERROR, 1: EXIT_USER_ERROR}, proc.stderr
    assert f'File "{REPO / "aubench"}' not in proc.stderr  # the only traceback is the launcher's
    assert proc.returncode != 0  # torchrun's own code (1) for a failed job


def test_aubench_launch_adds_nothing_to_the_ranks_line_and_exits_with_their_code(tmp_path):
    """`python -m aubench.launch` (torchrun for aubench): the same failure prints rank 0's line
    only, no launcher report or traceback, and the launcher exits with the ranks' code."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "aubench.launch", "--standalone", "--nproc_per_node", "2",
               "train", "--method", "resnet", "--data", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "run"),
               "--device", "cpu"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180, cwd=tmp_path)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("aubench: error: --data ") and "missing.h5" in lines[0], lines
    assert proc.returncode == EXIT_USER_ERROR

    no_command = subprocess.run([sys.executable, "-m", "aubench.launch", "--nproc_per_node", "2", "tarin"],
                                capture_output=True, text=True, env=env, timeout=60)
    assert no_command.returncode == EXIT_USER_ERROR
    assert no_command.stderr.startswith("aubench.launch: error: no aubench command given")
