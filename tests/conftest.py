import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """../shared/data beside the checkout (or $AUBENCH_SHARED_DATA), None when absent."""
    root = Path(os.environ.get("AUBENCH_SHARED_DATA", REPO.parent / "shared" / "data"))
    return root if root.is_dir() else None


@pytest.fixture(scope="module")
def raw_file(tmp_path_factory):
    """A small aubench HDF5 file with raw uint8 frames (tests/fixtures_h5.py)."""
    from fixtures_h5 import write_au_h5

    return write_au_h5(tmp_path_factory.mktemp("h5") / "raw.h5", image_format="raw")


@pytest.fixture(scope="module")
def jpeg_file(tmp_path_factory):
    """The same file with JPEG-encoded frames."""
    from fixtures_h5 import write_au_h5

    return write_au_h5(tmp_path_factory.mktemp("h5") / "jpeg.h5", image_format="jpeg")


@pytest.fixture
def shared_data() -> Path:
    root = shared_data_dir()
    if root is None:
        pytest.skip("../shared/data (real AU label files) is not present")
    return root


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)
