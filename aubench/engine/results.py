"""The results store: result JSON files (`aubench evaluate`, `aubench smooth`, `aubench ensemble`)
found under run directories, read, validated, and checked against the sources a derived result
was made from. The leaderboard and the post-processing (aubench.engine.postprocess) both read
results through it; it stays free of torch.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable

from aubench.engine.identity import MissingKey, need, result_identity
from aubench.errors import UserError

RESULT_SCHEMA = "aubench-result-1"
MEAN_TOLERANCE = 1e-6  # a recorded mean F1 against the mean of the recorded per-AU F1
CONDITION_KINDS = ("patches", "block")  # as aubench.data.occlusion.OCCLUSION_KINDS


def warn(message: str) -> None:
    print(f"aubench: warning: {message}", file=sys.stderr)


def parse_condition_name(name: Any) -> tuple[str, float] | None:
    """("patches", 0.5) for "patches0.5", None for "none": the inverse of
    aubench.data.condition_name (this module stays free of torch). ValueError for other text."""
    if name == "none":
        return None
    for kind in CONDITION_KINDS:
        if isinstance(name, str) and name.startswith(kind):
            try:
                ratio = float(name[len(kind):])
            except ValueError:
                break
            if 0.0 <= ratio <= 1.0 and name == f"{kind}{ratio:g}":
                return kind, ratio
    raise ValueError(f"not an occlusion condition name: {name!r} (expected 'none', 'patches<ratio>' or "
                     "'block<ratio>', e.g. 'patches0.5')")


def conditions(result: dict[str, Any]) -> tuple[str, str]:
    """(train, test) occlusion condition names of a result; "none" where it records none."""
    occlusion = result.get("occlusion") or {}
    return occlusion.get("train", "none"), occlusion.get("test", "none")


def result_problem(result: dict[str, Any]) -> str | None:
    """None for a usable result record, else what is wrong with it ("no 'metrics.f1.AU1'")."""
    try:
        for key, kind in (("method", str), ("dataset", str), ("fold", int), ("protocol", str),
                          ("label_ratio", (int, float))):
            if not isinstance(need(result, key), kind):
                return f"'{key}' is not a {getattr(kind, '__name__', 'number')}"
        aus = need(result, "au_names")
        if not isinstance(aus, list) or not all(isinstance(au, str) for au in aus):
            return "'au_names' is not a list of AU names"
        for key in ("f1", "all_positive_f1"):
            for au in aus:
                if not isinstance(need(result, "metrics", key, au), (int, float)):
                    return f"'metrics.{key}.{au}' is not a number"
        for key in ("mean_f1", "all_positive_mean_f1"):
            if not isinstance(need(result, "metrics", key), (int, float)):
                return f"'metrics.{key}' is not a number"
        problem = _values_problem(result["metrics"], aus)
        if problem:
            return problem
        if "occlusion" in result:
            occlusion = result["occlusion"]
            if not isinstance(occlusion, dict) or not set(occlusion) <= {"train", "test"}:
                return "'occlusion' is not {\"train\": <condition>, \"test\": <condition>}"
            for key, name in occlusion.items():
                try:
                    parse_condition_name(name)
                except ValueError as err:
                    return f"'occlusion.{key}': {err}"
        result_identity(result)
    except MissingKey as err:
        return f"no '{err.path}'"
    except (TypeError, AttributeError) as err:  # a field of the wrong kind (a list where a dict belongs ...)
        return f"a malformed field ({err})"
    return None


def _values_problem(metrics: dict[str, Any], aus: list[str]) -> str | None:
    """What is impossible in a result's metrics (a hand edit, a damaged file): an F1 that is not a
    finite number in [0, 1], a mean F1 that is not the mean of its AUs' F1, counts that disagree."""
    for key in ("f1", "all_positive_f1"):
        for au in aus:
            value = metrics[key][au]
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                return f"'metrics.{key}.{au}' is {value}, not an F1 in [0, 1]"
    for key, per_au in (("mean_f1", "f1"), ("all_positive_mean_f1", "all_positive_f1")):
        value = metrics[key]
        mean = sum(metrics[per_au][au] for au in aus) / len(aus) if aus else 0.0
        if not (math.isfinite(value) and abs(value - mean) <= MEAN_TOLERANCE):
            return f"'metrics.{key}' is {value}, not the mean of its AUs' F1 ({mean:.6g})"
    frames, known, positive = metrics.get("num_frames"), metrics.get("num_known"), metrics.get("num_positive")
    if frames is not None and not (isinstance(frames, int) and frames >= 0):
        return f"'metrics.num_frames' is {frames!r}, not a count"
    if isinstance(known, dict) and isinstance(positive, dict) and frames is not None:
        for au in aus:
            k, p = known.get(au), positive.get(au)
            if not (isinstance(k, int) and isinstance(p, int) and 0 <= p <= k <= frames):
                return (f"counts of {au} disagree: {p!r} positive of {k!r} known frames of {frames} "
                        "(expected 0 <= positive <= known <= frames)")
    return None


def read_json_or_none(path: str | Path) -> Any:
    """The JSON in `path`, or None when it cannot be read or parsed (a file to check, not to trust)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def stale_sources(result: dict[str, Any], path: str | Path) -> str | None:
    """Why the smoothed or ensemble result read from `path` no longer matches its sources (a source
    result since replaced: retested, retrained), or None. Sources that are gone are not held
    against it (results may be copied without them)."""
    def current_sha(source: Path) -> str | None:
        stored = read_json_or_none(source)
        return (stored.get("predictions") or {}).get("sha256") if isinstance(stored, dict) else None

    sources = []
    if isinstance(result.get("smoothed_from"), dict):
        record = result["smoothed_from"]
        sources.append((Path(path).parent / str(record.get("file")), record.get("predictions_sha256")))
    elif isinstance(result.get("ensemble"), dict):
        sources += [(Path(str(m.get("result"))), m.get("predictions_sha256"))
                    for m in result["ensemble"].get("members") or [] if isinstance(m, dict)]
    for source, sha in sources:
        now = current_sha(source) if source.is_file() else None
        if now is not None and now != sha:
            return f"made from predictions of {source} that have since been replaced"
    return None


def find_results(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every result JSON under the given run directories (or result files). In a directory,
    unreadable JSON files and incomplete results are skipped with a warning on stderr; a file
    named directly must be a usable result."""
    results = []
    seen: set[Path] = set()
    for path in map(Path, paths):
        if not path.exists():
            raise UserError(f"{path}: no such run directory or result file")
        named = path.is_file()
        files = [path] if named else sorted(path.rglob("*.json"))
        for file in files:
            if file.resolve() in seen:  # the same file reached twice (a folder and a file in it)
                continue
            seen.add(file.resolve())
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:  # ValueError: bad JSON, or bytes that are not UTF-8
                if named:
                    raise UserError(f"{file}: not a result JSON ({err})") from None
                warn(f"{file}: not valid JSON ({err}); skipped")
                continue
            if not (isinstance(data, dict) and data.get("schema") == RESULT_SCHEMA):
                if named:
                    raise UserError(f"{file}: not an aubench result (no schema {RESULT_SCHEMA!r})")
                continue  # other JSON beside the results (configs, tables)
            problem = result_problem(data)
            if problem:
                if named:
                    raise UserError(f"{file}: incomplete result: {problem}")
                warn(f"{file}: incomplete result: {problem}; skipped")
                continue
            stale = stale_sources(data, file)
            if stale:
                warn(f"{file}: {stale}; shown as it is (aubench smooth / aubench ensemble make it again)")
            data["_file"] = str(file)
            results.append(data)
    if not results:
        raise UserError(f"no aubench result files under {', '.join(map(str, paths))} (run `aubench evaluate` first)")
    return results


def split_scheme(result: dict[str, Any]) -> str | None:
    """How the result's data file splits the dataset into folds, where the dataset has several ways
    (Aff-Wild2: "official", "kfold"); None for the standard cross-validation folds."""
    scheme = (result.get("data") or {}).get("split_scheme")
    return scheme if isinstance(scheme, str) else None


def dataset_label(result: dict[str, Any]) -> str:
    """The dataset as the leaderboard names it: with the split scheme where it records one
    ("Aff-Wild2 (official split)"), so results of different splits are never averaged together."""
    scheme = split_scheme(result)
    return f"{result['dataset']} ({scheme} split)" if scheme else result["dataset"]
