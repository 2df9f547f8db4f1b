"""Training curves of a run (`aubench plot RUN`), drawn from its log.jsonl alone.

The trainer's log (aubench.engine.logging.JsonlLogger) holds, per stage, "step" records every
`log_every` steps (the step's loss parts and the learning rate) and one "epoch" record per epoch
(the epoch's mean of each loss part, "mean_<part>"). The figure has one row per stage, in the
order the stages trained: the loss parts over the stage's steps on the left (lines from the step
records, the epoch means as circles at each epoch's last step, epoch ends as faint vertical
lines), the learning rate on the right. Steps count from 0 in every stage, as the log does.
A resumed run logs the steps after its checkpoint again: the record written last wins.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from aubench.engine.run_files import LOG_NAME
from aubench.errors import UserError
from aubench.files import check_output, why_unwritable

PLOT_NAME = "curves.png"
# Fields of a step record that are not loss parts.
STEP_FIELDS = ("time", "event", "stage", "epoch", "step", "lr")
ROW_INCHES = (11.0, 3.0)  # width, height of one stage's row
DPI = 100


def read_log(path: Path) -> list[dict]:
    """The records of a log.jsonl, in file order. A line that is not one JSON object (a line
    torn by a killed process) is skipped, and one line on stderr says how many were and where
    the first was."""
    records, skipped = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                skipped.append(number)
    if skipped:
        print(f"plot: skipped {len(skipped)} unreadable line(s) of {path} (first: line {skipped[0]})",
              file=sys.stderr)
    return records


def stage_curves(records: list[dict]) -> dict[str, dict]:
    """{stage: {"steps": {step: record}, "epochs": {epoch: record}}} in the order the stages
    first appear; for a step or epoch logged twice (a resumed run), the later record."""
    stages: dict[str, dict] = {}
    for record in records:
        kind = record.get("event")
        if kind not in ("step", "epoch") or "stage" not in record or "step" not in record:
            continue
        stage = stages.setdefault(record["stage"], {"steps": {}, "epochs": {}})
        if kind == "step":
            stage["steps"][record["step"]] = record
        else:
            stage["epochs"][record.get("epoch", record["step"])] = record
    return stages


def _loss_parts(steps: list[dict]) -> list[str]:
    """Loss part names of the step records, "loss" first, then in order of appearance."""
    names: dict[str, None] = {}
    for record in steps:
        names.update({k: None for k, v in record.items()
                      if k not in STEP_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool)})
    return sorted(names, key=lambda name: name != "loss")


def _title(records: list[dict], run: Path) -> str:
    """"<run folder's name>: <method> fold <n>, <preset> preset" from the first start record, else
    the run's path."""
    for record in records:
        if record.get("event") == "start" and isinstance(record.get("config"), dict):
            config = record["config"]
            return f"{run.name}: {config.get('method')} fold {config.get('fold')}, {config.get('preset')} preset"
    return str(run)


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the loss parts and the learning rate of the run in `run_dir` (or of the log file
    given as `run_dir`) over steps, one row of two panels per stage (see the module's text), to
    `out` (default RUN/curves.png; a directory gets curves.png inside it; its suffix picks the
    format, .png added when it has none). Returns the path written. A PNG is 1100 px wide and
    300 px high per stage.

    Raises UserError naming the file when the run has no log.jsonl, when the log has no step
    records, or when `out` is the log, a file aubench manages (aubench.files.check_output) or
    cannot be written."""
    run_dir = Path(run_dir)
    log = run_dir if run_dir.is_file() else run_dir / LOG_NAME
    if not log.is_file():
        where = "no such run directory" if not run_dir.exists() else f"no {LOG_NAME} in it"
        raise UserError(f"{run_dir}: {where}; name a run directory that `aubench train` wrote")
    records = read_log(log)
    stages = stage_curves(records)
    if not any(stage["steps"] for stage in stages.values()):
        raise UserError(f"{log}: no step records to plot (a run logs one every log_every training steps; "
                        f"this one has not trained that far)")
    folder = log.parent
    out = folder / PLOT_NAME if out is None else Path(out)
    if out.is_dir():
        out = out / PLOT_NAME
    elif not out.suffix:
        out = out.with_name(out.name + ".png")
    check_output("--out", out, inputs=[log])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(stages), 2, figsize=(ROW_INCHES[0], ROW_INCHES[1] * len(stages)),
                                squeeze=False, gridspec_kw={"width_ratios": (2, 1)})
    for (name, stage), (loss_axis, lr_axis) in zip(stages.items(), axes):
        steps = [stage["steps"][s] for s in sorted(stage["steps"])]
        epochs = [stage["epochs"][e] for e in sorted(stage["epochs"])]
        marker = "." if len(steps) < 50 else None  # a few points would be invisible as a line
        xs = [r["step"] for r in steps]
        for index, part in enumerate(_loss_parts(steps)):
            colour = f"C{index}"
            loss_axis.plot(xs, [r.get(part, float("nan")) for r in steps], color=colour, marker=marker, lw=1.2,
                           label=part)
            means = [(r["step"], r[f"mean_{part}"]) for r in epochs if f"mean_{part}" in r]
            if means:
                loss_axis.plot(*zip(*means), ls="none", marker="o", mfc="none", color=colour)
        for record in epochs:
            for axis in (loss_axis, lr_axis):
                axis.axvline(record["step"], color="grey", lw=0.6, alpha=0.4)
        lr_axis.plot(xs, [r.get("lr", float("nan")) for r in steps], color="k", marker=marker, lw=1.2)
        loss_axis.set_title(f"{name}: loss parts (lines: logged steps, circles: epoch means)", fontsize=9)
        lr_axis.set_title(f"{name}: learning rate", fontsize=9)
        if not steps:
            loss_axis.text(0.5, 0.5, "no step records in this stage", ha="center", transform=loss_axis.transAxes)
        else:
            loss_axis.legend(fontsize=8)
        for axis in (loss_axis, lr_axis):
            axis.set_xlabel("step in stage", fontsize=8)
            axis.grid(alpha=0.3)
        lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    figure.suptitle(_title(records, folder), fontsize=10)
    figure.tight_layout()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out, dpi=DPI)
    except OSError as err:
        raise UserError(f"{out}: cannot write the plot ({why_unwritable(out, err)})") from None
    except ValueError as err:  # an image format matplotlib does not know
        raise UserError(f"{out}: {err}") from None
    finally:
        plt.close(figure)
    return out
