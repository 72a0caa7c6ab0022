"""Shared test helpers: the read-only real data in ../shared/data (skip cleanly when absent).

    def test_x(shared_file):
        mask = tifffile.imread(shared_file("dsb2018_nuclei", "mask2d.tif"))

``shared_file(*parts)`` returns the path under ``SHARED_DATA`` or skips the test with a reason;
the ``shared_data`` fixture is the folder itself (skips when it is absent). Tests import the slow
references as ``from reference.naive_weights import ...`` (tests/ is on sys.path under pytest).
"""
from __future__ import annotations

from pathlib import Path

import pytest

#: repo_root/../shared/data (read-only; never copied into the repository)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_path(*parts: str) -> Path:
    """``SHARED_DATA / parts``, or ``pytest.skip`` with the reason when it does not exist."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not available: {p}")
    return p


@pytest.fixture
def shared_data() -> Path:
    """The ../shared/data folder (test skipped when absent)."""
    return shared_path()


@pytest.fixture
def shared_file():
    """A function ``(*parts) -> Path`` that skips the test when the file is absent."""
    return shared_path


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for the module's tests (tiny networks: threads only cost), restored
    afterwards. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
