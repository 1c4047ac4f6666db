"""Fixtures for the SAE tests: superposed synthetic activations, written once per module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from saedata import superposition


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    acts, directions = superposition(40_000)
    path = tmp_path_factory.mktemp("acts") / "acts.npy"
    np.save(path, acts)
    return path, directions
