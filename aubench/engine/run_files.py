"""The files of a run directory: their names, and the claim a fresh run makes on its directory."""
from __future__ import annotations

from pathlib import Path

from aubench.engine.checkpoint import previous_path
from aubench.errors import UserError

CHECKPOINT_NAME = "last.pt"
RESULT_NAME = "result.json"  # written beside the checkpoint by `aubench train` (test condition "none")
LOG_NAME = "log.jsonl"
# Every file a run writes into its directory (glob patterns): a fresh run replaces them together,
# so a new checkpoint never sits beside an old result, stage file or log. "result_*.json": the
# results of the other test conditions and of leaderboard rows (result_file_name).
# "result*.predictions.npz": each result's per-frame predictions (aubench.engine.predictions).
# (the validation-split predictions, <stem>.validation.predictions.npz, included)
PREDICTION_FILES = "result*.predictions.npz"
# "best_*.pt": the weights of a tested stage's selected epoch (--select best-val / best-test)
# previous_path(last.pt): the checkpoint before it, which --resume falls back to when last.pt is damaged
RUN_FILES = (CHECKPOINT_NAME, previous_path(CHECKPOINT_NAME).name, RESULT_NAME, "result_*.json", "final_*.pt",
             "best_*.pt", LOG_NAME, PREDICTION_FILES)
# Files that make a directory hold a run worth keeping (a log alone is a run that died before
# its first checkpoint: nothing to resume or to lose; a predictions file belongs to its result,
# and is nothing without it).
KEPT_RUN_FILES = tuple(name for name in RUN_FILES if name not in (LOG_NAME, PREDICTION_FILES))


def result_file_name(test_condition: str, row: str | None = None) -> str:
    """The result file of one test condition (a condition name) in a run directory: result.json,
    result_test-<condition>.json; for a leaderboard row (Stage.row) result_<row>.json,
    result_<row>_test-<condition>.json."""
    stem = "result" if row is None else f"result_{row}"
    return f"{stem}.json" if test_condition == "none" else f"{stem}_test-{test_condition}.json"


def stage_file_name(stage: str) -> str:
    """The file of a finished stage's final weights."""
    return f"final_{stage}.pt"


def best_file_name(stage: str) -> str:
    """The file of the weights of a tested stage's selected epoch (--select best-val / best-test)."""
    return f"best_{stage}.pt"


def kept_run_files(out: str | Path) -> list[str]:
    """Names of the files of an earlier run in `out` that a fresh run would replace."""
    out = Path(out)
    return [path.name for pattern in KEPT_RUN_FILES for path in sorted(out.glob(pattern))]


def clear_run_files(out: str | Path) -> None:
    """Remove every run file in `out`, with the temporaries a killed atomic write left behind."""
    out = Path(out)
    for pattern in RUN_FILES:
        for path in [*out.glob(pattern), *out.glob(f"{pattern}.*.tmp")]:
            path.unlink(missing_ok=True)


def claim_run_dir(out: str | Path, resume: bool, overwrite: bool, is_main: bool = True) -> None:
    """A fresh run (no resume) into `out`: refuse when an earlier run's checkpoint or result is
    there, unless `overwrite`; then remove all of the earlier run's files together."""
    if resume:
        return  # the resumed run checks that the checkpoint belongs to it (aubench.engine.state)
    found = kept_run_files(out)
    if found and not overwrite:
        raise UserError(f"--out {out} already holds a run ({', '.join(found)}); pass --resume to continue it "
                        f"or --overwrite to replace it")
    if is_main:
        clear_run_files(out)
