"""The pipeline tests' data: two small MedMNIST-style datasets in one folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_medmnist


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    make_medmnist(root / "alpha.npz", n=(48, 16, 24), seed=1)
    make_medmnist(root / "beta.npz", n=(40, 12, 20), seed=2)
    return root
