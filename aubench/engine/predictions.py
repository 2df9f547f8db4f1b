"""Per-frame test predictions: the file beside every result JSON.

Every result that `aubench train` / `aubench evaluate` writes keeps the probabilities its metrics
were computed from in `<result stem>.predictions.npz` beside it (resnet_fold1_full.json ->
resnet_fold1_full.predictions.npz); the result's "predictions" field names that file and its
sha256. The metrics of the result are computed from exactly these float32 probabilities (see
`Predictions.metrics`), so reading the file back and scoring it against the HDF5 file's labels
gives the result's metrics bit for bit. Post-processing tools (smoothing, ensembles) read these
files and write ordinary results with `write_result`, without retraining.

The file is a NumPy .npz archive (compressed, no pickled objects), format "aubench-predictions-1":
- `format`: the format name (0-d string);
- `rows` uint32 (T,): the test frames' rows in the HDF5 file, ascending (each frame once);
- `probabilities` float32 (T, U): each frame's AU probabilities (a clip method's frame: the mean
  over the clips that cover it), columns in the order of `au_names`;
- `sequence` uint32 (T,): each frame's sequence, an index into `sequence_names`; a sequence is a
  contiguous run of rows, so smoothing along a sequence never crosses into the next one;
- `frame_no` int64 (T,): the dataset's own frame number of each frame;
- `sequence_names` str (S,): the names of the test split's sequences (HDF5 sequences/name);
- `au_names` str (U,): the AU names (HDF5 au_names, as in the result);
- `threshold` float64 (0-d), or (U,) per AU (thresholds chosen on a validation split,
  `--thresholds best-val`): a probability at or above it is a detection (aubench.metrics).
Labels are not stored: they are the HDF5 file's (`frames/label`, rows `rows`), which the result
identifies by path and fingerprint.

A run with a validation split (--validation, aubench.engine.data_access) also keeps each
result's predictions on it, in the same format, in `<result stem>.validation.predictions.npz`
(rows: the held-out subjects' frames), named with its sha256 in the result's
"validation": {"predictions": ...}; smoothing filters and per-AU thresholds are chosen on them
(aubench.engine.postprocess), never on the test predictions.

This module needs NumPy only (no torch), so reading and exporting are light.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aubench.engine.results import read_json_or_none
from aubench.errors import UserError
from aubench.files import atomic_file, check_output, why_unwritable, write_json_atomic
from aubench.metrics import THRESHOLD, au_metrics

FORMAT = "aubench-predictions-1"
SUFFIX = ".predictions.npz"
VALIDATION_SUFFIX = ".validation" + SUFFIX  # a result's predictions on its run's validation split
ARRAYS = ("format", "rows", "probabilities", "sequence", "frame_no", "sequence_names", "au_names", "threshold")


@dataclass
class Predictions:
    """The per-frame probabilities of one result on its fold's test split (T frames, U AUs)."""

    rows: np.ndarray            # uint32 (T,), HDF5 rows, ascending
    probabilities: np.ndarray   # float32 (T, U)
    sequence: np.ndarray        # uint32 (T,), index into sequence_names
    frame_no: np.ndarray        # int64 (T,)
    sequence_names: list[str]
    au_names: list[str]
    threshold: float | np.ndarray = THRESHOLD   # one for every AU, or float64 (U,) per AU

    @property
    def num_frames(self) -> int:
        return int(self.rows.shape[0])

    def detections(self) -> np.ndarray:
        """bool (T, U): the 0/1 decisions, by the metrics' rule (probability >= threshold)."""
        return self.probabilities >= self.threshold

    def metrics(self, labels: np.ndarray) -> dict[str, Any]:
        """aubench.metrics.au_metrics of these probabilities against `labels`, the HDF5 file's
        whole label array (N, U): the evaluator's own computation, so a result's metrics come back
        exactly."""
        return au_metrics(labels[self.rows], self.probabilities, self.au_names, self.threshold)


def predictions_of_test_split(file, rows: np.ndarray, probabilities: np.ndarray,
                              threshold: float | np.ndarray = THRESHOLD) -> Predictions:
    """The Predictions of an evaluation: `file` the AUFile, `rows` the ascending test rows (T,),
    `probabilities` (T, U), kept as float32. A model's outputs are float32 (or narrower) already;
    a clip method's per-frame mean over clips is rounded, which could move a value lying within
    one float32 step of the threshold across it. So the result's metrics are computed from these
    rounded values (Predictions.metrics), and the file is their exact source."""
    rows = np.asarray(rows)
    if rows.size and (rows.min() < 0 or rows.max() >= 2**32):
        raise ValueError(f"{file.path}: test rows outside 0..2**32-1")
    used, sequence = np.unique(file.frame_sequence[rows], return_inverse=True)
    return Predictions(rows=rows.astype(np.uint32), probabilities=np.asarray(probabilities, dtype=np.float32),
                       sequence=sequence.reshape(-1).astype(np.uint32),
                       frame_no=file.frame_no[rows].astype(np.int64),
                       sequence_names=[file.sequences["name"][i] for i in used],
                       au_names=list(file.au_names), threshold=threshold_value(threshold))


def threshold_value(threshold) -> float | np.ndarray:
    """A threshold as Predictions holds it: a float, or a float64 array (U,) per AU."""
    return float(threshold) if np.ndim(threshold) == 0 else np.asarray(threshold, dtype=np.float64)


def threshold_record(threshold) -> float | list[float]:
    """A threshold as JSON holds it (a number, or a list per AU), e.g. to compare two."""
    return float(threshold) if np.ndim(threshold) == 0 else [float(t) for t in np.asarray(threshold)]


def encode(predictions: Predictions) -> bytes:
    """The bytes of a predictions file."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, format=np.array(FORMAT), rows=predictions.rows.astype(np.uint32),
                        probabilities=predictions.probabilities.astype(np.float32),
                        sequence=predictions.sequence.astype(np.uint32),
                        frame_no=predictions.frame_no.astype(np.int64),
                        sequence_names=np.array(predictions.sequence_names, dtype=str),
                        au_names=np.array(predictions.au_names, dtype=str),
                        threshold=np.asarray(predictions.threshold, dtype=np.float64))
    return buffer.getvalue()


def decode(data: bytes, where: str) -> Predictions:
    """Predictions from the bytes of a predictions file; ValueError naming `where` when they are
    not one, or are inconsistent."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in ARRAYS if name in archive.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:  # not an archive, a truncated one ...
        raise ValueError(f"{where}: not an aubench predictions file ({err})") from None
    missing = [name for name in ARRAYS if name not in arrays]
    if missing:
        raise ValueError(f"{where}: not an aubench predictions file (no '{missing[0]}')")
    if str(arrays["format"]) != FORMAT:
        raise ValueError(f"{where}: format {str(arrays['format'])!r}, this aubench reads {FORMAT!r}")
    predictions = Predictions(rows=arrays["rows"], probabilities=arrays["probabilities"],
                              sequence=arrays["sequence"], frame_no=arrays["frame_no"],
                              sequence_names=[str(s) for s in arrays["sequence_names"]],
                              au_names=[str(s) for s in arrays["au_names"]],
                              threshold=threshold_value(arrays["threshold"]))
    t, u = predictions.num_frames, len(predictions.au_names)
    if np.ndim(predictions.threshold) and np.shape(predictions.threshold) != (u,):
        raise ValueError(f"{where}: 'threshold' has shape {np.shape(predictions.threshold)}, expected () or ({u},)")
    shapes = {"rows": (t,), "probabilities": (t, u), "sequence": (t,), "frame_no": (t,)}
    for name, shape in shapes.items():
        if getattr(predictions, name).shape != shape:
            raise ValueError(f"{where}: '{name}' has shape {getattr(predictions, name).shape}, expected {shape}")
    if t and (np.any(np.diff(predictions.rows.astype(np.int64)) <= 0)
              or predictions.sequence.max() >= len(predictions.sequence_names)):
        raise ValueError(f"{where}: rows not strictly ascending, or a sequence index out of range")
    return predictions


def predictions_path(result_path: str | Path) -> Path:
    """The predictions file of a result JSON: <stem>.predictions.npz beside it."""
    result_path = Path(result_path)
    return result_path.with_name(result_path.stem + SUFFIX)


def validation_predictions_path(result_path: str | Path) -> Path:
    """The validation-split predictions file of a result JSON: <stem>.validation.predictions.npz."""
    result_path = Path(result_path)
    return result_path.with_name(result_path.stem + VALIDATION_SUFFIX)


def remove_derived_results(path: str | Path) -> None:
    """Remove the results made from the predictions of the result at `path` (smoothed results,
    aubench.engine.postprocess: <stem>_*.json beside it whose "smoothed_from" names it), with
    their predictions files: before that result is replaced or removed."""
    path = Path(path)
    for derived in path.parent.glob(f"{glob.escape(path.stem)}_*.json"):
        stored = read_json_or_none(derived)
        if isinstance(stored, dict) and (stored.get("smoothed_from") or {}).get("file") == path.name:
            predictions_path(derived).unlink(missing_ok=True)
            validation_predictions_path(derived).unlink(missing_ok=True)
            derived.unlink(missing_ok=True)


def remove_result(path: str | Path) -> None:
    """Remove a result JSON, its predictions files (test and validation) and the results made from them."""
    path = Path(path)
    remove_derived_results(path)
    predictions_path(path).unlink(missing_ok=True)
    validation_predictions_path(path).unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def _write_predictions(file: Path, predictions: Predictions) -> dict[str, Any]:
    """Write a predictions file atomically; its record {"file", "sha256", "format", "num_frames"}."""
    data = encode(predictions)
    with atomic_file(file, "wb") as f:
        f.write(data)
    return {"file": file.name, "sha256": hashlib.sha256(data).hexdigest(), "format": FORMAT,
            "num_frames": predictions.num_frames}


def write_result(path: str | Path, result: dict[str, Any], predictions: Predictions,
                 validation: Predictions | None = None) -> dict[str, Any]:
    """Write a result JSON and its predictions file, each atomically; the predictions first, so
    a result on disk always has its file (a crash between the two leaves a predictions file
    without a result: a result not made). Results made from the predictions it replaces are
    removed first (remove_derived_results). With `validation` (the predictions on the run's
    validation split; the result must have a "validation" record) those too, in
    <stem>.validation.predictions.npz, recorded in result["validation"]["predictions"]; without
    it, a validation predictions file left beside the path is removed. Returns the result as
    written, with its "predictions" field {"file", "sha256", "format", "num_frames"}."""
    remove_derived_results(path)
    result = dict(result)
    if validation is not None:
        result["validation"] = {**result["validation"],
                                "predictions": _write_predictions(validation_predictions_path(path), validation)}
    else:
        validation_predictions_path(path).unlink(missing_ok=True)
    result["predictions"] = _write_predictions(predictions_path(path), predictions)
    write_json_atomic(path, result)
    return result


def _checked_bytes(path: str | Path, result: dict[str, Any], validation: bool = False
                   ) -> tuple[bytes | None, str | None]:
    """(the bytes of the result's predictions file, None) when it is there and matches the
    recorded sha256; else (None, why not). `validation`: its validation-split predictions file."""
    record = ((result.get("validation") or {}) if validation else result).get("predictions")
    if not isinstance(record, dict) or not isinstance(record.get("file"), str) or "sha256" not in record:
        return None, ("it records no validation-split predictions (a run without --validation)" if validation
                      else "it records no per-frame predictions file")
    file = Path(path).parent / record["file"]
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        return None, f"its predictions file {file} is missing"
    except OSError as err:
        return None, f"its predictions file {file} cannot be read ({err.strerror or err})"
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        return None, f"its predictions file {file} does not match the sha256 the result records"
    return data, None


def predictions_problem(path: str | Path, result: dict[str, Any]) -> str | None:
    """None when the result read from `path` has its predictions file, unchanged (and its
    validation predictions file, where it records one); else why not (a result made before
    per-frame predictions, a missing file, a checksum mismatch)."""
    problem = _checked_bytes(path, result)[1]
    if problem is None and isinstance((result.get("validation") or {}).get("predictions"), dict):
        problem = _checked_bytes(path, result, validation=True)[1]
    return problem


def read_predictions(path: str | Path, validation: bool = False) -> tuple[dict[str, Any], Predictions]:
    """(result, predictions) of the result JSON at `path`, its predictions file (with
    `validation`: its validation-split predictions file) checked against the result's sha256 and
    AU names; UserError naming the file otherwise."""
    path = Path(path)
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a result JSON ({err})") from None
    if not isinstance(result, dict) or "au_names" not in result:
        raise UserError(f"{path}: not an aubench result JSON")
    data, problem = _checked_bytes(path, result, validation)
    if problem:
        raise UserError(f"{path}: {problem}")
    file = path.parent / ((result["validation"] if validation else result)["predictions"]["file"])
    try:
        predictions = decode(data, str(file))
    except ValueError as err:
        raise UserError(str(err)) from None
    if predictions.au_names != list(result["au_names"]):
        raise UserError(f"{file}: AUs {', '.join(predictions.au_names)} differ from the result's "
                        f"({', '.join(result['au_names'])})")
    return result, predictions


class TestLabels:
    """The label arrays of the data files results were tested on, opened once each; a file is
    used only when its fingerprint is the one the result records."""

    __test__ = False  # a name pytest would otherwise take for a test class

    def __init__(self, data: str | Path | None = None):
        self.data = data            # a path for every result (the file moved), else each result's own
        self.files: dict[str, Any] = {}
        self.protocol: dict[tuple[str, float], np.ndarray] = {}  # (path, label ratio) -> validation_of's labels

    def of(self, result: dict[str, Any], where: str | Path) -> np.ndarray:
        from aubench.data.h5file import AUFile

        path = str(self.data if self.data is not None else result["data"]["path"])
        if path not in self.files:
            try:
                file = AUFile(path)
                self.files[path] = file, file.fingerprint()  # hashes the labels: once per file
            except FileNotFoundError:
                hint = "" if self.data is not None else "; pass --data with its new path"
                raise UserError(f"{where}: its data file {path} is missing{hint}") from None
            except (OSError, ValueError) as err:
                raise UserError(str(err)) from None
        file, fingerprint = self.files[path]
        if fingerprint != result["data"]["fingerprint"]:
            raise UserError(f"{path}: not the data file {where} was tested on (its fingerprint differs)")
        return file.labels

    def validation_of(self, result: dict[str, Any], where: str | Path) -> np.ndarray:
        """The labels the result's validation-split predictions are scored against: the data
        file's, those the sparse-label protocol hides at the result's label ratio set to -1, as
        the run held them (aubench.engine.data_access.protocol_labels)."""
        from aubench.engine.data_access import protocol_labels

        self.of(result, where)  # opened and checked
        path = str(self.data if self.data is not None else result["data"]["path"])
        key = (path, float(result["label_ratio"]))
        if key not in self.protocol:
            self.protocol[key] = protocol_labels(self.files[path][0], key[1])
        return self.protocol[key]


def recompute_metrics(path: str | Path, data: str | Path | None = None,
                      labels: TestLabels | None = None) -> dict[str, Any]:
    """The metrics of the result JSON at `path` computed again from its predictions file and the
    labels of its HDF5 file (`data`, default the path the result records; its fingerprint must
    be the result's); `labels`: the files already opened, shared by several results."""
    result, predictions = read_predictions(path)
    return predictions.metrics((labels or TestLabels(data)).of(result, path))


def csv_au_name(name: str) -> str:
    """An AU name as OpenFace / LibreFace columns write it: "AU1" -> "AU01"; other names as they are."""
    match = re.fullmatch(r"AU(\d+)", name)
    return f"AU{int(match.group(1)):02d}" if match else name


def export_csv(result_path: str | Path, csv_path: str | Path) -> int:
    """`aubench predictions RESULT --out CSV`: one row per test frame, in row order: sequence, frame
    (the dataset's frame number), then per AU its probability (<AU>_p, float32 written to round-trip)
    and its 0/1 detection (<AU>_c). Written atomically; returns the number of frames. OUT may not
    be the result or its predictions file, nor another file of aubench's (files.check_output)."""
    result, predictions = read_predictions(result_path)
    check_output("--out", csv_path, [result_path, Path(result_path).parent / result["predictions"]["file"]])
    header = ["sequence", "frame"]
    for name in map(csv_au_name, predictions.au_names):
        header += [f"{name}_p", f"{name}_c"]
    probabilities = predictions.probabilities.astype(str)  # shortest text that reads back as the same float32
    detections = predictions.detections().astype(np.uint8).astype(str)
    columns = np.stack([probabilities, detections], axis=2).reshape(predictions.num_frames, -1)
    names = np.array(predictions.sequence_names, dtype=object)[predictions.sequence]
    try:
        with atomic_file(csv_path) as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            for name, frame, values in zip(names, predictions.frame_no.tolist(), columns.tolist()):
                writer.writerow([name, frame, *values])
    except OSError as err:
        raise UserError(f"--out {csv_path}: cannot write ({why_unwritable(csv_path, err)})") from None
    return predictions.num_frames
